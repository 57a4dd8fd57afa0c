package meship

import (
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/memnet"
	"github.com/sipmesh/sipmesh/ssr"
)

// fakeTUN is a TUN in memory: the test plays the kernel.
type fakeTUN struct {
	in     chan []byte // routed into the TUN by "the kernel": the plane reads them
	out    chan []byte // written by the plane
	closed chan struct{}
	once   sync.Once
}

func newFakeTUN() *fakeTUN {
	return &fakeTUN{in: make(chan []byte, 64), out: make(chan []byte, 256), closed: make(chan struct{})}
}

func (f *fakeTUN) BatchSize() int { return 4 }

func (f *fakeTUN) Read(bufs [][]byte, sizes []int, off int) (int, error) {
	select {
	case p := <-f.in:
		sizes[0] = copy(bufs[0][off:], p)
	case <-f.closed:
		return 0, os.ErrClosed
	}
	n := 1
	for n < len(bufs) {
		select {
		case p := <-f.in:
			sizes[n] = copy(bufs[n][off:], p)
			n++
		default:
			return n, nil
		}
	}
	return n, nil
}

func (f *fakeTUN) Write(bufs [][]byte, off int) (int, error) {
	for i, b := range bufs {
		select {
		case f.out <- append([]byte(nil), b[off:]...):
		case <-f.closed:
			return i, os.ErrClosed
		}
	}
	return len(bufs), nil
}

func (f *fakeTUN) Close() error {
	f.once.Do(func() { close(f.closed) })
	return nil
}

// next waits (virtual time) for the plane's next write, failing after d.
func (f *fakeTUN) next(t *testing.T, d time.Duration) []byte {
	t.Helper()
	select {
	case p := <-f.out:
		return p
	case <-time.After(d):
		t.Fatalf("nothing written into the TUN within %v", d)
		return nil
	}
}

// quiet checks that the plane writes nothing within d.
func (f *fakeTUN) quiet(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case p := <-f.out:
		t.Fatalf("unexpected packet written into the TUN: % x", p[:min(len(p), 48)])
	case <-time.After(d):
	}
}

var fastParams = ssr.Params{
	HelloInterval:    100 * time.Millisecond,
	NeighbourTimeout: 350 * time.Millisecond,
	RingInterval:     100 * time.Millisecond,
	RingIntervalMax:  400 * time.Millisecond,
	FingerInterval:   2 * time.Second,
	MaxTimeout:       2 * time.Second,
}

func testKey(seed uint64) ed25519.PrivateKey {
	var s [ed25519.SeedSize]byte
	binary.BigEndian.PutUint64(s[:], seed)
	copy(s[8:], "sipmesh meship test")
	return ed25519.NewKeyFromSeed(s[:])
}

// testMesh is n routers in a line on memnet, each with a plane on a fake
// TUN, running until the test ends. It must run in a synctest bubble.
type testMesh struct {
	routers []*ssr.Router
	planes  []*Plane
	tuns    []*fakeTUN
	errs    chan error
}

func newTestMesh(t testing.TB, n int, cfg func(i int, c *Config)) *testMesh {
	return newTestMeshDelay(t, n, time.Millisecond, cfg)
}

