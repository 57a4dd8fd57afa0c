package ssr

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"testing"
	"time"
)

// The seed corpus is both added with f.Add and committed under
// testdata/fuzz/<FuzzName>/seed-*; regenerate the files with
//
//	SSR_WRITE_FUZZ_CORPUS=1 go test -run TestWriteFuzzCorpus ./ssr/

func helloSeeds() map[string][]byte {
	out := map[string][]byte{}
	for name, h := range map[string]hello{
		"bare":       {src: 1, seq: 1},
		"neighbours": {src: 2, seq: 9, neigh: ids(3, 5)},
		"max-self":   {src: 3, seq: 4, neigh: ids(1, 3), hasMax: true, maxID: 3, maxSeq: 4},
		"max-path":   {src: 4, seq: 5, neigh: ids(2, 3), hasMax: true, maxID: ^NodeID(0), maxSeq: 77, path: ids(3, 100)},
		"64-nbrs":    {src: 5, seq: 6, neigh: ids(maxHelloNbr, 9)},
	} {
		out[name] = h.appendTo(nil)
	}
	return out
}

func routedSeeds() map[string][]byte {
	out := map[string][]byte{}
	for name, r := range routedSamples() {
		out[name] = encodeRouted(&r)
	}
	return out
}

func FuzzHelloDecode(f *testing.F) {
	for _, b := range helloSeeds() {
		f.Add(b)
	}
	f.Add([]byte{Version, typeHello})
	prev := hello{src: 7, neigh: ids(20, 1), hasMax: true, maxID: 8, path: ids(30, 2)}
	prevFrame := prev.appendTo(nil)
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := decodeHello(b)
		if err != nil {
			return
		}
		if len(h.neigh) > maxHelloNbr {
			t.Fatalf("%d neighbours accepted", len(h.neigh))
		}
		// Bytes after the last field are ignored, so the frame is the
		// encoding plus, perhaps, a tail.
		enc := h.appendTo(nil)
		if !bytes.HasPrefix(b, enc) {
			t.Fatalf("re-encoded % x\nnot a prefix of % x", enc, b)
		}
		// Decoding into a used struct (Node reuses its scratch) must give
		// the same result.
		var reused hello
		if err := reused.decode(prevFrame); err != nil {
			t.Fatal(err)
		}
		if err := reused.decode(b); err != nil {
			t.Fatalf("fresh decode ok, reused: %v", err)
		}
		if !reflect.DeepEqual(normHello(reused), normHello(*h)) {
			t.Fatalf("reused decode %+v, fresh %+v", reused, *h)
		}
	})
}

func FuzzRoutedDecode(f *testing.F) {
	for _, b := range routedSeeds() {
		f.Add(b)
	}
	prev := routedSamples()["max-route"]
	prevFrame := encodeRouted(&prev)
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRouted(b)
		if err != nil {
			return
		}
		if len(r.route) == 0 || int(r.pos) >= len(r.route) || r.proto < protoData || r.proto > protoE2E {
			t.Fatalf("accepted %+v", r)
		}
		// The payload runs to the end: the encoding is the frame.
		if enc := encodeRouted(r); !bytes.Equal(enc, b) {
			t.Fatalf("re-encoded % x\nwant       % x", enc, b)
		}
		var reused routed
		if err := reused.decode(prevFrame); err != nil {
			t.Fatal(err)
		}
		if err := reused.decode(b); err != nil || !slices.Equal(reused.route, r.route) || !bytes.Equal(reused.payload, r.payload) {
			t.Fatalf("reused decode %+v (%v), fresh %+v", reused, err, r)
		}
	})
}

// ---- a node under fuzzing ----

// The fuzzed node X has two symmetric neighbours, A on link 0 and B on link
// 1, and knows the global maximum M two hops away behind B.
const (
	fzX NodeID = 0x8000000000000000
	fzA NodeID = 0x4000000000000000
	fzB NodeID = 0xc000000000000000
	fzM NodeID = 0xf000000000000000
)

