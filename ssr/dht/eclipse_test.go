package dht

import (
	"crypto/ed25519"
	"fmt"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/ssr"
)

// honestNodes are the ring's nodes that are not attackers.
func honestNodes(r *fakeRing) []*fnode {
	return slices.DeleteFunc(r.sorted(), func(f *fnode) bool { return f.deny })
}

// getResult runs a Get from f to its end.
func getResult(t *testing.T, f *fnode, key string) Result {
	t.Helper()
	id, err := f.n.Get(f.r.now, key)
	if err != nil {
		t.Fatal(err)
	}
	return f.wait(id)
}

// surround puts k attackers right below key's position: the owner and the
// first k−1 nodes a walk meets.
func surround(r *fakeRing, key string, k int, silent bool) {
	for j := range k {
		r.addAttacker(KeyOf(key)-ssr.NodeID(j), silent)
	}
}

// TestEclipseBeforeWrite: attackers own a key before it is written. With
// rank-only placement the key is gone (the test can fail); with the walk
// the writer's copies and the readers' walk get past them, whether they
// answer "not found" or stay silent.
func TestEclipseBeforeWrite(t *testing.T) {
	for _, c := range []struct {
		name   string
		p      Params
		silent bool
		found  bool
	}{
		{"rank only", Params{Walk: -1}, false, false},
		{"walk, denying", Params{}, false, true},
		{"walk, silent", Params{}, true, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newFakeRing(t, 40, c.p)
			key := "aor:sip:666@mesh"
			surround(r, key, 5, c.silent)
			r.run(time.Second)
			hs := honestNodes(r)
			id, err := hs[0].n.Put(r.now, key, []byte("v"), time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			hs[0].wait(id) // the attacker acknowledges (or stays silent): the outcome says nothing
			r.run(10 * time.Second)
			// Readers holding no copy themselves (a holder answers from
			// its own copy when the owner has nothing).
			copies := r.copies(key)
			readers := slices.DeleteFunc(slices.Clone(hs), func(f *fnode) bool { _, ok := copies[f.id]; return ok })
			for _, f := range []*fnode{readers[3], readers[len(readers)/2], readers[len(readers)-1]} {
				res := getResult(t, f, key)
				got := len(res.Records) == 1 && string(res.Records[0].Value) == "v"
				if got != c.found {
					t.Fatalf("get from %v: %v (walked %d), found %v, want %v", f.id, res.Records, res.Walked, got, c.found)
				}
				// Denying nodes are stepped over one by one; a silent
				// owner's packed cluster in one blind step.
				if c.found && (res.Walked < 5 && !c.silent || res.Walked < 1) {
					t.Errorf("found after walking %d nodes past 5 attackers", res.Walked)
				}
			}
		})
	}
}

// TestEclipseAfterWrite: the attacker inserts its nodes between the key
// and its honest holders after the write. The holders hand their copies
// to the new "owner" but keep them (within the arc), so the key stays
// readable; with rank-only placement they drop them once acknowledged.
func TestEclipseAfterWrite(t *testing.T) {
	for _, c := range []struct {
		name  string
		p     Params
		found bool
	}{
		{"rank only", Params{Walk: -1}, false},
		{"walk", Params{}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newFakeRing(t, 40, c.p)
			key := "aor:sip:667@mesh"
			hs := honestNodes(r)
			if err := hs[0].put(key, "v", time.Hour); err != nil {
				t.Fatal(err)
			}
			r.run(10 * time.Second)
			surround(r, key, 3, false)
			r.run(30 * time.Second)
			res := getResult(t, hs[20], key)
			if got := len(res.Records) == 1; got != c.found {
				t.Fatalf("found %v (walked %d), want %v; copies on %d honest nodes", got, res.Walked, c.found, len(r.copies(key)))
			}
			if c.found {
				var kept uint64
				for _, f := range hs {
					kept += f.n.Metrics().KeptInArc
				}
				if kept == 0 {
					t.Error("no copy kept within the arc")
				}
			}
		})
	}
}

// TestWalkBounded: the walk gives up after Walk nodes past the owner, so
// an attacker with more nodes than that before the first honest holder
// does deny the key (what the bound costs it, package doc).
func TestWalkBounded(t *testing.T) {
	r := newFakeRing(t, 40, Params{Walk: 4})
	key := "aor:sip:668@mesh"
	surround(r, key, 6, false)
	r.run(time.Second)
	hs := honestNodes(r)
	if err := hs[0].put(key, "v", time.Hour); err != nil {
		t.Fatal(err)
	}
	r.run(10 * time.Second)
	res := getResult(t, hs[9], key)
	if len(res.Records) != 0 || res.Err != nil || res.Walked != 4 {
		t.Fatalf("got %v, %v after walking %d; want not found after 4", res.Records, res.Err, res.Walked)
	}
}

