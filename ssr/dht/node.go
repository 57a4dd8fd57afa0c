package dht

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/sipmesh/sipmesh/ssr"
)

// Params tune a Node. Zero fields take DefaultParams.
type Params struct {
	Replicas       int           // copies of each record: owner + Replicas−1 predecessors
	SyncInterval   time.Duration // maintenance round (±20 % jitter)
	RingPoll       time.Duration // how often the ring view is read
	RequestTimeout time.Duration // first attempt of a put/get/delete; later attempts wait longer
	Retries        int           // further attempts after the first (negative: none)
	ConsultTimeout time.Duration // an owner's wait for its replicas' answers
	// HandoffWindow: for this long after its first successor or
	// predecessor changed (it joined, or its range moved), an owner merges
	// its replicas' records into every answer, not only when it holds
	// nothing for the key.
	HandoffWindow time.Duration
	// TombstoneLifetime is a deletion's lifetime when the writer does not
	// know the lifetime of what it deletes.
	TombstoneLifetime time.Duration

	MaxRecords   int // records held, all writers
	MaxBytes     int // bytes held, roughly
	MaxPerWriter int // records of one writer held
	MaxPerKey    int // writers under one key
	MaxPending   int // own requests in flight
	MaxHandoffs  int // hand-offs started per round
	MaxPush      int // records pushed in answer to one digest or want

	// Walk and Arc are the eclipse defence (package doc, "Eclipse"). A
	// write, and a get that found nothing, walk down the ring from the
	// key's owner, one node at a time, until they pass the arc of Arc
	// expected node gaps below the key or visited Walk nodes; holders keep
	// copies within twice that arc. Walk < 0 turns the defence off:
	// rank-only placement, as before it (for comparisons in dhtsim).
	Walk int
	Arc  int

	// Validate is the policy on top of signatures (RequireWriter); nil
	// accepts every correctly signed record.
	Validate Validator
}

// DefaultParams suit a mesh of up to some thousand routers.
var DefaultParams = Params{
	Replicas:          3,
	SyncInterval:      5 * time.Second,
	RingPoll:          time.Second,
	RequestTimeout:    2 * time.Second,
	Retries:           3,
	ConsultTimeout:    time.Second,
	HandoffWindow:     20 * time.Second,
	TombstoneLifetime: time.Hour,
	MaxRecords:        65536,
	MaxBytes:          32 << 20,
	MaxPerWriter:      8192,
	MaxPerKey:         32,
	MaxPending:        8192,
	MaxHandoffs:       256,
	MaxPush:           128,
	Walk:              128,
	Arc:               6,
}

func (p Params) withDefaults() Params {
	d := DefaultParams
	set := func(dst *int, v int) {
		if v > 0 {
			*dst = v
		}
	}
	setD := func(dst *time.Duration, v time.Duration) {
		if v > 0 {
			*dst = v
		}
	}
	set(&d.Replicas, p.Replicas)
	setD(&d.SyncInterval, p.SyncInterval)
	setD(&d.RingPoll, p.RingPoll)
	setD(&d.RequestTimeout, p.RequestTimeout)
	if p.Retries != 0 {
		d.Retries = max(p.Retries, 0)
	}
	setD(&d.ConsultTimeout, p.ConsultTimeout)
	setD(&d.HandoffWindow, p.HandoffWindow)
	setD(&d.TombstoneLifetime, p.TombstoneLifetime)
	set(&d.MaxRecords, p.MaxRecords)
	set(&d.MaxBytes, p.MaxBytes)
	set(&d.MaxPerWriter, p.MaxPerWriter)
	set(&d.MaxPerKey, p.MaxPerKey)
	set(&d.MaxPending, p.MaxPending)
	set(&d.MaxHandoffs, p.MaxHandoffs)
	set(&d.MaxPush, p.MaxPush)
	if p.Walk != 0 {
		d.Walk = max(p.Walk, -1)
	}
	set(&d.Arc, p.Arc)
	// One key's digest entries must fit one DIGEST datagram.
	d.MaxPerKey = min(d.MaxPerKey, maxDigest)
	d.Validate = p.Validate
	return d
}

// Env is what a Node needs from the world. The Node calls it synchronously
// from its methods; an implementation must not call back into the Node.
type Env interface {
	// Send delivers payload to target over the ring on Port: to the node
	// target (ssr.Exact) or to the node responsible for key target
	// (ssr.Closest). payload is only valid during the call.
	Send(now time.Time, target ssr.NodeID, mode ssr.Mode, payload []byte)
	// Ring returns this node's successors and predecessors, nearest first,
	// as its routing layer sees them now (ssr.Node.Successors, Predecessors).
	Ring() (succ, pred []ssr.NodeID)
	// Complete reports the outcome of a Put, Get or Delete.
	Complete(r Result)
}

// Op is an application request.
type Op uint8

// Ops.
const (
	OpPut Op = iota + 1
	OpGet
	OpDelete
)

func (o Op) String() string {
	switch o {
	case OpPut:
		return "put"
	case OpGet:
		return "get"
	case OpDelete:
		return "delete"
	}
	return fmt.Sprintf("op%d", uint8(o))
}

// Result is the outcome of a Put, Get or Delete.
type Result struct {
	ID  uint64 // as returned by the call
	Op  Op
	Key string
	Err error
	// Records are a Get's answer: the live records under Key, one per
	// writer, signatures checked. Empty means not found.
	Records []Record
	// Hops is how many physical hops the request took to the node that
	// answered it (for a Get: to the key's owner).
	Hops int
	// Owner is the node that answered a Get: the key's owner on the ring
	// (the node n with the key in [n, successor(n))), also when the
	// records came from a node past it. Zero otherwise.
	Owner    ssr.NodeID
	Latency  time.Duration // from the call to the answer, retries included
	Attempts int
	// Walked is how many nodes past the owner a Get asked (package doc,
	// "Eclipse").
	Walked int
}