var (
	fzAddrA   = netip.MustParseAddrPort("[fe80::a]:7447")
	fzAddrB   = netip.MustParseAddrPort("[fe80::b]:7447")
	fzAddrBad = netip.MustParseAddrPort("[fe80::bad]:7447")
)

type fenv struct {
	frames []fsent
	events []Event
}

type fsent struct {
	link LinkID
	to   netip.AddrPort
	b    []byte
}

func (e *fenv) SendFrame(l LinkID, to netip.AddrPort, b []byte) {
	e.frames = append(e.frames, fsent{l, to, bytes.Clone(b)})
}

func (e *fenv) Deliver(ev Event) { e.events = append(e.events, ev) }

// feedNeighbours hands X the beacons of A and B (both hear X).
func feedNeighbours(n *Node, now time.Time, seq uint32) {
	a := hello{src: fzA, seq: seq, neigh: []NodeID{fzX}}
	b := hello{src: fzB, seq: seq, neigh: []NodeID{fzX, fzM}, hasMax: true, maxID: fzM, maxSeq: seq, path: []NodeID{fzM}}
	n.HandleFrame(now, 0, fzAddrA, a.appendTo(nil))
	n.HandleFrame(now, 1, fzAddrB, b.appendTo(nil))
}

func newFuzzNode(t testing.TB) (*Node, *fenv) {
	env := &fenv{}
	n := New(fzX, Params{}, env, 1)
	n.AddLink(0)
	n.AddLink(1)
	n.Tick(t0)
	feedNeighbours(n, t0, 1)
	if nb := n.Neighbours(); len(nb) != 2 || !slices.Equal(n.Route(fzM), []NodeID{fzB, fzM}) {
		t.Fatalf("setup: neighbours %+v, route to M %v", nb, n.Route(fzM))
	}
	return n, env
}

func rframe(proto, flags byte, target NodeID, pos uint8, route []NodeID, payload []byte) []byte {
	r := routed{proto: proto, flags: flags, target: target, pos: pos, route: route, payload: payload}
	return encodeRouted(&r)
}

func errPayload(code byte, a, b NodeID, proto byte, tail uint32) []byte {
	p := []byte{code}
	p = binary.BigEndian.AppendUint64(p, uint64(a))
	p = binary.BigEndian.AppendUint64(p, uint64(b))
	p = append(p, proto)
	return binary.BigEndian.AppendUint32(p, tail)
}

