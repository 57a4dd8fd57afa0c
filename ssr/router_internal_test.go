package ssr

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/netx"
)

// This file measures the driver alone: a Router B whose two link sockets are
// fakes, between two bare Nodes A and C that the test drives by hand. A
// data frame from A to C is fed to B's socket again and again; B's reader,
// its queue, the Node and the write back out are the whole path.

// fakeLinkNet is a netx.Network of two interfaces, l0 (towards A) and l1
// (towards C), whose sockets are fakeConns.
type fakeLinkNet struct {
	uc   [2]*fakeConn // unicast sockets: frames from the peers, frames out
	mc   [2]*fakeConn // beacon sockets: stay silent (peers' beacons come on uc)
	out  chan fakeFrame
	bufs chan *[maxWireFrame]byte
}

type fakeFrame struct {
	link int
	to   netip.AddrPort
	buf  *[maxWireFrame]byte
	n    int
}

var bLocal = [2]netip.Addr{netip.MustParseAddr("fe80::b0"), netip.MustParseAddr("fe80::b1")}

func newFakeLinkNet(peers [2]netip.AddrPort) *fakeLinkNet {
	f := &fakeLinkNet{out: make(chan fakeFrame, 64), bufs: make(chan *[maxWireFrame]byte, 64)}
	for range cap(f.bufs) {
		f.bufs <- new([maxWireFrame]byte)
	}
	for i := range 2 {
		f.uc[i] = &fakeConn{net: f, link: i, from: peers[i], in: make(chan []byte, 16), closed: make(chan struct{})}
		f.mc[i] = &fakeConn{net: f, link: i, in: make(chan []byte), closed: make(chan struct{})}
	}
	return f
}

func (f *fakeLinkNet) Interfaces() ([]netx.Interface, error) {
	var out []netx.Interface
	for i, a := range bLocal {
		out = append(out, netx.Interface{Index: i + 1, Name: fmt.Sprintf("l%d", i), MTU: 9000, Up: true, Multicast: true,
			Addrs: []netip.Prefix{netip.PrefixFrom(a, 64)}})
	}
	return out, nil
}

func (f *fakeLinkNet) ListenPacket(_ context.Context, _, address string) (net.PacketConn, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, err
	}
	for i, a := range bLocal {
		if ap.Addr().WithZone("") == a {
			return f.uc[i], nil
		}
	}
	return nil, fmt.Errorf("fake: no address %s", address)
}

func (f *fakeLinkNet) ListenMulticast(_ context.Context, ifname string, _ netip.AddrPort) (net.PacketConn, error) {
	var i int
	if _, err := fmt.Sscanf(ifname, "l%d", &i); err != nil || i < 0 || i > 1 {
		return nil, fmt.Errorf("fake: no interface %s", ifname)
	}
	return f.mc[i], nil
}

func (f *fakeLinkNet) Listen(context.Context, string, string) (net.Listener, error) {
	return nil, errors.ErrUnsupported
}

func (f *fakeLinkNet) Dial(context.Context, string, string) (net.Conn, error) {
	return nil, errors.ErrUnsupported
}

// fakeConn hands out the frames queued on in, and passes writes to the
// network's out channel in pooled buffers (dropping when the test lags), so
// that it allocates nothing itself.
type fakeConn struct {
	net.PacketConn // unused methods
	net            *fakeLinkNet
	link           int
	from           netip.AddrPort
	in             chan []byte
	closed         chan struct{}
	once           sync.Once
}

func (c *fakeConn) ReadFromUDPAddrPort(b []byte) (int, netip.AddrPort, error) {
	select {
	case f := <-c.in:
		return copy(b, f), c.from, nil
	case <-c.closed:
		return 0, netip.AddrPort{}, net.ErrClosed
	}
}

func (c *fakeConn) WriteToUDPAddrPort(b []byte, to netip.AddrPort) (int, error) {
	select {
	case buf := <-c.net.bufs:
		n := copy(buf[:], b)
		select {
		case c.net.out <- fakeFrame{c.link, to, buf, n}:
		default:
			c.net.bufs <- buf
		}
	default:
	}
	return len(b), nil
}

