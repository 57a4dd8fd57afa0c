package ssr

import (
	"bytes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/hkdf"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// newAuthNet is newTNet with link security on every node: node i has key
// keyFor(i+1) (its ID the key's hash) and mesh-encryption enc(i).
func newAuthNet(n int, enc func(i int) bool, log *slog.Logger) *tnet {
	return newAuthNetCfg(n, func(i int, c *AuthConfig) { c.Encrypt, c.Logger = enc(i), log })
}

// newAuthNetCfg is newAuthNet with each node's AuthConfig set by cfg (the
// key is filled in first).
func newAuthNetCfg(n int, cfg func(i int, c *AuthConfig)) *tnet {
	keys := make([]ed25519.PrivateKey, n)
	ids := make([]NodeID, n)
	for i := range keys {
		keys[i] = keyFor(byte(i) + 1)
		ids[i] = IDFromPublicKey(keys[i].Public().(ed25519.PublicKey))
	}
	w := newTNet(ids, Params{})
	for i, nd := range w.nodes {
		c := AuthConfig{Key: keys[i]}
		cfg(i, &c)
		nd.auth = NewLinkAuth(c, nd)
		nd.Node = New(ids[i], Params{}, nd.auth, uint64(i)+1)
		nd.AddLink(0)
		nd.auth.Attach(nd.Node)
	}
	return w
}

func off(int) bool { return false }

func nbrIDs(n *Node) []NodeID {
	var ids []NodeID
	for _, nb := range n.Neighbours() {
		ids = append(ids, nb.ID)
	}
	slices.Sort(ids)
	return ids
}

// TestAuthRingForms: with link security the ring forms as without, and
// data crosses it; every node completed handshakes and refused nothing.
func TestAuthRingForms(t *testing.T) {
	for _, enc := range []bool{false, true} {
		w := newAuthNet(5, func(int) bool { return enc }, nil).line()
		w.run(60 * time.Second)
		if errs := w.ringErrors(); len(errs) > 0 {
			t.Fatalf("encryption %v: ring not consistent: %v", enc, errs)
		}
		src, dst := w.nodes[0], w.nodes[4]
		src.auth.SetNow(w.now)
		if err := src.Send(w.now, dst.ID(), Exact, 5060, 5060, []byte("INVITE")); err != nil {
			t.Fatal(err)
		}
		w.run(time.Second)
		var got []Event
		for _, ev := range w.takeEvents(4) {
			if d, ok := ev.(Datagram); ok && string(d.Payload) == "INVITE" && d.Src == src.ID() {
				got = append(got, ev)
			}
		}
		if len(got) != 1 {
			t.Fatalf("encryption %v: datagram 0→4 not delivered once: %v", enc, got)
		}
		for i, n := range w.nodes {
			st := n.auth.Stats()
			if st.Handshakes == 0 || st.BadMAC+st.Replayed+st.WrongSender+st.BadIdentity+st.BadHandshake+st.ModeMismatch != 0 {
				t.Errorf("encryption %v: node %d: %+v", enc, i, st)
			}
		}
	}
}

// TestAuthRekey: sessions are renewed every RekeyAfter and expire after
// RejectAfter; across ten minutes no neighbour is lost and the ring holds.
func TestAuthRekey(t *testing.T) {
	w := newAuthNet(3, off, nil).line()
	w.run(30 * time.Second)
	before := w.nodes[1].auth.Stats().Handshakes
	for range 10 {
		w.run(time.Minute)
		if got := nbrIDs(w.nodes[1].Node); len(got) != 2 {
			t.Fatalf("at %v the middle node has neighbours %v", w.now.Sub(t0), got)
		}
	}
	if errs := w.ringErrors(); len(errs) > 0 {
		t.Fatalf("ring not consistent: %v", errs)
	}
	st := w.nodes[1].auth.Stats()
	// Two links, renewed every two minutes over ten: at least 8 more.
	if st.Handshakes-before < 8 {
		t.Fatalf("%d handshakes in 10 minutes, want ≥ 8: %+v", st.Handshakes-before, st)
	}
	// The table holds the newest three sessions per neighbour, no more.
	if st.Sessions > 6 {
		t.Fatalf("%d sessions for 2 neighbours", st.Sessions)
	}
}

// TestAuthRogue is the attacker on a link: it captures frames and
// replays them, injects frames claiming live and invented node IDs (bare,
// and sealed under its own genuine session), handshakes with a key whose
// hash is not the ID it claims and with a live node's public key it cannot
// sign for, and flips a byte of a frame in flight. The victim's
// neighbours, ring and route cache do not change, data keeps flowing, and
// its counters show every drop.
func TestAuthRogue(t *testing.T) {
	// Nodes 0-1-2 on a line; the rogue, node 3, is in range of node 1
	// only (an open mesh: its own key gets it a session, nothing more).
	w := newAuthNet(4, off, nil).line()
	const victim, rogue = 1, 3
	w.connect(2, 3, false)
	w.connect(victim, rogue, true)
	var captured [][]byte // frames node 0 sent to the victim
	w.tap = func(from int, to netip.AddrPort, b []byte) {
		if from == 0 && len(captured) < 200 {
			captured = append(captured, bytes.Clone(b))
		}
	}
	w.run(60 * time.Second)
	if errs := w.ringErrors(); len(errs) > 0 {
		t.Fatalf("ring not consistent: %v", errs)
	}
	v := w.nodes[victim]
	live := w.nodes[0].ID()
	fake := v.ID() + 1 // an ID right after the victim: its successor, if believed
	type view struct{ nbrs, succ, pred, cache []NodeID }
	look := func() view {
		c := v.cache.ids()
		slices.Sort(c)
		return view{nbrIDs(v.Node), v.Successors(), v.Predecessors(), c}
	}
	before := look()
	st0 := v.auth.Stats()
	// step runs the world in 100 ms steps, checking the victim's view
	// after each: a forged neighbour would time out within seconds.
	step := func(d time.Duration) {
		t.Helper()
		for end := w.now.Add(d); w.now.Before(end); {
			w.run(100 * time.Millisecond)
			now := look()
			if !slices.Equal(before.nbrs, now.nbrs) || !slices.Equal(before.succ, now.succ) || !slices.Equal(before.pred, now.pred) || !slices.Equal(before.cache, now.cache) {
				t.Fatalf("at %v the victim's view changed:\nbefore %+v\nnow    %+v", w.now.Sub(t0), before, now)
			}
		}
	}

	inject := func(b []byte) {
		w.q = append(w.q, tframe{w.now.Add(time.Millisecond), rogue, victim, b})
	}
	injectAs := func(from int, b []byte) {
		w.q = append(w.q, tframe{w.now.Add(time.Millisecond), from, victim, b})
	}
	r := w.nodes[rogue]
	r.auth.SetNow(w.now)

	// 1. Replays of captured frames: from node 0's own address (the radio
	// lets anyone send with any link address), and from the rogue's.
	for _, b := range captured {
		injectAs(0, b)
		inject(b)
	}
	// 2. Bare (unsealed) v2 frames claiming the live node 0 and an
	// invented ID next to the victim.
	for _, src := range []NodeID{live, fake} {
		inject((&hello{src: src, seq: 99, neigh: []NodeID{v.ID()}, hasMax: true, maxID: ^NodeID(0), maxSeq: 1}).appendTo(nil))
		inject(encodeRouted(&routed{proto: protoNotify, target: v.ID(), pos: 1, route: []NodeID{src, v.ID()}, payload: []byte{0, 0}}))
	}
	// 3. The same frames sealed under the rogue's genuine session: the
	// envelope authenticates the rogue, the frames name someone else.
	for _, src := range []NodeID{live, fake} {
		r.auth.SendFrame(0, v.addr, (&hello{src: src, seq: 99, neigh: []NodeID{v.ID()}}).appendTo(nil))
		r.auth.SendFrame(0, v.addr, encodeRouted(&routed{proto: protoNotify, target: v.ID(), pos: 1, route: []NodeID{src, v.ID()}, payload: []byte{0, 0}}))
	}
	// 4. A handshake claiming node 0's ID with the rogue's key, and one
	// with node 0's public key, which the rogue cannot sign for.
	eph, _ := ecdh.X25519().GenerateKey(crand.Reader)
	hs := func(claim NodeID, pub ed25519.PublicKey, idx uint32) []byte {
		b := []byte{Version, typeHSInit}
		b = binary.BigEndian.AppendUint32(b, idx)
		b = binary.BigEndian.AppendUint64(b, uint64(claim))
		b = append(b, pub...)
		b = append(b, eph.PublicKey().Bytes()...)
		b = append(b, 0)                      // mode: off
		return append(b, make([]byte, 64)...) // no admission
	}
	inject(hs(live, r.auth.pub, 7))
	step(time.Second)
	inject(hs(live, w.nodes[0].auth.pub, 8))
	var resp []byte
	w.tap = func(from int, to netip.AddrPort, b []byte) {
		if from == victim && to == r.addr && len(b) > 1 && b[1] == typeHSResp {
			resp = bytes.Clone(b)
		}
	}
	step(time.Second)
	if resp == nil {
		t.Fatal("the victim did not answer a well-formed handshake")
	}
	forged := []byte{Version, typeHSConfirm}
	forged = append(forged, resp[2:6]...)
	inject(append(forged, make([]byte, sigSize)...))
	// 5. A byte flipped in flight in node 0's frames to the victim.
	flipped := 0
	w.mangle = func(f *tframe) {
		if f.from == 0 && f.to == victim && len(f.b) > 40 && f.b[1] == typeSealed && flipped < 3 {
			f.b = bytes.Clone(f.b)
			f.b[30] ^= 0x20
			flipped++
		}
	}
	step(5 * time.Second)
	w.mangle = nil
	step(5 * time.Second)
	st := v.auth.Stats()
	d := func(a, b uint64) uint64 { return a - b }
	t.Logf("victim's counters after the attack: %+v", st)
	for _, c := range []struct {
		name string
		got  uint64
	}{
		{"replayed", d(st.Replayed, st0.Replayed)},
		{"unauthenticated (bare frames, replays from another address)", d(st.Unauthenticated, st0.Unauthenticated)},
		{"wrong sender (sealed by the rogue in another's name)", d(st.WrongSender, st0.WrongSender)},
		{"bad identity (key not hashing to the claimed ID)", d(st.BadIdentity, st0.BadIdentity)},
		{"bad handshake (forged confirmation)", d(st.BadHandshake, st0.BadHandshake)},
		{"bad MAC (flipped byte)", d(st.BadMAC, st0.BadMAC)},
	} {
		if c.got == 0 {
			t.Errorf("no %s drops counted", c.name)
		}
	}
	if flipped == 0 {
		t.Fatal("no frame was modified in flight")
	}
	if d(st.BadMAC, st0.BadMAC) != uint64(flipped) {
		t.Errorf("%d frames modified, %d counted bad", flipped, st.BadMAC-st0.BadMAC)
	}
	// Data still flows through the victim.
	w.nodes[0].auth.SetNow(w.now)
	if err := w.nodes[0].Send(w.now, w.nodes[2].ID(), Exact, 1, 2, []byte("RTP")); err != nil {
		t.Fatal(err)
	}
	w.run(time.Second)
	if !slices.ContainsFunc(w.takeEvents(2), func(e Event) bool { d, ok := e.(Datagram); return ok && string(d.Payload) == "RTP" }) {
		t.Fatal("datagram 0→2 through the victim lost after the attack")
	}
}

// TestAuthEncryption: with mesh-encryption on, a capture of every frame on
// the air finds none of a datagram's bytes; with it off the bytes are
// there (readable, as amateur radio requires) yet authenticated.
func TestAuthEncryption(t *testing.T) {
	tone := bytes.Repeat([]byte{0xff, 0x7f, 0xd5, 0x55}, 40) // PCMU-ish
	for _, enc := range []bool{false, true} {
		w := newAuthNet(3, func(int) bool { return enc }, nil).line()
		w.run(30 * time.Second)
		var seen int
		w.tap = func(_ int, _ netip.AddrPort, b []byte) {
			if bytes.Contains(b, tone) || bytes.Contains(b, []byte("sip:alice")) {
				seen++
			}
		}
		w.nodes[0].auth.SetNow(w.now)
		for _, p := range [][]byte{tone, []byte("INVITE sip:alice@mesh SIP/2.0")} {
			if err := w.nodes[0].Send(w.now, w.nodes[2].ID(), Exact, 4000, 4000, p); err != nil {
				t.Fatal(err)
			}
		}
		w.run(time.Second)
		if got := len(w.takeEvents(2)); got != 2 {
			t.Fatalf("encryption %v: %d datagrams delivered, want 2", enc, got)
		}
		if enc && seen > 0 {
			t.Errorf("encryption on: %d frames on the air carry the plaintext", seen)
		}
		if !enc && seen != 4 { // two datagrams, two links each
			t.Errorf("encryption off: %d frames carry the plaintext, want 4", seen)
		}
	}
}

// TestAuthModeMismatch: a node with mesh-encryption on next to one with
// it off: no link forms, both log it and count it.
func TestAuthModeMismatch(t *testing.T) {
	var logs bytes.Buffer // the world runs on the test's goroutine
	w := newAuthNet(2, func(i int) bool { return i == 0 }, slog.New(slog.NewTextHandler(&logs, nil))).line()
	w.run(10 * time.Second)
	for i, n := range w.nodes {
		if len(n.Neighbours()) != 0 {
			t.Errorf("node %d has neighbours %v", i, nbrIDs(n.Node))
		}
		if n.auth.Stats().ModeMismatch == 0 || n.auth.Stats().Sessions != 0 {
			t.Errorf("node %d: %+v", i, n.auth.Stats())
		}
	}
	if got := strings.Count(logs.String(), "mixed mesh"); got < 2 {
		t.Errorf("%d mixed-mesh log lines, want both sides:\n%s", got, logs.String())
	}
}

// TestAuthOldVersion: frames of wire format v1 are refused with a log
// line, never parsed.
func TestAuthOldVersion(t *testing.T) {
	var logs bytes.Buffer // the world runs on the test's goroutine
	w := newAuthNet(1, off, slog.New(slog.NewTextHandler(&logs, nil)))
	n := w.nodes[0]
	v1 := (&hello{src: 42, seq: 1, neigh: []NodeID{n.ID()}}).appendTo(nil)
	v1[0] = 1
	n.auth.HandleFrame(t0, 0, netip.MustParseAddrPort("[fe80::9]:7447"), v1)
	if st := n.auth.Stats(); st.OldVersion != 1 || len(n.Neighbours()) != 0 || n.Stats().FramesIn != 0 {
		t.Fatalf("v1 frame: %+v, neighbours %v, node frames %d", st, n.Neighbours(), n.Stats().FramesIn)
	}
	if !strings.Contains(logs.String(), "wire format v1") {
		t.Fatalf("no clear log line: %q", logs.String())
	}
}

// TestReplayWindow checks the bitmap window against a map of seen
// counters on random, reordered and replayed input.
func TestReplayWindow(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var w replayWindow
	seen := map[uint64]bool{}
	var last uint64
	for range 200000 {
		var c uint64
		switch rng.IntN(4) {
		case 0:
			c = last + uint64(rng.IntN(3000))
		case 1:
			c = last - min(last, uint64(rng.IntN(1200)))
		default:
			c = last + 1
		}
		want := !seen[c] && (c > last || last-c < (replayWords-1)*64) || len(seen) == 0
		if got := w.fresh(c); got != want {
			t.Fatalf("fresh(%d) after last %d = %v, want %v", c, last, got, want)
		}
		if want {
			w.accept(c)
			seen[c] = true
			last = max(last, c)
		}
	}
}

// TestAuthNoAlloc: sealing and opening a frame allocate nothing.
func TestAuthNoAlloc(t *testing.T) {
	for _, enc := range []bool{false, true} {
		w := newAuthNet(2, func(int) bool { return enc }, nil).line()
		w.run(10 * time.Second)
		a, b := w.nodes[0], w.nodes[1]
		// Position 0: the receiving Node drops it at once, so what is
		// measured is link security, not routing or delivery.
		frame := encodeRouted(&routed{proto: protoData, target: b.ID(), pos: 0, route: []NodeID{a.ID(), b.ID()}, payload: make([]byte, 172)})
		w.connect(0, 1, false) // the tap copies; the world's queue would too
		var wire []byte
		w.tap = func(_ int, _ netip.AddrPort, f []byte) { wire = append(wire[:0], f...) }
		rx := make([]byte, 0, 512)
		allocs := testing.AllocsPerRun(100, func() {
			a.auth.SendFrame(0, b.addr, frame)
			rx = append(rx[:0], wire...)
			b.auth.HandleFrame(w.now, 0, a.addr, rx)
		})
		w.q = nil
		if st := b.auth.Stats(); st.BadMAC+st.Replayed+st.Unauthenticated != 0 {
			t.Fatalf("encryption %v: frames refused: %+v", enc, st)
		}
		// The receiving Node's own handling is not link security's.
		if allocs > 0 {
			t.Errorf("encryption %v: %.1f allocations per frame", enc, allocs)
		}
	}
}

// FuzzLinkAuth feeds link security anything from a neighbour's address,
// with sessions in place so that bytes reach the tag checks: it must not
// crash, and the neighbour's genuine frames keep passing.
func FuzzLinkAuth(f *testing.F) {
	w := newAuthNet(2, off, nil).line()
	var seeds [][]byte
	w.tap = func(_ int, _ netip.AddrPort, b []byte) {
		if len(seeds) < 12 {
			seeds = append(seeds, bytes.Clone(b))
		}
	}
	w.run(5 * time.Second)
	for _, b := range seeds {
		f.Add(b)
	}
	v1 := (&hello{src: 42, seq: 1}).appendTo(nil)
	v1[0] = 1
	f.Add(v1)
	f.Add([]byte{Version, typeBeacon, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 255})
	f.Fuzz(func(t *testing.T, b []byte) {
		w := newAuthNet(2, off, nil).line()
		w.run(5 * time.Second)
		a, v := w.nodes[0], w.nodes[1]
		v.auth.HandleFrame(w.now, 0, a.addr, b)
		st := v.auth.Stats()
		w.run(5 * time.Second)
		if got := nbrIDs(v.Node); !slices.Equal(got, []NodeID{a.ID()}) {
			t.Fatalf("neighbour lost after % x: %v", b, got)
		}
		if st2 := v.auth.Stats(); st2.BadMAC+st2.Replayed+st2.WrongSender != st.BadMAC+st.Replayed+st.WrongSender {
			t.Fatalf("genuine frames refused after % x: %+v", b, st2)
		}
	})
}

// TestAuthClosedMesh: with mesh-admission closed only nodes whose key the
// administrator signed get a link; one admitted by another key, or not at
// all, is refused (and logged) by its admitted neighbour.
func TestAuthClosedMesh(t *testing.T) {
	admin, other := keyFor(200), keyFor(201)
	var logs bytes.Buffer
	// 0 and 1 admitted; 2 admitted by another administrator; 3 by none.
	w := newAuthNetCfg(4, func(i int, c *AuthConfig) {
		pub := c.Key.Public().(ed25519.PublicKey)
		switch i {
		case 0, 1:
			c.Admission = Admit(admin, pub)
		case 2:
			c.Admission = Admit(other, pub)
		}
		c.Closed, c.Admin = true, admin.Public().(ed25519.PublicKey)
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	w.connect(0, 1, true)
	w.connect(1, 2, true)
	w.connect(1, 3, true)
	w.run(10 * time.Second)
	if got := nbrIDs(w.nodes[1].Node); !slices.Equal(got, []NodeID{w.nodes[0].ID()}) {
		t.Errorf("node 1's neighbours %v, want node 0 only", got)
	}
	for _, i := range []int{2, 3} {
		if n := len(w.nodes[i].Neighbours()); n != 0 {
			t.Errorf("unadmitted node %d has %d neighbours", i, n)
		}
	}
	if st := w.nodes[1].auth.Stats(); st.NotAdmitted == 0 || st.Sessions != 1 {
		t.Errorf("node 1: %+v", st)
	}
	if !strings.Contains(logs.String(), "closed mesh") {
		t.Errorf("no log line for the refused nodes:\n%s", logs.String())
	}
	if !Admitted(admin.Public().(ed25519.PublicKey), w.nodes[0].auth.pub, Admit(admin, w.nodes[0].auth.pub)) ||
		Admitted(admin.Public().(ed25519.PublicKey), w.nodes[2].auth.pub, Admit(admin, w.nodes[0].auth.pub)) {
		t.Error("Admitted does not tell an admission from another node's")
	}
}

// TestKeysHKDF checks the spelled-out HKDF against crypto/hkdf.
func TestKeysHKDF(t *testing.T) {
	secret := bytes.Repeat([]byte{7}, 32)
	var tr [32]byte
	tr[0] = 9
	want, err := hkdf.Key(sha256.New, secret, tr[:], keyLabel, 64)
	if err != nil {
		t.Fatal(err)
	}
	i2r, r2i, ok := keys(secret, tr, keyLabel)
	ref1, _ := chacha20poly1305.New(want[:32])
	ref2, _ := chacha20poly1305.New(want[32:])
	nonce := make([]byte, 12)
	for _, c := range [][2]cipher.AEAD{{i2r, ref1}, {r2i, ref2}} {
		if !ok || !bytes.Equal(c[0].Seal(nil, nonce, []byte("x"), nil), c[1].Seal(nil, nonce, []byte("x"), nil)) {
			t.Fatal("keys differ from RFC 5869 HKDF")
		}
	}
}

// TestAuthHandshakeChurn: handshakes started at random by either side,
// often both at once, while datagrams flow both ways every millisecond:
// no frame is refused and every datagram arrives (sessions are kept until
// no frame can be in flight under them).
func TestAuthHandshakeChurn(t *testing.T) {
	w := newAuthNet(2, off, nil).line()
	w.run(5 * time.Second)
	rng := rand.New(rand.NewPCG(3, 4))
	st0 := [2]AuthStats{w.nodes[0].auth.Stats(), w.nodes[1].auth.Stats()}
	sent := 0
	for range 3000 {
		for i, n := range w.nodes {
			n.auth.SetNow(w.now)
			if err := n.Send(w.now, w.nodes[1-i].ID(), Exact, 1, 2, []byte("x")); err != nil {
				t.Fatal(err)
			}
			sent++
			if rng.IntN(40) == 0 {
				n.auth.peers[peerKey{0, w.nodes[1-i].addr}].lastInit = time.Time{}
				n.auth.initiate(0, w.nodes[1-i].addr)
			}
		}
		w.run(time.Millisecond)
	}
	w.run(time.Second)
	got := 0
	for i := range w.nodes {
		for _, ev := range w.takeEvents(i) {
			if d, ok := ev.(Datagram); ok && string(d.Payload) == "x" {
				got++
			}
		}
		st := w.nodes[i].auth.Stats()
		if st.Unauthenticated != st0[i].Unauthenticated || st.SendNoSession != st0[i].SendNoSession || st.Handshakes-st0[i].Handshakes < 10 {
			t.Errorf("node %d: %+v", i, st)
		}
	}
	if got != sent {
		t.Errorf("%d of %d datagrams arrived", got, sent)
	}
}