// nodeSeeds are frames that reach the interesting parts of X: every
// protocol delivered to it, frames it relays, beacons.
func nodeSeeds() map[string][]byte {
	const Q = NodeID(0x2000000000000000) // a node behind A
	echo := binary.BigEndian.AppendUint32(nil, 5)
	echo = binary.BigEndian.AppendUint64(echo, uint64(t0.UnixNano()))
	echoReply := appendIDs(append(bytes.Clone(echo), 3), []NodeID{fzX, fzA, Q})
	view := []byte{0, 2}
	view = binary.BigEndian.AppendUint64(view, uint64(Q))
	view = appendIDs(append(view, 1), []NodeID{Q})
	view = binary.BigEndian.AppendUint64(view, uint64(fzM))
	view = appendIDs(append(view, 3), []NodeID{Q, 0x1000000000000000, fzM})
	helloQ := hello{src: Q, seq: 3, neigh: []NodeID{fzX, fzA}, hasMax: true, maxID: ^NodeID(0), maxSeq: 9, path: []NodeID{fzA, ^NodeID(0)}}
	helloAForgets := hello{src: fzA, seq: 2}
	return map[string][]byte{
		"hello-new":        helloQ.appendTo(nil),
		"hello-a-forgets":  helloAForgets.appendTo(nil),
		"data-to-x":        rframe(protoData, 0, fzX, 2, []NodeID{Q, fzA, fzX}, []byte{0x13, 0xc4, 0x13, 0xc5, 'h', 'i'}),
		"data-closest":     rframe(protoData, flagClosest, fzX+5, 1, []NodeID{fzA, fzX}, []byte{0, 1, 0, 2}),
		"data-relay":       rframe(protoData, 0, fzM, 1, []NodeID{fzA, fzX, fzB, fzM}, []byte{0, 1, 0, 2, 'x'}),
		"data-decide":      rframe(protoData, 0, fzM, 1, []NodeID{fzA, fzX}, []byte{0, 1, 0, 2}),
		"data-ghost":       rframe(protoData, 0, fzX+1, 1, []NodeID{fzA, fzX}, []byte{0, 1, 0, 2}),
		"data-broken-next": rframe(protoData, 0, Q, 1, []NodeID{fzB, fzX, Q}, []byte{0, 1, 0, 2}),
		"data-loop":        rframe(protoData, 0, fzM, 3, []NodeID{fzA, fzX, fzA, fzX, fzB}, []byte{0, 1, 0, 2}),
		"notify":           rframe(protoNotify, 0, fzX, 1, []NodeID{fzA, fzX}, view),
		"notify-reply":     rframe(protoNotify, 0, fzX, 1, []NodeID{fzB, fzX}, []byte{1, 0}),
		"find":             rframe(protoFind, flagClosest, fzX+1000, 1, []NodeID{fzA, fzX}, []byte{3}),
		"find-reply":       rframe(protoFindReply, 0, fzX, 1, []NodeID{fzB, fzX}, []byte{0}),
		"echo":             rframe(protoEcho, 0, fzX, 1, []NodeID{fzA, fzX}, echo),
		"echo-reply":       rframe(protoEchoReply, 0, fzX, 2, []NodeID{Q, fzA, fzX}, echoReply),
		"error-link-relay": rframe(protoError, flagHopByHop, fzA, 1, []NodeID{fzB, fzX, fzA}, errPayload(errLinkBroken, fzB, fzM, protoData, 0x13c50000)),
		// A report that X's own link to A is broken (X is "a"): only X can
		// send that, so it is forged or corrupt. X drops A's route until
		// A's next beacon.
		"error-link-own": rframe(protoError, flagHopByHop, fzA, 1, []NodeID{fzB, fzX, fzA}, errPayload(errLinkBroken, fzX, fzA, protoData, 0)),
		"error-unr-to-x": rframe(protoError, flagHopByHop, fzX, 1, []NodeID{fzA, fzX}, errPayload(errUnreachable, fzA, fzX+1, protoEcho, 5)),
		"error-unr-data": rframe(protoError, flagHopByHop, fzX, 1, []NodeID{fzB, fzX}, errPayload(errUnreachable, fzB, fzM, protoData, 0x13c50000)),
		"truncated":      rframe(protoData, 0, fzX, 1, []NodeID{fzA, fzX}, nil)[:20],
		"e2e-init-to-x":  rframe(protoE2E, 0, fzX, 1, []NodeID{fzA, fzX}, append([]byte{e2eInit}, make([]byte, e2eInitLen-1)...)),
		"e2e-relay":      rframe(protoE2E, 0, fzM, 1, []NodeID{fzA, fzX, fzB, fzM}, []byte{e2eConfirm}),
		"bad-version":    {2, typeRouted, protoData, 0},
	}
}

func FuzzNodeHandleFrame(f *testing.F) {
	for _, b := range nodeSeeds() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		n, env := newFuzzNode(t)
		now := t0.Add(time.Second)
		n.HandleFrame(now, 0, fzAddrBad, b)
		if err := cacheStructureErr(n.cache); err != nil {
			t.Fatalf("cache corrupted: %v", err)
		}
		checkFuzzNode(t, n, env, now.Add(time.Second))
	})
}

