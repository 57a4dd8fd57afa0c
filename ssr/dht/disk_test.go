package dht

import (
	"bytes"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/ssr"
)

// diskRing is a fakeRing whose nodes keep their records in files, flushed
// every flushEvery of virtual time as the driver does.
type diskRing struct {
	*fakeRing
	dir        string
	journals   map[ssr.NodeID]*journal
	flushEvery time.Duration
	next       time.Time
	logs       *syncBuffer
	log        *slog.Logger
	// writers, if not nil, carry out each node's writes on a goroutine of
	// its own, as the driver does; nil writes in the loop.
	writers map[ssr.NodeID]chan diskOp
	wg      sync.WaitGroup
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var testAdmin = testKey(500)

// adminParams refuse "user:" records not written by testAdmin, as the
// gateway does.
func adminParams() Params {
	return Params{Validate: RequireWriter("user:", testAdmin.Public().(ed25519.PublicKey))}
}

func newDiskRing(t *testing.T, n int, p Params) *diskRing {
	d := newDiskRingIn(t, t.TempDir(), n, p)
	t.Cleanup(d.close)
	return d
}

func newDiskRingIn(t *testing.T, dir string, n int, p Params) *diskRing {
	d := &diskRing{fakeRing: newFakeRing(t, n, p), dir: dir, journals: make(map[ssr.NodeID]*journal),
		flushEvery: DefaultFlushInterval, logs: &syncBuffer{}}
	d.log = slog.New(slog.NewTextHandler(d.logs, nil))
	for _, f := range d.sorted() {
		d.open(f)
	}
	d.next = d.now.Add(d.flushEvery)
	d.onStep = d.tick
	return d
}

func (d *diskRing) close() {
	for _, ch := range d.writers {
		close(ch)
	}
	d.wg.Wait()
	for _, j := range d.journals {
		j.file.close()
	}
}

// open loads f's file into f's (fresh) node, as Driver.Run does.
func (d *diskRing) open(f *fnode) loadReport {
	d.t.Helper()
	j := openJournal(filepath.Join(d.dir, f.id.String()), d.log)
	rep, err := j.load(d.now, f.n)
	if err != nil {
		d.t.Fatal(err)
	}
	if err := j.sync(d.now, f.n); err != nil {
		d.t.Fatal(err)
	}
	d.journals[f.id] = j
	return rep
}

func (d *diskRing) tick() {
	if d.now.Before(d.next) {
		return
	}
	d.next = d.now.Add(d.flushEvery)
	for _, f := range d.sorted() {
		j := d.journals[f.id]
		if d.writers != nil {
			// As Driver.flush: the write runs beside the loop.
			ch := d.writers[f.id]
			if ch == nil {
				ch = make(chan diskOp, 1)
				d.writers[f.id] = ch
				d.wg.Go(func() {
					for op := range ch {
						if err := j.file.do(op); err != nil {
							panic(err)
						}
					}
				})
			}
			if len(ch) == 0 {
				if op, ok := j.flush(d.now, f.n); ok {
					ch <- op
				}
			}
			continue
		}
		if err := j.sync(d.now, f.n); err != nil {
			d.t.Fatal(err)
		}
	}
}

// powerCut stops f without a last flush: what changed since the last
// flush is lost, as in a power cut.
func (d *diskRing) powerCut(f *fnode) {
	f.alive = false
	d.journals[f.id].file.close()
	delete(d.journals, f.id)
}

// restart starts f again with a new Node loaded from its file.
func (d *diskRing) restart(f *fnode) loadReport {
	d.seed++
	f.n = New(f.id, f.key, d.params, f, d.seed)
	f.results = make(map[uint64]Result)
	f.alive = true
	return d.open(f)
}

func (f *fnode) putRecord(rec Record) error {
	f.r.t.Helper()
	id, err := f.n.PutRecord(f.r.now, rec)
	if err != nil {
		return err
	}
	return f.wait(id).Err
}

func account(t *testing.T, ext string) Record {
	t.Helper()
	rec, err := NewRecord(testAdmin, "user:"+ext, []byte(`{"ext":"`+ext+`"}`), MaxLifetime, uint64(ext[0]), false)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// localRecords is what f holds, as (key, writer, seq) strings.
func localRecords(f *fnode) []string {
	var out []string
	for _, r := range f.n.Records(f.r.now) {
		out = append(out, fmt.Sprintf("%s/%s/%d/%v", r.Key, WriterID(r.Writer), r.Seq, r.Tombstone))
	}
	slices.Sort(out)
	return out
}

// (a) A node restarted from its file holds what it held and serves it —
// here the only node, so nothing else could have kept subscriber 201.
func TestRestartSingleNode(t *testing.T) {
	r := newDiskRing(t, 1, adminParams())
	f := anyNode(r.fakeRing, 0)
	if err := f.putRecord(account(t, "201")); err != nil {
		t.Fatal(err)
	}
	if err := f.put("aor:sip:201@mesh", "contact", time.Hour); err != nil {
		t.Fatal(err)
	}
	r.run(r.flushEvery)
	before := localRecords(f)
	r.powerCut(f)
	r.now = r.now.Add(time.Minute)
	rep := r.restart(f)
	if rep.Loaded != 2 || rep.Refused != 0 || rep.Corrupt != 0 {
		t.Fatalf("load report %+v", rep)
	}
	if got := localRecords(f); !slices.Equal(got, before) {
		t.Fatalf("after restart holds %q, before %q", got, before)
	}
	if got := values(f.get("user:201")); !slices.Equal(got, []string{`{"ext":"201"}`}) {
		t.Fatalf("account after restart: %q", got)
	}
	if got := values(f.get("aor:sip:201@mesh")); !slices.Equal(got, []string{"contact"}) {
		t.Fatalf("binding after restart: %q", got)
	}
	// Remaining time counted the minute it was off.
	if got := f.n.Local(r.now, "aor:sip:201@mesh")[0].Remaining; got > time.Hour-time.Minute {
		t.Fatalf("remaining %v after a minute off a 1 h record", got)
	}
}

// (a) In a ring: the restarted node holds at once what it held when its
// file was last flushed, and with the ring's maintenance everything
// resolves, including versions written while it was down.
func TestRestartOneNodeOfRing(t *testing.T) {
	r := newDiskRing(t, 6, Params{})
	var writers []*fnode
	for i := range 30 {
		writers = append(writers, anyNode(r.fakeRing, i))
		if err := writers[i].put(fmt.Sprintf("aor:sip:%d@mesh", 200+i), "v1", time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	r.run(r.flushEvery)
	f := anyNode(r.fakeRing, 2)
	before := localRecords(f)
	if len(before) == 0 {
		t.Fatal("node holds nothing")
	}
	r.powerCut(f)
	r.run(5 * time.Second)
	// Written while it is down: newer versions win when it is back.
	w := anyNode(r.fakeRing, 0)
	for i := range 30 {
		if i%3 == 0 {
			if err := w.put(fmt.Sprintf("aor:sip:%d@mesh", 200+i), "v2", time.Hour); err != nil {
				t.Fatal(err)
			}
		}
	}
	r.restart(f)
	if got := localRecords(f); !slices.Equal(got, before) {
		t.Fatalf("after restart holds %d records, before %d", len(got), len(before))
	}
	r.run(30 * time.Second)
	for i := range 30 {
		want := []string{"v1"}
		if i%3 == 0 {
			want = []string{"v1", "v2"}
			if writers[i] == w {
				want = []string{"v2"}
			}
		}
		if got := values(f.get(fmt.Sprintf("aor:sip:%d@mesh", 200+i))); !slices.Equal(got, want) {
			t.Errorf("aor %d = %q, want %q", 200+i, got, want)
		}
		checkPlacement(t, r.fakeRing, fmt.Sprintf("aor:sip:%d@mesh", 200+i), 3)
	}
}

// (b) A power cut of the whole mesh: every node restarts from its own file.
// Accounts come back; bindings come back unless their expiry passed during
// the outage (RFC 3261 §10.2.1.1: a binding lives until its expiration
// interval ends); a deletion stays a deletion; and writes after the
// restart win even though the clocks of the routers went back (no RTC, no
// NTP yet).
func TestRestartWholeMesh(t *testing.T) {
	r := newDiskRing(t, 8, adminParams())
	nodes := r.sorted()
	const n = 40
	for i := range n {
		w := nodes[i%len(nodes)]
		ext := fmt.Sprint(200 + i)
		if err := w.putRecord(account(t, ext)); err != nil {
			t.Fatal(err)
		}
		ttl := time.Hour
		if i%2 == 1 {
			ttl = 10 * time.Minute // expires during the outage
		}
		if err := w.put("aor:sip:"+ext+"@mesh", "contact-"+ext, ttl); err != nil {
			t.Fatal(err)
		}
	}
	if err := nodes[0].del("aor:sip:200@mesh"); err != nil {
		t.Fatal(err)
	}
	r.run(r.flushEvery + step)
	for _, f := range nodes {
		r.powerCut(f)
	}
	r.now = r.now.Add(30 * time.Minute)
	for _, f := range nodes {
		if rep := r.restart(f); rep.Refused != 0 || rep.Corrupt != 0 || rep.Bad != 0 {
			t.Fatalf("node %s: load report %+v", f.id, rep)
		}
	}
	r.run(10 * time.Second)
	for i := range n {
		ext := fmt.Sprint(200 + i)
		asker := nodes[(i+3)%len(nodes)]
		if got := values(asker.get("user:" + ext)); !slices.Equal(got, []string{`{"ext":"` + ext + `"}`}) {
			t.Errorf("account %s = %q", ext, got)
		}
		var want []string
		if i%2 == 0 && i != 0 {
			want = []string{"contact-" + ext}
		}
		if got := values(asker.get("aor:sip:" + ext + "@mesh")); !slices.Equal(got, want) {
			t.Errorf("binding %s = %q, want %q", ext, got, want)
		}
	}

	// Every node powered off again, back with clocks a year behind.
	for _, f := range nodes {
		r.powerCut(f)
	}
	r.now = r.now.Add(-365 * 24 * time.Hour)
	for _, f := range nodes {
		r.restart(f)
	}
	r.run(10 * time.Second)
	w := nodes[2%len(nodes)]
	if err := w.put("aor:sip:202@mesh", "re-registered", time.Hour); err != nil {
		t.Fatalf("write after the clock went back: %v", err)
	}
	if got := values(nodes[5].get("aor:sip:202@mesh")); !slices.Equal(got, []string{"re-registered"}) {
		t.Fatalf("after re-registration: %q", got)
	}
}

// writeFile builds a records file from frames.
func writeStoreFile(t *testing.T, dir string, frames ...[]byte) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, StoreFile)
	if err := os.WriteFile(path, slices.Concat(append([][]byte{[]byte(diskMagic)}, frames...)...), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// (c) Damage on disk costs the damaged entries only, and records that do
// not pass the network's checks are dropped with a log line.
func TestDiskDamage(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	good := make([]Record, 5)
	frames := make([][]byte, 5)
	for i := range good {
		good[i] = signed(fmt.Sprintf("aor:sip:%d@mesh", i), "v", 10, 1)
		frames[i] = appendRecordFrame(nil, now, &good[i])
	}
	forged := signed("aor:sip:666@mesh", "good", 5, 2)
	forged.Value = []byte("evil")
	planted := signed("user:201", "not the admin", 5, 3)
	wrongKey := signed("aor:sip:7@mesh", "v", 5, 4)
	wrongKey.Key = "aor:sip:8@mesh"
	expired := signed("aor:sip:9@mesh", "v", 5, 1)
	expired.Remaining = time.Minute

	for _, tc := range []struct {
		name   string
		file   func(path string)
		frames [][]byte
		want   []int // indexes of good records that load
		rep    loadReport
		log    string
	}{
		{name: "intact", frames: frames, want: []int{0, 1, 2, 3, 4}, rep: loadReport{Loaded: 5, Header: true}},
		{name: "torn last entry", frames: frames, want: []int{0, 1, 2, 3},
			file: func(p string) { b, _ := os.ReadFile(p); os.WriteFile(p, b[:len(b)-17], 0o600) },
			rep:  loadReport{Loaded: 4, Corrupt: 1, Header: true}, log: "records file damaged"},
		{name: "bit flip in the middle", frames: frames, want: []int{0, 1, 3, 4},
			file: func(p string) { flip(p, len(diskMagic)+2*len(frames[0])+40) },
			rep:  loadReport{Loaded: 4, Corrupt: 1, Header: true}, log: "records file damaged"},
		{name: "length field damaged", frames: frames, want: []int{0, 2, 3, 4},
			file: func(p string) { flip(p, len(diskMagic)+len(frames[0])+1) },
			rep:  loadReport{Loaded: 4, Corrupt: 1, Header: true}, log: "records file damaged"},
		{name: "header damaged", frames: frames, want: []int{0, 1, 2, 3, 4},
			file: func(p string) { flip(p, 3) },
			rep:  loadReport{Loaded: 5, Corrupt: 1}, log: "records file damaged"},
		{name: "zeros appended", frames: append(slices.Clone(frames), make([]byte, 4096)), want: []int{0, 1, 2, 3, 4},
			rep: loadReport{Loaded: 5, Corrupt: 1, Header: true}, log: "records file damaged"},
		{name: "bad signature", frames: slices.Concat(frames[:2], [][]byte{appendRecordFrame(nil, now, &forged)}, frames[2:]),
			want: []int{0, 1, 2, 3, 4}, rep: loadReport{Loaded: 5, Refused: 1, Header: true}, log: "bad signature"},
		{name: "key changed", frames: slices.Concat(frames, [][]byte{appendRecordFrame(nil, now, &wrongKey)}),
			want: []int{0, 1, 2, 3, 4}, rep: loadReport{Loaded: 5, Refused: 1, Header: true}, log: "bad signature"},
		{name: "refused by policy", frames: slices.Concat(frames, [][]byte{appendRecordFrame(nil, now, &planted)}),
			want: []int{0, 1, 2, 3, 4}, rep: loadReport{Loaded: 5, Refused: 1, Header: true}, log: "admin key"},
		{name: "expired while off", frames: slices.Concat(frames, [][]byte{appendRecordFrame(nil, now.Add(-2*time.Minute), &expired)}),
			want: []int{0, 1, 2, 3, 4}, rep: loadReport{Loaded: 5, Expired: 1, Header: true}},
		{name: "dropped later", frames: slices.Concat(frames, [][]byte{appendDropFrame(nil, now, good[1].id())}),
			want: []int{0, 2, 3, 4}, rep: loadReport{Loaded: 4, Header: true}},
		{name: "unknown entry type", frames: slices.Concat(frames[:1], [][]byte{appendFrame(nil, 9, now, func(b []byte) []byte { return b })}),
			want: []int{0}, rep: loadReport{Loaded: 1, Corrupt: 1, Header: true}, log: "records file damaged"},
		{name: "record entry with trailing bytes", frames: slices.Concat(frames[:1], [][]byte{appendFrame(nil, frameRecord, now, func(b []byte) []byte { return append(appendRecord(b, &good[1]), 0) })}),
			want: []int{0}, rep: loadReport{Loaded: 1, Bad: 1, Header: true}, log: "records file damaged"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := writeStoreFile(t, dir, tc.frames...)
			if tc.file != nil {
				tc.file(path)
			}
			var logs syncBuffer
			j := openJournal(dir, slog.New(slog.NewTextHandler(&logs, nil)))
			defer j.file.close()
			n := New(1, testKey(1), adminParams(), nopEnv{}, 1)
			rep, err := j.load(now, n)
			if err != nil {
				t.Fatal(err)
			}
			rep.RefusedErrs, rep.FileBytes, rep.CorruptBytes = nil, 0, 0
			if fmt.Sprint(rep) != fmt.Sprint(tc.rep) {
				t.Errorf("report %+v, want %+v", rep, tc.rep)
			}
			var want []string
			for _, i := range tc.want {
				want = append(want, good[i].Key)
			}
			var got []string
			for _, r := range n.Records(now) {
				got = append(got, r.Key)
			}
			slices.Sort(got)
			if !slices.Equal(got, want) {
				t.Errorf("loaded %q, want %q", got, want)
			}
			if tc.log != "" && !strings.Contains(logs.String(), tc.log) {
				t.Errorf("log lacks %q:\n%s", tc.log, logs.String())
			}
			// The rewrite after the load leaves a clean file of what loaded.
			if err := j.sync(now, n); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			c := decodeDisk(b)
			if !c.header || c.corrupt != 0 || c.bad != 0 || len(c.recs) != len(want) {
				t.Errorf("rewritten file: header %v, %d damaged, %d bad, %d records", c.header, c.corrupt, c.bad, len(c.recs))
			}
		})
	}
}

func flip(path string, at int) {
	b, _ := os.ReadFile(path)
	b[at] ^= 0x5a
	os.WriteFile(path, b, 0o600)
}

type nopEnv struct{}

func (nopEnv) Send(time.Time, ssr.NodeID, ssr.Mode, []byte) {}
func (nopEnv) Ring() (succ, pred []ssr.NodeID)              { return nil, nil }
func (nopEnv) Complete(Result)                              {}

// The file stays bounded however often the same records are rewritten:
// it is rewritten from the live records once it doubled.
func TestDiskCompaction(t *testing.T) {
	r := newDiskRing(t, 3, Params{})
	r.flushEvery = 10 * step
	f := anyNode(r.fakeRing, 0)
	j := r.journals[f.id]
	j.slack = 8 << 10
	path := filepath.Join(r.dir, f.id.String(), StoreFile)
	largest := int64(0)
	for i := range 500 {
		if err := f.put(fmt.Sprintf("aor:sip:%d@mesh", i%10), strings.Repeat("x", 300), time.Hour); err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Stat(path); err == nil {
			largest = max(largest, fi.Size())
		}
	}
	// 10 records of ~450 bytes live (fewer on this node): twice that, the
	// slack and one batch.
	if bound := int64(2*10*600 + j.slack + 20*600); largest > bound {
		t.Fatalf("file grew to %d bytes (bound %d)", largest, bound)
	}
	if j.rewrites < 5 {
		t.Fatalf("%d rewrites", j.rewrites)
	}
	r.run(r.flushEvery)
	r.powerCut(f)
	if rep := r.restart(f); rep.Corrupt != 0 || rep.Loaded != len(localRecords(f)) || rep.Loaded == 0 {
		t.Fatalf("after compactions: %+v", rep)
	}
}

// A store whose change set overflows is written whole at the next flush.
func TestDiskChangeOverflow(t *testing.T) {
	r := newDiskRing(t, 1, Params{MaxRecords: 8})
	f := anyNode(r.fakeRing, 0)
	for i := range 8 {
		if err := f.put(fmt.Sprintf("k%d", i), "v", time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		f.n.st.remove(recID{KeyOf(fmt.Sprintf("k%d", i)), f.n.wid})
	}
	if !f.n.st.overflow || len(f.n.st.changes) != 0 {
		t.Fatalf("overflow %v with %d changes", f.n.st.overflow, len(f.n.st.changes))
	}
	op, ok := r.journals[f.id].flush(r.now, f.n)
	if !ok || !op.rewrite {
		t.Fatal("overflow did not rewrite")
	}
	if err := r.journals[f.id].file.do(op); err != nil {
		t.Fatal(err)
	}
	r.powerCut(f)
	if rep := r.restart(f); rep.Loaded != 5 {
		t.Fatalf("loaded %d, want 5", rep.Loaded)
	}
}

// A records file that cannot be read fails the start (Driver.Run returns
// the error) rather than letting the node run empty and overwrite it.
func TestDiskUnreadable(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, StoreFile), 0o700); err != nil {
		t.Fatal(err)
	}
	j := openJournal(dir, nil)
	if _, err := j.load(time.Now(), New(1, testKey(1), Params{}, nopEnv{}, 1)); err == nil {
		t.Fatal("a file that cannot be read loaded")
	}
	// An append before any rewrite is refused rather than making a file of
	// the changes alone.
	if err := j.file.do(diskOp{data: []byte("x")}); err == nil {
		t.Fatal("append to a file never rewritten")
	}
}

// diskFuzzSeeds are records files: whole, torn, damaged.
func diskFuzzSeeds() map[string][]byte {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	rec := signed("aor:sip:201@mesh", `{"contact":"<sip:201@10.0.0.2>"}`, 7, 1)
	tomb := Record{Key: "user:201", Writer: rec.Writer, Seq: 8, Lifetime: time.Hour, Remaining: time.Minute, Tombstone: true}
	tomb.Sign(testKey(1))
	whole := slices.Concat([]byte(diskMagic), appendRecordFrame(nil, now, &rec), appendRecordFrame(nil, now, &tomb),
		appendDropFrame(nil, now, rec.id()), appendSeqFrame(nil, now, 99), appendRecordFrame(nil, now.Add(time.Second), &rec))
	damaged := slices.Clone(whole)
	damaged[len(diskMagic)+30] ^= 1
	return map[string][]byte{
		"empty":     nil,
		"header":    []byte(diskMagic),
		"whole":     whole,
		"torn":      whole[:len(whole)-5],
		"damaged":   damaged,
		"no-header": slices.Concat(appendSeqFrame(nil, now, 1), appendRecordFrame(nil, now, &rec)),
	}
}

// FuzzDecodeDisk: any file decodes without a crash, what it yields
// re-encodes to the same records, and loading it keeps the store's bounds
// and lets through only records whose signature holds.
func FuzzDecodeDisk(f *testing.F) {
	for _, b := range diskFuzzSeeds() {
		f.Add(b)
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, b []byte) {
		c := decodeDisk(b)
		if len(c.recs)*(frameHdr+frameFixed) > len(b) || c.corruptBytes > len(b) {
			t.Fatalf("%d records, %d damaged bytes from %d bytes", len(c.recs), c.corruptBytes, len(b))
		}
		for _, s := range c.recs {
			again := decodeDisk(appendRecordFrame(nil, s.saved, &s.rec))
			if len(again.recs) != 1 || again.corrupt != 0 {
				t.Fatalf("record does not re-encode: %+v", again)
			}
			a := again.recs[0]
			if a.rec.Key != s.rec.Key || a.rec.Seq != s.rec.Seq || a.rec.Remaining != s.rec.Remaining ||
				!bytes.Equal(a.rec.Value, s.rec.Value) || !bytes.Equal(a.rec.Sig, s.rec.Sig) || !a.saved.Equal(s.saved) {
				t.Fatalf("re-encoded %+v, was %+v", a, s)
			}
		}
		n := New(1, testKey(1), Params{MaxRecords: 4}, nopEnv{}, 1)
		rep := openJournal("", nil).apply(now, n, b) // no file is touched
		if n.Len() > 4 || rep.Loaded != n.Len() {
			t.Fatalf("store holds %d records (bound 4), loaded %d", n.Len(), rep.Loaded)
		}
		for _, r := range n.Records(now) {
			if err := r.Verify(); err != nil {
				t.Fatalf("loaded a record that does not verify: %v", err)
			}
		}
	})
}
