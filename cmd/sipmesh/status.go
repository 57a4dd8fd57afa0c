package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/sipmesh/sipmesh/gateway"
	"github.com/sipmesh/sipmesh/ssr"
)

func init() {
	register(command{name: "status", summary: "show a running node's ring, neighbours and counters", run: runStatus})
}

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("status", "[flags]", `Status asks the running node, through its control socket, for its identity,
mesh interfaces, neighbours (with link quality), ring successors and
predecessors with their source routes, fingers, route cache size and counters.`, stderr)
	control := fs.String("control", gateway.DefaultControl, "control `SOCKET` of the node")
	asJSON := fs.Bool("json", false, "print the status as JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usageErrorf("unexpected arguments %q", fs.Args())
	}
	c := gateway.NewControlClient(*control)
	defer c.Close()
	if *asJSON {
		raw, err := c.StatusJSON(ctx)
		if err != nil {
			return err
		}
		var b bytes.Buffer
		if err := json.Indent(&b, raw, "", "  "); err != nil {
			return fmt.Errorf("status: bad JSON from the node: %w", err)
		}
		b.WriteByte('\n')
		_, err = stdout.Write(bytes.TrimLeft(b.Bytes(), "\n"))
		return err
	}
	st, err := c.Status(ctx)
	if err != nil {
		return err
	}
	printStatus(stdout, st)
	return nil
}