// Metrics are a node's counters and its store's size.
type Metrics struct {
	Records    int `json:"records"`
	Tombstones int `json:"tombstones"`
	Bytes      int `json:"bytes"`

	PutsServed     uint64 `json:"puts_served"`     // STOREs from writers, as owner
	GetsServed     uint64 `json:"gets_served"`     // GETs, as owner
	GetsOwned      uint64 `json:"gets_owned"`      // own gets answered from the store, as owner (GetOwned)
	ConsultsServed uint64 `json:"consults_served"` // GETs of an owner asking its replicas
	BusyAnswers    uint64 `json:"busy_answers"`    // GETs answered "busy": nothing here, no room to consult
	Stored         uint64 `json:"stored"`          // new versions stored, any source
	Refused        uint64 `json:"refused"`         // records refused, any reason
	RefusedSig     uint64 `json:"refused_signature"`
	RefusedStale   uint64 `json:"refused_stale"`
	RefusedQuota   uint64 `json:"refused_quota"`
	Expired        uint64 `json:"expired"`

	HandoffsSent     uint64 `json:"handoffs_sent"`
	HandoffsAcked    uint64 `json:"handoffs_acked"` // and dropped here
	HandoffsReceived uint64 `json:"handoffs_received"`
	Pushed           uint64 `json:"pushed"` // copies sent to replicas
	SyncRounds       uint64 `json:"sync_rounds"`
	SyncMismatches   uint64 `json:"sync_mismatches"` // summaries that differed, as replica
	Malformed        uint64 `json:"malformed"`

	// The eclipse defence (package doc).
	WalkSteps  uint64 `json:"walk_steps"`  // gets and writes sent past the owner
	WalkServed uint64 `json:"walk_served"` // such requests answered here
	WalkFound  uint64 `json:"walk_found"`  // own gets answered by a node past the owner
	KeptInArc  uint64 `json:"kept_in_arc"` // copies handed off but kept: within the arc below the key

	Requests   uint64 `json:"requests"` // own puts, gets, deletes
	Timeouts   uint64 `json:"timeouts"` // of those, given up
	Retries    uint64 `json:"retries"`
	Lookups    uint64 `json:"lookups"`     // completed gets
	LookupHops uint64 `json:"lookup_hops"` // their hops, summed
	// GetsJoined are a Driver's gets that joined one in flight for the
	// same key instead of asking again.
	GetsJoined uint64 `json:"gets_joined"`

	// The records file, of a Driver with a StateDir.
	DiskLoaded   uint64 `json:"disk_loaded,omitempty"`   // records loaded at start
	DiskRefused  uint64 `json:"disk_refused,omitempty"`  // read at start and refused: signature, policy, quota
	DiskDamaged  uint64 `json:"disk_damaged,omitempty"`  // damaged stretches and entries skipped at start
	DiskBytes    uint64 `json:"disk_bytes,omitempty"`    // size of the file
	DiskRewrites uint64 `json:"disk_rewrites,omitempty"` // compactions
	DiskErrors   uint64 `json:"disk_errors,omitempty"`   // failed writes
	// DiskPending counts changes not yet written, plus one while a write
	// is queued or running: 0 means what the node holds is on disk.
	DiskPending uint64 `json:"disk_pending"`
}

// Node is one router's DHT state: a state machine without I/O. Its driver
// feeds it datagrams (HandleDatagram), failures (HandleUnreachable), time
// (Tick) and application requests (Put, Get, Delete); it answers through
// Env. A Node is not safe for concurrent use.
type Node struct {
	self ssr.NodeID
	priv ed25519.PrivateKey
	pub  ed25519.PublicKey
	wid  ssr.NodeID
	p    Params
	env  Env
	rng  *rand.Rand
	st   *store

	own map[string]ownRec // this writer's latest version per key
	// seqFloor is the highest seq this node signed, kept on disk: a node
	// whose clock went back (a router without a clock, restarted) still
	// writes versions newer than those the ring holds.
	seqFloor uint64
	pending  map[uint64]*request
	handoffs map[recID]uint64 // record → hand-off request in flight
	keep     map[recID]uint64 // records the owner told us to keep, in ring epoch
	// kept are copies handed off and kept within the keep arc: not handed
	// off again until this node was responsible for them once more.
	kept  map[recID]struct{}
	epoch uint64 // ring view changes seen
	// ids draws request IDs. Requests travel as closest datagrams, which
	// ssr does not authenticate end to end (ssr/e2e.go): a relay can send
	// one in this node's name, and the owner's answer comes here. That
	// answer is dropped only if no request of ours has its ID, so IDs
	// must not be guessable from one seen (a relay carries our requests;
	// an owner gets them): a ChaCha8 stream keyed by the node's private
	// key, not a counter.
	ids *rand.ChaCha8

	succ, pred  []ssr.NodeID
	nearChanged time.Time // the first successor or predecessor changed
	started     bool
	nextSync    time.Time
	nextPoll    time.Time

	m       Metrics
	buf     []byte
	scratch []recID
}

type ownRec struct {
	seq      uint64
	lifetime time.Duration
}

type reqKind uint8

const (
	kPut reqKind = iota + 1
	kGet
	kDelete
	kHandoff
	kConsult
	kWalkStore // a write's copy to a node past the owner (package doc, "Eclipse")
)

// request is something this node waits an answer for.
type request struct {
	kind     reqKind
	id       uint64
	key      string
	target   ssr.NodeID
	mode     ssr.Mode
	payload  []byte // to send again
	attempts int
	deadline time.Time
	start    time.Time
	// Get and consult answers arrive in parts.
	parts map[byte][]Record
	last  int
	hops  int
	owner ssr.NodeID // the node that answered
	// kHandoff
	rid recID
	seq uint64
	// kConsult: the owner's pending answer this feeds
	parent *consult
	// Walks (kGet, kWalkStore): the key's position, the arc below it to
	// cover, nodes asked past the owner, the current target's distance
	// below the key, and whether any node answered.
	pos      ssr.NodeID
	arc      uint64
	walked   int
	tdist    uint64
	answered bool
}

// consult is an owner's answer to a GET, waiting for its replicas.
type consult struct {
	requester ssr.NodeID
	req       uint64
	hops      byte
	key       string
	waiting   int
}

