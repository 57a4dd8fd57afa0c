package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/sipmesh/sipmesh/gateway"
	"github.com/sipmesh/sipmesh/registrar"
)

func init() {
	register(command{
		name:    "alias",
		summary: "set, show or delete a dial-plan alias (a name for an extension or a SIP URI)",
		run:     runAlias,
	})
	register(command{
		name:    "did",
		summary: "set, show or delete the extension a provider's number (DID) rings",
		run:     runDID,
	})
}

const didDoc = `Did maps a phone number the gateway's SIP provider delivers (a DID, in
the To header of the provider's calls to the trunk) to the extension it
rings. A DID is a dial-plan alias (sipmesh alias) whose name is a number:
it lives in the DHT, and dialled inside the mesh it rings the same phone.

  sipmesh did set NUMBER EXT
  sipmesh did show NUMBER
  sipmesh did del NUMBER`

func runDID(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runDialPlan(ctx, args, stdout, stderr, "did", didDoc)
}

const aliasDoc = `Alias manages the mesh's dial plan: a name or number that stands for an
extension or a SIP URI, so that a phone dialling "doctor" reaches 205.
Aliases live in the DHT (any node answers for them, the newest change
wins) and apply to names that are no subscriber's extension.

  sipmesh alias set NAME TARGET   TARGET: an extension or a sip: URI
  sipmesh alias show NAME
  sipmesh alias del NAME`

func runAlias(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runDialPlan(ctx, args, stdout, stderr, "alias", aliasDoc)
}

// runDialPlan is `sipmesh alias` and `sipmesh did` (name): an alias's
// subcommands; a DID's name must be a number.
func runDialPlan(ctx context.Context, args []string, stdout, stderr io.Writer, cmd, doc string) error {
	want := map[string]int{"set": 2, "show": 1, "del": 1}
	if len(args) == 0 || want[args[0]] == 0 {
		fs := newFlagSet(cmd, "set|show|del [flags] NAME [TARGET]", doc, stderr)
		if err := parseFlags(fs, args); err != nil {
			return err
		}
		return usageErrorf("want a subcommand: set, show or del")
	}
	sub := args[0]
	fs := newFlagSet(cmd+" "+sub, "[flags] NAME [TARGET]", doc, stderr)
	control := fs.String("control", gateway.DefaultControl, "control `SOCKET` of the node")
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	if fs.NArg() != want[sub] {
		return usageErrorf("%s %s: want %d arguments, got %d", cmd, sub, want[sub], fs.NArg())
	}
	name, target := fs.Arg(0), fs.Arg(1)
	if cmd == "did" && (name == "" || strings.Trim(name, "0123456789") != "") {
		return usageErrorf("did: %q is not a phone number (digits, as the provider sends it)", name)
	}
	if err := (registrar.Alias{Name: name, Target: target}).Check(); err != nil {
		return usageErrorf("%v", err)
	}
	c := gateway.NewControlClient(*control)
	defer c.Close()
	var a registrar.Alias
	var err error
	if sub == "show" {
		a, err = c.Alias(ctx, name)
	} else {
		a, err = c.SetAlias(ctx, name, target) // del: no target
	}
	if err != nil {
		return fmt.Errorf("%s %s %s: %w", cmd, sub, name, err)
	}
	switch {
	case a.Target == "" && sub == "del":
		fmt.Fprintf(stdout, "%s %s deleted\n", cmd, a.Name)
	case a.Target == "":
		fmt.Fprintf(stdout, "%s is no %s\n", a.Name, cmd)
	default:
		fmt.Fprintf(stdout, "%s → %s\n", a.Name, a.Target)
	}
	return nil
}
