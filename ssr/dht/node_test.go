package dht

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/ssr"
)

func values(recs []Record) []string {
	var out []string
	for _, r := range recs {
		out = append(out, string(r.Value))
	}
	slices.Sort(out)
	return out
}

func anyNode(r *fakeRing, i int) *fnode { return r.sorted()[i%len(r.sorted())] }

// checkPlacement asserts that key sits on the Replicas responsible nodes,
// and elsewhere only (with the eclipse defence on) on nodes that keep it
// within the arc below the key.
func checkPlacement(t *testing.T, r *fakeRing, key string, replicas int) {
	t.Helper()
	got := slices.Sorted(maps.Keys(r.copies(key)))
	want := r.holders(key, anyNode(r, 0).id, replicas)
	slices.Sort(want)
	if r.params.Walk < 0 {
		if !slices.Equal(got, want) {
			t.Fatalf("%q held by %v, want %v", key, got, want)
		}
		return
	}
	for _, id := range want {
		if !slices.Contains(got, id) {
			t.Fatalf("%q held by %v, want at least %v", key, got, want)
		}
	}
	for _, id := range got {
		if n := r.nodes[id].n; !slices.Contains(want, id) && n.rank(KeyOf(key)) < 0 && !n.keeps(KeyOf(key)) {
			t.Fatalf("%q held by %v: %v is neither responsible nor within the arc", key, got, id)
		}
	}
}

// bothPlacements runs f with rank-only placement and with the eclipse
// defence (the default).
func bothPlacements(t *testing.T, f func(t *testing.T, p Params)) {
	t.Run("rank only", func(t *testing.T) { f(t, Params{Walk: -1}) })
	t.Run("eclipse defence", func(t *testing.T) { f(t, Params{}) })
}

func TestPutGetDelete(t *testing.T) {
	r := newFakeRing(t, 12, Params{})
	a, b := anyNode(r, 0), anyNode(r, 5)
	if err := a.put("aor:sip:201@mesh", "contact-a", time.Hour); err != nil {
		t.Fatal(err)
	}
	if got := values(b.get("aor:sip:201@mesh")); !slices.Equal(got, []string{"contact-a"}) {
		t.Fatalf("get = %q", got)
	}
	r.run(time.Second)
	checkPlacement(t, r, "aor:sip:201@mesh", 3)

	// A second writer under the same key: both are returned.
	if err := b.put("aor:sip:201@mesh", "contact-b", time.Hour); err != nil {
		t.Fatal(err)
	}
	if got := values(anyNode(r, 7).get("aor:sip:201@mesh")); !slices.Equal(got, []string{"contact-a", "contact-b"}) {
		t.Fatalf("get = %q", got)
	}
	// Overwrite, then delete a's record: b's stays.
	if err := a.put("aor:sip:201@mesh", "contact-a2", time.Hour); err != nil {
		t.Fatal(err)
	}
	if got := values(b.get("aor:sip:201@mesh")); !slices.Equal(got, []string{"contact-a2", "contact-b"}) {
		t.Fatalf("get = %q", got)
	}
	if err := a.del("aor:sip:201@mesh"); err != nil {
		t.Fatal(err)
	}
	if got := values(b.get("aor:sip:201@mesh")); !slices.Equal(got, []string{"contact-b"}) {
		t.Fatalf("get after delete = %q", got)
	}
	if got := b.get("aor:sip:999@mesh"); len(got) != 0 {
		t.Fatalf("unknown key: %v", got)
	}
	// Every node learns the same owner from a Get, records or not (the
	// party line's room placement relies on it).
	owner := responsible(r.ring(a.id), KeyOf("room 426"))
	for _, i := range []int{0, 5, 7} {
		f := anyNode(r, i)
		id, err := f.n.Get(r.now, "room 426")
		if err != nil {
			t.Fatal(err)
		}
		if res := f.wait(id); res.Err != nil || res.Owner != owner {
			t.Errorf("node %d: Get owner %v (%v), want %v", i, res.Owner, res.Err, owner)
		}
	}
	m := r.nodes[responsible(r.ring(a.id), KeyOf("aor:sip:201@mesh"))].n.Metrics()
	if m.PutsServed < 4 || m.GetsServed < 4 || m.Tombstones != 1 {
		t.Fatalf("owner metrics %+v", m)
	}
}

