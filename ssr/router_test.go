package ssr_test

import (
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/memnet"
	"github.com/sipmesh/sipmesh/netx"
	"github.com/sipmesh/sipmesh/ssr"
)

// fastParams make the protocol converge in a few (virtual) seconds.
var fastParams = ssr.Params{
	HelloInterval:    100 * time.Millisecond,
	NeighbourTimeout: 350 * time.Millisecond,
	RingInterval:     100 * time.Millisecond,
	RingIntervalMax:  400 * time.Millisecond,
	FingerInterval:   2 * time.Second,
	MaxTimeout:       2 * time.Second,
}

// testKey returns a deterministic key, so failures are reproducible.
func testKey(seed uint64) ed25519.PrivateKey {
	var s [ed25519.SeedSize]byte
	binary.BigEndian.PutUint64(s[:], seed)
	copy(s[8:], "sipmesh router test")
	return ed25519.NewKeyFromSeed(s[:])
}

// testLogger logs to the test when -v is given, else nowhere.
func testLogger(t *testing.T) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

// mesh is routers on a memnet topology, running until the test ends.
type mesh struct {
	t       *testing.T
	net     *memnet.Network
	routers []*ssr.Router
	links   map[[2]int]*memnet.Link
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	errs    []error
	mu      sync.Mutex
}

// newMesh builds n hosts joined by edges (each a point-to-point link with
// the given one-way delay) and starts a router on each. It must run inside
// a synctest bubble, which gives the whole network virtual time.
func newMesh(t *testing.T, n int, edges [][2]int, delay time.Duration) *mesh {
	t.Helper()
	return newMeshWith(t, n, edges, delay, fastParams)
}

