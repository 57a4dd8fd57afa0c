package ssr

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

// tnet is a tiny world for Node scenarios: every node has one radio link
// (LinkID 0), a frame reaches the nodes in range 1 ms after it is sent, and
// frames and timers run in time order on a virtual clock.
type tnet struct {
	now   time.Time
	nodes []*tnode
	links map[[2]int]bool
	q     []tframe // in time order: every frame takes the same 1 ms
	drop  func() bool
	// tap sees every frame a node transmits (a capture on the air);
	// mangle may change a frame before it is received.
	tap    func(from int, to netip.AddrPort, b []byte)
	mangle func(f *tframe)
	// maxHops is the most physical hops any routed frame was sent with
	// (its hop count after this transmission); sent counts transmissions.
	maxHops, sent int
}

type tnode struct {
	*Node
	w      *tnet
	i      int
	addr   netip.AddrPort
	up     bool
	events []Event
	// auth, when set, is the node's link security: the Node's Env, and
	// what frames and timers pass through first.
	auth *LinkAuth
}

func (n *tnode) recv(now time.Time, from netip.AddrPort, b []byte) {
	if n.auth != nil {
		n.auth.HandleFrame(now, 0, from, b)
		return
	}
	n.HandleFrame(now, 0, from, b)
}

func (n *tnode) tick(now time.Time) {
	if n.auth != nil {
		n.auth.Tick(now)
		return
	}
	n.Tick(now)
}

type tframe struct {
	at       time.Time
	from, to int
	b        []byte
}

var t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

func newTNet(ids []NodeID, p Params) *tnet {
	w := &tnet{now: t0, links: map[[2]int]bool{}}
	for i, id := range ids {
		n := &tnode{w: w, i: i, up: true, addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 7447)}
		n.Node = New(id, p, n, uint64(i)+1)
		n.AddLink(0)
		w.nodes = append(w.nodes, n)
	}
	return w
}

func (w *tnet) connect(i, j int, on bool) {
	w.links[[2]int{min(i, j), max(i, j)}] = on
}

func (w *tnet) line() *tnet {
	for i := 1; i < len(w.nodes); i++ {
		w.connect(i-1, i, true)
	}
	return w
}

func (n *tnode) SendFrame(_ LinkID, to netip.AddrPort, b []byte) {
	n.w.sent++
	if n.w.tap != nil {
		n.w.tap(n.i, to, b)
	}
	if len(b) >= routedHdr && b[1] == typeRouted {
		n.w.maxHops = max(n.w.maxHops, int(b[13])+1)
	}
	for _, o := range n.w.nodes {
		if o != n && n.w.links[[2]int{min(n.i, o.i), max(n.i, o.i)}] && (!to.IsValid() || to == o.addr) {
			n.w.q = append(n.w.q, tframe{n.w.now.Add(time.Millisecond), n.i, o.i, bytes.Clone(b)})
		}
	}
}

func (n *tnode) Deliver(ev Event) { n.events = append(n.events, ev) }

// run advances the virtual clock by d, delivering frames and firing timers.
func (w *tnet) run(d time.Duration) {
	end := w.now.Add(d)
	for {
		at, tick := end, (*tnode)(nil)
		if len(w.q) > 0 && !w.q[0].at.After(at) {
			at = w.q[0].at
		}
		for _, n := range w.nodes {
			if dl := n.NextDeadline(); n.up && dl.Before(at) {
				at, tick = dl, n
			}
		}
		if at.After(w.now) {
			w.now = at
		}
		switch {
		case tick != nil:
			tick.tick(w.now)
		case len(w.q) > 0 && !w.q[0].at.After(end):
			f := w.q[0]
			w.q = w.q[1:]
			if to := w.nodes[f.to]; to.up && w.nodes[f.from].up && w.links[[2]int{min(f.from, f.to), max(f.from, f.to)}] && (w.drop == nil || !w.drop()) {
				if w.mangle != nil {
					w.mangle(&f)
				}
				to.recv(w.now, w.nodes[f.from].addr, f.b)
			}
		default:
			return
		}
	}
}

// takeEvents returns and clears the events delivered at node i.
func (w *tnet) takeEvents(i int) []Event {
	ev := w.nodes[i].events
	w.nodes[i].events = nil
	return ev
}

// responsible is the node owning key among the live nodes: the largest ID
// ≤ key, wrapping to the largest ID.
func (w *tnet) responsible(key NodeID) int {
	best := -1
	for i, n := range w.nodes {
		if n.up && (best < 0 || cw(n.ID(), key) < cw(w.nodes[best].ID(), key)) {
			best = i
		}
	}
	return best
}

// ringErrors lists the live nodes whose successor or predecessor is wrong.
func (w *tnet) ringErrors() []string {
	var live []NodeID
	for _, n := range w.nodes {
		if n.up {
			live = append(live, n.ID())
		}
	}
	slices.Sort(live)
	var errs []string
	for k, id := range live {
		n := w.nodes[slices.IndexFunc(w.nodes, func(n *tnode) bool { return n.ID() == id })]
		succ, pred := live[(k+1)%len(live)], live[(k+len(live)-1)%len(live)]
		s, ok := n.Successor()
		p := n.Predecessors()
		if !ok || s != succ || len(p) == 0 || p[0] != pred {
			errs = append(errs, fmt.Sprintf("%v: successor %v (want %v), predecessors %v (want %v first)", id, s, succ, p, pred))
		}
	}
	return errs
}

// knownBug fails a test that reproduces a reported core bug, saying so.
func knownBug(t testing.TB, format string, args ...any) {
	t.Helper()
	t.Fatalf("BUG: "+format, args...)
}