// New returns a node for the ring node self, writing with priv. Zero
// fields of p take DefaultParams; seed makes its jitter reproducible.
func New(self ssr.NodeID, priv ed25519.PrivateKey, p Params, env Env, seed uint64) *Node {
	p = p.withDefaults()
	pub := priv.Public().(ed25519.PublicKey)
	n := &Node{
		self:     self,
		priv:     priv,
		pub:      pub,
		wid:      WriterID(pub),
		p:        p,
		env:      env,
		rng:      rand.New(rand.NewPCG(seed, uint64(self))),
		st:       newStore(p),
		own:      make(map[string]ownRec),
		pending:  make(map[uint64]*request),
		handoffs: make(map[recID]uint64),
		keep:     make(map[recID]uint64),
		kept:     make(map[recID]struct{}),
	}
	h := sha256.New()
	h.Write([]byte("sipmesh dht request ids\x00"))
	h.Write(priv.Seed())
	h.Write(binary.BigEndian.AppendUint64(nil, seed))
	n.ids = rand.NewChaCha8([32]byte(h.Sum(nil)))
	return n
}

// ID returns the ring node's ID.
func (n *Node) ID() ssr.NodeID { return n.self }

// PublicKey returns the key this node signs its records with.
func (n *Node) PublicKey() ed25519.PublicKey { return n.pub }

// Metrics returns the node's counters.
func (n *Node) Metrics() Metrics {
	m := n.m
	m.Records, m.Bytes, m.Tombstones = len(n.st.recs), n.st.bytes, 0
	for _, e := range n.st.recs {
		if e.rec.Tombstone {
			m.Tombstones++
		}
	}
	return m
}

// Local returns the live records (tombstones included) this node holds
// under key: what a ground-truth check or a status page looks at.
func (n *Node) Local(now time.Time, key string) []Record {
	var out []Record
	for _, e := range n.st.forKey(now, key) {
		out = append(out, e.record(now))
	}
	return out
}

// Records returns every live record held (tombstones included).
func (n *Node) Records(now time.Time) []Record {
	out := make([]Record, 0, len(n.st.recs))
	for _, id := range n.st.index() {
		if e := n.st.get(now, id); e != nil {
			out = append(out, e.record(now))
		}
	}
	return out
}

// Len is the number of records held.
func (n *Node) Len() int { return len(n.st.recs) }

func (n *Node) jitter(d time.Duration) time.Duration {
	return d*4/5 + time.Duration(n.rng.Int64N(int64(d)*2/5+1))
}

// newID draws an unpredictable request ID not in use (Node.ids says why).
func (n *Node) newID() uint64 {
	for {
		if id := n.ids.Uint64(); id != 0 && n.pending[id] == nil {
			return id
		}
	}
}

// ---- application requests ----

// Put stores value under key for ttl (rounded up to whole seconds), signed
// by this node; it replaces this writer's earlier value. The outcome
// arrives through Env.Complete with the returned ID once the key's owner
// stored it.
func (n *Node) Put(now time.Time, key string, value []byte, ttl time.Duration) (uint64, error) {
	if ttl <= 0 || ttl > MaxLifetime {
		return 0, fmt.Errorf("%w: ttl %v (want (0, %v])", ErrInvalid, ttl, MaxLifetime)
	}
	ttl = (ttl + time.Second - 1).Truncate(time.Second)
	return n.write(now, OpPut, key, value, ttl, false)
}

// Delete replaces this writer's value under key by a signed tombstone,
// which wins over every older version wherever they meet, until the
// deleted value would have expired.
func (n *Node) Delete(now time.Time, key string) (uint64, error) {
	lt := n.p.TombstoneLifetime
	if o, ok := n.own[key]; ok && o.lifetime > 0 {
		lt = o.lifetime
	}
	return n.write(now, OpDelete, key, nil, lt, true)
}

func (n *Node) write(now time.Time, op Op, key string, value []byte, ttl time.Duration, tomb bool) (uint64, error) {
	n.start(now)
	if len(n.pending) >= n.p.MaxPending {
		return 0, ErrBusy
	}
	seq := max(uint64(max(now.UnixMicro(), 1)), n.seqFloor+1)
	if o, ok := n.own[key]; ok && o.seq >= seq {
		seq = o.seq + 1
	}
	r := Record{Key: key, Writer: n.pub, Seq: seq, Lifetime: ttl, Tombstone: tomb, Value: value, Remaining: ttl}
	r.Sig = make([]byte, ed25519.SignatureSize) // placeholder for check
	if err := r.check(); err != nil {
		return 0, err
	}
	r.Sign(n.priv)
	if n.p.Validate != nil {
		if err := n.p.Validate(&r); err != nil {
			return 0, err
		}
	}
	if len(n.own) >= n.p.MaxPerWriter {
		for k := range n.own { // forget one; time-based seqs stay monotonic
			delete(n.own, k)
			break
		}
	}
	n.own[key] = ownRec{seq: seq, lifetime: ttl}
	n.seqFloor = max(n.seqFloor, seq)
	id := n.newID()
	kind := kPut
	if op == OpDelete {
		kind = kDelete
	}
	q := &request{kind: kind, id: id, key: key, target: KeyOf(key), mode: ssr.Closest, start: now,
		payload: encodeStore(nil, id, storeAck, &r)}
	n.m.Requests++
	n.launch(now, q)
	return id, nil
}

// PutRecord stores a record signed elsewhere (NewRecord), e.g. an account
// signed by the administrator key; a tombstone deletes. The outcome arrives
// through Env.Complete.
func (n *Node) PutRecord(now time.Time, r Record) (uint64, error) {
	n.start(now)
	if len(n.pending) >= n.p.MaxPending {
		return 0, ErrBusy
	}
	if r.Remaining <= 0 || r.Remaining > r.Lifetime {
		r.Remaining = r.Lifetime
	}
	if err := r.Verify(); err != nil {
		return 0, err
	}
	if n.p.Validate != nil {
		if err := n.p.Validate(&r); err != nil {
			return 0, err
		}
	}
	kind := kPut
	if r.Tombstone {
		kind = kDelete
	}
	id := n.newID()
	q := &request{kind: kind, id: id, key: r.Key, target: KeyOf(r.Key), mode: ssr.Closest, start: now,
		payload: encodeStore(nil, id, storeAck, &r)}
	n.m.Requests++
	n.launch(now, q)
	return id, nil
}