// newMeshWith is newMesh with the given protocol parameters.
func newMeshWith(t *testing.T, n int, edges [][2]int, delay time.Duration, params ssr.Params) *mesh {
	t.Helper()
	m := &mesh{t: t, net: memnet.New(memnet.Config{Seed: 1}), links: make(map[[2]int]*memnet.Link)}
	hosts := make([]*memnet.Host, n)
	ifnames := make([][]string, n)
	for i := range hosts {
		hosts[i] = m.net.AddHost(fmt.Sprintf("n%d", i))
	}
	for _, e := range edges {
		a, b := e[0], e[1]
		ia := hosts[a].AddInterface(fmt.Sprintf("m%d", b), 1500)
		ib := hosts[b].AddInterface(fmt.Sprintf("m%d", a), 1500)
		ifnames[a] = append(ifnames[a], ia.Name())
		ifnames[b] = append(ifnames[b], ib.Name())
		m.links[e] = m.net.Connect(ia, ib, memnet.LinkConfig{Delay: delay})
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	for i, h := range hosts {
		r, err := ssr.NewRouter(ssr.RouterConfig{
			Network: h, Key: testKey(uint64(i + 1)), Interfaces: ifnames[i],
			Params: params, Logger: testLogger(t).With("host", h.Name()),
		})
		if err != nil {
			t.Fatal(err)
		}
		m.routers = append(m.routers, r)
		m.wg.Go(func() {
			if err := r.Run(ctx); err != nil {
				m.mu.Lock()
				m.errs = append(m.errs, err)
				m.mu.Unlock()
			}
		})
	}
	t.Cleanup(m.stop)
	return m
}

// stop cancels every router and waits for Run to return.
func (m *mesh) stop() {
	m.cancel()
	m.wg.Wait()
	for _, err := range m.errs {
		m.t.Errorf("Run: %v", err)
	}
}

// trueSuccessor is the next ID clockwise among all routers.
func (m *mesh) trueSuccessor(id ssr.NodeID) ssr.NodeID {
	ids := make([]ssr.NodeID, 0, len(m.routers))
	for _, r := range m.routers {
		ids = append(ids, r.ID())
	}
	slices.Sort(ids)
	i := slices.Index(ids, id)
	return ids[(i+1)%len(ids)]
}

// ringCorrect reports whether every router's first successor is its true
// successor, and describes the first that is not.
func (m *mesh) ringCorrect() (bool, string) {
	for _, r := range m.routers {
		st := r.Status()
		want := m.trueSuccessor(r.ID()).String()
		if len(st.Successors) == 0 || st.Successors[0].ID != want {
			var got []string
			for _, s := range st.Successors {
				got = append(got, s.ID)
			}
			return false, fmt.Sprintf("%s: successors %v, want %s first", r.ID(), got, want)
		}
	}
	return true, ""
}

// waitRing waits (in virtual time) until the ring is correct.
func (m *mesh) waitRing(limit time.Duration) time.Duration {
	m.t.Helper()
	start := time.Now()
	for {
		ok, why := m.ringCorrect()
		if ok {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			m.t.Fatalf("ring not formed after %v: %s", limit, why)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func line(n int) [][2]int {
	var e [][2]int
	for i := 0; i+1 < n; i++ {
		e = append(e, [2]int{i, i + 1})
	}
	return e
}

func TestRouterRingForms(t *testing.T) {
	tests := []struct {
		name  string
		n     int
		edges [][2]int
	}{
		{"line of 3", 3, line(3)},
		{"line of 5", 5, line(5)},
		{"line of 5 with a cross link", 5, append(line(5), [2]int{1, 3})},
		{"star of 4", 4, [][2]int{{0, 1}, {0, 2}, {0, 3}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			leakcheck.Check(t)
			synctest.Test(t, func(t *testing.T) {
				m := newMesh(t, tt.n, tt.edges, 2*time.Millisecond)
				took := m.waitRing(30 * time.Second)
				t.Logf("ring of %d formed after %v (virtual time)", tt.n, took)
				for _, r := range m.routers {
					st := r.Status()
					if !st.Running || st.ID != r.ID().String() || st.Addr != r.Addr().String() {
						t.Errorf("Status identity: %+v", st)
					}
					want := 0
					for _, e := range tt.edges {
						if m.routers[e[0]] == r || m.routers[e[1]] == r {
							want++
						}
					}
					if len(st.Neighbours) != want {
						t.Errorf("%s has %d neighbours, want %d: %+v", r.ID(), len(st.Neighbours), want, st.Neighbours)
					}
					for _, nb := range st.Neighbours {
						if nb.Quality <= 0 || nb.Quality > 1 || nb.Interface == "" {
							t.Errorf("%s: neighbour %+v: want quality in (0,1] and an interface", r.ID(), nb)
						}
					}
					for _, is := range st.Interfaces {
						if !is.Up || is.LinkLocal == "" {
							t.Errorf("%s: interface %+v not up", r.ID(), is)
						}
					}
					if _, err := json.Marshal(st); err != nil {
						t.Errorf("Status does not marshal: %v", err)
					}
				}
			})
		})
	}
}

func TestMeshSocketDatagram(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		m := newMesh(t, 3, line(3), 2*time.Millisecond)
		m.waitRing(30 * time.Second)
		a, c := m.routers[0], m.routers[2]

		ca, err := a.ListenPacket(0)
		if err != nil {
			t.Fatal(err)
		}
		defer ca.Close()
		cc, err := c.ListenPacket(5060)
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		la := ca.LocalAddr().(*net.UDPAddr)
		if p := la.Port; p < 49152 || p > 65535 {
			t.Errorf("ephemeral port %d outside the dynamic range", p)
		}
		if got, want := cc.LocalAddr().String(), "["+c.Addr().String()+"]:5060"; got != want {
			t.Errorf("LocalAddr %q, want %q", got, want)
		}
		if _, _, err := net.SplitHostPort(cc.LocalAddr().String()); err != nil {
			t.Errorf("LocalAddr is not host:port: %v", err)
		}

		if _, err := ca.WriteTo([]byte("INVITE"), cc.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 100)
		cc.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, from, err := cc.ReadFrom(buf)
		if err != nil {
			t.Fatal(err)
		}
		if string(buf[:n]) != "INVITE" || from.String() != la.String() {
			t.Errorf("got %q from %v, want \"INVITE\" from %v", buf[:n], from, la)
		}
		// Reply to the address the datagram came from, as a UDP server does.
		if _, err := cc.WriteTo([]byte("200 OK"), from); err != nil {
			t.Fatal(err)
		}
		ca.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, from, err = ca.ReadFrom(buf)
		if err != nil || string(buf[:n]) != "200 OK" || from.String() != cc.LocalAddr().String() {
			t.Errorf("reply: %q from %v, %v", buf[:n], from, err)
		}

		// SendTo with closest delivery reaches the node responsible for a key.
		if err := a.SendTo(c.ID(), ssr.Closest, 1, 5060, []byte("key")); err != nil {
			t.Fatal(err)
		}
		n, _, err = cc.ReadFrom(buf)
		if err != nil || string(buf[:n]) != "key" {
			t.Errorf("closest delivery: %q, %v", buf[:n], err)
		}
	})
}

func TestMeshSocketErrors(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		m := newMesh(t, 2, line(2), time.Millisecond)
		r := m.routers[0]
		c, err := r.ListenPacket(5060)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.ListenPacket(5060); !errors.Is(err, ssr.ErrPortInUse) {
			t.Errorf("second bind of 5060: %v, want ErrPortInUse", err)
		}
		_, err = c.WriteTo([]byte("x"), &net.UDPAddr{IP: net.ParseIP("2001:db8::1"), Port: 5060})
		if !errors.Is(err, ssr.ErrNotMesh) {
			t.Errorf("WriteTo a non-mesh address: %v, want ErrNotMesh", err)
		}
		if _, err := c.WriteTo(make([]byte, ssr.MaxFrame), &net.UDPAddr{IP: m.routers[1].Addr().AsSlice(), Port: 5060}); !errors.Is(err, ssr.ErrTooBig) {
			t.Errorf("WriteTo an oversized datagram: %v, want ErrTooBig", err)
		}

		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, _, err := c.ReadFrom(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("read past deadline: %v, want os.ErrDeadlineExceeded", err)
		}
		var ne net.Error
		if _, _, err := c.ReadFrom(make([]byte, 10)); !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("deadline error %v is not a net.Error with Timeout", err)
		}
		c.SetReadDeadline(time.Time{})

		// A deadline set while a read waits applies to that read.
		done := make(chan error)
		go func() {
			_, _, err := c.ReadFrom(make([]byte, 10))
			done <- err
		}()
		synctest.Wait()
		c.SetReadDeadline(time.Now().Add(time.Second))
		if err := <-done; !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("blocked read after SetReadDeadline: %v, want os.ErrDeadlineExceeded", err)
		}
		c.SetReadDeadline(time.Time{})

		go func() {
			_, _, err := c.ReadFrom(make([]byte, 10))
			done <- err
		}()
		synctest.Wait()
		c.Close()
		if err := <-done; !errors.Is(err, net.ErrClosed) {
			t.Errorf("blocked read after Close: %v, want net.ErrClosed", err)
		}
		if _, err := c.WriteTo([]byte("x"), &net.UDPAddr{IP: m.routers[1].Addr().AsSlice(), Port: 5060}); !errors.Is(err, net.ErrClosed) {
			t.Errorf("write after Close: %v, want net.ErrClosed", err)
		}
		// The port is free again.
		c2, err := r.ListenPacket(5060)
		if err != nil {
			t.Fatalf("rebind after Close: %v", err)
		}
		c2.Close()
	})
}

