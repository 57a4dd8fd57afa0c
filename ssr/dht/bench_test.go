package dht

import (
	"fmt"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/ssr"
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

// BenchmarkPut is put throughput over an 8-node fake ring, each put
// waited for: in memory, and with every node keeping its records on disk
// (change tracking, a flush every 2 s of virtual time with fsync, the
// rewrites), the writes beside the loop as the driver does them ("disk")
// or in it ("disk-inline": the whole cost). Each put is one new version at
// the owner and two replicas.
func BenchmarkPut(b *testing.B) {
	for _, mode := range []string{"memory", "disk", "disk-inline"} {
		b.Run(mode, func(b *testing.B) {
			var r *fakeRing
			if mode != "memory" {
				d := newDiskRingIn(&testing.T{}, b.TempDir(), 8, Params{})
				if mode == "disk" {
					d.writers = make(map[ssr.NodeID]chan diskOp)
				}
				defer d.close()
				r = d.fakeRing
			} else {
				r = newFakeRing(&testing.T{}, 8, Params{})
			}
			w := anyNode(r, 0)
			val := make([]byte, 200)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				id, err := w.n.Put(r.now, fmt.Sprintf("aor:sip:%d@mesh", i%4096), val, time.Hour)
				if err != nil {
					b.Fatal(err)
				}
				i++
				for _, ok := w.results[id]; !ok; _, ok = w.results[id] {
					r.run(step)
				}
				delete(w.results, id)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "puts/s")
		})
	}
}

// BenchmarkFlush is the loop's share of keeping records on disk: one
// changed record encoded for the journal (the write itself runs beside
// the loop).
func BenchmarkFlush(b *testing.B) {
	n := New(1, testKey(1), Params{}, nopEnv{}, 1)
	n.keepChanges()
	j := openJournal("", nil)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	recs := make([]Record, 64)
	for i := range recs {
		recs[i] = signed(fmt.Sprintf("aor:sip:%d@mesh", i), string(make([]byte, 200)), 1, 1)
		if _, err := n.accept(now, &recs[i]); err != nil {
			b.Fatal(err)
		}
	}
	j.base = 1 << 30 // appends only
	b.ReportAllocs()
	for b.Loop() {
		for i := range recs {
			n.st.changed(recs[i].id())
		}
		if _, ok := j.flush(now, n); !ok {
			b.Fatal("nothing to flush")
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(recs)), "ns/record")
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
