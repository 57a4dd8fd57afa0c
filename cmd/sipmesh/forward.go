package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/sipmesh/sipmesh/gateway"
	"github.com/sipmesh/sipmesh/registrar"
)

func init() {
	register(command{
		name:    "forward",
		summary: "show or set an extension's call forwarding (forward show|set)",
		run:     runForward,
	})
}

const forwardDoc = `Forward shows or sets where calls to an extension go instead: always
(unconditional, what a phone's *72<number> sets and *73 clears), when
it is busy, when it does not answer within --after, and when it is not
registered. The forwarding lives in the DHT, signed by the node, and
the newest change wins wherever it was made.

  sipmesh forward show EXT
  sipmesh forward set EXT [--always T] [--busy T] [--no-answer T --after D] [--unreachable T]

set replaces the whole forwarding: a target not given is off, so
"sipmesh forward set 201" clears every forward of 201.`

func runForward(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "show" && args[0] != "set") {
		fs := newFlagSet("forward", "show|set [flags] EXT", forwardDoc, stderr)
		if err := parseFlags(fs, args); err != nil {
			return err
		}
		return usageErrorf("want a subcommand: show or set")
	}
	sub := args[0]
	fs := newFlagSet("forward "+sub, "[flags] EXT", forwardDoc, stderr)
	control := fs.String("control", gateway.DefaultControl, "control `SOCKET` of the node")
	var f registrar.Forward
	if sub == "set" {
		fs.StringVar(&f.Always, "always", "", "forward every call to `EXT`")
		fs.StringVar(&f.Busy, "busy", "", "forward calls when busy to `EXT`")
		fs.StringVar(&f.NoAnswer, "no-answer", "", "forward unanswered calls to `EXT`")
		fs.DurationVar(&f.NoAnswerAfter, "after", 0, "ring `D` before --no-answer forwards (default 20s)")
		fs.StringVar(&f.Unreachable, "unreachable", "", "forward calls while not registered to `EXT`")
	}
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageErrorf("forward %s: want one EXT, got %d arguments", sub, fs.NArg())
	}
	f.Ext = fs.Arg(0)
	if f.NoAnswer != "" && f.NoAnswerAfter == 0 {
		f.NoAnswerAfter = 20 * time.Second
	}
	if err := f.Check(); err != nil {
		return usageErrorf("%v", err)
	}
	c := gateway.NewControlClient(*control)
	defer c.Close()
	var err error
	if sub == "show" {
		f, err = c.Forward(ctx, f.Ext)
	} else {
		f, err = c.SetForward(ctx, f)
	}
	if err != nil {
		return fmt.Errorf("forward %s %s: %w", sub, fs.Arg(0), err)
	}
	fmt.Fprintln(stdout, describeForward(f))
	return nil
}

// describeForward is one line: "201: always → 202" or "201: no forwarding".
func describeForward(f registrar.Forward) string {
	var parts []string
	for _, p := range []struct{ what, to string }{
		{"always", f.Always}, {"busy", f.Busy}, {"no answer after " + f.NoAnswerAfter.String(), f.NoAnswer}, {"unreachable", f.Unreachable},
	} {
		if p.to != "" {
			parts = append(parts, p.what+" → "+p.to)
		}
	}
	if len(parts) == 0 {
		return f.Ext + ": no forwarding"
	}
	return f.Ext + ": " + strings.Join(parts, ", ")
}
