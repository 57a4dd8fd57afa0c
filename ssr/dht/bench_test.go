package dht

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkPutGet is the CPU cost, over a whole 8-node fake ring, of one
// registration written and read back: a signature, the owner's and two
// replicas' verifications, the reader's verification, and the messages.
func BenchmarkPutGet(b *testing.B) {
	r := newFakeRing(&testing.T{}, 8, Params{})
	w, q := anyNode(r, 0), anyNode(r, 5)
	val := make([]byte, 200)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		k := fmt.Sprintf("aor:sip:%d@mesh", i%4096)
		i++
		id, err := w.n.Put(r.now, k, val, time.Hour)
		if err != nil {
			b.Fatal(err)
		}
		for _, ok := w.results[id]; !ok; _, ok = w.results[id] {
			r.run(step)
		}
		delete(w.results, id)
		id, _ = q.n.Get(r.now, k)
		for _, ok := q.results[id]; !ok; _, ok = q.results[id] {
			r.run(step)
		}
		if len(q.results[id].Records) != 1 {
			b.Fatal("not found")
		}
		delete(q.results, id)
	}
}

// BenchmarkVerify is one record's signature check, the unit of a holder's
// work per stored version.
func BenchmarkVerify(b *testing.B) {
	rec := signed("aor:sip:201@mesh", string(make([]byte, 200)), 1, 1)
	for b.Loop() {
		if err := rec.Verify(); err != nil {
			b.Fatal(err)
		}
	}
}