// TestWalkHonest: on an honest ring a found key costs no walk; a key
// nobody wrote walks only across the arc; a deleted key stops at the
// owner's tombstone (copies below may be older than the deletion).
func TestWalkHonest(t *testing.T) {
	r := newFakeRing(t, 200, Params{})
	hs := honestNodes(r)
	for i := range 20 {
		k := fmt.Sprintf("aor:sip:%d@mesh", 700+i)
		if err := hs[i].put(k, "v", time.Hour); err != nil {
			t.Fatal(err)
		}
		if res := getResult(t, hs[100+i], k); len(res.Records) != 1 || res.Walked != 0 {
			t.Fatalf("%q: %v, walked %d", k, res.Records, res.Walked)
		}
		nk := fmt.Sprintf("aor:sip:%d@nowhere", i)
		res := getResult(t, hs[100+i], nk)
		// Arc = 6 expected gaps: about 7 nodes, rarely more than twice that.
		if len(res.Records) != 0 || res.Err != nil || res.Walked == 0 || res.Walked > 16 {
			t.Fatalf("%q: %v, %v, walked %d", nk, res.Records, res.Err, res.Walked)
		}
		if err := hs[i].del(k); err != nil {
			t.Fatal(err)
		}
		if res := getResult(t, hs[50+i], k); len(res.Records) != 0 || res.Walked != 0 {
			t.Fatalf("%q after delete: %v, walked %d", k, res.Records, res.Walked)
		}
	}
}

// TestGaps checks the gap estimates on an even ring and that a view that
// wraps (a ring smaller than the view) gives none.
func TestGaps(t *testing.T) {
	n := New(0, testKey(1), Params{}, nil, 1)
	const g = 1 << 40
	for i := 1; i <= 4; i++ {
		n.succ = append(n.succ, ssr.NodeID(i*g))
		n.pred = append(n.pred, ssr.NodeID(-i*g))
	}
	if mean, keep := n.gaps(); mean != g || keep != g {
		t.Fatalf("even ring: gaps %d, %d, want %d", mean, keep, g)
	}
	// An attacker crowding one side shrinks the mean, not the keep gap.
	n.succ = []ssr.NodeID{1, 2, 3, 4}
	if mean, keep := n.gaps(); mean >= g || keep != g {
		t.Fatalf("crowded successors: gaps %d, %d, want < %d and %d", mean, keep, g, g)
	}
	if !n.keeps(ssr.NodeID(2*6*g)) || n.keeps(ssr.NodeID(2*6*g+1)) {
		t.Error("keep arc is not twice Arc gaps")
	}
	// Four nodes: the view wraps.
	n.succ = []ssr.NodeID{g, 2 * g, 3 * g, 0}
	n.pred = []ssr.NodeID{3 * g, 2 * g, g, 0}
	if mean, keep := n.gaps(); mean != 0 || keep != 0 || n.walkArc() != 0 {
		t.Fatalf("wrapping view: gaps %d, %d", mean, keep)
	}
	if satMul(math.MaxUint64/3, 4) != math.MaxUint64 || satMul(5, 3) != 15 {
		t.Error("satMul")
	}
}

// TestDenyAnswer: what the simulated attacker says.
func TestDenyAnswer(t *testing.T) {
	r := Record{Key: "k", Writer: testKey(1).Public().(ed25519.PublicKey), Seq: 1, Lifetime: time.Hour, Remaining: time.Hour, Value: []byte("v")}
	r.Sign(testKey(1))
	m, err := decode(DenyAnswer(nil, encodeGet(nil, 7, 0, "k")))
	if err != nil || m.typ != msgGetReply || m.req != 7 || len(m.recs) != 0 {
		t.Fatalf("answer to GET: %+v, %v", m, err)
	}
	m, err = decode(DenyAnswer(nil, encodeStore(nil, 8, storeAck, &r)))
	if err != nil || m.typ != msgStoreAck || m.req != 8 || m.code != codeOK {
		t.Fatalf("answer to STORE: %+v, %v", m, err)
	}
	if DenyAnswer(nil, encodeStore(nil, 0, storeReplica, &r)) != nil || DenyAnswer(nil, []byte{9}) != nil {
		t.Fatal("answers what wants no answer")
	}
}

// TestGetAnswersFromOwnCopy: when the owner and every node asked say "not
// found" (the owner has just taken over, or its replicas stayed silent),
// a reader that holds a copy itself answers with it; a reader without one
// still finds nothing.
func TestGetAnswersFromOwnCopy(t *testing.T) {
	r := newFakeRing(t, 10, Params{Walk: -1})
	r.run(time.Second)
	key := "aor:sip:668@mesh"
	hs := r.sorted()
	if err := hs[0].put(key, "v", time.Hour); err != nil {
		t.Fatal(err)
	}
	r.run(10 * time.Second)
	copies := r.copies(key)
	var holder, other *fnode
	for _, f := range hs {
		if _, ok := copies[f.id]; ok && holder == nil {
			holder = f
		} else if !ok && other == nil {
			other = f
		}
	}
	if holder == nil || other == nil {
		t.Fatalf("copies on %d of %d nodes", len(copies), len(hs))
	}
	for _, f := range hs {
		if f != holder {
			f.n.st = newStore(f.n.p) // every other copy lost
		}
	}
	// The holder is too busy to answer the owner's consults.
	r.drop = func(m fmsg) bool {
		msg, err := decode(m.payload)
		return err == nil && m.target == holder.id && msg.typ == msgGet && msg.flags&getLocal != 0
	}
	if recs := other.get(key); len(recs) != 0 {
		t.Fatalf("a reader without a copy found %+v", recs)
	}
	if recs := holder.get(key); len(recs) != 1 || string(recs[0].Value) != "v" {
		t.Fatalf("holder's get: %+v", recs)
	}
}
