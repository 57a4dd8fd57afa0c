package ssr

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// datagrams returns the datagrams among node i's events, and forgets
// its events.
func (w *tnet) datagrams(i int) []Datagram {
	var out []Datagram
	for _, ev := range w.nodes[i].events {
		if d, ok := ev.(Datagram); ok {
			out = append(out, d)
		}
	}
	w.nodes[i].events = nil
	return out
}

func sorted(s []string) []string {
	slices.Sort(s)
	return s
}

func payloads(ds []Datagram) []string {
	var out []string
	for _, d := range ds {
		out = append(out, string(d.Payload))
	}
	return out
}

// e2eRefused sums the counters of datagrams refused end to end.
func e2eRefused(st AuthStats) uint64 {
	return st.E2EBadMAC + st.E2EReplayed + st.E2EWrongSender + st.E2EUnauthenticated + st.E2EBadHandshake
}

// TestE2EDelivers: exact datagrams cross the mesh sealed end to end after
// one handshake (the first waits for it, the answer needs none), closest
// ones with their kind byte and no handshake; both arrive once with their
// source, nothing is refused, with and without encryption.
func TestE2EDelivers(t *testing.T) {
	for _, enc := range []bool{false, true} {
		w := newAuthNet(5, func(int) bool { return enc }, nil).line()
		w.run(60 * time.Second)
		src, dst := w.nodes[0], w.nodes[4]
		src.auth.SetNow(w.now)
		for i := range 3 {
			if err := src.Send(w.now, dst.ID(), Exact, 5060, 5061, fmt.Appendf(nil, "INVITE %d", i)); err != nil {
				t.Fatal(err)
			}
		}
		if st := src.auth.Stats(); st.E2EQueued != 3 || st.E2EHandshakesSent != 1 {
			t.Fatalf("encryption %v: before the handshake: %+v", enc, st)
		}
		w.run(time.Second)
		got := w.datagrams(4)
		if !slices.Equal(payloads(got), []string{"INVITE 0", "INVITE 1", "INVITE 2"}) {
			t.Fatalf("encryption %v: delivered %q", enc, payloads(got))
		}
		if d := got[0]; d.Src != src.ID() || d.SrcPort != 5060 || d.DstPort != 5061 || d.Mode != Exact || d.Target != dst.ID() {
			t.Fatalf("encryption %v: datagram %+v", enc, d)
		}
		// The answer rides the session the first datagram brought.
		dst.auth.SetNow(w.now)
		if err := dst.Send(w.now, src.ID(), Exact, 5061, 5060, []byte("200 OK")); err != nil {
			t.Fatal(err)
		}
		w.run(time.Second)
		if got := payloads(w.datagrams(0)); !slices.Equal(got, []string{"200 OK"}) {
			t.Fatalf("encryption %v: answer %q", enc, got)
		}
		if st := dst.auth.Stats(); st.E2EHandshakesSent != 0 || st.E2ESessions != 1 {
			t.Fatalf("encryption %v: the target started a handshake of its own: %+v", enc, st)
		}
		// Closest: to a key node 2 is responsible for.
		key := w.nodes[2].ID() + 1
		for _, n := range w.nodes {
			if n.ID() > w.nodes[2].ID() && n.ID() <= key {
				t.Fatal("test setup: key not node 2's")
			}
		}
		src.auth.SetNow(w.now)
		if err := src.Send(w.now, key, Closest, 1, 2, []byte("dht get")); err != nil {
			t.Fatal(err)
		}
		w.run(time.Second)
		got = w.datagrams(2)
		if len(got) != 1 || string(got[0].Payload) != "dht get" || got[0].Src != src.ID() || got[0].Mode != Closest || got[0].Target != key {
			t.Fatalf("encryption %v: closest datagram %+v", enc, got)
		}
		// To itself: delivered at once.
		src.auth.SetNow(w.now)
		if err := src.Send(w.now, src.ID(), Exact, 1, 2, []byte("loop")); err != nil {
			t.Fatal(err)
		}
		if got := w.datagrams(0); len(got) != 1 || string(got[0].Payload) != "loop" || got[0].Src != src.ID() {
			t.Fatalf("encryption %v: to itself: %+v", enc, got)
		}
		for i, n := range w.nodes {
			if st := n.auth.Stats(); e2eRefused(st)+st.E2EQueueDropped+st.E2ERateLimited != 0 || st.E2EQueued != 0 {
				t.Errorf("encryption %v: node %d refused genuine traffic: %+v", enc, i, st)
			}
		}
	}
}