// lineIDs are five IDs whose ring order differs from their order on the line.
var lineIDs = []NodeID{0x5000000000000000, 0x1000000000000000, 0xd000000000000000, 0x3000000000000000, 0x9000000000000000}

func randomIDs(rng *rand.Rand, n int) []NodeID {
	ids := make([]NodeID, n)
	for i := range ids {
		ids[i] = NodeID(rng.Uint64())
	}
	return ids
}

func TestNodeTwoNeighbours(t *testing.T) {
	a, b := NodeID(0x1111), NodeID(0xeeee)
	w := newTNet([]NodeID{a, b}, Params{}).line()
	w.run(5 * time.Second)
	for i, other := range []NodeID{b, a} {
		n := w.nodes[i]
		nb := n.Neighbours()
		if len(nb) != 1 || nb[0].ID != other || nb[0].Addr != w.nodes[1-i].addr || nb[0].Quality <= 0 {
			t.Fatalf("%v: neighbours %+v", n.ID(), nb)
		}
		if s, ok := n.Successor(); !ok || s != other {
			t.Fatalf("%v: successor %v, %v", n.ID(), s, ok)
		}
		if p := n.Predecessors(); !slices.Equal(p, []NodeID{other}) {
			t.Fatalf("%v: predecessors %v", n.ID(), p)
		}
		if r := n.Route(other); !slices.Equal(r, []NodeID{other}) {
			t.Fatalf("%v: route %v", n.ID(), r)
		}
		if st := n.Stats(); st.Malformed != 0 || st.FramesIn == 0 {
			t.Fatalf("%v: stats %+v", n.ID(), st)
		}
	}
}

func TestNodeLineRing(t *testing.T) {
	sets := [][]NodeID{lineIDs}
	rng := rand.New(rand.NewPCG(7, 7))
	for range 10 {
		sets = append(sets, randomIDs(rng, 5))
	}
	for _, ids := range sets {
		w := newTNet(ids, Params{}).line()
		w.run(60 * time.Second)
		if errs := w.ringErrors(); len(errs) > 0 {
			t.Errorf("line %v: ring not consistent after 60 s:\n%v", ids, errs)
		}
		top := slices.Max(ids)
		for _, n := range w.nodes {
			if n.maxID != top {
				t.Errorf("line %v: %v believes the global maximum is %v", ids, n.ID(), n.maxID)
			}
			// A finger is the node responsible for self + ring/2^(i+1).
			for i, f := range n.Fingers() {
				if want := w.nodes[w.responsible(n.ID()+NodeID(uint64(1)<<(63-i)))].ID(); f != 0 && f != want {
					t.Errorf("line %v: %v finger %d is %v, want %v", ids, n.ID(), i, f, want)
				}
			}
		}
	}
}

// TestNodePartitionsMerge: two lines that formed separate rings join into
// one when a link appears between them (the global maximum heals it).
func TestNodePartitionsMerge(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 9))
	for range 5 {
		w := newTNet(randomIDs(rng, 10), Params{})
		for i := 1; i < 10; i++ {
			w.connect(i-1, i, i != 5)
		}
		w.run(60 * time.Second)
		w.connect(rng.IntN(5), 5+rng.IntN(5), true)
		w.run(30 * time.Second)
		if errs := w.ringErrors(); len(errs) > 0 {
			t.Errorf("30 s after the partitions joined:\n%v", strings.Join(errs, "\n"))
		}
	}
}

// converged is the 5-node line after 60 s, ring checked.
func converged(t *testing.T) *tnet {
	t.Helper()
	w := newTNet(lineIDs, Params{}).line()
	w.run(60 * time.Second)
	if errs := w.ringErrors(); len(errs) > 0 {
		t.Fatalf("ring not consistent: %v", errs)
	}
	for i := range w.nodes {
		w.takeEvents(i)
	}
	return w
}

func wantDatagram(t *testing.T, w *tnet, at int, want Datagram) {
	t.Helper()
	for i := range w.nodes {
		ev := w.takeEvents(i)
		if i != at {
			if len(ev) > 0 {
				t.Errorf("node %d (%v) got %+v", i, w.nodes[i].ID(), ev)
			}
			continue
		}
		if len(ev) != 1 {
			t.Fatalf("node %d (%v) got %d events %+v, want one datagram", i, w.nodes[i].ID(), len(ev), ev)
		}
		d, ok := ev[0].(Datagram)
		if !ok {
			t.Fatalf("node %d got %#v, want a Datagram", i, ev[0])
		}
		if want.Hops == 0 {
			d.Hops = 0
		}
		if d.Src != want.Src || d.Target != want.Target || d.Mode != want.Mode || d.SrcPort != want.SrcPort ||
			d.DstPort != want.DstPort || !bytes.Equal(d.Payload, want.Payload) || d.Hops != want.Hops {
			t.Fatalf("node %d got %+v\nwant %+v", i, d, want)
		}
	}
}

func TestNodeSendExact(t *testing.T) {
	w := converged(t)
	for _, c := range [][2]int{{0, 4}, {4, 0}, {1, 3}, {2, 2}} {
		src, dst := w.nodes[c[0]], w.nodes[c[1]]
		payload := []byte(fmt.Sprintf("hello %d→%d", c[0], c[1]))
		if err := src.Send(w.now, dst.ID(), Exact, 5060, 5061, payload); err != nil {
			t.Fatal(err)
		}
		w.run(time.Second)
		hops := c[1] - c[0]
		wantDatagram(t, w, c[1], Datagram{Src: src.ID(), Target: dst.ID(), Mode: Exact, SrcPort: 5060, DstPort: 5061, Payload: payload, Hops: max(hops, -hops)})
	}
	if err := w.nodes[0].Send(w.now, w.nodes[4].ID(), Exact, 1, 2, make([]byte, MaxFrame)); err == nil {
		t.Fatal("Send of MaxFrame bytes: no error")
	}
}