// checkFuzzNode checks that after whatever it was fed, X still works once
// its neighbours beacon again: both are neighbours, a ping to A and a
// datagram to B leave on the right links, an echo request from A is
// answered.
func checkFuzzNode(t *testing.T, n *Node, env *fenv, now time.Time) {
	t.Helper()
	feedNeighbours(n, now, 1000)
	var nbs []NodeID
	for _, nb := range n.Neighbours() {
		nbs = append(nbs, nb.ID)
	}
	for _, id := range []NodeID{fzA, fzB} {
		if !slices.Contains(nbs, id) {
			t.Fatalf("neighbour %v lost: neighbours %v", id, nbs)
		}
		if r := n.Route(id); !slices.Equal(r, []NodeID{id}) {
			t.Fatalf("neighbour %v: cached route %v after its beacon", id, r)
		}
	}
	want := func(what string, link LinkID, to netip.AddrPort, proto byte, route []NodeID) *routed {
		t.Helper()
		if len(env.frames) != 1 {
			t.Fatalf("%s: %d frames sent, want 1", what, len(env.frames))
		}
		f := env.frames[0]
		env.frames = env.frames[:0]
		r, err := decodeRouted(f.b)
		if err != nil || f.link != link || f.to != to || r.proto != proto || r.pos != 1 || !slices.Equal(r.route, route) {
			t.Fatalf("%s: sent on link %d to %v: %+v (%v)", what, f.link, f.to, r, err)
		}
		return r
	}
	env.frames, env.events = env.frames[:0], nil
	n.Ping(now, fzA, 77)
	want("ping A", 0, fzAddrA, protoEcho, []NodeID{fzX, fzA})
	if err := n.Send(now, fzB, Exact, 1, 2, []byte("after fuzz")); err != nil {
		t.Fatal(err)
	}
	if r := want("send to B", 1, fzAddrB, protoData, []NodeID{fzX, fzB}); !bytes.Equal(r.payload, []byte("\x00\x01\x00\x02after fuzz")) {
		t.Fatalf("payload % x", r.payload)
	}
	req := binary.BigEndian.AppendUint32(nil, 9)
	req = binary.BigEndian.AppendUint64(req, 12345)
	n.HandleFrame(now, 0, fzAddrA, rframe(protoEcho, 0, fzX, 1, []NodeID{fzA, fzX}, req))
	r := want("echo reply to A", 0, fzAddrA, protoEchoReply, []NodeID{fzX, fzA})
	if wantP := appendIDs(append(bytes.Clone(req), 2), []NodeID{fzA, fzX}); !bytes.Equal(r.payload, wantP) {
		t.Fatalf("echo reply payload % x, want % x", r.payload, wantP)
	}
	if len(env.events) != 0 {
		t.Fatalf("events %+v", env.events)
	}
}

// TestFuzzNodeSeeds runs the node seeds with a descriptive name each (the
// fuzz target runs them too, anonymously).
func TestFuzzNodeSeeds(t *testing.T) {
	seeds := nodeSeeds()
	names := make([]string, 0, len(seeds))
	for name := range seeds {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			n, env := newFuzzNode(t)
			n.HandleFrame(t0.Add(time.Second), 0, fzAddrBad, seeds[name])
			if err := cacheStructureErr(n.cache); err != nil {
				t.Fatal(err)
			}
			checkFuzzNode(t, n, env, t0.Add(2*time.Second))
		})
	}
}

func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("SSR_WRITE_FUZZ_CORPUS") == "" {
		t.Skip("set SSR_WRITE_FUZZ_CORPUS=1 to rewrite testdata/fuzz/*/seed-*")
	}
	for target, seeds := range map[string]map[string][]byte{
		"FuzzHelloDecode":     helloSeeds(),
		"FuzzRoutedDecode":    routedSeeds(),
		"FuzzNodeHandleFrame": nodeSeeds(),
		"FuzzE2E":             e2eSeeds(),
	} {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, b := range seeds {
			data := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
			if err := os.WriteFile(filepath.Join(dir, "seed-"+name), []byte(data), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}