// TestE2EEncryption: with mesh-encryption on, a datagram's bytes are
// encrypted end to end, not only per link: a relay (which opens each
// link's envelope) sees none of them; off, they are readable.
func TestE2EEncryption(t *testing.T) {
	secret := []byte("INVITE sip:alice@mesh SIP/2.0")
	for _, enc := range []bool{false, true} {
		w := newAuthNet(3, func(int) bool { return enc }, nil).line()
		w.run(30 * time.Second)
		seen := 0
		relay := w.nodes[1]
		relay.Node.env = tapEnv{relay.auth, func(b []byte) {
			if bytes.Contains(b, secret) {
				seen++
			}
		}}
		w.nodes[0].auth.SetNow(w.now)
		if err := w.nodes[0].Send(w.now, w.nodes[2].ID(), Exact, 1, 2, secret); err != nil {
			t.Fatal(err)
		}
		w.run(time.Second)
		if got := payloads(w.datagrams(2)); !slices.Equal(got, []string{string(secret)}) {
			t.Fatalf("encryption %v: delivered %q", enc, got)
		}
		if enc && seen != 0 || !enc && seen != 1 {
			t.Errorf("encryption %v: the relay read the datagram in %d frames", enc, seen)
		}
	}
}

// tapEnv sits between a relay's Node and its LinkAuth: it sees (and may
// change) the inner frames the relay sends, as a relay that holds
// genuine link sessions but does not play fair could.
type tapEnv struct {
	auth *LinkAuth
	f    func(b []byte)
}

func (e tapEnv) SendFrame(l LinkID, to netip.AddrPort, b []byte) {
	e.f(b)
	e.auth.SendFrame(l, to, b)
}

func (e tapEnv) Deliver(ev Event) { e.auth.Deliver(ev) }

