package main

import (
	"context"
	"fmt"
	"io"

	"github.com/sipmesh/sipmesh/gateway"
)

func init() {
	register(command{name: "web-password", summary: "set the web UI's administrator password (read from stdin)", run: runWebPassword})
}

func runWebPassword(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("web-password", "[flags]", `Web-password sets the password of the administrator of the node's web UI,
read from standard input (one line; not echoed on a terminal). The node
stores only its scrypt hash, in its state directory; sessions of the old
password end.`, stderr)
	control := fs.String("control", gateway.DefaultControl, "control `SOCKET` of the node")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usageErrorf("unexpected arguments %q", fs.Args())
	}
	pw, err := readPassword(stderr, "the web administrator")
	if err != nil {
		return err
	}
	c := gateway.NewControlClient(*control)
	defer c.Close()
	if err := c.SetWebPassword(ctx, pw); err != nil {
		return fmt.Errorf("web-password: %w", err)
	}
	fmt.Fprintln(stdout, "web administrator password set")
	return nil
}