// Get asks the key's owner for every live record under key. The answer
// arrives through Env.Complete with the returned ID.
func (n *Node) Get(now time.Time, key string) (uint64, error) {
	n.start(now)
	if len(key) == 0 || len(key) > MaxKey {
		return 0, fmt.Errorf("%w: key of %d bytes (1..%d)", ErrInvalid, len(key), MaxKey)
	}
	if len(n.pending) >= n.p.MaxPending {
		return 0, ErrBusy
	}
	id := n.newID()
	q := &request{kind: kGet, id: id, key: key, target: KeyOf(key), mode: ssr.Closest, start: now,
		payload: encodeGet(nil, id, 0, key), pos: KeyOf(key), arc: n.walkArc()}
	n.m.Requests++
	n.launch(now, q)
	return id, nil
}

// GetOwned answers a get of key at once from this node's store when the
// DHT's rules make that store the answer: this node owns the key by its
// ring view, holds a record under it, and its nearest neighbours did not
// change within HandoffWindow — exactly when handleGet would answer a GET
// from its store without consulting the replicas. A node's own lookups of
// the keys it owns (a registrar's REGISTERs for AORs hashed to it) then
// cost no message through the router to itself and back. ok is false when
// the get must be asked by Get; the records (tombstones dropped, as Get
// completes) share no memory with the store.
func (n *Node) GetOwned(now time.Time, key string) (recs []Record, ok bool) {
	n.start(now)
	if len(key) == 0 || len(key) > MaxKey || n.rank(KeyOf(key)) != 0 || now.Sub(n.nearChanged) < n.p.HandoffWindow {
		return nil, false
	}
	es := n.st.forKey(now, key)
	if len(es) == 0 {
		return nil, false // handleGet consults the replicas, or a walk follows
	}
	for _, e := range es {
		if r := e.record(now); !r.Tombstone {
			r.Value = bytes.Clone(r.Value)
			recs = append(recs, r)
		}
	}
	n.m.Requests++
	n.m.GetsOwned++
	n.m.Lookups++
	return recs, true
}

// launch sends a request's first attempt and waits for its answer.
func (n *Node) launch(now time.Time, q *request) {
	n.pending[q.id] = q
	q.attempts = 1
	q.deadline = now.Add(n.timeout(q))
	n.env.Send(now, q.target, q.mode, q.payload)
}

func (n *Node) timeout(q *request) time.Duration {
	switch q.kind {
	case kConsult:
		return n.p.ConsultTimeout
	case kHandoff:
		return n.p.RequestTimeout
	}
	return n.p.RequestTimeout * time.Duration(q.attempts)
}

func (n *Node) finish(now time.Time, q *request, err error, recs []Record) {
	delete(n.pending, q.id)
	r := Result{ID: q.id, Key: q.key, Err: err, Records: recs, Hops: q.hops, Latency: now.Sub(q.start), Attempts: q.attempts + q.walked, Walked: q.walked}
	if err == nil && q.kind == kGet {
		r.Owner = q.owner
	}
	switch q.kind {
	case kPut:
		r.Op = OpPut
	case kDelete:
		r.Op = OpDelete
	case kGet:
		r.Op = OpGet
		if err == nil {
			n.m.Lookups++
			n.m.LookupHops += uint64(q.hops)
		}
	default:
		return
	}
	if err != nil {
		r.Hops = 0
	}
	n.env.Complete(r)
}

// ---- time ----

func (n *Node) start(now time.Time) {
	if n.started {
		return
	}
	n.started = true
	n.nextPoll = now
	n.nextSync = now.Add(n.jitter(n.p.SyncInterval))
}

// NextDeadline is when Tick must be called next (the zero time before the
// node has started: call Tick now).
func (n *Node) NextDeadline() time.Time {
	if !n.started {
		return time.Time{}
	}
	d := n.nextPoll
	if n.nextSync.Before(d) {
		d = n.nextSync
	}
	for _, q := range n.pending {
		if q.deadline.Before(d) {
			d = q.deadline
		}
	}
	return d
}

// Tick runs what is due at now: ring polling, the maintenance round,
// request retries and timeouts.
func (n *Node) Tick(now time.Time) {
	n.start(now)
	if !now.Before(n.nextPoll) {
		n.nextPoll = now.Add(n.p.RingPoll)
		n.pollRing(now)
	}
	if !now.Before(n.nextSync) {
		n.nextSync = now.Add(n.jitter(n.p.SyncInterval))
		n.syncRound(now)
	}
	var due []*request
	for _, q := range n.pending {
		if !now.Before(q.deadline) {
			due = append(due, q)
		}
	}
	slices.SortFunc(due, func(a, b *request) int { return a.deadline.Compare(b.deadline) })
	for _, q := range due {
		n.expireRequest(now, q)
	}
}

func (n *Node) expireRequest(now time.Time, q *request) {
	switch q.kind {
	case kHandoff:
		delete(n.pending, q.id)
		delete(n.handoffs, q.rid)
	case kConsult:
		delete(n.pending, q.id)
		n.consultDone(now, q.parent)
	case kWalkStore:
		if !n.walkBlind(now, q) {
			delete(n.pending, q.id)
		}
	default:
		if q.kind == kGet && q.walked > 0 {
			// A node past the owner stayed silent: step over it blindly.
			if n.walkBlind(now, q) {
				return
			}
			if q.answered {
				// Not found by every node that answered: what this node
				// holds itself, if anything, is the answer.
				n.finish(now, q, nil, dropTombstones(n.Local(now, q.key)))
				return
			}
		}
		if q.attempts > n.p.Retries || q.walked > 0 {
			// A silent owner may be an attacker: a get walks on past it, a
			// write still leaves copies past it.
			if q.walked == 0 && q.kind == kGet && n.walkBlind(now, q) {
				return
			}
			if q.kind != kGet {
				n.startWriteWalk(now, q, 0, false)
			}
			n.m.Timeouts++
			n.finish(now, q, fmt.Errorf("%w: %s %q after %d attempts", ErrTimeout, kindOp(q.kind), q.key, q.attempts+q.walked), nil)
			return
		}
		q.attempts++
		n.m.Retries++
		q.parts, q.last = nil, 0
		q.deadline = now.Add(n.timeout(q))
		n.env.Send(now, q.target, q.mode, q.payload)
		if q.kind == kGet {
			// A read is idempotent: its retries go out twice, so that on a
			// lossy multi-hop path one more lost datagram does not cost
			// the caller (a proxy with an INVITE waiting) a whole attempt.
			n.env.Send(now, q.target, q.mode, q.payload)
		}
	}
}