// TestE2ERelayForgery is the relay of the issue: node 1 holds genuine link
// sessions with 0 and 2 and carries 0's datagrams to 2. It modifies the
// payload of an exact one, replays a captured one, and injects exact
// datagrams claiming node 0 as their source: unsealed, under an invented
// session, sealed under its own session, and an end-to-end handshake in
// 0's name. Node 2 delivers none of them, counts each, and 0's genuine
// traffic keeps arriving. (Closest datagrams are not authenticated end to
// end: TestE2EClosestForgery.)
func TestE2ERelayForgery(t *testing.T) {
	w := newAuthNet(3, off, nil).line()
	w.run(30 * time.Second)
	a, relay, c := w.nodes[0], w.nodes[1], w.nodes[2]
	send := func(mode Mode, target NodeID, p string) {
		t.Helper()
		a.auth.SetNow(w.now)
		if err := a.Send(w.now, target, mode, 7, 8, []byte(p)); err != nil {
			t.Fatal(err)
		}
	}
	// Captured: 0's data frames to 2 as the relay forwards them.
	var captured [][]byte
	mangle := false
	relay.Node.env = tapEnv{relay.auth, func(b []byte) {
		r, err := decodeRouted(b)
		if err != nil || r.proto != protoData || r.route[0] != a.ID() {
			return
		}
		captured = append(captured, bytes.Clone(b))
		if mangle {
			b[len(b)-20] ^= 1 // in place: the frame the relay sends on
		}
	}}
	key := c.ID() // closest to c's own ID: c is responsible
	send(Exact, c.ID(), "genuine 1")
	send(Closest, key, "genuine closest")
	w.run(time.Second)
	if got := sorted(payloads(w.datagrams(2))); !slices.Equal(got, []string{"genuine 1", "genuine closest"}) {
		t.Fatalf("before the attack: %q", got)
	}
	st0 := c.auth.Stats()

	// 1. Modified in flight.
	mangle = true
	send(Exact, c.ID(), "modified")
	w.run(time.Second)
	mangle = false
	// 2. A replay of the genuine exact frame the relay captured.
	inject := func(r *routed) {
		relay.auth.SetNow(w.now)
		relay.auth.SendFrame(0, c.addr, encodeRouted(r))
	}
	replayed := 0
	for _, b := range captured {
		r, err := decodeRouted(b)
		if err != nil {
			t.Fatal(err)
		}
		if r.flags&flagClosest != 0 || !bytes.Contains(r.payload, []byte("genuine 1")) {
			continue
		}
		r.pos = 2 // as the relay sends it on
		inject(r)
		replayed++
	}
	if replayed != 1 {
		t.Fatalf("%d captured frames of the genuine exact datagram", replayed)
	}
	// 3. Datagrams claiming node 0 as their source, built by the relay.
	forged := func(mode Mode, payload []byte) *routed {
		flags := byte(0)
		if mode == Closest {
			flags = flagClosest
		}
		return &routed{proto: protoData, flags: flags, target: c.ID(), pos: 2, route: []NodeID{a.ID(), relay.ID(), c.ID()}, payload: payload}
	}
	ports := []byte{0, 7, 0, 8}
	inject(forged(Exact, append(bytes.Clone(ports), "unsealed"...)))
	invented := append(bytes.Clone(ports), kindSealed, 0, 0, 0, 9) // index 9: no session
	invented = binary.BigEndian.AppendUint64(invented, 1)
	invented = append(invented, make([]byte, 20)...)
	for range 50 { // each makes node 2 want a handshake with 0: one is started
		inject(forged(Exact, invented))
	}
	// Sealed under the relay's own genuine session with 2, in 0's name.
	relay.auth.SetNow(w.now)
	if err := relay.Send(w.now, c.ID(), Exact, 7, 8, []byte("own session")); err != nil {
		t.Fatal(err)
	}
	w.run(time.Second)
	if got := payloads(w.datagrams(2)); !slices.Equal(got, []string{"own session"}) {
		t.Fatalf("the relay's own datagram: %q", got)
	}
	st1 := c.auth.Stats()
	rs := relay.auth.e2e.peers[c.ID()].cur
	inject(forged(Exact, relay.auth.seal(rs, c.ID(), 7, 8, []byte("in 0's name"))))
	// A closest datagram's kind byte in an exact one.
	inject(forged(Exact, closestData(7, 8, []byte("closest kind, exact mode"))))
	// 4. An end-to-end handshake in 0's name: with the relay's key (not
	// 0's hash) and with 0's key (the relay cannot sign what follows).
	eph, _ := ecdh.X25519().GenerateKey(rand.NewChaCha8([32]byte{9}))
	for _, pub := range []ed25519.PublicKey{relay.auth.pub, a.auth.pub} {
		m := append([]byte{e2eInit, 0, 0, 0, 42}, pub...)
		m = append(append(m, eph.PublicKey().Bytes()...), 0)
		inject(&routed{proto: protoE2E, target: c.ID(), pos: 2, route: []NodeID{a.ID(), relay.ID(), c.ID()}, payload: m})
	}
	w.run(2 * time.Second)

	if got := payloads(w.datagrams(2)); len(got) != 0 {
		t.Fatalf("node 2 delivered forged or modified datagrams: %q", got)
	}
	st := c.auth.Stats()
	t.Logf("node 2's counters after the attack: %+v", st)
	d := func(f func(AuthStats) uint64) uint64 { return f(st) - f(st0) }
	for _, chk := range []struct {
		name string
		got  uint64
		want uint64
	}{
		{"bad MAC (modified exact datagram)", d(func(s AuthStats) uint64 { return s.E2EBadMAC }), 1},
		{"replayed (exact)", d(func(s AuthStats) uint64 { return s.E2EReplayed }), 1},
		{"unauthenticated (unsealed, invented session, closest kind)", d(func(s AuthStats) uint64 { return s.E2EUnauthenticated }), 52},
		{"handshakes started (for datagrams under unknown sessions)", d(func(s AuthStats) uint64 { return s.E2EHandshakesSent }), 1},
		{"wrong sender (the relay's session, 0's name)", st.E2EWrongSender - st1.E2EWrongSender, 1},
	} {
		if chk.got != chk.want {
			t.Errorf("%s: %d counted, want %d", chk.name, chk.got, chk.want)
		}
	}
	if d(func(s AuthStats) uint64 { return s.E2EBadHandshake }) == 0 {
		t.Error("the handshake with the relay's key in 0's name was not refused")
	}
	// Node 0 ignored the answer to the handshake made in its name, and
	// genuine traffic is unaffected.
	send(Exact, c.ID(), "genuine 2")
	send(Closest, key, "genuine closest 2")
	w.run(time.Second)
	if got := sorted(payloads(w.datagrams(2))); !slices.Equal(got, []string{"genuine 2", "genuine closest 2"}) {
		t.Fatalf("after the attack: %q", got)
	}
	if st := a.auth.Stats(); st.E2EBadHandshake == 0 {
		t.Errorf("node 0 did not refuse the answer to the handshake made in its name: %+v", st)
	}
}