func TestMeshSocketNoListenerAndQueueFull(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		m := newMesh(t, 2, line(2), time.Millisecond)
		m.waitRing(30 * time.Second)
		a, b := m.routers[0], m.routers[1]
		dst := &net.UDPAddr{IP: b.Addr().AsSlice(), Port: 9}
		ca, err := a.ListenPacket(0)
		if err != nil {
			t.Fatal(err)
		}
		defer ca.Close()
		if _, err := ca.WriteTo([]byte("nobody"), dst); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		if got := b.Status().Driver.NoListener; got != 1 {
			t.Errorf("NoListener = %d, want 1", got)
		}

		cb, err := b.ListenPacket(9)
		if err != nil {
			t.Fatal(err)
		}
		defer cb.Close()
		const sent = 400 // more than a mesh socket queues
		for i := range sent {
			if _, err := ca.WriteTo([]byte{byte(i)}, dst); err != nil {
				t.Fatal(err)
			}
			if i%50 == 49 {
				// Pace the burst so the link sockets below keep up and the
				// mesh socket's own queue is what overflows.
				time.Sleep(20 * time.Millisecond)
			}
		}
		time.Sleep(time.Second)
		full := b.Status().Driver.SocketQueueFull
		read := 0
		cb.SetReadDeadline(time.Now().Add(time.Second))
		for {
			if _, _, err := cb.ReadFrom(make([]byte, 10)); err != nil {
				break
			}
			read++
		}
		if read != 256 || uint64(read)+full != sent {
			t.Errorf("read %d, dropped %d of %d: want 256 queued and the rest dropped", read, full, sent)
		}
	})
}