// store sends one STORE datagram to f as if from src and returns the ack code.
func storeAt(f *fnode, src ssr.NodeID, rec *Record) {
	f.n.HandleDatagram(f.r.now, ssr.Datagram{Src: src, DstPort: Port, Payload: encodeStore(nil, 77, storeAck|storeReplica, rec)})
}

func signed(key, value string, seq uint64, seed uint64) Record {
	k := testKey(seed)
	r := Record{Key: key, Writer: k.Public().(ed25519.PublicKey), Seq: seq, Lifetime: time.Hour, Remaining: time.Hour, Value: []byte(value)}
	r.Sign(k)
	return r
}

func TestForgedRecordRefused(t *testing.T) {
	r := newFakeRing(t, 3, Params{})
	f := anyNode(r, 0)
	cases := map[string]func(*Record){
		"value changed":   func(r *Record) { r.Value = []byte("evil") },
		"seq changed":     func(r *Record) { r.Seq++ },
		"other writer":    func(r *Record) { r.Writer = testKey(999).Public().(ed25519.PublicKey) },
		"key changed":     func(r *Record) { r.Key = "aor:sip:666@mesh" },
		"lifetime raised": func(r *Record) { r.Lifetime *= 2; r.Remaining = r.Lifetime },
		"tombstone flag":  func(r *Record) { r.Tombstone, r.Value = true, nil },
	}
	for name, forge := range cases {
		t.Run(name, func(t *testing.T) {
			rec := signed("aor:sip:301@mesh", "good", 5, 100)
			forge(&rec)
			before := f.n.Metrics().RefusedSig
			storeAt(f, 1, &rec)
			if got := f.n.Local(r.now, rec.Key); len(got) != 0 {
				t.Fatalf("forged record stored: %+v", got)
			}
			if f.n.Metrics().RefusedSig != before+1 {
				t.Fatalf("not counted as a bad signature: %+v", f.n.Metrics())
			}
		})
	}
}

func TestReplayRefused(t *testing.T) {
	r := newFakeRing(t, 3, Params{})
	f := anyNode(r, 0)
	v1 := signed("aor:sip:302@mesh", "v1", 1, 101)
	v2 := signed("aor:sip:302@mesh", "v2", 2, 101)
	storeAt(f, 1, &v2)
	storeAt(f, 1, &v1) // the older version, replayed
	got := f.n.Local(r.now, v1.Key)
	if len(got) != 1 || string(got[0].Value) != "v2" {
		t.Fatalf("held %+v, want v2 only", got)
	}
	if m := f.n.Metrics(); m.RefusedStale != 1 {
		t.Fatalf("replay not refused as stale: %+v", m)
	}
	// The same version again is a harmless duplicate, not a refusal.
	storeAt(f, 1, &v2)
	if m := f.n.Metrics(); m.RefusedStale != 1 || m.Refused != 1 {
		t.Fatalf("duplicate counted as refused: %+v", m)
	}
	// Same seq, other content (a conflicting signature of the same writer).
	v2b := signed("aor:sip:302@mesh", "v2b", 2, 101)
	storeAt(f, 1, &v2b)
	if got := f.n.Local(r.now, v1.Key); string(got[0].Value) != "v2" {
		t.Fatalf("same-seq conflict replaced the record: %q", got[0].Value)
	}
}