func TestNodeSendUnreachable(t *testing.T) {
	w := converged(t)
	ghost := lineIDs[0] + 12345 // between 0x50… and its successor 0x90…
	for _, src := range []int{0, 4} {
		w.nodes[src].Send(w.now, ghost, Exact, 7, 8, []byte("x"))
		w.nodes[src].Ping(w.now, ghost, 99)
		w.run(time.Second)
		ev := w.takeEvents(src)
		if len(ev) != 2 {
			t.Fatalf("sender %d: events %+v, want two Unreachable", src, ev)
		}
		u0, ok0 := ev[0].(Unreachable)
		u1, ok1 := ev[1].(Unreachable)
		if !ok0 || !ok1 || u0.Target != ghost || u0.DstPort != 8 || u0.Mode != Exact || u0.PingID != 0 ||
			u1.Target != ghost || u1.PingID != 99 || u0.At != lineIDs[0] || u1.At != lineIDs[0] ||
			u0.Reason != "no such node" || u1.Reason != "no such node" {
			t.Fatalf("sender %d: events %+v", src, ev)
		}
		for i := range w.nodes {
			if ev := w.takeEvents(i); len(ev) > 0 {
				t.Fatalf("node %d got %+v", i, ev)
			}
		}
	}
}

func TestNodePing(t *testing.T) {
	w := converged(t)
	sent := w.now
	w.nodes[0].Ping(w.now, w.nodes[4].ID(), 42)
	w.run(time.Second)
	ev := w.takeEvents(0)
	if len(ev) != 1 {
		t.Fatalf("events %+v, want one PingReply", ev)
	}
	r, ok := ev[0].(PingReply)
	if !ok || r.ID != 42 || r.From != lineIDs[4] || !r.Sent.Equal(sent) {
		t.Fatalf("got %+v", ev[0])
	}
	if !slices.Equal(r.Route, lineIDs) || r.Hops != 4 {
		t.Fatalf("route %v hops %d, want the line %v", r.Route, r.Hops, lineIDs)
	}
	// To self: answered locally.
	w.nodes[2].Ping(w.now, w.nodes[2].ID(), 7)
	if ev := w.takeEvents(2); len(ev) != 1 || ev[0].(PingReply).ID != 7 || !slices.Equal(ev[0].(PingReply).Route, lineIDs[2:3]) {
		t.Fatalf("ping self: %+v", ev)
	}
}

func TestNodeSendClosest(t *testing.T) {
	w := converged(t)
	rng := rand.New(rand.NewPCG(3, 4))
	keys := []NodeID{0, ^NodeID(0), lineIDs[1] - 1, lineIDs[1], lineIDs[2], lineIDs[2] + 1}
	for range 40 {
		keys = append(keys, NodeID(rng.Uint64()))
	}
	for k, key := range keys {
		src := rng.IntN(5)
		if err := w.nodes[src].Send(w.now, key, Closest, uint16(k), 9, []byte{byte(k)}); err != nil {
			t.Fatal(err)
		}
		w.run(time.Second)
		wantDatagram(t, w, w.responsible(key), Datagram{Src: lineIDs[src], Target: key, Mode: Closest, SrcPort: uint16(k), DstPort: 9, Payload: []byte{byte(k)}})
	}
}

func TestNodeRecoverAfterRemoval(t *testing.T) {
	w := converged(t)
	// The middle node dies; its neighbours get a direct link.
	w.nodes[2].up = false
	w.connect(1, 2, false)
	w.connect(2, 3, false)
	w.connect(1, 3, true)
	w.run(20 * time.Second)
	if errs := w.ringErrors(); len(errs) > 0 {
		t.Errorf("ring not repaired 20 s after the removal:\n%v", errs)
	}
	for i := range w.nodes {
		w.takeEvents(i)
	}
	for _, c := range [][2]int{{0, 4}, {4, 0}, {3, 1}, {0, 3}} {
		src, dst := w.nodes[c[0]], w.nodes[c[1]]
		src.Send(w.now, dst.ID(), Exact, 1, 2, []byte("after"))
		w.run(time.Second)
		wantDatagram(t, w, c[1], Datagram{Src: src.ID(), Target: dst.ID(), Mode: Exact, SrcPort: 1, DstPort: 2, Payload: []byte("after")})
	}
	// The dead node is unreachable, reported to the sender.
	w.nodes[0].Send(w.now, lineIDs[2], Exact, 1, 2, nil)
	w.run(time.Second)
	if ev := w.takeEvents(0); len(ev) != 1 {
		t.Fatalf("send to the dead node: %+v", ev)
	} else if u, ok := ev[0].(Unreachable); !ok || u.Target != lineIDs[2] {
		t.Fatalf("send to the dead node: %+v", ev)
	}
}

