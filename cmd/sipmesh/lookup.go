package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/sipmesh/sipmesh/gateway"
)

func init() {
	register(command{
		name:    "lookup",
		summary: "show where an extension is registered, as the mesh's location service knows it",
		run:     runLookup,
	})
}

func runLookup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("lookup", "[flags] EXT", "Lookup asks a node for the current registrations of EXT (sip:EXT@mesh):\nthe location service is the mesh's DHT, so any node answers for every phone.", stderr)
	control := fs.String("control", gateway.DefaultControl, "control `SOCKET` of the node")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageErrorf("want exactly one EXT, got %d arguments", fs.NArg())
	}
	c := gateway.NewControlClient(*control)
	defer c.Close()
	bs, err := c.Bindings(ctx, fs.Arg(0))
	if err != nil {
		return fmt.Errorf("lookup %s: %w", fs.Arg(0), err)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(bs)
	}
	if len(bs) == 0 {
		fmt.Fprintf(stdout, "sip:%s@mesh is not registered\n", fs.Arg(0))
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CONTACT\tNODE\tSOURCE\tEXPIRES IN")
	for _, b := range bs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", b.Contact, b.Node, b.Source, time.Until(b.Expires).Round(time.Second))
	}
	return tw.Flush()
}
