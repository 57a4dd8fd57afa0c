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
		{CLATNet, "fdca:654::/32"},
		{LANPrefix(id), "fdf0:4cb5:d384:1012:3456:789a:bcde:f000/116"},
		{LANAddr(id), "fdf0:4cb5:d384:1012:3456:789a:bcde:f001"},
		{CLATPrefix(id), "fdca:654:123:4567:89ab:cdef::/96"},
	} {
		if s := c.got.(interface{ String() string }).String(); s != c.want {
			t.Errorf("got %s, want %s", s, c.want)
		}
	}
	if ssr.MeshPrefix.String() != "fdf0:4cb5:d384::/64" || !MeshNet.Contains(id.Addr()) {
		t.Fatalf("MeshPrefix %v not the first /64 of MeshNet %v", ssr.MeshPrefix, MeshNet)
	}
}

// TestNodeOf: every address of a node's mesh address, LAN and CLAT prefix
// names that node, on the netip and the raw path alike, and nothing else
// in or out of the mesh names one.
func TestNodeOf(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 1000 {
		id := ssr.NodeID(rng.Uint64())
		lan, clat := LANPrefix(id), CLATPrefix(id)
		for _, a := range []netip.Addr{id.Addr(), lan.Addr(), LANAddr(id), lastAddr(lan), clat.Addr(), lastAddr(clat)} {
			got, ok := NodeOf(a)
			b := a.As16()
			got16, ok16 := nodeOf16(b[:])
			if !ok || got != id || !ok16 || got16 != id || !inMesh(b[:]) {
				t.Fatalf("NodeOf(%v) = %v %v, raw %v %v; want %v", a, got, ok, got16, ok16, id)
			}
		}
		if !CLATNet.Contains(clat.Addr()) || !MeshNet.Contains(lastAddr(lan)) {
			t.Fatalf("%v or %v outside the mesh's blocks", clat, lan)
		}
	}
	for _, s := range []string{"fdf0:4cb5:d384:1::1", "fdf0:4cb5:d384:2012:3456:789a:bcde:f001", "fdf0:4cb5:d385:1012:3456:789a:bcde:f001", "fdca:655::1", "2001:db8::1", "64:ff9b::a00:1", "::ffff:10.0.0.1"} {
		a := netip.MustParseAddr(s)
		b := a.As16()
		if _, ok := NodeOf(a); ok {
			t.Errorf("NodeOf(%s) names a node", s)
		}
		if _, ok := nodeOf16(b[:]); ok {
			t.Errorf("nodeOf16(%s) names a node", s)
		}
		if inMesh(b[:]) != (MeshNet.Contains(a) || CLATNet.Contains(a)) {
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