// TestNodeRepairInFlight sends every 500 ms from the moment the middle node
// dies and its neighbours get a direct link. Without link-layer acks a
// datagram handed to the dead node before the bypass is known is lost;
// once the bypass is up (a beacon exchange, ~1 s) every one arrives.
func TestNodeRepairInFlight(t *testing.T) {
	w := converged(t)
	w.nodes[2].up = false
	w.connect(1, 2, false)
	w.connect(2, 3, false)
	w.connect(1, 3, true)
	for k := range 20 {
		w.nodes[0].Send(w.now, lineIDs[4], Exact, 1, uint16(k), nil)
		w.run(500 * time.Millisecond)
		got, rep := w.takeEvents(4), w.takeEvents(0)
		if k >= 4 && (len(got) != 1 || len(rep) != 0) {
			t.Fatalf("datagram %d, %v after the failure: delivered %+v, reported %+v", k, time.Duration(k)*500*time.Millisecond, got, rep)
		}
	}
}

// TestNodeClosestStaleDecision: a node that makes a routing decision with a
// stale cached route must not bounce the frame until the virtual hop budget
// runs out. Line S–B–C–D–E with G hanging off B; D (0x40…) caches G
// (0x43…) via C, B. G dies; once B has timed it out, but before D's ring
// maintenance has noticed, closest datagrams for key 0x52… (D is
// responsible) are sent from S. Each must be delivered at D.
func TestNodeClosestStaleDecision(t *testing.T) {
	const (
		S, B, C, D = NodeID(0xf000000000000000), NodeID(0xb000000000000000), NodeID(0x9000000000000000), NodeID(0x4000000000000000)
		E, G, key  = NodeID(0x6000000000000000), NodeID(0x4300000000000000), NodeID(0x5200000000000000)
	)
	w := newTNet([]NodeID{S, B, C, D, E, G}, Params{}).line()
	w.connect(4, 5, false)
	w.connect(1, 5, true)
	w.run(60 * time.Second)
	if r := w.nodes[3].Route(G); !slices.Equal(r, []NodeID{C, B, G}) {
		t.Fatalf("setup: D's route to G %v", r)
	}
	w.nodes[5].up = false
	w.run(5 * time.Second) // B has timed G out (3.5 s, checked at its beacons)
	var delivered, unreachable, silent int
	var bad []Unreachable
	lb0 := w.nodes[1].Stats().LinkBroken
	for k := range 40 { // 10 s, from 5 s after G died
		w.nodes[0].Send(w.now, key, Closest, 1, uint16(k), nil)
		w.run(250 * time.Millisecond)
		atS, atD := w.takeEvents(0), w.takeEvents(3)
		switch {
		case len(atD) == 1 && len(atS) == 0:
			delivered++
		case len(atS) > 0:
			unreachable++
			for _, ev := range atS {
				if u, ok := ev.(Unreachable); ok {
					bad = append(bad, u)
				}
			}
		default:
			silent++
		}
	}
	lb := w.nodes[1].Stats().LinkBroken - lb0
	if silent > 0 {
		t.Errorf("%d of 40 datagrams vanished", silent)
	}
	if unreachable > 0 {
		knownBug(t, "closest datagrams loop S→B→C→D→C→B (link broken)→C→D… until the 64 virtual hops are spent: %d of 40 were reported unreachable instead of delivered at D (%d delivered); B sent %d link-broken reports, all to S, none reach D, whose stale route C,B,G is the cause (route shortening cut D out of the reverse path). The reports also say Mode %v, Reason %q for a closest send: %+v",
			unreachable, delivered, lb, bad[0].Mode, bad[0].Reason, bad[0])
	}
}

// TestNodeDeadNodeForgotten: once a node is dead, the others must forget
// it for good. Ten nodes in a physical cycle with a chord; one dies.
func TestNodeDeadNodeForgotten(t *testing.T) {
	var report []string
	for seed := range 5 {
		rng := rand.New(rand.NewPCG(uint64(seed), 5))
		w := newTNet(randomIDs(rng, 10), Params{})
		for i := range 10 {
			w.connect(i, (i+1)%10, true)
		}
		w.connect(0, 5, true)
		w.run(60 * time.Second)
		if errs := w.ringErrors(); len(errs) > 0 {
			t.Fatalf("seed %d: ring not consistent before the failure: %v", seed, errs)
		}
		w.nodes[3].up = false
		dead := w.nodes[3].ID()
		w.run(90 * time.Second) // three tombstone lifetimes
		var holders []NodeID
		wrong := 0
		for range 120 {
			w.run(time.Second)
			for i, n := range w.nodes {
				if i != 3 && (slices.Contains(n.Successors(), dead) || slices.Contains(n.Predecessors(), dead)) && !slices.Contains(holders, n.ID()) {
					holders = append(holders, n.ID())
				}
			}
			if len(w.ringErrors()) > 0 {
				wrong++
			}
		}
		if len(holders) > 0 || wrong > 0 {
			report = append(report, fmt.Sprintf("seed %d: 90-210 s after %v died, %d nodes still list it as successor/predecessor and the ring was wrong in %d of 120 one-second samples", seed, dead, len(holders), wrong))
		}
	}
	if len(report) > 0 {
		knownBug(t, "dead nodes are never forgotten: nodes that hold a dead node deeper in their successor/predecessor lists never probe it but keep advertising it (with its stale route) in notify views, so the nodes that probe it re-learn it each time their 30 s tombstone expires:\n%s", strings.Join(report, "\n"))
	}
}