// TestE2EClosestForgery is what the rule for closest datagrams claims
// (e2e.go): they are not authenticated end to end, so a relay can make
// one in node 0's name, and the key's owner (node 2) delivers it with
// Src = 0. What that buys the relay: node 2's answer goes exact, sealed
// under a session between 2 and 0, to node 0 (whose DHT has no request
// with that ID and drops it: dht's TestForgedClosestRequests); with
// mesh-encryption on the relay carries it without reading it, and it is
// delivered nowhere else.
func TestE2EClosestForgery(t *testing.T) {
	w := newAuthNet(3, func(int) bool { return true }, nil).line()
	w.run(30 * time.Second)
	a, relay, c := w.nodes[0], w.nodes[1], w.nodes[2]
	answer := []byte("answer to the request made in 0's name")
	read := 0
	relay.Node.env = tapEnv{relay.auth, func(b []byte) {
		if bytes.Contains(b, answer) {
			read++
		}
	}}
	key := c.ID() // closest to c's own ID: c is responsible
	relay.auth.SetNow(w.now)
	relay.auth.SendFrame(0, c.addr, encodeRouted(&routed{proto: protoData, flags: flagClosest, target: key, pos: 2,
		route: []NodeID{a.ID(), relay.ID(), c.ID()}, payload: closestData(7, 8, []byte("dht get in 0's name"))}))
	w.run(time.Second)
	got := w.datagrams(2)
	if len(got) != 1 || got[0].Src != a.ID() || got[0].Mode != Closest || got[0].Target != key ||
		got[0].SrcPort != 7 || got[0].DstPort != 8 || string(got[0].Payload) != "dht get in 0's name" {
		t.Fatalf("the forged closest datagram at its key's owner: %+v", got)
	}
	// The owner answers the source it was given.
	c.auth.SetNow(w.now)
	if err := c.Send(w.now, got[0].Src, Exact, 8, 7, answer); err != nil {
		t.Fatal(err)
	}
	w.run(2 * time.Second)
	if got := w.datagrams(0); len(got) != 1 || got[0].Src != c.ID() || !bytes.Equal(got[0].Payload, answer) {
		t.Fatalf("the answer at node 0: %+v", got)
	}
	if got := w.datagrams(1); len(got) != 0 {
		t.Fatalf("the relay was delivered %+v", got)
	}
	if read != 0 {
		t.Errorf("the relay read the sealed answer in %d frames", read)
	}
	if rs := relay.auth.e2e.peers[c.ID()]; rs != nil && rs.cur != nil {
		t.Errorf("the relay holds an end-to-end session with 2: %+v", rs.cur)
	}
	for i, n := range w.nodes {
		if st := n.auth.Stats(); e2eRefused(st) != 0 {
			t.Errorf("node %d refused: %+v", i, st)
		}
	}
}

