package dht

import (
	"cmp"
	"crypto/ed25519"
	"encoding/binary"
	"slices"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/ssr"
)

// fakeRing is a tiny in-process ring without SSR: every node sees the true
// successors and predecessors among the live nodes of its island, closest
// delivery lands on the live node with the largest ID ≤ the key, and
// datagrams take one step of the loop (10 ms).
type fakeRing struct {
	t      *testing.T
	now    time.Time
	nodes  map[ssr.NodeID]*fnode
	queue  []fmsg
	island func(ssr.NodeID) int // nil: one island
	seed   uint64
	params Params
	onStep func()          // after every step, if set
	drop   func(fmsg) bool // datagrams lost on the way, if set
}

type fnode struct {
	r       *fakeRing
	id      ssr.NodeID
	key     ed25519.PrivateKey
	n       *Node
	alive   bool
	results map[uint64]Result
	// An eclipse attacker: its Node never runs; it answers DenyAnswer,
	// or nothing when silent.
	deny, silent bool
}

type fmsg struct {
	from, to ssr.NodeID
	mode     ssr.Mode
	target   ssr.NodeID
	payload  []byte
}

const step = 10 * time.Millisecond

func newFakeRing(t *testing.T, n int, p Params) *fakeRing {
	r := &fakeRing{t: t, now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), nodes: make(map[ssr.NodeID]*fnode), params: p}
	for range n {
		r.add()
	}
	return r
}

func testKey(seed uint64) ed25519.PrivateKey {
	var s [ed25519.SeedSize]byte
	binary.BigEndian.PutUint64(s[:], seed)
	copy(s[8:], "sipmesh dht test")
	return ed25519.NewKeyFromSeed(s[:])
}

// add joins a node with an ID derived from its key, as on a real mesh.
func (r *fakeRing) add() *fnode {
	r.seed++
	k := testKey(r.seed)
	id := ssr.IDFromPublicKey(k.Public().(ed25519.PublicKey))
	f := &fnode{r: r, id: id, key: k, alive: true, results: make(map[uint64]Result)}
	f.n = New(id, k, r.params, f, r.seed)
	r.nodes[id] = f
	return f
}

// addAttacker joins an eclipse attacker with the ID of its choice.
func (r *fakeRing) addAttacker(id ssr.NodeID, silent bool) *fnode {
	r.seed++
	k := testKey(r.seed)
	f := &fnode{r: r, id: id, key: k, alive: true, results: make(map[uint64]Result), deny: true, silent: silent}
	f.n = New(id, k, r.params, f, r.seed)
	r.nodes[id] = f
	return f
}

func (r *fakeRing) islandOf(id ssr.NodeID) int {
	if r.island == nil {
		return 0
	}
	return r.island(id)
}

// ring returns the live nodes of id's island, sorted.
func (r *fakeRing) ring(of ssr.NodeID) []ssr.NodeID {
	var out []ssr.NodeID
	isl := r.islandOf(of)
	for id, f := range r.nodes {
		if f.alive && r.islandOf(id) == isl {
			out = append(out, id)
		}
	}
	slices.SortFunc(out, cmp.Compare)
	return out
}

func (r *fakeRing) sorted() []*fnode {
	var out []*fnode
	for _, f := range r.nodes {
		if f.alive {
			out = append(out, f)
		}
	}
	slices.SortFunc(out, func(a, b *fnode) int { return cmp.Compare(a.id, b.id) })
	return out
}

// responsible is the brute-force owner of key among ring.
func responsible(ring []ssr.NodeID, key ssr.NodeID) ssr.NodeID {
	i, found := slices.BinarySearch(ring, key)
	if found {
		return ring[i]
	}
	if i == 0 {
		return ring[len(ring)-1]
	}
	return ring[i-1]
}

// holders are the Replicas nodes that should hold key.
func (r *fakeRing) holders(key string, of ssr.NodeID, replicas int) []ssr.NodeID {
	ring := r.ring(of)
	o := responsible(ring, KeyOf(key))
	i, _ := slices.BinarySearch(ring, o)
	var out []ssr.NodeID
	for k := 0; k < min(replicas, len(ring)); k++ {
		out = append(out, ring[(i-k+len(ring))%len(ring)])
	}
	return out
}