// TestNodeRouteAccessorKeepsLRU: Route is an accessor; looking at a route
// must not make it the first to be evicted.
func TestNodeRouteAccessorKeepsLRU(t *testing.T) {
	env := &fenv{}
	n := New(fzX, Params{CacheSize: 8, SuccessorList: 1, Fingers: -1}, env, 1)
	n.AddLink(0)
	n.AddLink(1)
	n.Tick(t0)
	feedNeighbours(n, t0, 1) // A, B, M
	learn := func(at time.Time, ys ...NodeID) {
		for _, y := range ys {
			n.learn([]NodeID{fzA, y}, at, false)
		}
	}
	t1 := t0.Add(time.Second)
	learn(t1, 0x12, 0x13, 0x14, 0x15)
	// 0x11 is learned last: the next eviction must take older entries.
	learn(t1.Add(time.Second/2), 0x11)
	if n.CacheLen() != 8 {
		t.Fatalf("setup: %d cached", n.CacheLen())
	}
	if r := n.Route(0x11); !slices.Equal(r, []NodeID{fzA, 0x11}) {
		t.Fatalf("Route(0x11) = %v", r)
	}
	learn(t1.Add(time.Second), 0x16)
	if !n.cache.has(0x11) {
		knownBug(t, "Node.Route passes the zero time to cache.route, which stamps every node on the route as used at the zero time: looking at a route makes it the first evicted (0x11 went, while 0x12…0x15, learned earlier, stayed: %v)", n.cache.sorted)
	}
}

func TestNodeRemoveLink(t *testing.T) {
	n, _ := newFuzzNode(t)
	n.RemoveLink(1) // B's link: B and the route through it to M go
	if nb := n.Neighbours(); len(nb) != 1 || nb[0].ID != fzA {
		t.Fatalf("neighbours %+v", nb)
	}
	if n.cache.has(fzB) || n.cache.has(fzM) || !n.cache.has(fzA) {
		t.Fatalf("cache %v", n.cache.sorted)
	}
}

func TestNodeMalformedCounted(t *testing.T) {
	n, env := newFuzzNode(t)
	now := t0.Add(time.Second)
	good := rframe(protoData, 0, fzX, 1, []NodeID{fzA, fzX}, []byte{0, 1, 0, 2})
	for i, b := range [][]byte{
		nil, {1}, {2, 1}, {1, 9}, good[:20], // header, truncated route
		rframe(protoData, 0, fzX, 1, []NodeID{fzA, fzX}, []byte{0, 1, 0}), // payload too short at delivery
		rframe(protoEcho, 0, fzX, 1, []NodeID{fzA, fzX}, make([]byte, 11)),
	} {
		before := n.Stats().Malformed
		n.HandleFrame(now, 0, fzAddrA, b)
		if got := n.Stats().Malformed; got != before+1 {
			t.Errorf("frame %d (% x): Malformed %d → %d", i, b, before, got)
		}
	}
	before := n.Stats()
	n.HandleFrame(now, 0, fzAddrA, good)
	if st := n.Stats(); st.Malformed != before.Malformed || st.Delivered != before.Delivered+1 || st.FramesIn != before.FramesIn+1 {
		t.Fatalf("good frame: stats %+v → %+v", before, st)
	}
	if len(env.events) != 1 {
		t.Fatalf("events %+v", env.events)
	}
	// Not for this node (position names another): dropped, not malformed.
	n.HandleFrame(now, 0, fzAddrA, rframe(protoData, 0, fzB, 1, []NodeID{fzA, fzB}, []byte{0, 1, 0, 2}))
	if st := n.Stats(); st.Dropped != before.Dropped+1 || st.Malformed != before.Malformed {
		t.Fatalf("frame for another node: stats %+v", st)
	}
}

func TestNodeSendSizeLimit(t *testing.T) {
	n, env := newFuzzNode(t)
	limit := MaxFrame - routedHdr - 8*maxRoute - 4 // 14324 with the default MaxHops
	if err := n.Send(t0, fzB, Exact, 1, 2, make([]byte, limit)); err != nil {
		t.Fatalf("%d bytes: %v", limit, err)
	}
	if len(env.frames) != 1 || len(env.frames[0].b) > MaxFrame {
		t.Fatalf("frames %d, size %d", len(env.frames), len(env.frames[0].b))
	}
	if err := n.Send(t0, fzB, Exact, 1, 2, make([]byte, limit+1)); !errors.Is(err, ErrTooBig) {
		t.Fatalf("%d bytes: %v, want ErrTooBig", limit+1, err)
	}
}

// TestNodeLossyRing: with 10 % of frames lost on every link, an 8-node line
// keeps a consistent ring (sampled every second from 60 s to 180 s) in at
// least 99 % of the samples. A notify and its reply over a 7-hop path with
// 10 % loss per link get through only ~23 % of the time; silent ring
// neighbours are re-notified at round-trip pace (RingProbes times) before
// silence alone declares them gone, so a live one answers one of them.
func TestNodeLossyRing(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	samples, wrong, tombed := 0, 0, 0
	for range 5 {
		w := newTNet(randomIDs(rng, 8), Params{}).line()
		w.drop = func() bool { return rng.IntN(10) == 0 }
		w.run(60 * time.Second)
		for range 120 {
			w.run(time.Second)
			samples++
			if errs := w.ringErrors(); len(errs) > 0 {
				wrong++
			}
			for _, n := range w.nodes {
				for _, o := range w.nodes {
					if _, dead := n.tomb[o.ID()]; dead {
						tombed++
					}
				}
			}
		}
	}
	t.Logf("10 %% frame loss per link: ring wrong in %d of %d samples, live nodes tombstoned %d node·seconds", wrong, samples, tombed)
	if wrong*100 > samples {
		t.Errorf("with 10 %% frame loss per link the ring was wrong in %d of %d samples (more than 1 %%; live nodes tombstoned: %d node·seconds)", wrong, samples, tombed)
	}
}