func TestPing(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		const delay = 5 * time.Millisecond
		m := newMesh(t, 4, line(4), delay)
		m.waitRing(30 * time.Second)
		a, d := m.routers[0], m.routers[3]
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		reply, rtt, err := a.Ping(ctx, d.ID())
		if err != nil {
			t.Fatal(err)
		}
		want := []ssr.NodeID{a.ID(), m.routers[1].ID(), m.routers[2].ID(), d.ID()}
		if !slices.Equal(reply.Route, want) || reply.Hops != 3 || reply.From != d.ID() {
			t.Errorf("reply %+v, want route %v with 3 hops from %s", reply, want, d.ID())
		}
		// Three hops each way; synctest time only moves with the link delay.
		if rtt != 6*delay {
			t.Errorf("rtt %v, want %v", rtt, 6*delay)
		}

		// Pinging oneself works too (the route is just this node).
		reply, _, err = a.Ping(ctx, a.ID())
		if err != nil || len(reply.Route) != 1 {
			t.Errorf("self ping: %+v, %v", reply, err)
		}
	})
}

func TestPingUnreachable(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		m := newMesh(t, 3, line(3), 2*time.Millisecond)
		m.waitRing(30 * time.Second)
		// An ID between two real nodes, which therefore does not exist.
		ids := []ssr.NodeID{m.routers[0].ID(), m.routers[1].ID(), m.routers[2].ID()}
		slices.Sort(ids)
		ghost := ids[0] + (ids[1]-ids[0])/2
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		start := time.Now()
		_, _, err := m.routers[0].Ping(ctx, ghost)
		if !errors.Is(err, ssr.ErrUnreachable) {
			t.Fatalf("ping of a missing node: %v, want ErrUnreachable", err)
		}
		if took := time.Since(start); took > time.Second {
			t.Errorf("unreachable reported after %v, want an answer, not a timeout", took)
		}
		t.Logf("ping %s: %v", ghost, err)

		// A ping whose context ends returns the context's error.
		cctx, ccancel := context.WithCancel(context.Background())
		ccancel()
		if _, _, err := m.routers[0].Ping(cctx, ids[1]); !errors.Is(err, context.Canceled) {
			t.Errorf("ping with a cancelled context: %v", err)
		}
	})
}