func (c *fakeConn) LocalAddr() net.Addr {
	return &net.UDPAddr{IP: bLocal[c.link].AsSlice(), Port: DefaultPort, Zone: fmt.Sprintf("l%d", c.link)}
}

func (c *fakeConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

// peerEnv is the Env of a bare Node beside the router: its frames go to the
// router's socket of the given link.
type peerEnv struct {
	uc *fakeConn
}

func (e *peerEnv) SendFrame(_ LinkID, _ netip.AddrPort, frame []byte) {
	e.uc.in <- append([]byte(nil), frame...)
}

func (e *peerEnv) Deliver(Event) {}

type driverRig struct {
	r            *Router
	a, c         *Node
	authA, authC *LinkAuth // A's and C's link security: B talks to them sealed
	aEnv         *peerEnv
	net          *fakeLinkNet
	cancel       context.CancelFunc
	done         chan struct{}
	frame        []byte // a data frame from A to C, as A's Node sends it
	feed         feedEnv
	fromB        [2]netip.AddrPort // B's address as A and C see it
}

// feedEnv hands A's sealed frames to B's socket in a ring of reused
// buffers: a frame is read before the next but three is written, since
// forwardOne waits for each to come out.
type feedEnv struct {
	uc   *fakeConn
	bufs [4][]byte
	next int
}

func (e *feedEnv) SendFrame(_ LinkID, _ netip.AddrPort, frame []byte) {
	b := append(e.bufs[e.next][:0], frame...)
	e.bufs[e.next], e.next = b, (e.next+1)%len(e.bufs)
	e.uc.in <- b
}

func (e *feedEnv) Deliver(Event) {}

func keyFor(seed byte) ed25519.PrivateKey {
	s := make([]byte, ed25519.SeedSize)
	s[0] = seed
	return ed25519.NewKeyFromSeed(s)
}

// newDriverRig wires A – B(router) – C, waits until A has a route to C
// through B and captures A's data frame to C.
func newDriverRig(tb testing.TB) *driverRig {
	tb.Helper()
	// Neighbours never expire during a benchmark in which A and C are not
	// driven any more.
	p := Params{HelloInterval: 20 * time.Millisecond, NeighbourTimeout: time.Hour, RingInterval: 20 * time.Millisecond}
	peers := [2]netip.AddrPort{netip.MustParseAddrPort("[fe80::a%l0]:7447"), netip.MustParseAddrPort("[fe80::c%l1]:7447")}
	f := newFakeLinkNet(peers)
	r, err := NewRouter(RouterConfig{Network: f, Key: keyFor(2), Interfaces: []string{"l0", "l1"}, Params: p})
	if err != nil {
		tb.Fatal(err)
	}
	rig := &driverRig{r: r, net: f, done: make(chan struct{})}
	aEnv, cEnv := &peerEnv{f.uc[0]}, &peerEnv{f.uc[1]}
	rig.aEnv, rig.feed.uc = aEnv, f.uc[0]
	rig.authA = NewLinkAuth(AuthConfig{Key: keyFor(1)}, aEnv)
	rig.authC = NewLinkAuth(AuthConfig{Key: keyFor(3)}, cEnv)
	rig.a = New(rig.authA.ID(), p, rig.authA, 1)
	rig.c = New(rig.authC.ID(), p, rig.authC, 3)
	rig.authA.Attach(rig.a)
	rig.authC.Attach(rig.c)
	rig.a.AddLink(0)
	rig.c.AddLink(0)
	ctx, cancel := context.WithCancel(context.Background())
	rig.cancel = cancel
	go func() {
		defer close(rig.done)
		r.Run(ctx)
	}()
	tb.Cleanup(rig.stop)

	fromB := [2]netip.AddrPort{netip.AddrPortFrom(bLocal[0].WithZone("a0"), DefaultPort), netip.AddrPortFrom(bLocal[1].WithZone("c0"), DefaultPort)}
	rig.fromB = fromB
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.Now().Add(10 * time.Second)
	for len(rig.a.Route(rig.c.ID())) != 2 || !rig.bKnowsBoth() {
		select {
		case fr := <-f.out:
			peer := rig.authA
			if fr.link == 1 {
				peer = rig.authC
			}
			peer.HandleFrame(time.Now(), 0, fromB[fr.link], fr.buf[:fr.n])
			f.bufs <- fr.buf
		case <-tick.C:
			now := time.Now()
			rig.authA.Tick(now)
			rig.authC.Tick(now)
			if now.After(deadline) {
				tb.Fatalf("no route A→B→C after 10s: A's route %v; B %+v", rig.a.Route(rig.c.ID()), r.Status())
			}
		}
	}
	// Capture A's data frame to C before link security seals it.
	capture := &captureEnv{}
	rig.a.env = capture
	if err := rig.a.Send(time.Now(), rig.c.ID(), Exact, 1000, 2000, make([]byte, 64)); err != nil {
		tb.Fatal(err)
	}
	rig.a.env = rig.authA
	if capture.frame == nil {
		tb.Fatal("A sent no frame")
	}
	rig.frame = capture.frame
	return rig
}

type captureEnv struct{ frame []byte }

func (e *captureEnv) SendFrame(_ LinkID, _ netip.AddrPort, frame []byte) {
	e.frame = append([]byte(nil), frame...)
}
func (e *captureEnv) Deliver(Event) {}

func (rig *driverRig) bKnowsBoth() bool {
	st := rig.r.Status()
	return len(st.Neighbours) == 2
}

func (rig *driverRig) stop() {
	rig.cancel()
	<-rig.done
}

// forwardOne has A's link security seal the captured frame afresh (a
// replay would be refused), feeds it to B and waits for B to send it on to
// C, discarding B's own control traffic meanwhile.
func (rig *driverRig) forwardOne(tb testing.TB) {
	rig.authA.out = &rig.feed
	rig.authA.SetNow(time.Now())
	rig.authA.SendFrame(0, rig.a.nbrs[rig.r.ID()].addr, rig.frame)
	rig.authA.out = rig.aEnv
	for {
		fr := <-rig.net.out
		ok := fr.link == 1 && fr.n == len(rig.frame)+AuthOverhead
		if !ok && fr.n > 1 && fr.buf[1] >= typeHSInit && fr.buf[1] <= typeHSConfirm {
			// B renews its sessions every RekeyAfter: A and C answer, so
			// a long run does not outlive them (RejectAfter).
			peer := rig.authA
			if fr.link == 1 {
				peer = rig.authC
			}
			peer.HandleFrame(time.Now(), 0, rig.fromB[fr.link], fr.buf[:fr.n])
		}
		rig.net.bufs <- fr.buf
		if ok {
			return
		}
	}
}

// BenchmarkRouterForward is the driver's cost of relaying one frame: read
// from a link socket, queue, Node.HandleFrame, write to the next hop. The
// driver allocates nothing per frame; allocs/op includes the core's.
func BenchmarkRouterForward(b *testing.B) {
	rig := newDriverRig(b)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		rig.forwardOne(b)
	}
	b.StopTimer()
	if st := rig.r.Status(); st.Stats.Forwarded < uint64(b.N) {
		b.Fatalf("B forwarded %d frames, want at least %d", st.Stats.Forwarded, b.N)
	}
}

// TestRouterForwardAllocs holds the driver to its promise of no allocation
// per forwarded frame (the core's forwarding path makes the same promise).
func TestRouterForwardAllocs(t *testing.T) {
	if testing.Short() {
		t.Skip("measures allocations")
	}
	rig := newDriverRig(t)
	for range 100 { // warm the pools and caches
		rig.forwardOne(t)
	}
	if avg := testing.AllocsPerRun(1000, func() { rig.forwardOne(t) }); avg >= 0.5 {
		t.Errorf("%.2f allocations per forwarded frame, want 0", avg)
	}
}
