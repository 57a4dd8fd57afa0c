package ssr

import (
	"crypto/ed25519"
	"math/rand/v2"
	"net/netip"
	"testing"
)

func TestBetween(t *testing.T) {
	const top = ^NodeID(0)
	tests := []struct {
		a, x, b NodeID
		want    bool
	}{
		{10, 15, 20, true},
		{10, 20, 20, true},  // x == b: closed end
		{10, 10, 20, false}, // x == a: open end
		{10, 5, 20, false},
		{10, 25, 20, false},
		{10, 0, 20, false},
		// Wrap-around: (top-5, 5]
		{top - 5, top, 5, true},
		{top - 5, 0, 5, true},
		{top - 5, 5, 5, true},
		{top - 5, top - 5, 5, false},
		{top - 5, 6, 5, false},
		{top - 5, top - 6, 5, false},
		{top, 0, 0, true},
		{top, top, 0, false},
		// a == b: the whole ring but a.
		{7, 7, 7, false},
		{7, 8, 7, true},
		{7, 6, 7, true},
		{7, 0, 7, true},
		{7, top, 7, true},
		{0, 0, 0, false},
		{0, top, 0, true},
	}
	for _, tt := range tests {
		if got := Between(tt.a, tt.x, tt.b); got != tt.want {
			t.Errorf("Between(%v, %v, %v) = %v, want %v", tt.a, tt.x, tt.b, got, tt.want)
		}
	}
}

func TestCW(t *testing.T) {
	if cw(5, 7) != 2 || cw(7, 5) != ^uint64(0)-1 || cw(3, 3) != 0 || cw(^NodeID(0), 0) != 1 {
		t.Fatal("cw")
	}
}

func TestMeshPrefix(t *testing.T) {
	p := MeshPrefix
	if !p.IsValid() || p.Bits() != 64 || !p.Addr().Is6() || p != p.Masked() {
		t.Fatalf("MeshPrefix %v is not a masked IPv6 /64", p)
	}
	if !netip.MustParsePrefix("fd00::/8").Contains(p.Addr()) {
		t.Fatalf("MeshPrefix %v is not a ULA fd00::/8 (RFC 4193 locally assigned)", p)
	}
	// Fixed vector: fd ‖ SHA-256("sipmesh")[:5] ‖ subnet 0 (FORMAT.md).
	if want := netip.MustParsePrefix("fdf0:4cb5:d384::/64"); p != want {
		t.Fatalf("MeshPrefix = %v, want %v", p, want)
	}
}

func TestAddrRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	cases := []NodeID{0, 1, ^NodeID(0), 0x0123456789abcdef}
	for range 100 {
		cases = append(cases, NodeID(rng.Uint64()))
	}
	for _, id := range cases {
		a := id.Addr()
		if !MeshPrefix.Contains(a) {
			t.Fatalf("%v.Addr() = %v outside %v", id, a, MeshPrefix)
		}
		if b := a.As16(); b[8] != byte(id>>56) || b[15] != byte(id) {
			t.Fatalf("%v.Addr() = %v: ID is not the big-endian interface identifier", id, a)
		}
		got, ok := IDFromAddr(a)
		if !ok || got != id {
			t.Fatalf("IDFromAddr(%v) = %v, %v, want %v", a, got, ok, id)
		}
		got, ok = IDFromAddr(a.WithZone("eth0"))
		if !ok || got != id {
			t.Fatalf("IDFromAddr(%v%%eth0) = %v, %v", a, got, ok)
		}
	}
	if got := NodeID(0x0123456789abcdef).Addr(); got != netip.MustParseAddr("fdf0:4cb5:d384:0:123:4567:89ab:cdef") {
		t.Fatalf("Addr = %v", got)
	}
	for _, s := range []string{"fdf0:4cb5:d384:1::1", "fe80::1", "2001:db8::1", "10.0.0.1", "::ffff:10.0.0.1"} {
		if id, ok := IDFromAddr(netip.MustParseAddr(s)); ok {
			t.Errorf("IDFromAddr(%s) = %v, true; want false", s, id)
		}
	}
	if _, ok := IDFromAddr(netip.Addr{}); ok {
		t.Error("IDFromAddr(zero Addr) = true")
	}
}

func TestNodeIDString(t *testing.T) {
	for id, want := range map[NodeID]string{0: "0000000000000000", 1: "0000000000000001", 0xabc: "0000000000000abc", ^NodeID(0): "ffffffffffffffff"} {
		if got := id.String(); got != want {
			t.Errorf("%#x.String() = %q, want %q", uint64(id), got, want)
		}
		if back, err := ParseNodeID(id.String()); err != nil || back != id {
			t.Errorf("ParseNodeID(%q) = %v, %v", id.String(), back, err)
		}
	}
}

func TestParseNodeID(t *testing.T) {
	ok := []struct {
		s    string
		want NodeID
	}{
		{"0123456789abcdef", 0x0123456789abcdef},
		{"0123456789ABCDEF", 0x0123456789abcdef},
		{"ffffffffffffffff", ^NodeID(0)},
		{"0000000000000000", 0},
		{"fdf0:4cb5:d384:0:123:4567:89ab:cdef", 0x0123456789abcdef},
		{"fdf0:4cb5:d384::1", 1},
		{"fdf0:4cb5:d384::1%wlan0", 1},
	}
	for _, tt := range ok {
		if got, err := ParseNodeID(tt.s); err != nil || got != tt.want {
			t.Errorf("ParseNodeID(%q) = %v, %v; want %v", tt.s, got, err, tt.want)
		}
	}
	for _, s := range []string{
		"", "xyz", "0x0123456789abcdef", "10000000000000000", // 17 digits: overflow
		"-1", "+1", "01234567 89abcdef", "fe80::1", "2001:db8::1", "10.0.0.1", "fdf0:4cb5:d384:1::1",
	} {
		if id, err := ParseNodeID(s); err == nil {
			t.Errorf("ParseNodeID(%q) = %v, want an error", s, id)
		}
	}
}

func TestKeyID(t *testing.T) {
	// Fixed vectors: SHA-256(key)[:8], big-endian. They must never change:
	// keys stored in the DHT are found by them.
	for key, want := range map[string]NodeID{
		"sip:alice@example.org": 0xb0d74a551c17e665,
		"":                      0xe3b0c44298fc1c14,
	} {
		if got := KeyID([]byte(key)); got != want {
			t.Errorf("KeyID(%q) = %v, want %v", key, got, want)
		}
	}
}

func TestIDFromPublicKey(t *testing.T) {
	pub := make(ed25519.PublicKey, ed25519.PublicKeySize)
	for i := range pub {
		pub[i] = byte(i)
	}
	// SHA-256("sipmesh node id v1\x00" ‖ pub)[:8]
	if got, want := IDFromPublicKey(pub), NodeID(0x08a3376a2340e6be); got != want {
		t.Fatalf("IDFromPublicKey = %v, want %v", got, want)
	}
	if IDFromPublicKey(pub) == KeyID(pub) {
		t.Fatal("node IDs and key IDs of the same bytes must differ (domain separation)")
	}
}