// TestReroute cuts the link that pings between the ends of a line with a
// cross link take, and checks that they find the other way round the cycle.
func TestReroute(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		edges := append(line(5), [2]int{1, 3})
		m := newMesh(t, 5, edges, 2*time.Millisecond)
		m.waitRing(30 * time.Second)
		a, e := m.routers[0], m.routers[4]
		ping := func() ([]ssr.NodeID, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			r, _, err := a.Ping(ctx, e.ID())
			return r.Route, err
		}
		route, err := ping()
		if err != nil {
			t.Fatal(err)
		}
		index := func(id ssr.NodeID) int {
			return slices.IndexFunc(m.routers, func(r *ssr.Router) bool { return r.ID() == id })
		}
		uses := func(route []ssr.NodeID, e [2]int) bool {
			for i := 0; i+1 < len(route); i++ {
				x, y := index(route[i]), index(route[i+1])
				if x == e[0] && y == e[1] || x == e[1] && y == e[0] {
					return true
				}
			}
			return false
		}
		// The first edge of the cycle 1–2–3 that the route takes.
		var cut [2]int
		for _, c := range [][2]int{{1, 3}, {1, 2}, {2, 3}} {
			if uses(route, c) {
				cut = c
				break
			}
		}
		if cut == ([2]int{}) {
			t.Fatalf("route %v crosses no edge of the cycle", route)
		}
		m.links[cut].SetDown(true)
		start := time.Now()
		for {
			route, err = ping()
			if err == nil {
				if uses(route, cut) {
					t.Fatalf("route %v uses the cut link %v", route, cut)
				}
				t.Logf("cut %v: rerouted after %v (virtual time): route %v", cut, time.Since(start), route)
				break
			}
			if time.Since(start) > 20*time.Second {
				t.Fatalf("no reroute 20s after cutting %v: %v", cut, err)
			}
		}
	})
}

func TestRunStops(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		m := newMesh(t, 2, line(2), time.Millisecond)
		m.waitRing(30 * time.Second)
		r := m.routers[0]
		c, err := r.ListenPacket(7)
		if err != nil {
			t.Fatal(err)
		}
		readErr := make(chan error)
		go func() {
			_, _, err := c.ReadFrom(make([]byte, 10))
			readErr <- err
		}()
		m.stop()
		if err := <-readErr; !errors.Is(err, net.ErrClosed) {
			t.Errorf("mesh socket read after Run returned: %v, want net.ErrClosed", err)
		}
		if err := r.SendTo(m.routers[1].ID(), ssr.Exact, 1, 2, nil); !errors.Is(err, ssr.ErrRouterClosed) {
			t.Errorf("SendTo after stop: %v, want ErrRouterClosed", err)
		}
		if _, _, err := r.Ping(context.Background(), m.routers[1].ID()); !errors.Is(err, ssr.ErrRouterClosed) {
			t.Errorf("Ping after stop: %v, want ErrRouterClosed", err)
		}
		if _, err := r.ListenPacket(8); !errors.Is(err, ssr.ErrRouterClosed) {
			t.Errorf("ListenPacket after stop: %v, want ErrRouterClosed", err)
		}
		if err := r.Run(context.Background()); err == nil {
			t.Error("second Run succeeded")
		}
		st := r.Status()
		if st.Running || len(st.Neighbours) != 1 {
			t.Errorf("Status after stop: running=%v neighbours=%d, want false and 1", st.Running, len(st.Neighbours))
		}
	})
}

