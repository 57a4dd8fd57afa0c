package gateway

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/dns64"
)

// TestNAT64ExitFailover: packets to the Well-Known Prefix leave through
// the best gateway announcing it and stay there (sticky: the NAT64 is
// stateful); when it dies, new flows leave through the other one within
// announceLifetime, on the test clock; DNS64's prefix follows the exit.
func TestNAT64ExitFailover(t *testing.T) {
	ctx := context.Background()
	w := newGWWorld(4) // node 0 sends; 1 and 2 are NAT64 gateways; 3 one without
	g1, g2 := w.dhts[1].ID(), w.dhts[2].ID()
	w.rtts[g1], w.rtts[g2] = 10*time.Millisecond, 40*time.Millisecond
	nsp := netip.MustParsePrefix("2001:db8:64::/96")
	ann := func(i int, p netip.Prefix) {
		w.announce(t, i, Announcement{Name: "gw", Up: true, URIs: true, RTT: 10 * time.Millisecond, Probes: 10, NAT64: p})
	}
	ann(1, dns64.WellKnownPrefix)
	ann(2, dns64.WellKnownPrefix)
	w.announce(t, 3, Announcement{Name: "gw3", Up: true, URIs: true})
	g := w.dir(0)
	if _, ok := g.nat64Exit(netip.MustParseAddr("64:ff9b::c000:201")); ok {
		t.Fatal("an exit before any announcement was read")
	}
	if err := g.refresh(ctx); err != nil {
		t.Fatal(err)
	}
	g.probeAll(ctx)
	dst := dns64.Embed(dns64.WellKnownPrefix, netip.MustParseAddr("198.51.100.7"))
	for range 5 {
		if id, ok := g.nat64Exit(dst); !ok || id != g1 {
			t.Fatalf("exit = %v, %v; want the nearer g1 %v every time", id, ok, g1)
		}
	}
	if _, ok := g.nat64Exit(netip.MustParseAddr("2001:db8::1")); ok {
		t.Error("an exit for an address under no NAT64 prefix")
	}
	if p, ok := g.nat64Prefix(); !ok || p != dns64.WellKnownPrefix {
		t.Errorf("DNS64 prefix %v, %v", p, ok)
	}
	// The prefixes routed into the mesh (ipnet.go): one, offered twice.
	if ps := g.nat64Prefixes(maxExitRoutes); !slices.Equal(ps, []netip.Prefix{dns64.WellKnownPrefix}) {
		t.Errorf("routed prefixes %v, want only %v", ps, dns64.WellKnownPrefix)
	}
	nat64s := 0
	for _, gi := range g.list() {
		if gi.NAT64 == "64:ff9b::/96" && slices.Contains(gi.Offers, "nat64") {
			nat64s++
		}
	}
	if nat64s != 2 {
		t.Errorf("list shows %d NAT64 gateways: %+v", nat64s, g.list())
	}

	// g1 dies: it stops announcing and answering. Step the clock a
	// second at a time, g2 and gw3 announcing and node 0 refreshing and
	// probing every announceEvery as runGatewayDir does.
	w.lost[g1] = true
	died := w.now
	switched := time.Duration(-1)
	for w.now.Sub(died) < 2*announceLifetime {
		w.advance(time.Second)
		if w.now.Sub(died)%announceEvery == 0 {
			ann(2, dns64.WellKnownPrefix)
			w.announce(t, 3, Announcement{Name: "gw3", Up: true, URIs: true})
			g.refresh(ctx)
			g.probeAll(ctx)
		}
		id, ok := g.nat64Exit(dst)
		if !ok {
			t.Fatalf("no exit %v after g1 died", w.now.Sub(died))
		}
		if id == g2 && switched < 0 {
			switched = w.now.Sub(died)
		}
		if switched >= 0 && id != g2 {
			t.Fatalf("exit went back to %v", id)
		}
	}
	if switched < 0 || switched > announceLifetime {
		t.Fatalf("new flows moved to g2 after %v; want within %v", switched, announceLifetime)
	}
	t.Logf("NAT64 exit moved to the second gateway %v after the first died", switched)

	// g2 changes to a network-specific prefix: the Well-Known Prefix has
	// no exit any more, DNS64 synthesizes with g2's prefix.
	ann(2, nsp)
	w.advance(time.Second)
	g.refresh(ctx)
	if _, ok := g.nat64Exit(dst); ok {
		t.Error("an exit for a prefix nobody announces")
	}
	if id, ok := g.nat64Exit(dns64.Embed(nsp, netip.MustParseAddr("198.51.100.7"))); !ok || id != g2 {
		t.Errorf("exit for %v: %v, %v", nsp, id, ok)
	}
	if p, ok := g.nat64Prefix(); !ok || p != nsp {
		t.Errorf("DNS64 prefix %v, %v; want %v", p, ok, nsp)
	}
	if ps := g.nat64Prefixes(maxExitRoutes); !slices.Equal(ps, []netip.Prefix{nsp}) {
		t.Errorf("routed prefixes %v, want only %v (the Well-Known Prefix's route goes)", ps, nsp)
	}
	// The data plane finds g2 unreachable: no exit until it answers.
	g.failedExit(g2)
	if id, ok := g.nat64Exit(dns64.Embed(nsp, netip.MustParseAddr("198.51.100.7"))); ok {
		t.Errorf("failed exit still chosen: %v", id)
	}
	if p, ok := g.nat64Prefix(); ok {
		t.Errorf("DNS64 prefix %v with no usable NAT64 gateway", p)
	}
	if ps := g.nat64Prefixes(maxExitRoutes); len(ps) != 0 {
		t.Errorf("routed prefixes %v with no usable NAT64 gateway", ps)
	}
}

// TestNAT64ExitSticky: a flow's exit does not move to a gateway that
// rates only slightly better (within rSpread), but does to one clearly
// better.
func TestNAT64ExitSticky(t *testing.T) {
	ctx := context.Background()
	w := newGWWorld(3)
	g1, g2 := w.dhts[1].ID(), w.dhts[2].ID()
	w.rtts[g1], w.rtts[g2] = 10*time.Millisecond, 60*time.Millisecond
	for i := 1; i <= 2; i++ {
		w.announce(t, i, Announcement{Name: "gw", Up: true, URIs: true, Probes: 10, NAT64: dns64.WellKnownPrefix})
	}
	g := w.dir(0)
	g.refresh(ctx)
	g.probeAll(ctx)
	dst := netip.MustParseAddr("64:ff9b::c633:6407")
	if id, _ := g.nat64Exit(dst); id != g1 {
		t.Fatalf("exit %v, want g1", id)
	}
	// g2 becomes a little better: too little to move the flows.
	w.rtts[g1], w.rtts[g2] = 14*time.Millisecond, 12*time.Millisecond
	for range probeWindow {
		g.probeAll(ctx)
	}
	w.advance(exitRecheck)
	if id, _ := g.nat64Exit(dst); id != g1 {
		t.Fatalf("exit moved to %v for a difference no one notices", id)
	}
	// g1's uplink starts losing 10 %: g2 is clearly better.
	w.announce(t, 1, Announcement{Name: "gw", Up: true, URIs: true, Loss: 0.1, Probes: 10, NAT64: dns64.WellKnownPrefix})
	g.refresh(ctx)
	if id, _ := g.nat64Exit(dst); id != g2 {
		t.Fatalf("exit %v, want g2 once g1's uplink loses packets", id)
	}
}