// newTestMeshDelay is newTestMesh with links of the given one-way delay.
func newTestMeshDelay(t testing.TB, n int, delay time.Duration, cfg func(i int, c *Config)) *testMesh {
	t.Helper()
	nw := memnet.New(memnet.Config{Seed: 1})
	hosts := make([]*memnet.Host, n)
	ifs := make([][]string, n)
	for i := range hosts {
		hosts[i] = nw.AddHost(fmt.Sprintf("n%d", i))
	}
	for i := 0; i+1 < n; i++ {
		a := hosts[i].AddInterface(fmt.Sprintf("m%d", i+1), 1500)
		b := hosts[i+1].AddInterface(fmt.Sprintf("m%d", i), 1500)
		ifs[i] = append(ifs[i], a.Name())
		ifs[i+1] = append(ifs[i+1], b.Name())
		nw.Connect(a, b, memnet.LinkConfig{Delay: delay})
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &testMesh{errs: make(chan error, 2*n)}
	var wg sync.WaitGroup
	for i, h := range hosts {
		r, err := ssr.NewRouter(ssr.RouterConfig{Network: h, Key: testKey(uint64(i + 1)), Interfaces: ifs[i], Params: fastParams})
		if err != nil {
			t.Fatal(err)
		}
		m.routers = append(m.routers, r)
		wg.Go(func() {
			if err := r.Run(ctx); err != nil {
				m.errs <- err
			}
		})
	}
	for i, r := range m.routers {
		tun := newFakeTUN()
		c := Config{Mesh: r, TUN: tun, MTU: MTUFor(1500)}
		if cfg != nil {
			cfg(i, &c)
		}
		p, err := New(c)
		if err != nil {
			t.Fatal(err)
		}
		m.planes = append(m.planes, p)
		m.tuns = append(m.tuns, tun)
		wg.Go(func() {
			if err := p.Run(ctx); err != nil {
				m.errs <- err
			}
		})
	}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		close(m.errs)
		for err := range m.errs {
			t.Errorf("Run: %v", err)
		}
	})
	// Wait until every node reaches every other: the ring has formed.
	for _, a := range m.routers {
		for _, b := range m.routers {
			if a == b {
				continue
			}
			for {
				pctx, pcancel := context.WithTimeout(ctx, time.Second)
				_, _, err := a.Ping(pctx, b.ID())
				pcancel()
				if err == nil {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
	return m
}

func run(t *testing.T, f func(t *testing.T)) {
	leakcheck.Check(t)
	synctest.Test(t, f)
}

// TestCarries: a packet from a LAN host of node 0 to one of node 2 comes
// out of node 2's TUN unchanged, and the answer comes back; the source
// check drops a packet whose source is another node's.
func TestCarries(t *testing.T) {
	run(t, func(t *testing.T) {
		m := newTestMesh(t, 3, nil)
		a, c := m.routers[0].ID(), m.routers[2].ID()
		hostA := LANAddr(a).Next()
		hostC := LANAddr(c).Next()
		for _, size := range []int{0, 100, m.planes[0].cfg.MTU - ipv6Len} {
			p := testPacket(hostA, hostC, 17, size)
			m.tuns[0].in <- p
			if got := m.tuns[2].next(t, 5*time.Second); string(got) != string(p) {
				t.Fatalf("size %d: node 2 got % x…", size, got[:min(len(got), 48)])
			}
			r := testPacket(hostC, hostA, 17, size)
			m.tuns[2].in <- r
			if got := m.tuns[0].next(t, 5*time.Second); string(got) != string(r) {
				t.Fatalf("size %d: answer: % x…", size, got[:min(len(got), 48)])
			}
		}
		// To a node's mesh address as well.
		p := testPacket(hostA, c.Addr(), 58, 8)
		m.tuns[0].in <- p
		if got := m.tuns[2].next(t, 5*time.Second); string(got) != string(p) {
			t.Fatal("to the mesh address: not delivered")
		}
		// Node 1 sends a packet in node 0's name: it leaves node 1 not at
		// all (egress filter) ...
		m.tuns[1].in <- testPacket(hostA, hostC, 17, 10)
		m.tuns[2].quiet(t, time.Second)
		if s := m.planes[1].Stats(); s.Spoofed != 1 {
			t.Errorf("node 1: %+v, want 1 spoofed", s)
		}
		// ... and a hand-made one through its mesh socket is dropped at
		// node 2 (ingress: ssr authenticated node 1 as the sender).
		pc, err := m.routers[1].ListenPacket(Port + 1)
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		sock := pc.(meshSocket)
		if _, err := sock.WriteToUDPAddrPort(testPacket(hostA, hostC, 17, 10), netip.AddrPortFrom(c.Addr(), Port)); err != nil {
			t.Fatal(err)
		}
		m.tuns[2].quiet(t, time.Second)
		if s := m.planes[2].Stats(); s.Spoofed != 1 {
			t.Errorf("node 2: %+v, want 1 spoofed", s)
		}
	})
}

// TestTooBig: a packet over the MTU is answered with a Packet Too Big
// carrying the MTU (RFC 4443 §3.2), never dropped silently.
func TestTooBig(t *testing.T) {
	run(t, func(t *testing.T) {
		m := newTestMesh(t, 2, func(i int, c *Config) {
			if i == 1 {
				c.MTU = MinMTU // node 1's TUN is smaller than node 0's
			}
		})
		a, b := m.routers[0].ID(), m.routers[1].ID()
		hostA, hostB := LANAddr(a).Next(), LANAddr(b).Next()
		mtu := m.planes[0].cfg.MTU
		big := testPacket(hostA, hostB, 17, mtu+1-ipv6Len)
		m.tuns[0].in <- big
		e := m.tuns[0].next(t, time.Second)
		checkICMPError(t, e, icmpTooBig)
		if got := binary.BigEndian.Uint32(e[44:]); got != uint32(mtu) {
			t.Fatalf("MTU %d in the error, want %d", got, mtu)
		}
		// Fits node 0, not node 1: node 1 answers across the mesh (RFC
		// 8201 §4) with its MTU.
		mid := testPacket(hostA, hostB, 17, MinMTU+10-ipv6Len)
		m.tuns[0].in <- mid
		e = m.tuns[0].next(t, 5*time.Second)
		checkICMPError(t, e, icmpTooBig)
		if got := binary.BigEndian.Uint32(e[44:]); got != MinMTU {
			t.Fatalf("MTU %d in node 1's error, want %d", got, MinMTU)
		}
		if src := netip.AddrFrom16([16]byte(e[8:24])); src != b.Addr() {
			t.Fatalf("error from %v, want node 1 %v", src, b.Addr())
		}
		m.tuns[1].quiet(t, time.Second)
	})
}

// TestUnreachable: a packet to the space of a node that does not exist,
// and one with no exit, are answered with Destination Unreachable.
func TestUnreachable(t *testing.T) {
	run(t, func(t *testing.T) {
		m := newTestMesh(t, 3, nil)
		hostA := LANAddr(m.routers[0].ID()).Next()
		ghost := ssr.NodeID(0x5555555555555555)
		p := testPacket(hostA, LANAddr(ghost).Next(), 6, 40)
		m.tuns[0].in <- p
		e := m.tuns[0].next(t, 10*time.Second)
		checkICMPError(t, e, icmpDestUnreach)
		if e[ipv6Len+1] != codeAddrUnreach || string(e[48:]) != string(p) {
			t.Fatalf("code %d, quote % x", e[ipv6Len+1], e[48:])
		}
		// Outside the mesh with no exit: no route, at once.
		m.tuns[0].in <- testPacket(hostA, netip.MustParseAddr("2001:db8::1"), 17, 8)
		e = m.tuns[0].next(t, time.Second)
		checkICMPError(t, e, icmpDestUnreach)
		if e[ipv6Len+1] != codeNoRoute {
			t.Fatalf("code %d, want no route", e[ipv6Len+1])
		}
		// The TUN's own router solicitation: not carried, not answered.
		m.tuns[0].in <- testPacket(netip.MustParseAddr("fe80::1"), netip.MustParseAddr("ff02::2"), protoICMPv6, 8)
		m.tuns[0].quiet(t, time.Second)
		// Nor a redirect from a link-local address.
		m.tuns[0].in <- testPacket(netip.MustParseAddr("fe80::1"), hostA, protoICMPv6, 8)
		m.tuns[0].quiet(t, time.Second)
		if s := m.planes[0].Stats(); s.LinkScope != 2 || s.NoRoute != 1 || s.Unreachable != 1 {
			t.Errorf("node 0: %+v, want 2 link scope, 1 no route, 1 unreachable", s)
		}
	})
}

// TestExit: packets outside the mesh go to the exit the hook names, which
// writes them into its TUN; its answers from outside the mesh are taken
// from that exit only.
func TestExit(t *testing.T) {
	run(t, func(t *testing.T) {
		nat64 := netip.MustParsePrefix("64:ff9b::/96")
		var exitID ssr.NodeID
		failed := make(chan ssr.NodeID, 4)
		m := newTestMesh(t, 3, func(i int, c *Config) {
			c.Exit = func(dst netip.Addr) (ssr.NodeID, bool) {
				return exitID, nat64.Contains(dst) && exitID != 0
			}
			if i == 2 {
				c.ExitFor = nat64.Contains
			}
			if i == 0 {
				c.ExitFailed = func(id ssr.NodeID) {
					select {
					case failed <- id:
					default:
					}
				}
			}
		})
		exitID = m.routers[2].ID()
		hostA := LANAddr(m.routers[0].ID()).Next()
		out := testPacket(hostA, netip.MustParseAddr("64:ff9b::a00:1"), 17, 20)
		m.tuns[0].in <- out
		if got := m.tuns[2].next(t, 5*time.Second); string(got) != string(out) {
			t.Fatal("exit did not get the packet")
		}
		back := testPacket(netip.MustParseAddr("64:ff9b::a00:1"), hostA, 17, 20)
		m.tuns[2].in <- back
		if got := m.tuns[0].next(t, 5*time.Second); string(got) != string(back) {
			t.Fatal("answer from the exit not delivered")
		}
		// Node 1 is not the exit: the same answer from it is spoofed.
		m.tuns[1].in <- back
		m.tuns[0].quiet(t, time.Second)
		if s := m.planes[0].Stats(); s.Spoofed != 1 {
			t.Errorf("node 0: %+v, want 1 spoofed", s)
		}
		// Node 1 is no exit for what it is sent either.
		exitID = m.routers[1].ID()
		m.tuns[0].in <- out
		m.tuns[1].quiet(t, time.Second)
		if s := m.planes[1].Stats(); s.NotOurs != 1 {
			t.Errorf("node 1: %+v, want 1 not ours", s)
		}
		// An exit the mesh cannot reach: the sender gets Destination
		// Unreachable and the exit choice hears of it (ExitFailed).
		ghost := ssr.NodeID(0x5555555555555555)
		exitID = ghost
		m.tuns[0].in <- out
		checkICMPError(t, m.tuns[0].next(t, 10*time.Second), icmpDestUnreach)
		select {
		case id := <-failed:
			if id != ghost {
				t.Errorf("ExitFailed(%v), want %v", id, ghost)
			}
		default:
			t.Error("ExitFailed not called for an unreachable exit")
		}
	})
}