// TestNodeRelayImproves: a relay revises the rest of a frame's route with
// what it knows first-hand — a node virtually closer to a closest frame's key
// than the planned end, or a shorter route to that end — but not with stale
// knowledge, and not a frame already re-routed around a broken link.
func TestNodeRelayImproves(t *testing.T) {
	const (
		X   = NodeID(0x1000000000000000) // the relay
		S   = NodeID(0xf000000000000000) // the source, X's neighbour
		A   = NodeID(0x2000000000000000) // planned path X→A→B→C→E
		B   = NodeID(0x3000000000000000)
		C   = NodeID(0x4000000000000000)
		E   = NodeID(0x5000000000000000)
		N   = NodeID(0x7000000000000000) // X's other neighbour
		R   = NodeID(0x8000000000000000) // behind N: responsible for key
		key = NodeID(0x8800000000000000)
	)
	planned := []NodeID{S, X, A, B, C, E}
	cases := []struct {
		name     string
		target   NodeID
		flags    uint8
		learn    []NodeID // X's route to learn, first-hand unless stale
		stale    bool
		want     []NodeID
		vhops    uint8
		counters [2]uint64 // Redirected, Shortened
	}{
		{"closer node", key, flagClosest, []NodeID{N, R}, false, []NodeID{S, X, N, R}, 2, [2]uint64{1, 0}},
		{"closer node, stale", key, flagClosest, []NodeID{N, R}, true, planned, 1, [2]uint64{}},
		{"closer node, repaired frame", key, flagClosest | flagRepaired, []NodeID{N, R}, false, planned, 1, [2]uint64{}},
		{"shorter route", E, 0, []NodeID{N, E}, false, []NodeID{S, X, N, E}, 1, [2]uint64{0, 1}},
		{"shorter route, stale", E, 0, []NodeID{N, E}, true, planned, 1, [2]uint64{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env := &fenv{}
			n := New(X, Params{}, env, 1)
			n.AddLink(0)
			now := t0
			for i, id := range []NodeID{S, A, N} {
				h := hello{src: id, seq: 1, neigh: []NodeID{X}}
				n.HandleFrame(now, 0, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), 7447), h.appendTo(nil))
			}
			n.learn([]NodeID{A, B, C, E}, now, false)
			n.learn(c.learn, now, !c.stale)
			env.frames = nil
			in := routed{proto: protoData, flags: c.flags, target: c.target, vhops: 1, pos: 1, route: planned,
				payload: []byte{0, 1, 0, 9, 'x'}}
			n.HandleFrame(now, 0, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, 1}), 7447), append(in.appendHeader(nil), in.payload...))
			if len(env.frames) != 1 {
				t.Fatalf("%d frames sent, want 1", len(env.frames))
			}
			var out routed
			if err := out.decode(env.frames[0].b); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(out.route, c.want) || out.vhops != c.vhops || out.pos != 2 {
				t.Errorf("sent route %v vhops %d pos %d, want %v vhops %d pos 2", out.route, out.vhops, out.pos, c.want, c.vhops)
			}
			if st := n.Stats(); st.Redirected != c.counters[0] || st.Shortened != c.counters[1] {
				t.Errorf("redirected %d shortened %d, want %v", st.Redirected, st.Shortened, c.counters)
			}
		})
	}
}

// TestNodeFingerBackoff: in a stable ring, finger refresh cycles that find
// every finger where it was come less often (up to fingerBackoff times
// FingerInterval); a cycle that finds a finger moved brings the pace back.
func TestNodeFingerBackoff(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	w := newTNet(randomIDs(rng, 16), Params{FingerInterval: 10 * time.Second}).line()
	w.run(5 * time.Minute)
	if errs := w.ringErrors(); len(errs) > 0 {
		t.Fatalf("ring not consistent: %v", errs)
	}
	n := w.nodes[0].Node
	if n.fingerIvl != fingerBackoff*10*time.Second {
		t.Fatalf("finger cycle after 5 stable minutes: %v, want %v", n.fingerIvl, fingerBackoff*10*time.Second)
	}
	// A finger that moved (here: forged) is found by the next cycle.
	i := slices.IndexFunc(n.fingers, func(f NodeID) bool { return f != 0 })
	if i < 0 {
		t.Fatal("node 0 has no fingers")
	}
	want := n.fingers[i]
	n.fingers[i] = want + 1
	shortest := n.fingerIvl
	for range fingerBackoff * 12 {
		w.run(time.Second)
		shortest = min(shortest, n.fingerIvl)
	}
	if n.fingers[i] != want || shortest != 10*time.Second {
		t.Errorf("after a finger moved: finger %v (want %v), shortest cycle %v (want 10s)", n.fingers[i], want, shortest)
	}
}