// TestE2ERestart: the target restarts (new sessions, nothing remembered):
// the source's datagrams under the old session are refused and make the
// target start a handshake, after which they flow again; the same with the
// source restarting. Datagrams sent every 100 ms are lost for at most
// three seconds (the links' recovery is most of it).
func TestE2ERestart(t *testing.T) {
	for _, who := range []int{2, 0} {
		w := newAuthNet(3, off, nil).line()
		w.run(30 * time.Second)
		a, c := w.nodes[0], w.nodes[2]
		seq := 0
		stream := func(d time.Duration) {
			for end := w.now.Add(d); w.now.Before(end); {
				a.auth.SetNow(w.now)
				if err := a.Send(w.now, c.ID(), Exact, 1, 2, fmt.Appendf(nil, "%d", seq)); err != nil {
					t.Fatal(err)
				}
				seq++
				w.run(100 * time.Millisecond)
			}
		}
		stream(2 * time.Second)
		if got := len(w.datagrams(2)); got != seq {
			t.Fatalf("restart of %d: before: %d of %d delivered", who, got, seq)
		}
		// Restart: a new Node and LinkAuth with the same key.
		n := w.nodes[who]
		n.auth = NewLinkAuth(AuthConfig{Key: keyFor(byte(who) + 1)}, n)
		n.Node = New(n.ID(), Params{}, n.auth, 99)
		n.AddLink(0)
		n.auth.Attach(n.Node)
		start := seq
		stream(10 * time.Second)
		got := w.datagrams(2)
		if len(got) == 0 {
			t.Fatalf("restart of %d: nothing delivered after it", who)
		}
		first := 0
		fmt.Sscan(string(got[0].Payload), &first)
		// The restarted node's links come back first (link handshakes,
		// then a beacon round to be a symmetric neighbour again), then the
		// end-to-end session.
		t.Logf("restart of %d: %d datagrams lost (100 ms apart)", who, first-start)
		if lost := first - start; lost > 30 {
			t.Errorf("restart of %d: the first %d datagrams after it lost", who, lost)
		}
		if want := seq - first; len(got) != want {
			t.Errorf("restart of %d: %d datagrams delivered after the first, want %d", who, len(got), want)
		}
		if st := c.auth.Stats(); st.E2EBadMAC+st.E2EWrongSender+st.E2EBadHandshake != 0 {
			t.Errorf("restart of %d: %+v", who, st)
		}
	}
}

// TestE2EQueueBounds: datagrams for a node that does not answer wait, at
// most e2eQueuePeer for one node and e2eQueueTotal in all, and are dropped
// and reported Unreachable when the handshake times out.
func TestE2EQueueBounds(t *testing.T) {
	w := newAuthNet(2, off, nil).line()
	w.run(10 * time.Second)
	a := w.nodes[0]
	a.auth.SetNow(w.now)
	ghosts := 40 // nodes that do not exist
	for g := range ghosts {
		for range 20 {
			if err := a.Send(w.now, NodeID(0x1000+g), Exact, 1, 2, make([]byte, 100)); err != nil {
				t.Fatal(err)
			}
		}
	}
	st := a.auth.Stats()
	if st.E2EQueued != e2eQueueTotal || st.E2EQueueDropped != uint64(ghosts*20-e2eQueueTotal) {
		t.Fatalf("queued %d, dropped %d; want %d and %d", st.E2EQueued, st.E2EQueueDropped, e2eQueueTotal, ghosts*20-e2eQueueTotal)
	}
	for _, p := range a.auth.e2e.peers {
		if len(p.queue) > e2eQueuePeer {
			t.Fatalf("%d datagrams waiting for one node", len(p.queue))
		}
	}
	w.run(e2eQueueTimeout + 2*time.Second)
	st = a.auth.Stats()
	if st.E2EQueued != 0 || st.E2EQueueDropped != uint64(ghosts*20) || a.auth.e2e.qbytes != 0 {
		t.Fatalf("after the timeout: %+v (%d bytes)", st, a.auth.e2e.qbytes)
	}
	unreachable := 0
	for _, ev := range a.events {
		if u, ok := ev.(Unreachable); ok && u.DstPort == 2 && u.Target >= 0x1000 && u.Target < NodeID(0x1000+ghosts) {
			unreachable++
		}
	}
	if unreachable != e2eQueueTotal {
		t.Fatalf("%d Unreachable reports, want one per waiting datagram (%d)", unreachable, e2eQueueTotal)
	}
	// The handshake was re-sent while they waited, and not for ever.
	if st.E2EHandshakesSent < uint64(2*e2eQueueTotal/e2eQueuePeer) {
		t.Errorf("%d handshakes sent for %d nodes waited for", st.E2EHandshakesSent, e2eQueueTotal/e2eQueuePeer)
	}
	sent := st.E2EHandshakesSent
	w.run(10 * time.Second)
	if st := a.auth.Stats(); st.E2EHandshakesSent != sent {
		t.Errorf("handshakes still sent with nothing waiting: %d more", st.E2EHandshakesSent-sent)
	}
}

