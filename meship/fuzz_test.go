package meship

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"

	"github.com/sipmesh/sipmesh/ssr"
)

// The seed corpora are fuzzSeeds, added with f.Add and committed under
// testdata/fuzz/<FuzzName>/.

const (
	fuzzSelf  = ssr.NodeID(0x0123456789abcdef)
	fuzzPeer  = ssr.NodeID(0xfedcba9876543210)
	fuzzExit  = ssr.NodeID(0x1111111111111111)
	fuzzMTU   = 1400
	fuzzNAT64 = "64:ff9b::/96"
)

// fuzzSeeds are packets a TUN or a peer might hand over: well-formed ones
// of every kind the plane tells apart, and broken ones.
func fuzzSeeds() map[string][]byte {
	self, peer := LANAddr(fuzzSelf).Next(), LANAddr(fuzzPeer).Next()
	v4 := netip.MustParseAddr("64:ff9b::a00:1")
	withOpts := testPacket(self, peer, 60, 24)
	withOpts[ipv6Len], withOpts[ipv6Len+1] = 17, 0
	frag := testPacket(self, peer, 44, 16)
	frag[ipv6Len], frag[ipv6Len+3] = protoICMPv6, 8
	icmpErr := testPacket(peer, self, protoICMPv6, 48)
	icmpErr[ipv6Len] = icmpDestUnreach
	return map[string][]byte{
		"self-to-peer":      testPacket(self, peer, 17, 20),
		"peer-to-self":      testPacket(peer, self, 6, 40),
		"peer-mesh-to-self": testPacket(fuzzPeer.Addr(), fuzzSelf.Addr(), protoICMPv6, 8),
		"to-exit":           testPacket(self, v4, 17, 8),
		"from-exit":         testPacket(v4, self, 17, 8),
		"too-big":           testPacket(self, peer, 17, fuzzMTU),
		"reserved":          testPacket(self, netip.MustParseAddr("fdf0:4cb5:d384:2000::1"), 17, 8),
		"options":           withOpts,
		"fragment":          frag,
		"icmp-error":        icmpErr,
		"short-length":      testPacket(self, peer, 17, 20)[:50],
		"ipv4":              {0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2},
	}
}

// fuzzConn is a mesh socket that records what the plane sends.
type fuzzConn struct {
	mu   sync.Mutex
	sent [][]byte
	to   []netip.AddrPort
}

func (c *fuzzConn) ReadFromUDPAddrPort([]byte) (int, netip.AddrPort, error) {
	return 0, netip.AddrPort{}, net.ErrClosed
}

func (c *fuzzConn) WriteToUDPAddrPort(b []byte, to netip.AddrPort) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sent = append(c.sent, append([]byte(nil), b...))
	c.to = append(c.to, to)
	return len(b), nil
}

func (c *fuzzConn) Close() error { return nil }

type fuzzMesh struct{}

func (fuzzMesh) ID() ssr.NodeID { return fuzzSelf }
func (fuzzMesh) ListenPacket(uint16) (net.PacketConn, error) {
	return nil, errors.New("not in the fuzz test")
}

func fuzzPlane(t testing.TB) (*Plane, *fuzzConn, *fakeTUN) {
	nat64 := netip.MustParsePrefix(fuzzNAT64)
	tun := newFakeTUN()
	p, err := New(Config{Mesh: fuzzMesh{}, TUN: tun, MTU: fuzzMTU,
		Exit:    func(dst netip.Addr) (ssr.NodeID, bool) { return fuzzExit, nat64.Contains(dst) },
		ExitFor: func(dst netip.Addr) bool { return nat64.Contains(dst) },
	})
	if err != nil {
		t.Fatal(err)
	}
	c := &fuzzConn{}
	p.conn = c
	return p, c, tun
}

// drain checks what the plane wrote into the TUN: ICMPv6 errors only,
// well-formed.
func drainErrors(t *testing.T, tun *fakeTUN) {
	for {
		select {
		case e := <-tun.out:
			if len(e) < ipv6Len+1 || e[ipv6Len] >= 128 {
				t.Fatalf("the plane wrote a non-error into the TUN: % x", e)
			}
			checkICMPError(t, e, e[ipv6Len])
		default:
			return
		}
	}
}