// TestNodeUnreachableReason: a relay that gives up because the route would
// exceed its hop budget says so in its report, and the source neither
// forgets nor tombstones the target (it exists).
func TestNodeUnreachableReason(t *testing.T) {
	const (
		X = NodeID(0x1000000000000000) // decides, with a small hop budget
		S = NodeID(0xf000000000000000) // the source
		A = NodeID(0x8000000000000000) // A and B are no progress toward R:
		B = NodeID(0x9000000000000000) // no shorter way to get closer
		R = NodeID(0x4000000000000000) // the target, three hops behind X
	)
	addr := func(i byte) netip.AddrPort { return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, i}), 7447) }
	xenv, senv := &fenv{}, &fenv{}
	x := New(X, Params{MaxHops: 4}, xenv, 1)
	src := New(S, Params{}, senv, 2)
	x.AddLink(0)
	src.AddLink(0)
	for _, h := range []hello{{src: S, seq: 1, neigh: []NodeID{X}}, {src: A, seq: 1, neigh: []NodeID{X}}} {
		x.HandleFrame(t0, 0, addr(byte(h.src>>60)), h.appendTo(nil))
	}
	src.HandleFrame(t0, 0, addr(1), (&hello{src: X, seq: 1, neigh: []NodeID{S}}).appendTo(nil))
	x.learn([]NodeID{A, B, R}, t0, true)
	src.learn([]NodeID{X, A, B, R}, t0, false) // second-hand: not protected by freshness
	in := routed{proto: protoData, target: R, vhops: 1, pos: 1, route: []NodeID{S, X}, payload: []byte{0, 1, 0, 9}}
	xenv.frames = nil
	x.HandleFrame(t0, 0, addr(15), append(in.appendHeader(nil), in.payload...))
	if len(xenv.frames) != 1 {
		t.Fatalf("X sent %d frames, want one report", len(xenv.frames))
	}
	var rep routed
	if err := rep.decode(xenv.frames[0].b); err != nil || rep.proto != protoError || len(rep.payload) != 23 || rep.payload[22] != whyTooLong {
		t.Fatalf("report %+v (%v)", rep, err)
	}
	src.HandleFrame(t0, 0, addr(1), xenv.frames[0].b)
	if len(senv.events) != 1 {
		t.Fatalf("source got %+v, want one Unreachable", senv.events)
	}
	if u, ok := senv.events[0].(Unreachable); !ok || u.Reason != "route too long" || u.Target != R || u.At != X || u.DstPort != 9 {
		t.Errorf("source got %+v", senv.events[0])
	}
	if !src.cache.has(R) || len(src.tomb) != 0 {
		t.Errorf("source forgot R (cached %v) or tombstoned it (%v)", src.cache.has(R), src.tomb)
	}
}

// TestNodeDecideFallback: when the route to the node nearest the target
// would exceed the hop budget, a decision settles for a node nearly as
// close with a route that fits (still virtual progress), after dropping
// loops from the history.
func TestNodeDecideFallback(t *testing.T) {
	const (
		X = NodeID(0x1000000000000000) // decides, with a small hop budget
		S = NodeID(0xf000000000000000) // the source
		A = NodeID(0x2000000000000000) // X→A→B→R
		B = NodeID(0x3000000000000000)
		R = NodeID(0x4000000000000000) // nearest the key, three hops away
	)
	addr := func(i byte) netip.AddrPort { return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, i}), 7447) }
	env := &fenv{}
	x := New(X, Params{MaxHops: 4}, env, 1)
	x.AddLink(0)
	for _, h := range []hello{{src: S, seq: 1, neigh: []NodeID{X}}, {src: A, seq: 1, neigh: []NodeID{X}}} {
		x.HandleFrame(t0, 0, addr(byte(h.src>>60)), h.appendTo(nil))
	}
	x.learn([]NodeID{A, B, R}, t0, true)
	// The history S→X→A→X holds a loop: kept (a data frame after a
	// decision by a relay), it makes the route too long even for B.
	in := routed{proto: protoData, flags: flagClosest, target: R + 5, vhops: 2, pos: 3, route: []NodeID{S, X, A, X}, payload: []byte{0, 1, 0, 9}}
	env.frames = nil
	x.HandleFrame(t0, 0, addr(2), append(in.appendHeader(nil), in.payload...))
	if len(env.frames) != 1 {
		t.Fatalf("X sent %d frames, want one", len(env.frames))
	}
	var out routed
	if err := out.decode(env.frames[0].b); err != nil {
		t.Fatal(err)
	}
	if out.proto != protoData || !slices.Equal(out.route, []NodeID{S, X, A, B}) || out.vhops != 3 {
		t.Errorf("sent %+v, want the data frame routed S→X→A→B", out)
	}
}

// TestNodeHopLimitReported: a frame that made its MaxHops transmissions is
// dropped by the relay that holds it (the loop guard), and its source hears
// of it with the reason instead of waiting for an answer that cannot come.
// Before, the drop was silent: the simulator counted such probes as lost.
func TestNodeHopLimitReported(t *testing.T) {
	const (
		X = NodeID(0x1000000000000000) // the relay where the budget ends
		S = NodeID(0xf000000000000000) // the source
		A = NodeID(0x8000000000000000) // X's next hop toward R
		R = NodeID(0x4000000000000000) // the target
	)
	addr := func(i byte) netip.AddrPort { return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, i}), 7447) }
	xenv, senv := &fenv{}, &fenv{}
	x := New(X, Params{MaxHops: 8}, xenv, 1)
	src := New(S, Params{}, senv, 2)
	x.AddLink(0)
	src.AddLink(0)
	for _, h := range []hello{{src: S, seq: 1, neigh: []NodeID{X}}, {src: A, seq: 1, neigh: []NodeID{X}}} {
		x.HandleFrame(t0, 0, addr(byte(h.src>>60)), h.appendTo(nil))
	}
	src.HandleFrame(t0, 0, addr(1), (&hello{src: X, seq: 1, neigh: []NodeID{S}}).appendTo(nil))
	for _, hops := range []uint8{6, 7} {
		// The frame arrives with hops transmissions made; X makes one more
		// only if that stays within the budget of 8.
		in := routed{proto: protoData, target: R, vhops: 1, hops: hops, pos: 1, route: []NodeID{S, X, A, R}, payload: []byte{0, 1, 0, 9}}
		xenv.frames, senv.events = nil, nil
		x.HandleFrame(t0, 0, addr(15), append(in.appendHeader(nil), in.payload...))
		if len(xenv.frames) != 1 {
			t.Fatalf("hops %d: X sent %d frames, want one", hops, len(xenv.frames))
		}
		var out routed
		if err := out.decode(xenv.frames[0].b); err != nil {
			t.Fatal(err)
		}
		if hops == 6 {
			if out.proto != protoData || out.hops != 7 {
				t.Fatalf("hops 6: X sent %+v, want the datagram forwarded", out)
			}
			continue
		}
		if out.proto != protoError || len(out.payload) != 23 || out.payload[22] != whyHops || out.target != S {
			t.Fatalf("hops 7: X sent %+v, want an unreachable report (reason %d) to S", out, whyHops)
		}
		src.HandleFrame(t0, 0, addr(1), xenv.frames[0].b)
		if len(senv.events) != 1 {
			t.Fatalf("source got %+v, want one Unreachable", senv.events)
		}
		if u, ok := senv.events[0].(Unreachable); !ok || u.Reason != "hop limit" || u.Target != R || u.At != X || u.DstPort != 9 {
			t.Errorf("source got %+v", senv.events[0])
		}
		if st := x.Stats(); st.HopLimit != 1 {
			t.Errorf("X counted %d hop-limit drops, want 1", st.HopLimit)
		}
	}
}

