package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/sipmesh/sipmesh/gateway"
	"github.com/sipmesh/sipmesh/ssr"
)

func init() {
	register(command{name: "ping", summary: "measure the mesh round trip and route to a node", run: runPing})
}

func runPing(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("ping", "[flags] NODE-ADDRESS", `Ping asks the running node (through its control socket) to send mesh echo
requests to NODE-ADDRESS, a mesh IPv6 address or a 16-hex-digit node ID, and
prints the round-trip time and the source route each request took. It exits
with status 1 if no reply came back.`, stderr)
	control := fs.String("control", gateway.DefaultControl, "control `SOCKET` of the node to ping from")
	count := fs.Int("count", 3, "number of echo requests (0: until interrupted)")
	interval := fs.Duration("interval", time.Second, "time between requests")
	timeout := fs.Duration("timeout", gateway.DefaultPingTimeout, "how long to wait for each reply")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageErrorf("want exactly one NODE-ADDRESS, got %d arguments", fs.NArg())
	}
	dst, err := ssr.ParseNodeID(fs.Arg(0))
	if err != nil {
		return usageErrorf("%v", err)
	}
	switch {
	case *count < 0:
		return usageErrorf("--count %d: want 0 or more", *count)
	case *interval < 0:
		return usageErrorf("--interval %v: want 0 or more", *interval)
	case *timeout <= 0 || *timeout > gateway.MaxPingTimeout:
		return usageErrorf("--timeout %v: want a duration in (0, %v]", *timeout, gateway.MaxPingTimeout)
	}

	c := gateway.NewControlClient(*control)
	defer c.Close()
	addr := dst.Addr().String()
	var (
		sent, received int
		rtts           []float64
	)
	for i := 0; *count == 0 || i < *count; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(*interval):
			}
		}
		if ctx.Err() != nil {
			break
		}
		sent++
		res, err := c.Ping(ctx, dst.String(), *timeout)
		switch {
		case err == nil:
			received++
			rtts = append(rtts, res.RTTMs)
			fmt.Fprintf(stdout, "reply from %s: rtt=%.2fms hops=%d route=%s\n", addr, res.RTTMs, res.Hops, strings.Join(res.Route, ">"))
		case ctx.Err() != nil:
			sent-- // interrupted, not lost
		case errors.Is(err, gateway.ErrNoNode):
			// The node itself is not answering: no point going on.
			return err
		default:
			fmt.Fprintf(stdout, "no reply from %s: %v\n", addr, err)
		}
	}
	loss := 0.0
	if sent > 0 {
		loss = 100 * float64(sent-received) / float64(sent)
	}
	fmt.Fprintf(stdout, "--- %s: %d sent, %d received, %.0f%% loss", addr, sent, received, loss)
	if len(rtts) > 0 {
		lo, hi, sum := rtts[0], rtts[0], 0.0
		for _, r := range rtts {
			lo, hi, sum = min(lo, r), max(hi, r), sum+r
		}
		fmt.Fprintf(stdout, ", rtt min/avg/max = %.2f/%.2f/%.2f ms", lo, sum/float64(len(rtts)), hi)
	}
	fmt.Fprintln(stdout)
	if received == 0 {
		return errors.New("ping " + addr + ": no reply")
	}
	return nil
}