// TestInterfaceLateAndMissing starts a router before its interface exists:
// it must keep retrying and come up when the interface appears.
func TestInterfaceLateAndMissing(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		n := memnet.New(memnet.Config{})
		ha, hb := n.AddHost("a"), n.AddHost("b")
		ib := hb.AddInterface("m0", 1500)
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		defer wg.Wait()
		defer cancel()
		var rs []*ssr.Router
		for i, h := range []*memnet.Host{ha, hb} {
			r, err := ssr.NewRouter(ssr.RouterConfig{Network: h, Key: testKey(uint64(10 + i)), Interfaces: []string{"m0"}, Params: fastParams})
			if err != nil {
				t.Fatal(err)
			}
			rs = append(rs, r)
			wg.Go(func() { r.Run(ctx) })
		}
		time.Sleep(3 * time.Second)
		if st := rs[0].Status(); st.Interfaces[0].Up || len(st.Neighbours) != 0 {
			t.Fatalf("interface up before it exists: %+v", st)
		}
		ia := ha.AddInterface("m0", 1500)
		n.Connect(ia, ib, memnet.LinkConfig{Delay: time.Millisecond})
		time.Sleep(3 * time.Second)
		if st := rs[0].Status(); !st.Interfaces[0].Up || len(st.Neighbours) != 1 {
			t.Errorf("after the interface appeared: %+v", st)
		}
	})
}

func TestNewRouterErrors(t *testing.T) {
	var nw netx.Network = memnet.New(memnet.Config{}).AddHost("h")
	tests := []struct {
		name string
		cfg  ssr.RouterConfig
		want string
	}{
		{"no network", ssr.RouterConfig{Key: testKey(1)}, "no Network"},
		{"no key", ssr.RouterConfig{Network: nw}, "key is 0 bytes"},
		{"bad group", ssr.RouterConfig{Network: nw, Key: testKey(1), Group: netip.MustParseAddr("fe80::1")}, "not an IPv6 multicast"},
		{"duplicate interface", ssr.RouterConfig{Network: nw, Key: testKey(1), Interfaces: []string{"a", "a"}}, "listed twice"},
		{"empty interface", ssr.RouterConfig{Network: nw, Key: testKey(1), Interfaces: []string{""}}, "no name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ssr.NewRouter(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("NewRouter: %v, want an error containing %q", err, tt.want)
			}
		})
	}
	r, err := ssr.NewRouter(ssr.RouterConfig{Network: nw, Key: testKey(1)})
	if err != nil {
		t.Fatal(err)
	}
	if r.ID() != ssr.IDFromPublicKey(testKey(1).Public().(ed25519.PublicKey)) || r.Addr() != r.ID().Addr() {
		t.Errorf("identity: %s %s", r.ID(), r.Addr())
	}
	if st := r.Status(); st.Running || st.ID != r.ID().String() {
		t.Errorf("Status before Run: %+v", st)
	}
}

// BenchmarkRouterMemnetPingPong is a mesh-socket round trip A→B→C→B→A
// between three routers on memnet (no link delay), without link security
// (plain), authenticated (auth, the default) and encrypted. allocs/op
// counts all three routers, the core and memnet; the driver's share on the
// forwarding path is zero (BenchmarkRouterForward, TestRouterForwardAllocs).
func BenchmarkRouterMemnetPingPong(b *testing.B) {
	for _, mode := range []string{"plain", "auth", "encrypt"} {
		b.Run(mode, func(b *testing.B) {
			routerMemnetPingPong(b, func(c ssr.RouterConfig) ssr.RouterConfig {
				switch mode {
				case "plain":
					return ssr.PlainRouterConfig(c)
				case "encrypt":
					c.Encrypt = true
				}
				return c
			})
		})
	}
}