// e2eLone is a LinkAuth with a Node and no links: a target fed end-to-end
// messages directly.
func e2eLone(seed byte) (*LinkAuth, *fenv) {
	env := &fenv{}
	a := NewLinkAuth(AuthConfig{Key: keyFor(seed), Rand: rand.NewChaCha8([32]byte{seed})}, env)
	n := New(a.ID(), Params{}, a, uint64(seed))
	n.AddLink(0)
	a.Attach(n)
	a.SetNow(t0)
	return a, env
}

// TestE2ETableBounds: handshakes from more nodes than the table holds,
// answered at the rate allowed: the table stays at maxE2EPeers nodes, the
// half-done handshakes at maxE2EPending; a burst beyond the budget is not
// answered.
func TestE2ETableBounds(t *testing.T) {
	a, _ := e2eLone(1)
	now := t0
	eph, _ := ecdh.X25519().GenerateKey(rand.NewChaCha8([32]byte{2}))
	initFrom := func(k ed25519.PrivateKey) e2eFrame {
		pub := k.Public().(ed25519.PublicKey)
		m := append([]byte{e2eInit, 0, 0, 0, 1}, pub...)
		m = append(append(m, eph.PublicKey().Bytes()...), 0)
		return e2eFrame{src: IDFromPublicKey(pub), payload: m}
	}
	n := maxE2EPeers + 200
	for i := range n {
		var seed [32]byte
		binary.BigEndian.PutUint32(seed[:], uint32(i))
		now = now.Add(time.Second/hsRate + time.Millisecond)
		a.SetNow(now)
		a.Deliver(initFrom(ed25519.NewKeyFromSeed(seed[:])))
		a.flushE2E()
	}
	if got := len(a.e2e.peers); got != maxE2EPeers {
		t.Errorf("%d nodes kept, want the bound %d", got, maxE2EPeers)
	}
	if got := len(a.e2e.pending); got != maxE2EPending {
		t.Errorf("%d half-done handshakes, want the bound %d", got, maxE2EPending)
	}
	if st := a.Stats(); st.E2ERateLimited != 0 {
		t.Errorf("answers at the allowed rate refused: %+v", st)
	}
	// A burst: at most the budget's burst is answered.
	before := a.Stats()
	for i := range 100 {
		var seed [32]byte
		binary.BigEndian.PutUint32(seed[:], uint32(n+i))
		a.Deliver(initFrom(ed25519.NewKeyFromSeed(seed[:])))
	}
	st := a.Stats()
	if limited := st.E2ERateLimited - before.E2ERateLimited; limited < 100-hsBurst {
		t.Errorf("a burst of 100 handshakes: %d refused, want ≥ %d", limited, 100-hsBurst)
	}
	// Idle nodes are forgotten by the sweep.
	a.Tick(now.Add(2 * e2eIdle))
	a.Tick(now.Add(2*e2eIdle + sweepEvery))
	if got := len(a.e2e.peers) + len(a.e2e.pending); got != 0 {
		t.Errorf("%d nodes and handshakes left after they went idle", got)
	}
}

// e2ePair returns two LinkAuths with a session between them (as a
// handshake would leave it: a's index 1, b's 2).
func e2ePair(enc bool) (a, b *LinkAuth, aenv *fenv) {
	aenv = &fenv{}
	a = NewLinkAuth(AuthConfig{Key: keyFor(1), Encrypt: enc, Rand: rand.NewChaCha8([32]byte{1})}, aenv)
	b = NewLinkAuth(AuthConfig{Key: keyFor(2), Encrypt: enc, Rand: rand.NewChaCha8([32]byte{2})}, &fenv{})
	for _, x := range []*LinkAuth{a, b} {
		n := New(x.ID(), Params{}, x, 1)
		x.Attach(n)
		x.SetNow(t0)
	}
	i2r, r2i, _ := keys(make([]byte, 32), sha256.Sum256([]byte("pair")), e2eKeyLabel)
	a.e2eInstall(&e2eSession{local: 1, remote: 2, peer: b.ID(), send: i2r, recv: r2i, born: t0, initiator: true})
	b.e2eInstall(&e2eSession{local: 2, remote: 1, peer: a.ID(), send: r2i, recv: i2r, born: t0})
	return a, b, aenv
}