// TestNodeDecideHopBudget: a decision counts the transmissions a frame has
// made, not only its route's length (a history without loops is shorter
// than the way the frame came): a route the hop budget cannot cover is
// not taken — the loop guard would end it short of the target — and a node
// nearly as close whose route fits is taken instead.
func TestNodeDecideHopBudget(t *testing.T) {
	const (
		X = NodeID(0x1000000000000000) // decides, with a budget of 10 transmissions
		S = NodeID(0xf000000000000000) // the source
		A = NodeID(0x2000000000000000) // X→A→B→R
		B = NodeID(0x3000000000000000)
		R = NodeID(0x4000000000000000) // nearest the key, three hops away
	)
	addr := func(i byte) netip.AddrPort { return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, i}), 7447) }
	for _, tc := range []struct {
		hops uint8 // transmissions made before X
		want []NodeID
	}{
		{6, []NodeID{S, X, A, B, R}}, // 7 at X, +3 = 10: R is within budget
		{7, []NodeID{S, X, A, B}},    // 8 at X: R would need 11, B needs 10
	} {
		env := &fenv{}
		x := New(X, Params{MaxHops: 10}, env, 1)
		x.AddLink(0)
		for _, h := range []hello{{src: S, seq: 1, neigh: []NodeID{X}}, {src: A, seq: 1, neigh: []NodeID{X}}} {
			x.HandleFrame(t0, 0, addr(byte(h.src>>60)), h.appendTo(nil))
		}
		x.learn([]NodeID{A, B, R}, t0, true)
		in := routed{proto: protoData, flags: flagClosest, target: R + 5, vhops: 1, hops: tc.hops, pos: 1, route: []NodeID{S, X}, payload: []byte{0, 1, 0, 9}}
		env.frames = nil
		x.HandleFrame(t0, 0, addr(15), append(in.appendHeader(nil), in.payload...))
		if len(env.frames) != 1 {
			t.Fatalf("hops %d: X sent %d frames, want one", tc.hops, len(env.frames))
		}
		var out routed
		if err := out.decode(env.frames[0].b); err != nil {
			t.Fatal(err)
		}
		if out.proto != protoData || !slices.Equal(out.route, tc.want) {
			t.Errorf("hops %d: sent %+v, want the data frame routed %v", tc.hops, out, tc.want)
		}
	}
}

// TestNodeSlowOnlyNeighbourKept: a node sending data to its only
// neighbour, which stops answering for a second (a process starved of
// CPU; no beacon is missed long enough for the neighbour timeout), keeps
// it: cutting it could repair nothing and would only empty the ring view
// (measured: under SIP load a two-node mesh's view flapped between the
// neighbour and nothing). With another neighbour to route through, the
// fast timeout takes the silent one out of routing as before.
func TestNodeSlowOnlyNeighbourKept(t *testing.T) {
	for _, three := range []bool{false, true} {
		ids := []NodeID{0x1111, 0x8888}
		if three {
			ids = append(ids, 0xcccc)
		}
		w := newTNet(ids, Params{})
		for i := 1; i < len(ids); i++ {
			w.connect(0, i, true)
		}
		w.run(5 * time.Second)
		a, b := w.nodes[0], w.nodes[1]
		if s := a.Neighbours(); len(s) != len(ids)-1 {
			t.Fatalf("three %v: neighbours %+v", three, s)
		}
		b.up = false // stalled: hears nothing, sends nothing, no timers
		lostB := false
		for range 20 { // a second, a datagram every 50 ms
			if err := a.Send(w.now, b.ID(), Exact, 1, 2, []byte("x")); err != nil {
				t.Fatal(err)
			}
			w.run(50 * time.Millisecond)
			if !slices.Contains(a.Successors(), b.ID()) && !slices.Contains(a.Predecessors(), b.ID()) {
				lostB = true
			}
		}
		b.up = true
		w.run(2 * time.Second)
		st := a.Stats()
		if three {
			if st.Suspected == 0 {
				t.Errorf("with another neighbour: the silent one was not taken out of routing (stats %+v)", st)
			}
		} else if st.Suspected != 0 || lostB {
			t.Errorf("the only neighbour, silent for a second: suspected %d times, left the ring view: %v", st.Suspected, lostB)
		}
		if !slices.Contains(a.Successors(), b.ID()) {
			t.Errorf("three %v: after the stall, successors %v lack %v", three, a.Successors(), b.ID())
		}
	}
}