func routerMemnetPingPong(b *testing.B, mode func(ssr.RouterConfig) ssr.RouterConfig) {
	n := memnet.New(memnet.Config{})
	var hosts []*memnet.Host
	var ifn [][]string
	for i := range 3 {
		hosts = append(hosts, n.AddHost(fmt.Sprintf("n%d", i)))
		ifn = append(ifn, nil)
	}
	for _, e := range line(3) {
		ia := hosts[e[0]].AddInterface(fmt.Sprintf("m%d", e[1]), 1500)
		ib := hosts[e[1]].AddInterface(fmt.Sprintf("m%d", e[0]), 1500)
		ifn[e[0]] = append(ifn[e[0]], ia.Name())
		ifn[e[1]] = append(ifn[e[1]], ib.Name())
		n.Connect(ia, ib, memnet.LinkConfig{})
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	var rs []*ssr.Router
	for i, h := range hosts {
		r, err := ssr.NewRouter(mode(ssr.RouterConfig{Network: h, Key: testKey(uint64(i + 1)), Interfaces: ifn[i], Params: fastParams}))
		if err != nil {
			b.Fatal(err)
		}
		rs = append(rs, r)
		wg.Go(func() { r.Run(ctx) })
	}
	benchPingPong(b, rs[0], rs[2])
}

// benchPingPong waits for a route from a to c, then bounces a 64-byte
// datagram between mesh sockets on them b.N times.
func benchPingPong(b *testing.B, a, c *ssr.Router) {
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		_, _, err := a.Ping(ctx, c.ID())
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("no route: %v", err)
		}
	}
	ca, err := a.ListenPacket(0)
	if err != nil {
		b.Fatal(err)
	}
	defer ca.Close()
	cc, err := c.ListenPacket(7)
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	echoDone := make(chan struct{})
	go func() {
		defer close(echoDone)
		buf := make([]byte, 100)
		for {
			n, from, err := cc.ReadFrom(buf)
			if err != nil {
				return
			}
			cc.WriteTo(buf[:n], from)
		}
	}()
	defer func() { cc.Close(); <-echoDone }()
	msg := make([]byte, 64)
	buf := make([]byte, 100)
	dst := cc.LocalAddr()
	b.ResetTimer()
	for b.Loop() {
		ca.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := ca.WriteTo(msg, dst); err != nil {
			b.Fatal(err)
		}
		// A lost datagram (a full queue under -race) times out; resend.
		if _, _, err := ca.ReadFrom(buf); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			b.Fatal(err)
		}
	}
}

// TestNotifyUnreachable: a mesh socket that asked to hear them gets the
// unreachable report of a datagram it sent to a node that does not
// exist; another socket's reports do not reach it, and nil stops them.
func TestNotifyUnreachable(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		m := newMesh(t, 3, line(3), 2*time.Millisecond)
		m.waitRing(30 * time.Second)
		ids := []ssr.NodeID{m.routers[0].ID(), m.routers[1].ID(), m.routers[2].ID()}
		slices.Sort(ids)
		ghost := ids[0] + (ids[1]-ids[0])/2
		r := m.routers[0]
		c, err := r.ListenPacket(41)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		other, err := r.ListenPacket(42)
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		got := make(chan ssr.Unreachable, 4)
		n, ok := c.(interface{ NotifyUnreachable(func(ssr.Unreachable)) })
		if !ok {
			t.Fatalf("mesh socket %T has no NotifyUnreachable", c)
		}
		n.NotifyUnreachable(func(u ssr.Unreachable) { got <- u })
		to := func(port int) *net.UDPAddr { return &net.UDPAddr{IP: ghost.Addr().AsSlice(), Port: port} }
		// From port 42 to port 42: port 41's socket hears nothing.
		if _, err := other.WriteTo([]byte("x"), to(42)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.WriteTo([]byte("x"), to(41)); err != nil {
			t.Fatal(err)
		}
		select {
		case u := <-got:
			if u.Target != ghost || u.DstPort != 41 || u.Mode != ssr.Exact {
				t.Fatalf("report %+v, want exact to %v port 41", u, ghost)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no unreachable report within 10 s")
		}
		time.Sleep(5 * time.Second)
		if len(got) != 0 {
			t.Fatalf("%d more reports: %+v", len(got), <-got)
		}
		n.NotifyUnreachable(nil)
		if _, err := c.WriteTo([]byte("x"), to(41)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Second)
		if len(got) != 0 {
			t.Fatalf("a report after NotifyUnreachable(nil): %+v", <-got)
		}
	})
}
