package main

import (
	"context"
	"fmt"
	"io"

	"github.com/sipmesh/sipmesh/gateway"
	"github.com/sipmesh/sipmesh/registrar"
)

func init() {
	register(command{
		name:    "alias",
		summary: "set, show or delete a dial-plan alias (a name for an extension or a SIP URI)",
		run:     runAlias,
	})
}

const aliasDoc = `Alias manages the mesh's dial plan: a name or number that stands for an
extension or a SIP URI, so that a phone dialling "doctor" reaches 205.
Aliases live in the DHT (any node answers for them, the newest change
wins) and apply to names that are no subscriber's extension.

  sipmesh alias set NAME TARGET   TARGET: an extension or a sip: URI
  sipmesh alias show NAME
  sipmesh alias del NAME`

func runAlias(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	want := map[string]int{"set": 2, "show": 1, "del": 1}
	if len(args) == 0 || want[args[0]] == 0 {
		fs := newFlagSet("alias", "set|show|del [flags] NAME [TARGET]", aliasDoc, stderr)
		if err := parseFlags(fs, args); err != nil {
			return err
		}
		return usageErrorf("want a subcommand: set, show or del")
	}
	sub := args[0]
	fs := newFlagSet("alias "+sub, "[flags] NAME [TARGET]", aliasDoc, stderr)
	control := fs.String("control", gateway.DefaultControl, "control `SOCKET` of the node")
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	if fs.NArg() != want[sub] {
		return usageErrorf("alias %s: want %d arguments, got %d", sub, want[sub], fs.NArg())
	}
	name, target := fs.Arg(0), fs.Arg(1)
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
		return fmt.Errorf("alias %s %s: %w", sub, name, err)
	}
	switch {
	case a.Target == "" && sub == "del":
		fmt.Fprintf(stdout, "alias %s deleted\n", a.Name)
	case a.Target == "":
		fmt.Fprintf(stdout, "%s is no alias\n", a.Name)
	default:
		fmt.Fprintf(stdout, "%s → %s\n", a.Name, a.Target)
	}
	return nil
}