func kindOp(k reqKind) Op {
	switch k {
	case kPut:
		return OpPut
	case kDelete:
		return OpDelete
	}
	return OpGet
}

// HandleUnreachable learns that a datagram this node sent could not be
// delivered: requests to that target are retried at once rather than at
// their timeout.
func (n *Node) HandleUnreachable(now time.Time, u ssr.Unreachable) {
	if u.DstPort != 0 && u.DstPort != Port {
		return
	}
	for _, q := range n.pending {
		if q.target == u.Target && q.mode == u.Mode && now.Before(q.deadline) {
			q.deadline = now
		}
	}
}

// ---- ring view ----

func (n *Node) pollRing(now time.Time) {
	succ, pred := n.env.Ring()
	k := n.p.Replicas + 1
	changed := !slices.Equal(head(succ, k), head(n.succ, k)) || !slices.Equal(head(pred, k), head(n.pred, k))
	if !slices.Equal(head(succ, 1), head(n.succ, 1)) || !slices.Equal(head(pred, 1), head(n.pred, 1)) {
		n.nearChanged = now
	}
	n.succ = append(n.succ[:0], succ...)
	n.pred = append(n.pred[:0], pred...)
	if changed {
		n.epoch++
		clear(n.keep)
		// A new neighbour: sync soon, after the ring had a moment to settle.
		if soon := now.Add(n.jitter(time.Second)); soon.Before(n.nextSync) {
			n.nextSync = soon
		}
	}
}

func head(s []ssr.NodeID, k int) []ssr.NodeID { return s[:min(k, len(s))] }

// rank is this node's place among the key's holders by its view: 0 the
// owner, i the i-th predecessor of the owner (its i-th successor is the
// owner), −1 not among the Replicas holders. Gaps in the view count as
// responsible: holding a copy too many is harmless, dropping the last is
// not.
func (n *Node) rank(k ssr.NodeID) int {
	s := n.succ
	if len(s) == 0 || inRange(n.self, s[0], k) {
		return 0
	}
	for i := 1; i < n.p.Replicas; i++ {
		if i >= len(s) || s[i] == n.self || slices.Contains(s[:i], s[i]) {
			return i // the view ends, or the ring is smaller than it
		}
		if inRange(s[i-1], s[i], k) {
			return i
		}
	}
	return -1
}