func TestTombstoneBeatsOlderVersion(t *testing.T) {
	r := newFakeRing(t, 8, Params{})
	w := anyNode(r, 2)
	key := "aor:sip:303@mesh"
	if err := w.put(key, "old", time.Hour); err != nil {
		t.Fatal(err)
	}
	r.run(time.Second)
	// Capture the old version as an attacker (or a lagging island) would.
	old := r.copies(key)
	var oldRec Record
	for _, rec := range old {
		oldRec = rec
	}
	if err := w.del(key); err != nil {
		t.Fatal(err)
	}
	r.run(time.Second)
	for id, f := range r.nodes {
		storeAt(f, id, &oldRec)
	}
	r.run(12 * time.Second) // a few sync rounds
	if got := anyNode(r, 4).get(key); len(got) != 0 {
		t.Fatalf("deleted record came back: %q", values(got))
	}
	for id, rec := range r.copies(key) {
		if !rec.Tombstone {
			t.Fatalf("node %s holds the old version again", id)
		}
	}
}

func TestExpiry(t *testing.T) {
	r := newFakeRing(t, 6, Params{})
	w := anyNode(r, 1)
	if err := w.put("name:node1", "fd00::1", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := w.put("name:node2", "fd00::2", time.Hour); err != nil {
		t.Fatal(err)
	}
	r.run(5 * time.Second)
	if got := anyNode(r, 3).get("name:node1"); len(got) != 1 {
		t.Fatal("not found before expiry")
	}
	r.run(7 * time.Second)
	if got := anyNode(r, 3).get("name:node1"); len(got) != 0 {
		t.Fatalf("found after expiry: %q", values(got))
	}
	r.run(6 * time.Second) // a sync round drops it from the stores
	if c := r.copies("name:node1"); len(c) != 0 {
		t.Fatalf("expired record still held by %d nodes", len(c))
	}
	if c := r.copies("name:node2"); len(c) != 3 {
		t.Fatalf("live record held by %d nodes", len(c))
	}
	// Remaining time travels with the record: a copy made late expires on
	// time, not a full lifetime later.
	for _, rec := range r.copies("name:node2") {
		if rec.Remaining > time.Hour-17*time.Second || rec.Remaining < time.Hour-20*time.Second {
			t.Fatalf("remaining %v, want about 1h-18s", rec.Remaining)
		}
	}
}

func TestQuota(t *testing.T) {
	r := newFakeRing(t, 1, Params{MaxPerWriter: 5})
	w := anyNode(r, 0)
	for i := range 5 {
		if err := w.put(fmt.Sprintf("k%d", i), "v", time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	err := w.put("k5", "v", time.Hour)
	if !errors.Is(err, ErrQuota) {
		t.Fatalf("6th record: %v, want ErrQuota", err)
	}
	// Replacing a held record is not a new one.
	if err := w.put("k1", "v2", time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := w.n.Put(r.now, "big", make([]byte, MaxValue+1), time.Hour); !errors.Is(err, ErrTooBig) {
		t.Fatalf("oversize value: %v", err)
	}
	if m := w.n.Metrics(); m.RefusedQuota != 1 || m.Records != 5 {
		t.Fatalf("metrics %+v", m)
	}
}

func TestValidator(t *testing.T) {
	admin := testKey(1000)
	r := newFakeRing(t, 4, Params{Validate: RequireWriter("user:", admin.Public().(ed25519.PublicKey))})
	w := anyNode(r, 0)
	if _, err := w.n.Put(r.now, "user:201", []byte("x"), time.Hour); !errors.Is(err, ErrForbidden) {
		t.Fatalf("local put of user: by a node: %v", err)
	}
	// From the wire: a node's record refused, the admin's accepted.
	f := anyNode(r, 1)
	bad := signed("user:202", "x", 1, 5)
	storeAt(f, 1, &bad)
	good := signed("user:202", "x", 1, 1000)
	storeAt(f, 1, &good)
	got := f.n.Local(r.now, "user:202")
	if len(got) != 1 || !got[0].Writer.Equal(admin.Public()) {
		t.Fatalf("held %+v, want the admin's record only", got)
	}
}

// TestHandoffOnJoin: records move to joining nodes and leave the nodes no
// longer responsible, and every key ends on exactly its Replicas holders.
func TestHandoffOnJoin(t *testing.T) { bothPlacements(t, testHandoffOnJoin) }

func testHandoffOnJoin(t *testing.T, p Params) {
	r := newFakeRing(t, 10, p)
	w := anyNode(r, 0)
	var keys []string
	for i := range 120 {
		k := fmt.Sprintf("aor:sip:%d@mesh", 2000+i)
		keys = append(keys, k)
		if _, err := w.n.Put(r.now, k, []byte("v"), time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	r.run(3 * time.Second)
	for range 6 {
		r.add()
	}
	r.run(30 * time.Second)
	handoffs := uint64(0)
	for _, k := range keys {
		checkPlacement(t, r, k, 3)
	}
	for _, f := range r.nodes {
		handoffs += f.n.Metrics().HandoffsAcked
	}
	if handoffs == 0 && p.Walk < 0 {
		t.Fatal("no hand-off acknowledged")
	}
	for _, k := range keys[:20] {
		if len(anyNode(r, 3).get(k)) != 1 {
			t.Fatalf("%q not found", k)
		}
	}
}

// TestReReplicationOnDeath: owners and replicas die; the rest restore
// Replicas copies and every key stays readable.
func TestReReplicationOnDeath(t *testing.T) { bothPlacements(t, testReReplicationOnDeath) }

func testReReplicationOnDeath(t *testing.T, p Params) {
	r := newFakeRing(t, 16, p)
	var keys []string
	for i := range 100 {
		k := fmt.Sprintf("aor:sip:%d@mesh", 3000+i)
		keys = append(keys, k)
		w := anyNode(r, i)
		if _, err := w.n.Put(r.now, k, []byte("v"), time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	r.run(3 * time.Second)
	// Kill two adjacent nodes (owner and first replica of some keys) and
	// one elsewhere: with 3 copies, nothing may be lost.
	s := r.sorted()
	for _, i := range []int{3, 4, 11} {
		s[i].alive = false
	}
	// Right away the keys are still readable: the new owner consults.
	for _, k := range keys {
		if len(anyNode(r, 1).get(k)) != 1 {
			t.Fatalf("%q not found right after the deaths", k)
		}
	}
	r.run(20 * time.Second)
	for _, k := range keys {
		checkPlacement(t, r, k, 3)
	}
}

// TestPartitionHeal: each island serves what it holds; a newer version
// written in one island wins everywhere after the heal.
func TestPartitionHeal(t *testing.T) { bothPlacements(t, testPartitionHeal) }

func testPartitionHeal(t *testing.T, p Params) {
	r := newFakeRing(t, 12, p)
	key := "aor:sip:401@mesh"
	all := r.sorted()
	rank := make(map[ssr.NodeID]int)
	for i, f := range all {
		rank[f.id] = i
	}
	// Alternate islands along the ring: both hold a copy of every key.
	island := func(id ssr.NodeID) int { return rank[id] % 2 }
	w := all[0] // island 0
	if err := w.put(key, "v1", time.Hour); err != nil {
		t.Fatal(err)
	}
	r.run(2 * time.Second)
	r.island = island
	r.run(15 * time.Second)
	// Island 1 never heard of v2 but serves v1.
	if got := values(all[1].get(key)); !slices.Equal(got, []string{"v1"}) {
		t.Fatalf("island 1 serves %q", got)
	}
	if err := w.put(key, "v2", time.Hour); err != nil {
		t.Fatal(err)
	}
	if got := values(all[2].get(key)); !slices.Equal(got, []string{"v2"}) {
		t.Fatalf("island 0 serves %q", got)
	}
	if got := values(all[3].get(key)); !slices.Equal(got, []string{"v1"}) {
		t.Fatalf("island 1 serves %q after the write in island 0", got)
	}
	r.island = nil
	r.run(30 * time.Second)
	for _, f := range all {
		if got := values(f.get(key)); !slices.Equal(got, []string{"v2"}) {
			t.Fatalf("after the heal node %s reads %q", f.id, got)
		}
	}
	// The responsible nodes hold v2. With the defence, copies past them
	// (kept within the arc, not synced) may still hold v1 until the next
	// write reaches them or v1 expires; a get reaches them only when every
	// node before says "not found".
	want := r.holders(key, all[0].id, 3)
	for id, rec := range r.copies(key) {
		if string(rec.Value) != "v2" && (p.Walk < 0 || slices.Contains(want, id)) {
			t.Fatalf("node %s still holds %q", id, rec.Value)
		}
	}
	checkPlacement(t, r, key, 3)
}

func TestRank(t *testing.T) {
	n := New(100, testKey(1), Params{}, nil, 1)
	n.succ = []ssr.NodeID{200, 300, 400, 500}
	for _, c := range []struct {
		key  ssr.NodeID
		want int
	}{{100, 0}, {199, 0}, {200, 1}, {299, 1}, {300, 2}, {399, 2}, {400, -1}, {99, -1}, {50, -1}} {
		if got := n.rank(c.key); got != c.want {
			t.Errorf("rank(%d) = %d, want %d", c.key, got, c.want)
		}
	}
	// A ring of two: everything is ours.
	n.succ = []ssr.NodeID{200, 100, 200}
	for _, k := range []ssr.NodeID{50, 150, 250} {
		if n.rank(k) < 0 {
			t.Errorf("ring of two: rank(%d) < 0", k)
		}
	}
}

// TestTombstoneOutlivesDeleted: a writer that restarted deletes with the
// default tombstone lifetime, shorter than the record's; the holders keep
// the deletion until the record would have expired, so a replay of the old
// version later is still refused.
func TestTombstoneOutlivesDeleted(t *testing.T) {
	r := newFakeRing(t, 6, Params{TombstoneLifetime: time.Minute})
	w := anyNode(r, 0)
	key := "user:205"
	if err := w.put(key, "account", 10*time.Minute); err != nil {
		t.Fatal(err)
	}
	r.run(time.Second)
	var old Record
	for _, rec := range r.copies(key) {
		old = rec
	}
	// The writer restarts: same key, no memory of the lifetime.
	w.n = New(w.id, w.key, r.params, w, 99)
	if err := w.del(key); err != nil {
		t.Fatal(err)
	}
	r.run(5 * time.Minute)
	for id, f := range r.nodes {
		storeAt(f, id, &old)
	}
	r.run(6 * time.Second)
	if got := anyNode(r, 3).get(key); len(got) != 0 {
		t.Fatalf("deleted record came back after the tombstone's own lifetime: %q", values(got))
	}
	if c := r.copies(key); len(c) != 3 {
		t.Fatalf("tombstone held by %d nodes, want 3", len(c))
	}
}

// TestAdminRecords: accounts are written with the administrator key from
// any node, overwritten from another, and deleted by an admin tombstone.
func TestAdminRecords(t *testing.T) {
	admin := testKey(1000)
	r := newFakeRing(t, 6, Params{Validate: RequireWriter("user:", admin.Public().(ed25519.PublicKey))})
	a, b := anyNode(r, 0), anyNode(r, 3)
	put := func(f *fnode, rec Record) error {
		id, err := f.n.PutRecord(r.now, rec)
		if err != nil {
			return err
		}
		return f.wait(id).Err
	}
	v1, err := NewRecord(admin, "user:201", []byte("ha1=..."), 24*time.Hour, 1, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := put(a, v1); err != nil {
		t.Fatal(err)
	}
	v2, _ := NewRecord(admin, "user:201", []byte("ha1=new"), 24*time.Hour, 2, false)
	if err := put(b, v2); err != nil {
		t.Fatal(err)
	}
	if err := put(a, v1); !errors.Is(err, ErrStale) {
		t.Fatalf("older admin version from another node: %v, want ErrStale", err)
	}
	if got := values(anyNode(r, 5).get("user:201")); !slices.Equal(got, []string{"ha1=new"}) {
		t.Fatalf("get = %q", got)
	}
	del, _ := NewRecord(admin, "user:201", nil, 24*time.Hour, 3, true)
	if err := put(b, del); err != nil {
		t.Fatal(err)
	}
	if got := anyNode(r, 5).get("user:201"); len(got) != 0 {
		t.Fatalf("deleted account still found: %q", values(got))
	}
	// A node key cannot write an account.
	forged, _ := NewRecord(a.key, "user:202", []byte("x"), time.Hour, 1, false)
	if _, err := a.n.PutRecord(r.now, forged); !errors.Is(err, ErrForbidden) {
		t.Fatalf("account signed by a node: %v", err)
	}
	bad := v2
	bad.Value = []byte("tampered")
	if _, err := a.n.PutRecord(r.now, bad); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("tampered record: %v", err)
	}
}

// TestGetRetrySentTwice: a read whose first attempt is lost is retried
// with two copies (reads are idempotent), a write with one; both complete.
func TestGetRetrySentTwice(t *testing.T) {
	r := newFakeRing(t, 4, Params{})
	a := anyNode(r, 0)
	if err := a.put("k", "v", time.Hour); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		start  func() (uint64, error)
		copies int
	}{
		{"get", func() (uint64, error) { return a.n.Get(r.now, "k") }, 2},
		{"put", func() (uint64, error) { return a.n.Put(r.now, "k", []byte("w"), time.Hour) }, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := tc.start()
			if err != nil {
				t.Fatal(err)
			}
			if len(r.queue) != 1 {
				t.Fatalf("first attempt: %d datagrams queued, want 1", len(r.queue))
			}
			first := r.queue[0].payload
			r.queue = nil // lost
			sent := 0
			for range 1000 {
				if _, ok := a.results[id]; ok {
					break
				}
				for _, m := range r.queue {
					if m.from == a.id && slices.Equal(m.payload, first) {
						sent++
					}
				}
				r.run(step)
			}
			res := a.wait(id)
			if res.Err != nil || res.Attempts != 2 || sent != tc.copies {
				t.Errorf("%s: err %v after %d attempts; the retry went out %d times, want %d", tc.name, res.Err, res.Attempts, sent, tc.copies)
			}
		})
	}
}

// TestGetBusyIsNotNotFound: an owner that holds nothing under a key and
// has no room to consult its replicas (MaxPending requests in flight, as
// under load or right after a ring change) answers "busy", and the asker
// reports an error, not an empty answer: "not found" would become an
// NXDOMAIN or a 404 that the phone or resolver believes.
func TestGetBusyIsNotNotFound(t *testing.T) {
	r := newFakeRing(t, 4, Params{MaxPending: 2})
	r.run(time.Second) // the nodes learn their replicas
	owner := r.nodes[responsible(r.ring(anyNode(r, 0).id), KeyOf("k"))]
	var asker *fnode
	for _, f := range r.sorted() {
		if f != owner {
			asker = f
			break
		}
	}
	owner.n.nearChanged = r.now // a ring change just now: the owner would consult
	for _, k := range []string{"x1", "x2"} {
		if _, err := owner.n.Get(r.now, k); err != nil {
			t.Fatal(err)
		}
	}
	r.queue = nil // their datagrams are in flight (dropped here)
	if len(owner.n.pending) != 2 || len(owner.n.replicas()) == 0 {
		t.Fatalf("set-up: %d pending, %d replicas", len(owner.n.pending), len(owner.n.replicas()))
	}
	owner.n.HandleDatagram(r.now, ssr.Datagram{Src: asker.id, DstPort: Port, Payload: encodeGet(nil, 99, 0, "k")})
	var reply *message
	for _, q := range r.queue {
		if m, err := decode(q.payload); err == nil && q.target == asker.id && m.typ == msgGetReply {
			reply = &m
		}
	}
	if reply == nil || reply.code != codeBusy || len(reply.recs) != 0 {
		t.Fatalf("owner's answer %+v, want busy", reply)
	}
	if m := owner.n.Metrics(); m.BusyAnswers != 1 {
		t.Fatalf("busy answers %d", m.BusyAnswers)
	}
	// The asker's side: a busy reply ends its Get with ErrBusy.
	id, err := asker.n.Get(r.now, "k")
	if err != nil {
		t.Fatal(err)
	}
	r.queue = nil
	asker.n.HandleDatagram(r.now, ssr.Datagram{Src: owner.id, DstPort: Port, Payload: encodeGetReply(nil, id, codeBusy, 1, 0, 0, nil)})
	res, ok := asker.results[id]
	if !ok || !errors.Is(res.Err, ErrBusy) || len(res.Records) != 0 {
		t.Fatalf("asker's result %+v (done %v), want ErrBusy", res, ok)
	}
}

// TestGetOwned: the owner of a key answers its own get from its store
// exactly when it would answer a GET from it (handleGet): it holds a
// record and its neighbours did not change within HandoffWindow; a node
// that does not own the key, holds nothing, or just saw its ring change
// asks by Get. The answer is the Get's: same records, tombstones dropped,
// no memory shared with the store.
func TestGetOwned(t *testing.T) {
	r := newFakeRing(t, 4, Params{})
	r.run(30 * time.Second) // past HandoffWindow since the ring formed
	key := "aor:sip:201@mesh"
	owner := r.nodes[responsible(r.ring(anyNode(r, 0).id), KeyOf(key))]
	if len(owner.n.replicas()) == 0 {
		t.Fatal("set-up: the owner has no replicas")
	}
	other := r.nodes[owner.n.replicas()[0]] // holds a copy, does not own it
	if _, ok := owner.n.GetOwned(r.now, key); ok {
		t.Fatal("answered a key it holds nothing under")
	}
	id, err := other.n.Put(r.now, key, []byte("v1"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if res := other.wait(id); res.Err != nil {
		t.Fatal(res.Err)
	}
	id, err = owner.n.Get(r.now, key)
	if err != nil {
		t.Fatal(err)
	}
	viaNet := owner.wait(id)
	recs, ok := owner.n.GetOwned(r.now, key)
	if !ok || viaNet.Err != nil || len(recs) != 1 || len(viaNet.Records) != 1 ||
		string(recs[0].Value) != "v1" || recs[0].Seq != viaNet.Records[0].Seq || recs[0].Verify() != nil {
		t.Fatalf("owned answer %+v (%v), the Get's %+v", recs, ok, viaNet)
	}
	recs[0].Value[0] = 'X'
	if again, _ := owner.n.GetOwned(r.now, key); string(again[0].Value) != "v1" {
		t.Fatal("the answer shares memory with the store")
	}
	if m := owner.n.Metrics(); m.GetsOwned != 2 {
		t.Fatalf("gets owned %d, want 2", m.GetsOwned)
	}
	if len(other.n.Local(r.now, key)) != 1 {
		t.Fatal("set-up: the replica holds no copy")
	}
	if _, ok := other.n.GetOwned(r.now, key); ok {
		t.Fatal("a replica answered from its store")
	}
	// A deletion: the owner holds a tombstone, the answer is empty, as
	// the Get's.
	id, err = other.n.Delete(r.now, key)
	if err != nil {
		t.Fatal(err)
	}
	other.wait(id)
	if recs, ok := owner.n.GetOwned(r.now, key); !ok || len(recs) != 0 {
		t.Fatalf("after the deletion: %+v (%v)", recs, ok)
	}
	// Right after a ring change the owner would consult its replicas.
	owner.n.nearChanged = r.now
	if _, ok := owner.n.GetOwned(r.now, key); ok {
		t.Fatal("answered from the store right after a ring change")
	}
	r.run(owner.n.p.HandoffWindow)
	if _, ok := owner.n.GetOwned(r.now, key); !ok {
		t.Fatal("no owned answer after the handoff window")
	}
}