// e2eSeeds are the end-to-end inputs of FuzzE2E: byte 0 says how the rest
// reaches the target (0 exact datagram, 1 closest datagram, 2 handshake
// message), the rest is the payload after the ports.
func e2eSeeds() map[string][]byte {
	a, b, _ := e2ePair(false)
	sealed := b.seal(b.e2e.peers[a.ID()].cur, a.ID(), 1, 2, []byte("INVITE"))
	closest := closestData(1, 2, []byte("get"))
	eph, _ := ecdh.X25519().GenerateKey(rand.NewChaCha8([32]byte{3}))
	init := append([]byte{e2eInit, 0, 0, 0, 7}, b.pub...)
	init = append(append(init, eph.PublicKey().Bytes()...), 0)
	resp := append([]byte{e2eResp, 0, 0, 0, 8, 0, 0, 0, 7}, b.pub...)
	resp = append(append(resp, eph.PublicKey().Bytes()...), 0)
	resp = append(resp, make([]byte, sigSize)...)
	return map[string][]byte{
		"sealed":     append([]byte{0}, sealed[4:]...),
		"closest":    append([]byte{1}, closest[4:]...),
		"init":       append([]byte{2}, init...),
		"resp":       append([]byte{2}, resp...),
		"confirm":    append([]byte{2, e2eConfirm, 0, 0, 0, 9}, make([]byte, sigSize)...),
		"unsealed":   {0, 'h', 'i'},
		"empty":      {1},
		"short-seal": {0, kindSealed, 0, 0, 0, 1},
	}
}

// FuzzE2E feeds a target with a session what a relay could make it
// deliver: datagram payloads and handshake messages from the session's
// peer. Of exact datagrams only the genuine seed is delivered; a closest
// one is delivered exactly when it has the closest kind, with the bytes
// after it (closest datagrams are not authenticated end to end); a
// genuine exact datagram still is afterwards.
func FuzzE2E(f *testing.F) {
	for _, b := range e2eSeeds() {
		f.Add(b)
	}
	genuine := e2eSeeds()
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 1 {
			return
		}
		a, b, env := e2ePair(false)
		switch in[0] {
		case 0, 1:
			a.Deliver(Datagram{Src: b.ID(), Target: a.ID(), Mode: Mode(in[0]), SrcPort: 1, DstPort: 2, Payload: bytes.Clone(in[1:])})
		default:
			a.Deliver(e2eFrame{src: b.ID(), payload: bytes.Clone(in[1:])})
		}
		a.flushE2E()
		switch {
		case in[0] == byte(Closest) && len(in) >= 2 && in[1] == kindClosest:
			if len(env.events) != 1 {
				t.Fatalf("closest datagram % x: delivered %+v", in, env.events)
			}
			d, ok := env.events[0].(Datagram)
			if !ok || !bytes.Equal(d.Payload, in[2:]) || d.Src != b.ID() || d.Mode != Closest {
				t.Fatalf("closest datagram % x: delivered %+v", in, env.events)
			}
		case len(env.events) > 0 && !bytes.Equal(in, genuine["sealed"]):
			t.Fatalf("delivered %+v from % x", env.events, in)
		}
		env.events = nil
		s := b.e2e.peers[a.ID()].cur
		s.ctr = 1000 // past the seeds'
		p := b.seal(s, a.ID(), 3, 4, []byte("after"))
		a.Deliver(Datagram{Src: b.ID(), Target: a.ID(), Mode: Exact, SrcPort: 3, DstPort: 4, Payload: p[4:]})
		if len(env.events) != 1 {
			t.Fatalf("a genuine datagram after % x: %+v, stats %+v", in, env.events, a.Stats())
		}
	})
}

// TestE2ESeedsGenuine: FuzzE2E's genuine seeds are delivered (so the fuzz
// target's check that nothing else is can fail).
func TestE2ESeedsGenuine(t *testing.T) {
	for _, name := range []string{"sealed", "closest"} {
		a, b, env := e2ePair(false)
		in := e2eSeeds()[name]
		a.Deliver(Datagram{Src: b.ID(), Target: a.ID(), Mode: Mode(in[0]), SrcPort: 1, DstPort: 2, Payload: bytes.Clone(in[1:])})
		if len(env.events) != 1 {
			t.Errorf("%s: %+v, %+v", name, env.events, a.Stats())
		}
	}
}