// Send implements Env.
func (f *fnode) Send(now time.Time, target ssr.NodeID, mode ssr.Mode, payload []byte) {
	f.r.queue = append(f.r.queue, fmsg{from: f.id, mode: mode, target: target, payload: slices.Clone(payload)})
}

// Ring implements Env: the true view, 4 each way as ssr keeps.
func (f *fnode) Ring() (succ, pred []ssr.NodeID) {
	ring := f.r.ring(f.id)
	i, _ := slices.BinarySearch(ring, f.id)
	for k := 1; k <= 4 && k < len(ring); k++ {
		succ = append(succ, ring[(i+k)%len(ring)])
		pred = append(pred, ring[(i-k+len(ring))%len(ring)])
	}
	return succ, pred
}

// Complete implements Env.
func (f *fnode) Complete(res Result) { f.results[res.ID] = res }

// run advances time by d, delivering datagrams and ticking nodes.
func (r *fakeRing) run(d time.Duration) {
	for end := r.now.Add(d); r.now.Before(end); {
		r.now = r.now.Add(step)
		q := r.queue
		r.queue = nil
		for _, m := range q {
			src := r.nodes[m.from]
			if src == nil || !src.alive || r.drop != nil && r.drop(m) {
				continue
			}
			to := m.target
			if m.mode == ssr.Closest {
				to = responsible(r.ring(m.from), m.target)
			}
			dst := r.nodes[to]
			if dst == nil || !dst.alive || r.islandOf(to) != r.islandOf(m.from) {
				src.n.HandleUnreachable(r.now, ssr.Unreachable{Target: m.target, Mode: m.mode, DstPort: Port, Reason: "test"})
				continue
			}
			if dst.deny {
				if ans := DenyAnswer(nil, m.payload); ans != nil && !dst.silent {
					r.queue = append(r.queue, fmsg{from: dst.id, mode: ssr.Exact, target: m.from, payload: ans})
				}
				continue
			}
			dst.n.HandleDatagram(r.now, ssr.Datagram{Src: m.from, Target: m.target, Mode: m.mode, SrcPort: Port, DstPort: Port, Payload: m.payload, Hops: 1})
		}
		for _, f := range r.sorted() {
			if f.deny {
				continue
			}
			if dl := f.n.NextDeadline(); !r.now.Before(dl) {
				f.n.Tick(r.now)
			}
		}
		if r.onStep != nil {
			r.onStep()
		}
	}
}

// wait runs until the result of request id at f arrives.
func (f *fnode) wait(id uint64) Result {
	f.r.t.Helper()
	for range 3000 {
		if res, ok := f.results[id]; ok {
			return res
		}
		f.r.run(step)
	}
	f.r.t.Fatalf("no result for request %d", id)
	return Result{}
}

func (f *fnode) put(key, value string, ttl time.Duration) error {
	f.r.t.Helper()
	id, err := f.n.Put(f.r.now, key, []byte(value), ttl)
	if err != nil {
		return err
	}
	return f.wait(id).Err
}

func (f *fnode) get(key string) []Record {
	f.r.t.Helper()
	id, err := f.n.Get(f.r.now, key)
	if err != nil {
		f.r.t.Fatal(err)
	}
	res := f.wait(id)
	if res.Err != nil {
		f.r.t.Fatalf("get %q: %v", key, res.Err)
	}
	return res.Records
}

func (f *fnode) del(key string) error {
	f.r.t.Helper()
	id, err := f.n.Delete(f.r.now, key)
	if err != nil {
		return err
	}
	return f.wait(id).Err
}

// copies returns the live nodes holding a live version of key with the
// given value ("" for any) and the lowest seq among them.
func (r *fakeRing) copies(key string) map[ssr.NodeID]Record {
	out := make(map[ssr.NodeID]Record)
	for id, f := range r.nodes {
		if !f.alive {
			continue
		}
		for _, rec := range f.n.Local(r.now, key) {
			out[id] = rec
		}
	}
	return out
}