// FuzzOutbound: packets the TUN hands over. Whatever the bytes, the plane
// sends to the mesh only whole IPv6 packets of at most the MTU, from this
// node's addresses or outside the mesh, to the node their destination
// names (or the exit), and answers the rest with well-formed ICMPv6
// errors or nothing.
func FuzzOutbound(f *testing.F) {
	for _, b := range fuzzSeeds() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, c, tun := fuzzPlane(t)
		errBuf := make([]byte, tunOffset+MinMTU)
		in := append([]byte(nil), b...)
		p.outbound(in, errBuf)
		drainErrors(t, tun)
		for i, s := range c.sent {
			n := packetLen(s)
			if n != len(s) || n > fuzzMTU || string(s) != string(b[:n]) {
				t.Fatalf("sent %d bytes, not the packet", len(s))
			}
			if id, ok := nodeOf16(s[8:24]); inMesh(s[8:24]) && (!ok || id != fuzzSelf) {
				t.Fatal("sent a packet with another node's source")
			}
			want, ok := nodeOf16(s[24:40])
			if !ok {
				want = fuzzExit
			}
			if c.to[i] != netip.AddrPortFrom(want.Addr(), Port) {
				t.Fatalf("sent to %v, want node %v", c.to[i], want)
			}
		}
	})
}

// FuzzInbound: packets a peer sends. Only a whole IPv6 packet from the
// sender's space (or the exit's, from outside the mesh) to this node's
// space (or a destination it is an exit for) is written into the TUN.
func FuzzInbound(f *testing.F) {
	for _, b := range fuzzSeeds() {
		f.Add(b, false)
		f.Add(b, true)
	}
	f.Fuzz(func(t *testing.T, b []byte, fromExit bool) {
		p, c, _ := fuzzPlane(t)
		from := fuzzPeer
		if fromExit {
			from = fuzzExit
		}
		errBuf := make([]byte, tunOffset+MinMTU)
		ok := p.inbound(b, netip.AddrPortFrom(from.Addr(), Port), errBuf)
		for _, e := range c.sent {
			checkICMPError(t, e, icmpTooBig)
		}
		if !ok {
			return
		}
		if packetLen(b) != len(b) || len(b) > fuzzMTU {
			t.Fatalf("accepted %d bytes that are not one packet within the MTU", len(b))
		}
		src, dst := b[8:24], b[24:40]
		if id, isNode := nodeOf16(src); inMesh(src) && (!isNode || id != from) {
			t.Fatal("accepted another node's source")
		}
		if !inMesh(src) && from != fuzzExit {
			t.Fatal("accepted an outside source from a node that is not the exit")
		}
		if id, isNode := nodeOf16(dst); inMesh(dst) && (!isNode || id != fuzzSelf) {
			t.Fatal("accepted a packet for another node")
		}
	})
}

// nullConn is a mesh socket that takes every packet and keeps none.
type nullConn struct{ fuzzConn }

func (*nullConn) WriteToUDPAddrPort(b []byte, _ netip.AddrPort) (int, error) { return len(b), nil }

// TestNoAllocs: carrying a packet allocates nothing in the plane, either
// way (the mesh socket's copy is ssr's, from a pool).
func TestNoAllocs(t *testing.T) {
	p, _, _ := fuzzPlane(t)
	p.conn = &nullConn{}
	self, peer := LANAddr(fuzzSelf).Next(), LANAddr(fuzzPeer).Next()
	out := testPacket(self, peer, 17, 1000)
	toExit := testPacket(self, netip.MustParseAddr("64:ff9b::a00:1"), 17, 1000)
	in := testPacket(peer, self, 17, 1000)
	errBuf := make([]byte, tunOffset+MinMTU)
	from := netip.AddrPortFrom(fuzzPeer.Addr(), Port)
	if n := testing.AllocsPerRun(100, func() {
		p.outbound(out, errBuf)
		p.outbound(toExit, errBuf)
		if !p.inbound(in, from, errBuf) {
			t.Fatal("inbound refused")
		}
	}); n != 0 {
		t.Errorf("%v allocations per packet", n)
	}
	if s := p.Stats(); s.ToMesh == 0 || s.SendErrors != 0 {
		t.Fatalf("%+v", s)
	}
}
