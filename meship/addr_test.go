package meship

import (
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/sipmesh/sipmesh/ssr"
)

func TestAddressing(t *testing.T) {
	id := ssr.NodeID(0x0123456789abcdef)
	for _, c := range []struct {
		got  any
		want string
	}{
		{MeshNet, "fdf0:4cb5:d384::/48"},
		{Space(id), "fdf0:4cb5:d384:1012:3456:789a:bcde:f000/116"},
		{LANPrefix(id), "fdf0:4cb5:d384:1012:3456:789a:bcde:f000/117"},
		{LANAddr(id), "fdf0:4cb5:d384:1012:3456:789a:bcde:f001"},
		{CLATPrefix(id), "fdf0:4cb5:d384:1012:3456:789a:bcde:f800/117"},
		{CLATAddr(id, netip.MustParseAddr("10.64.7.23")), "fdf0:4cb5:d384:1012:3456:789a:bcde:ff17"},
	} {
		if s := c.got.(interface{ String() string }).String(); s != c.want {
			t.Errorf("got %s, want %s", s, c.want)
		}
	}
	if ssr.MeshPrefix.String() != "fdf0:4cb5:d384::/64" || !MeshNet.Contains(id.Addr()) {
		t.Fatalf("MeshPrefix %v not the first /64 of MeshNet %v", ssr.MeshPrefix, MeshNet)
	}
}

// TestNodeOf: every address of a node's address and space names that
// node, on the netip and the raw path alike, and nothing else in or out of
// the mesh names one.
func TestNodeOf(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 1000 {
		id := ssr.NodeID(rng.Uint64())
		sp := Space(id)
		for _, a := range []netip.Addr{id.Addr(), sp.Addr(), LANAddr(id), CLATAddr(id, netip.AddrFrom4([4]byte{192, 168, 1, byte(rng.Uint32())})), lastAddr(sp)} {
			if !sp.Contains(a) && a != id.Addr() {
				t.Fatalf("%v outside %v", a, sp)
			}
			got, ok := NodeOf(a)
			b := a.As16()
			got16, ok16 := nodeOf16(b[:])
			if !ok || got != id || !ok16 || got16 != id || !inMesh(b[:]) {
				t.Fatalf("NodeOf(%v) = %v %v, raw %v %v; want %v", a, got, ok, got16, ok16, id)
			}
		}
		if LANPrefix(id).Overlaps(CLATPrefix(id)) || !sp.Contains(CLATPrefix(id).Addr()) {
			t.Fatalf("LAN %v and CLAT %v do not split %v", LANPrefix(id), CLATPrefix(id), sp)
		}
	}
	for _, s := range []string{"fdf0:4cb5:d384:1::1", "fdf0:4cb5:d384:2012:3456:789a:bcde:f001", "fdf0:4cb5:d385:1012:3456:789a:bcde:f001", "2001:db8::1", "64:ff9b::a00:1", "::ffff:10.0.0.1"} {
		a := netip.MustParseAddr(s)
		b := a.As16()
		if _, ok := NodeOf(a); ok {
			t.Errorf("NodeOf(%s) names a node", s)
		}
		if _, ok := nodeOf16(b[:]); ok {
			t.Errorf("nodeOf16(%s) names a node", s)
		}
		if inMesh(b[:]) != MeshNet.Contains(a) {
			t.Errorf("inMesh(%s) = %v", s, inMesh(b[:]))
		}
	}
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().As16()
	for i := p.Bits(); i < 128; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	return netip.AddrFrom16(b)
}

func TestCLATRoundTrip(t *testing.T) {
	id := ssr.NodeID(0xfedcba9876543210)
	lan := netip.MustParsePrefix("10.64.7.0/24")
	for h := range 256 {
		v4 := netip.AddrFrom4([4]byte{10, 64, 7, byte(h)})
		a := CLATAddr(id, v4)
		if !CLATPrefix(id).Contains(a) {
			t.Fatalf("%v not in %v", a, CLATPrefix(id))
		}
		back, ok := CLATv4(a, lan)
		if !ok || back != v4 {
			t.Fatalf("CLATv4(%v) = %v %v, want %v", a, back, ok, v4)
		}
	}
	if _, ok := CLATv4(LANAddr(id), lan); ok {
		t.Error("a LAN address maps to IPv4")
	}
	if _, ok := CLATv4(CLATAddr(id, netip.MustParseAddr("10.64.0.1")), netip.MustParsePrefix("10.64.0.0/16")); ok {
		t.Error("a /16 LAN maps (it has more hosts than a CLAT half)")
	}
	// A /21 maps all its 2048 hosts.
	lan21 := netip.MustParsePrefix("10.64.8.0/21")
	v4 := netip.MustParseAddr("10.64.15.254")
	if back, ok := CLATv4(CLATAddr(id, v4), lan21); !ok || back != v4 {
		t.Errorf("/21: %v %v", back, ok)
	}
}