// BenchmarkE2E is the end-to-end cost of one datagram (172 bytes, G.711
// RTP): sealing at the source and opening at the target (exact, with and
// without encryption), or framing and delivering (closest).
func BenchmarkE2E(b *testing.B) {
	for _, mode := range []string{"auth", "encrypt", "closest"} {
		b.Run(mode, func(b *testing.B) {
			x, y, env := e2ePair(mode == "encrypt")
			s := y.e2e.peers[x.ID()].cur
			payload := make([]byte, 172)
			b.ReportAllocs()
			b.SetBytes(int64(len(payload)))
			for b.Loop() {
				var p []byte
				m := Exact
				if mode == "closest" {
					p, m = closestData(1, 2, payload), Closest
				} else {
					p = y.seal(s, x.ID(), 1, 2, payload)
				}
				x.Deliver(Datagram{Src: y.ID(), Target: x.ID(), Mode: m, SrcPort: 1, DstPort: 2, Payload: p[4:]})
				env.events = env.events[:0]
			}
		})
	}
}

// BenchmarkRoundTrip is a datagram's round trip over two hops (A to C
// through B and back) in memory with every cost but the network's:
// routing at each node, link security at each hop, and end-to-end
// sealing at both ends, for a G.711 RTP packet.
func BenchmarkRoundTrip(b *testing.B) {
	for _, mode := range []string{"auth", "encrypt"} {
		b.Run(mode, func(b *testing.B) {
			w := newAuthNet(3, func(int) bool { return mode == "encrypt" }, nil).line()
			w.run(30 * time.Second)
			a, c := w.nodes[0], w.nodes[2]
			payload := make([]byte, 172)
			rt := func() {
				a.auth.SetNow(w.now)
				_ = a.Send(w.now, c.ID(), Exact, 1, 2, payload)
				w.run(2 * time.Millisecond)
				c.auth.SetNow(w.now)
				_ = c.Send(w.now, a.ID(), Exact, 2, 1, payload)
				w.run(2 * time.Millisecond)
			}
			rt() // the handshake
			w.run(100 * time.Millisecond)
			w.datagrams(0)
			w.datagrams(2)
			b.ReportAllocs()
			b.SetBytes(int64(len(payload)))
			for b.Loop() {
				rt()
				if len(a.events) != 1 || len(c.events) != 1 {
					b.Fatalf("round trip: %d and %d events", len(a.events), len(c.events))
				}
				a.events, c.events = a.events[:0], c.events[:0]
			}
		})
	}
}

// TestE2ESendSizeLimit: with link security, Send leaves room for the
// end-to-end overhead: the largest datagram it accepts, sealed (the larger
// kind) with the longest route, fits in MaxFrame exactly; a closest one
// fits with room to spare.
func TestE2ESendSizeLimit(t *testing.T) {
	limit := MaxFrame - routedHdr - 8*maxRoute - 4 - E2EOverhead
	if limit != 14295 || E2EOverhead != 29 {
		t.Fatalf("limit %d, overhead %d: FORMAT.md says 14295 and 29", limit, E2EOverhead)
	}
	for _, enc := range []bool{false, true} {
		a, b, _ := e2ePair(enc)
		for _, mode := range []Mode{Exact, Closest} {
			if err := a.node.Send(t0, b.ID(), mode, 1, 2, make([]byte, limit)); err != nil {
				t.Fatalf("%d bytes: %v", limit, err)
			}
			if err := a.node.Send(t0, b.ID(), mode, 1, 2, make([]byte, limit+1)); !errors.Is(err, ErrTooBig) {
				t.Fatalf("%d bytes: %v, want ErrTooBig", limit+1, err)
			}
		}
		s := a.e2e.peers[b.ID()].cur
		if n := len(a.seal(s, b.ID(), 1, 2, make([]byte, limit))); routedHdr+8*maxRoute+n != MaxFrame {
			t.Fatalf("encryption %v: a sealed datagram of %d bytes takes %d bytes of payload: frame %d, MaxFrame %d", enc, limit, n, routedHdr+8*maxRoute+n, MaxFrame)
		}
		if n := len(closestData(1, 2, make([]byte, limit))); routedHdr+8*maxRoute+n > MaxFrame {
			t.Fatalf("a closest datagram of %d bytes takes %d bytes of payload", limit, n)
		}
	}
}