func printStatus(w io.Writer, st gateway.NodeStatus) {
	fmt.Fprintf(w, "node %s  id %s  addr %s  key %s", st.Name, st.ID, st.Addr, st.PublicKey)
	if !st.Running {
		fmt.Fprint(w, "  (stopped)")
	}
	fmt.Fprintln(w)

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\ninterfaces:")
	for _, is := range st.Interfaces {
		state := "down"
		if is.Up {
			state = "up"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", is.Name, state, is.LinkLocal, is.LastError)
	}
	fmt.Fprintln(tw, "\nneighbours:\tiface\tquality\tlast seen")
	for _, nb := range st.Neighbours {
		fmt.Fprintf(tw, "  %s\t%s\t%.2f\t%.0fms ago\n", nb.ID, nb.Interface, nb.Quality, nb.LastSeen)
	}
	peers := func(title string, ps []ssr.PeerStatus) {
		fmt.Fprintf(tw, "\n%s:\troute\n", title)
		for _, p := range ps {
			fmt.Fprintf(tw, "  %s\t%s\n", p.ID, strings.Join(p.Route, ">"))
		}
	}
	peers("successors", st.Successors)
	peers("predecessors", st.Predecessors)
	tw.Flush()

	fmt.Fprintf(w, "\nfingers: %s\n", strings.Join(st.Fingers, " "))
	fmt.Fprintf(w, "route cache: %d entries\n", st.CacheEntries)
	s, d := st.Stats, st.Driver
	fmt.Fprintf(w, "frames: in %d, out %d (control %d), forwarded %d, delivered %d, dropped %d, malformed %d\n",
		s.FramesIn, s.FramesOut, s.ControlOut, s.Forwarded, s.Delivered, s.Dropped, s.Malformed)
	fmt.Fprintf(w, "reports: link broken %d, unreachable %d\n", s.LinkBroken, s.Unreachable)
	fmt.Fprintf(w, "driver: send errors %d, read errors %d, link not ready %d, no listener %d, socket queue full %d, undeliverable %d\n",
		d.SendErrors, d.ReadErrors, d.LinkNotReady, d.NoListener, d.SocketQueueFull, d.UnreachableReport)
	a := st.Auth
	enc := "authenticated only"
	if a.Encrypted {
		enc = "encrypted"
	}
	fmt.Fprintf(w, "link security (%s): %d sessions, %d handshakes; refused: unauthenticated %d, bad mac %d, replayed %d, wrong sender %d, bad identity %d, bad handshake %d, mixed mesh %d, old version %d\n",
		enc, a.Sessions, a.Handshakes, a.Unauthenticated, a.BadMAC, a.Replayed, a.WrongSender, a.BadIdentity, a.BadHandshake, a.ModeMismatch, a.OldVersion)
	fmt.Fprintf(w, "end to end: %d sessions, %d handshakes, %d datagrams waiting; refused: unauthenticated %d, bad mac %d, replayed %d, wrong sender %d, bad handshake %d, rate limited %d, dropped waiting %d\n",
		a.E2ESessions, a.E2EHandshakes, a.E2EQueued, a.E2EUnauthenticated, a.E2EBadMAC, a.E2EReplayed, a.E2EWrongSender, a.E2EBadHandshake, a.E2ERateLimited, a.E2EQueueDropped)
	if m := st.DHT; m != nil {
		hops := 0.0
		if m.Lookups > 0 {
			hops = float64(m.LookupHops) / float64(m.Lookups)
		}
		fmt.Fprintf(w, "dht: %d records (%d bytes), requests %d, timeouts %d, lookups %d (%.1f hops on average)\n",
			m.Records, m.Bytes, m.Requests, m.Timeouts, m.Lookups, hops)
	}
	if sip := st.SIP; sip != nil {
		fmt.Fprintf(w, "phone LAN %s; sip: requests %d, proxied %d, calls %d, transactions %d, rate limited %d, malformed %d\n",
			st.LAN, sip.Requests, sip.Proxied, sip.Calls, sip.Transactions, sip.RateLimited, sip.Malformed)
	}
	if ip := st.IPNetwork; ip != nil {
		fmt.Fprintf(w, "ip network: %s mtu %d, LAN %s, CLAT %s; packets in %d out %d; dropped: spoofed %d, not ours %d, malformed %d; icmp: no route %d, unreachable %d, too big %d\n",
			ip.TUN, ip.MTU, ip.LANPrefix, ip.CLATPrefix, ip.FromMesh, ip.ToMesh, ip.Spoofed, ip.NotOurs, ip.Malformed, ip.NoRoute, ip.Unreachable, ip.TooBig)
		if ip.NAT64Exit != "" {
			fmt.Fprintf(w, "ip network: NAT64 %s through gateway %s\n", ip.NAT64Prefix, ip.NAT64Exit)
		}
	}
	if g := st.Gateway; g != nil {
		state := "down"
		if g.Up {
			state = "up"
		}
		fmt.Fprintf(w, "gateway: uplink %s %s, address %s, public %s, rtt %.1fms, loss %.1f%% over %d probes, offers %s",
			g.Interface, state, orNone(g.Address), orNone(g.Public), g.RTTMs, g.LossPct, g.Probes, strings.Join(g.Offers, ","))
		if g.LastError != "" {
			fmt.Fprintf(w, ", last error: %s", g.LastError)
		}
		fmt.Fprintln(w)
		if nt := g.NAT64; nt != nil {
			state := "not running"
			if nt.Running {
				state = "running"
			}
			fmt.Fprintf(w, "nat64 %s pool %s: %s, to IPv4 %d, to IPv6 %d, dropped %d, sessions %d",
				nt.Prefix, nt.Pool, state, nt.Out4, nt.Out6, nt.Dropped, nt.Sessions)
			if nt.Error != "" {
				fmt.Fprintf(w, ", error: %s", nt.Error)
			}
			fmt.Fprintln(w)
		}
		if tr := g.Trunk; tr != nil {
			state := "not registered"
			if tr.Registered {
				state = "registered at " + tr.Target + " until " + tr.Expires.UTC().Format("15:04:05Z")
			}
			fmt.Fprintf(w, "trunk %s: %s, %d failures", tr.Name, state, tr.Failures)
			if tr.LastError != "" {
				fmt.Fprintf(w, ", last error: %s", tr.LastError)
			}
			fmt.Fprintln(w)
		}
	}
	if len(st.Gateways) > 0 {
		var gs []string
		for _, g := range st.Gateways {
			s := fmt.Sprintf("%s (%s, R %.0f", g.Name, g.Addr, g.R)
			if g.Best {
				s += ", best"
			} else if !g.Usable {
				s += ", unusable"
			}
			gs = append(gs, s+")")
		}
		fmt.Fprintf(w, "gateways: %s\n", strings.Join(gs, ", "))
	}
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