// replicas are the nodes holding copies of what this node owns: its
// Replicas−1 nearest predecessors.
func (n *Node) replicas() []ssr.NodeID {
	var out []ssr.NodeID
	for _, p := range n.pred {
		if len(out) >= n.p.Replicas-1 {
			break
		}
		if p != n.self && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// ---- maintenance ----

// syncRound is the periodic maintenance (package doc): expire, hand off
// what this node is no longer responsible for, and compare the owned range
// with the replicas.
func (n *Node) syncRound(now time.Time) {
	n.m.SyncRounds++
	n.m.Expired += uint64(n.st.expire(now))
	if len(n.keep) > len(n.st.recs) {
		clear(n.keep) // bounded by the store; a record dropped since is forgotten
	}
	if len(n.kept) > len(n.st.recs) {
		clear(n.kept)
	}
	started := 0
	for _, id := range n.st.index() {
		if started >= n.p.MaxHandoffs || len(n.pending) >= n.p.MaxPending {
			break
		}
		if n.rank(id.key) >= 0 {
			delete(n.kept, id)
			continue
		}
		if n.handoffs[id] != 0 || n.keep[id] == n.epoch+1 {
			continue
		}
		if _, ok := n.kept[id]; ok && n.keeps(id.key) {
			continue
		}
		e := n.st.recs[id]
		r := e.record(now)
		q := &request{kind: kHandoff, id: n.newID(), key: r.Key, target: id.key, mode: ssr.Closest, start: now, rid: id, seq: r.Seq}
		q.payload = encodeStore(n.buf[:0], q.id, storeAck|storeHandoff, &r)
		n.handoffs[id] = q.id
		n.m.HandoffsSent++
		started++
		n.launch(now, q)
		q.payload = nil // hand-offs are not resent: the next round starts anew
	}
	if len(n.succ) == 0 {
		return
	}
	lo, hi := n.self, n.succ[0]
	var c uint32
	var h uint64
	c, h, n.scratch = n.st.summary(now, lo, hi, n.scratch)
	for _, p := range n.replicas() {
		n.send(now, p, encodeSummary(n.buf[:0], lo, hi, c, h))
	}
}

func (n *Node) send(now time.Time, to ssr.NodeID, b []byte) {
	n.buf = b[:0]
	n.env.Send(now, to, ssr.Exact, b)
}

// ---- datagrams ----

// HandleDatagram processes a DHT datagram that arrived from the ring.
func (n *Node) HandleDatagram(now time.Time, d ssr.Datagram) {
	n.start(now)
	m, err := decode(d.Payload)
	if err != nil {
		n.m.Malformed++
		return
	}
	switch m.typ {
	case msgStore:
		n.handleStore(now, d, &m)
	case msgStoreAck:
		n.handleStoreAck(now, d.Src, &m)
	case msgGet:
		n.handleGet(now, d, &m)
	case msgGetReply:
		n.handleGetReply(now, d, &m)
	case msgSummary:
		n.handleSummary(now, d.Src, &m)
	case msgDigest:
		n.handleDigest(now, d.Src, &m)
	case msgWant:
		n.handleWant(now, d.Src, &m)
	}
}

// accept stores r and counts the outcome.
func (n *Node) accept(now time.Time, r *Record) (bool, error) {
	changed, err := n.st.put(now, r, n.p.Validate)
	switch {
	case err == nil:
		if changed {
			n.m.Stored++
		}
	default:
		n.m.Refused++
		switch codeOf(err) {
		case codeBadSig:
			n.m.RefusedSig++
		case codeStale:
			n.m.RefusedStale++
		case codeQuota:
			n.m.RefusedQuota++
		}
	}
	return changed, err
}

// keepChanges makes the store note its changes for the journal.
func (n *Node) keepChanges() {
	if n.st.changes == nil {
		n.st.changes = make(map[recID]struct{})
	}
}

// load stores a record read from disk with the checks of one from the
// network, without passing it on: the ring's maintenance moves it to its
// current holders. This node's own records restore its version floor.
func (n *Node) load(now time.Time, r *Record) error {
	if _, err := n.accept(now, r); err != nil {
		return err
	}
	if WriterID(r.Writer) == n.wid {
		n.seqFloor = max(n.seqFloor, r.Seq)
		if o := n.own[r.Key]; o.seq < r.Seq && len(n.own) < n.p.MaxPerWriter {
			n.own[r.Key] = ownRec{seq: r.Seq, lifetime: r.Lifetime}
		}
	}
	return nil
}

func (n *Node) handleStore(now time.Time, d ssr.Datagram, m *message) {
	r := &m.recs[0]
	switch {
	case m.flags&storeHandoff != 0:
		n.m.HandoffsReceived++
	case m.flags&storeReplica == 0 && m.flags&storeAck != 0:
		n.m.PutsServed++
	}
	changed, err := n.accept(now, r)
	if changed && m.flags&storeReplica == 0 {
		n.fanOut(now, r)
	}
	if err == nil && m.flags == storeAck|storeReplica && n.rank(r.id().key) < 0 {
		// A write's walk: the writer gave the owner its copy; this one is
		// kept without a hand-off while within the arc.
		n.kept[r.id()] = struct{}{}
	}
	if m.flags&storeAck != 0 {
		code := codeOf(err)
		// A hand-off that routing delivered back to its sender (the views
		// of ring and routing differ for now), or that comes from one of
		// our replicas: the sender keeps its copy.
		if m.flags&storeHandoff != 0 && code == codeOK && (d.Src == n.self || slices.Contains(n.replicas(), d.Src)) {
			code = codeKeep
		}
		n.send(now, d.Src, encodeStoreAck(n.buf[:0], m.req, code))
	}
}

// fanOut pushes a new version to the replicas.
func (n *Node) fanOut(now time.Time, r *Record) {
	for _, p := range n.replicas() {
		n.m.Pushed++
		n.send(now, p, encodeStore(n.buf[:0], 0, storeReplica, r))
	}
}

func (n *Node) handleStoreAck(now time.Time, from ssr.NodeID, m *message) {
	q := n.pending[m.req]
	if q == nil {
		return
	}
	switch q.kind {
	case kPut, kDelete:
		var err error
		if m.code != codeOK {
			err = fmt.Errorf("%s %q: %w", kindOp(q.kind), q.key, errOf(m.code))
		}
		// Whatever the owner said (an attacker acknowledges and drops),
		// the write goes on down the ring.
		n.startWriteWalk(now, q, from, true)
		n.finish(now, q, err, nil)
	case kWalkStore:
		if uint64(q.pos-from) < q.tdist {
			return // a late answer to an earlier step
		}
		if !n.walkNext(now, q, from) {
			delete(n.pending, q.id)
		}
	case kHandoff:
		delete(n.pending, q.id)
		delete(n.handoffs, q.rid)
		// Stored there, or something at least as new is: drop ours if it
		// is still the version handed off and still not ours to keep.
		if m.code == codeKeep {
			n.keep[q.rid] = n.epoch + 1
		}
		if m.code == codeOK || m.code == codeStale {
			e := n.st.recs[q.rid]
			switch {
			case e == nil || e.rec.Seq > q.seq || n.rank(q.rid.key) >= 0:
			case n.keeps(q.rid.key):
				// Nodes inserted between this one and the key (joins, or
				// an attacker's chosen IDs) got a copy but do not take
				// this one: it stays until this node is past the arc
				// (package doc, "Eclipse"), handed off again only after
				// this node was responsible for it once more.
				n.kept[q.rid] = struct{}{}
				n.m.KeptInArc++
			default:
				n.st.remove(q.rid)
				delete(n.keep, q.rid)
				delete(n.kept, q.rid)
				n.m.HandoffsAcked++
			}
		}
	}
}

func (n *Node) handleGet(now time.Time, d ssr.Datagram, m *message) {
	hops := byte(min(d.Hops, 255))
	if m.flags&getLocal != 0 {
		if d.Mode == ssr.Closest {
			n.m.WalkServed++ // a walk step (only consults go by exact delivery)
		} else {
			n.m.ConsultsServed++
		}
		n.answer(now, d.Src, m.req, hops, m.key)
		return
	}
	n.m.GetsServed++
	have := len(n.st.forKey(now, m.key)) > 0
	reps := n.replicas()
	if (have && now.Sub(n.nearChanged) >= n.p.HandoffWindow) || len(reps) == 0 {
		n.answer(now, d.Src, m.req, hops, m.key)
		return
	}
	if len(n.pending) >= n.p.MaxPending {
		// No room to consult the replicas. What this node holds is the
		// answer if it holds something; an empty answer would say "not
		// found" about a key its replicas may hold (after a ring change).
		if have {
			n.answer(now, d.Src, m.req, hops, m.key)
		} else {
			n.m.BusyAnswers++
			n.send(now, d.Src, encodeGetReply(n.buf[:0], m.req, codeBusy, hops, 0, 0, nil))
		}
		return
	}
	c := &consult{requester: d.Src, req: m.req, hops: hops, key: m.key}
	for _, p := range reps {
		q := &request{kind: kConsult, id: n.newID(), key: m.key, target: p, mode: ssr.Exact, start: now, parent: c}
		q.payload = encodeGet(n.buf[:0], q.id, getLocal, m.key)
		c.waiting++
		n.launch(now, q)
		q.payload = nil
	}
}

// answer sends the records held under key to the asker, in parts that
// each fit MaxMessage.
func (n *Node) answer(now time.Time, to ssr.NodeID, req uint64, hops byte, key string) {
	es := n.st.forKey(now, key)
	var parts [][]*Record
	var cur []*Record
	size := getReplyHdr
	for _, e := range es {
		r := e.record(now)
		if sz := r.encodedLen(); size+sz > MaxMessage && len(cur) > 0 {
			parts = append(parts, cur)
			cur, size = nil, getReplyHdr
		}
		cur = append(cur, &r)
		size += r.encodedLen()
	}
	parts = append(parts, cur)
	parts = parts[:min(len(parts), 256)]
	for i, p := range parts {
		n.send(now, to, encodeGetReply(n.buf[:0], req, codeOK, hops, byte(i), byte(len(parts)-1), p))
	}
}

func (n *Node) handleGetReply(now time.Time, d ssr.Datagram, m *message) {
	q := n.pending[m.req]
	if q == nil || (q.kind != kGet && q.kind != kConsult) {
		return
	}
	if q.kind == kGet && uint64(q.pos-d.Src) < q.tdist {
		return // a late answer to an earlier step of the walk
	}
	if q.parts == nil {
		q.parts = make(map[byte][]Record)
		q.last = int(m.last)
	}
	if int(m.last) != q.last {
		return // a part of another attempt's answer
	}
	if m.code != codeOK {
		if q.kind == kConsult {
			delete(n.pending, q.id)
			n.consultDone(now, q.parent)
			return
		}
		// The owner was too busy to know (codeBusy): an error, not an
		// empty answer.
		n.finish(now, q, errOf(m.code), nil)
		return
	}
	q.parts[m.part] = m.recs
	q.hops = int(m.hops)
	if q.walked == 0 {
		q.owner = d.Src // the key's owner, also when a walk follows
	}
	if len(q.parts) <= q.last {
		return
	}
	var all []Record
	for i := 0; i <= q.last; i++ {
		all = append(all, q.parts[byte(i)]...)
	}
	if q.kind == kConsult {
		delete(n.pending, q.id)
		// Read repair: what a replica holds under a key this node owns is
		// stored here (signatures checked by the store).
		for i := range all {
			n.accept(now, &all[i])
		}
		n.consultDone(now, q.parent)
		return
	}
	valid := validRecords(q.key, all)
	if len(valid) == 0 {
		q.answered = true
		// What this node holds itself is the answer if the owner has
		// nothing: an owner that has just taken over, or whose replicas
		// stayed silent under load, says "not found" about a key this
		// node holds a copy of (it wrote it, or was a replica of the old
		// ring). The copies were checked when stored.
		if valid = n.Local(now, q.key); len(valid) == 0 && n.walkNext(now, q, d.Src) {
			return // nothing there: ask the next node down the ring
		}
	} else if q.walked > 0 {
		n.m.WalkFound++
	}
	n.finish(now, q, nil, dropTombstones(valid))
}

func dropTombstones(rs []Record) []Record {
	return slices.DeleteFunc(rs, func(r Record) bool { return r.Tombstone })
}

// consultDone counts one replica's answer (or its silence) and answers
// the asker after the last.
func (n *Node) consultDone(now time.Time, c *consult) {
	if c.waiting--; c.waiting > 0 {
		return
	}
	n.answer(now, c.requester, c.req, c.hops, c.key)
}

// validRecords checks an answer: the newest correctly signed version per
// writer of key, tombstones included (a deletion ends a walk: copies
// farther down may be older than it).
func validRecords(key string, all []Record) []Record {
	best := make(map[ssr.NodeID]int)
	var out []Record
	for _, r := range all {
		if r.Key != key || r.Verify() != nil {
			continue
		}
		w := WriterID(r.Writer)
		if i, ok := best[w]; ok {
			if out[i].Seq < r.Seq {
				out[i] = r
			}
			continue
		}
		best[w] = len(out)
		out = append(out, r)
	}
	return out
}

// handleSummary is a replica's side of the sync: on a mismatch it sends
// its digest of [lo, hi) to the owner, in chunks covering consecutive
// sub-ranges so that the owner can compare each on its own.
func (n *Node) handleSummary(now time.Time, from ssr.NodeID, m *message) {
	c, h, ids := n.st.summary(now, m.lo, m.hi, n.scratch)
	n.scratch = ids
	if c == m.count && h == m.hash {
		return
	}
	n.m.SyncMismatches++
	var ds []digest
	lo := m.lo
	for i := 0; i < len(ids); {
		j := i
		for j < len(ids) && ids[j].key == ids[i].key {
			j++
		}
		if len(ds)+(j-i) > maxDigest && len(ds) > 0 {
			hi := ids[i].key
			n.send(now, from, encodeDigest(n.buf[:0], lo, hi, ds))
			ds, lo = ds[:0], hi
		}
		for ; i < j; i++ {
			if e := n.st.get(now, ids[i]); e != nil {
				ds = append(ds, digest{id: ids[i], seq: e.rec.Seq, tomb: e.rec.Tombstone})
			}
		}
	}
	n.send(now, from, encodeDigest(n.buf[:0], lo, m.hi, ds))
}

// handleDigest is the owner's side: push what the replica lacks, ask for
// what it has newer.
func (n *Node) handleDigest(now time.Time, from ssr.NodeID, m *message) {
	theirs := make(map[recID]digest, len(m.dig))
	for _, d := range m.dig {
		if inRange(m.lo, m.hi, d.id.key) {
			theirs[d.id] = d
		}
	}
	pushed := 0
	n.scratch = n.st.inRangeIDs(m.lo, m.hi, n.scratch[:0])
	for _, id := range n.scratch {
		e := n.st.get(now, id)
		if e == nil {
			continue
		}
		if t, ok := theirs[id]; ok && t.seq >= e.rec.Seq {
			continue
		}
		if pushed >= n.p.MaxPush {
			break
		}
		r := e.record(now)
		n.m.Pushed++
		pushed++
		n.send(now, from, encodeStore(n.buf[:0], 0, storeReplica, &r))
	}
	var want []recID
	for _, d := range m.dig {
		if !inRange(m.lo, m.hi, d.id.key) {
			continue
		}
		if e := n.st.get(now, d.id); e == nil || e.rec.Seq < d.seq {
			want = append(want, d.id)
		}
	}
	for len(want) > 0 {
		k := min(len(want), maxWant)
		n.send(now, from, encodeWant(n.buf[:0], want[:k]))
		want = want[k:]
	}
}

// handleWant sends the owner the versions it asked for, as writes it fans
// out to its other replicas.
func (n *Node) handleWant(now time.Time, from ssr.NodeID, m *message) {
	for i, id := range m.want {
		if i >= n.p.MaxPush {
			break
		}
		if e := n.st.get(now, id); e != nil {
			r := e.record(now)
			n.m.Pushed++
			n.send(now, from, encodeStore(n.buf[:0], 0, 0, &r))
		}
	}
}

// ---- eclipse defence (package doc, "Eclipse") ----

// gaps estimates the distance between adjacent node IDs from this node's
// ring view. mean, over the whole view, sizes walks; keep, the larger of
// the means on either side, sizes what this node keeps, so that nodes
// crowded on one side of it (an attacker's, next to a key) do not shrink
// it. Both are 0 when the view is empty or wraps (a ring of fewer nodes
// than the view holds): there is no arc to speak of, and no walk.
func (n *Node) gaps() (mean, keep uint64) {
	ls, lp := len(n.succ), len(n.pred)
	if ls == 0 || lp == 0 {
		return 0, 0
	}
	var last uint64
	for _, s := range n.succ {
		d := uint64(s - n.self)
		if d <= last {
			return 0, 0 // self, a repeat, or out of order: the view wraps
		}
		last = d
	}
	ss := last
	last = 0
	for _, p := range n.pred {
		d := uint64(n.self - p)
		if d <= last {
			return 0, 0
		}
		last = d
	}
	sp := last
	if ss > math.MaxUint64-sp {
		return 0, 0 // successors and predecessors overlap
	}
	k := uint64(ls + lp)
	return ss/k + sp/k, max(ss/uint64(ls), sp/uint64(lp))
}

func satMul(a uint64, k int) uint64 {
	if k <= 0 {
		return 0
	}
	if a > math.MaxUint64/uint64(k) {
		return math.MaxUint64
	}
	return a * uint64(k)
}

// walkArc is the distance below a key that walks cover: Arc gaps.
func (n *Node) walkArc() uint64 {
	if n.p.Walk < 0 {
		return 0
	}
	g, _ := n.gaps()
	return satMul(g, n.p.Arc)
}

// keeps reports whether this node keeps copies of what lies at position
// k whatever its rank: k is within twice the walk arc above it, by its
// larger one-sided gap estimate.
func (n *Node) keeps(k ssr.NodeID) bool {
	if n.p.Walk < 0 {
		return false
	}
	_, g := n.gaps()
	return uint64(k-n.self) <= satMul(g, 2*n.p.Arc)
}

// walkNext moves a walk past from, the node that answered its last step
// (with nothing, for a get): the next step goes by closest delivery to
// from − 1, which lands on from's predecessor whatever IDs others chose.
// It reports false when the walk is over: from is past the arc, the walk
// made Walk steps, or it went round the ring.
func (n *Node) walkNext(now time.Time, q *request, from ssr.NodeID) bool {
	d := uint64(q.pos - from)
	if n.p.Walk < 0 || d > q.arc || q.walked >= n.p.Walk || d == math.MaxUint64 {
		return false
	}
	if q.walked > 0 && d < q.tdist {
		return false // wrapped
	}
	q.tdist = d + 1
	n.walkStep(now, q, from-1)
	return true
}

// walkBlind moves a walk past a step that got no answer: the silent node's
// ID is unknown, so the next target is a quarter of a gap lower.
func (n *Node) walkBlind(now time.Time, q *request) bool {
	g, _ := n.gaps()
	step := max(g/4, 1)
	if n.p.Walk < 0 || q.arc == 0 || q.walked >= n.p.Walk || q.tdist > q.arc || step > q.arc-q.tdist {
		return false
	}
	q.tdist += step
	n.walkStep(now, q, q.pos-ssr.NodeID(q.tdist))
	return true
}

// walkStep sends a walk's next step to target: one attempt (a silent node
// is stepped over, not asked again), a get's datagram twice as retries
// are, so that one loss on the way does not count as silence. A step
// waits ConsultTimeout, as an owner waits for its replicas: the owner
// already answered, so the path is known to work, and a walk through a
// region where nodes just died (routes not yet repaired) should not make
// a lookup wait a full request timeout per dead node.
func (n *Node) walkStep(now time.Time, q *request, target ssr.NodeID) {
	q.walked++
	n.m.WalkSteps++
	q.target, q.mode = target, ssr.Closest
	q.attempts, q.parts, q.last = 1, nil, 0
	q.deadline = now.Add(n.p.ConsultTimeout)
	if q.kind == kGet && (len(q.payload) <= hdrLen || q.payload[hdrLen]&getLocal == 0) {
		q.payload = encodeGet(nil, q.id, getLocal, q.key)
	}
	n.env.Send(now, q.target, q.mode, q.payload)
	if q.kind == kGet {
		n.env.Send(now, q.target, q.mode, q.payload)
	}
}

// startWriteWalk continues write q (a put or delete whose owner answered,
// from, or stayed silent) down the ring: the same record as a replica copy
// with an answer wanted, node after node, in the background; the write's
// outcome is the owner's answer.
func (n *Node) startWriteWalk(now time.Time, q *request, from ssr.NodeID, answered bool) {
	if n.p.Walk < 0 || len(n.pending) >= n.p.MaxPending || len(q.payload) <= hdrLen {
		return
	}
	w := &request{kind: kWalkStore, id: n.newID(), key: q.key, start: now, pos: KeyOf(q.key), arc: n.walkArc()}
	w.payload = slices.Clone(q.payload)
	binary.BigEndian.PutUint64(w.payload[2:], w.id)
	w.payload[hdrLen] = storeAck | storeReplica
	ok := false
	if answered {
		ok = n.walkNext(now, w, from)
	} else {
		ok = n.walkBlind(now, w)
	}
	if ok {
		n.pending[w.id] = w
	}
}

// Walking is the number of this node's writes still walking down the ring.
func (n *Node) Walking() int {
	k := 0
	for _, q := range n.pending {
		if q.kind == kWalkStore {
			k++
		}
	}
	return k
}
