package ssr

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"time"
)

// Node is one SSR router's protocol state: a state machine without I/O
// (docs/DESIGN.md). Its driver feeds it frames (HandleFrame), time (Tick) and
// application requests (Send, Ping); it answers through Env. A Node is not
// safe for concurrent use: one driver goroutine, or one simulator loop, owns it.
type Node struct {
	id  NodeID
	p   Params
	env Env
	rng *rand.Rand

	links []LinkID // sorted: beacons go out in a fixed order (replayable simulations)
	nbrs  map[NodeID]*nbr
	cache *cache
	tomb  map[NodeID]time.Time // nodes believed dead, until the time given

	started   bool
	lastTick  time.Time
	helloNext time.Time
	helloSeq  uint32
	ringNext  time.Time
	ringIvl   time.Duration
	lastSucc  NodeID
	lastPred  NodeID
	ringWait  map[NodeID]*ringWait // notified, no answer since
	// srtt is the smoothed round trip of notifications (RFC 6298 §2), which
	// spaces the re-sends to a silent ring neighbour.
	srtt time.Duration
	// soonNext is when the sub-second work is due (probes of busy
	// neighbours, re-sent notifications); zero: none pending.
	soonNext time.Time
	// lost are ring neighbours whose route this node just lost with a
	// link; they are notified (through a detour) once the current event
	// is handled, so the ring re-learns a route within a round trip.
	lost      []NodeID
	fingers   []NodeID
	fingerIdx int
	fingerNxt time.Time
	// fingerCycle is when the current refresh cycle started; fingerIvl is
	// how long a cycle lasts: FingerInterval, doubled (up to
	// fingerBackoff times) after each cycle that found every finger where it
	// was, as the ring interval backs off in a stable ring.
	fingerCycle   time.Time
	fingerIvl     time.Duration
	fingerChanged bool
	// legHops estimates the physical hops of one routing decision's leg:
	// the mean depth of the cached routes, updated each ring round (see
	// decisionCost).
	legHops float64

	// Global maximum (thesis §2.1.4.2: the node whose successor wraps
	// around announces itself so that partitions of the ring heal). Spread
	// hop by hop in beacons as a path vector, refreshed by its sequence.
	maxID    NodeID
	maxSeq   uint32
	maxPath  []NodeID
	maxHeard time.Time
	// The last maximum that expired: its stale adverts, still circulating
	// among neighbours that have not expired it yet, must not revive it.
	deadMax    NodeID
	deadMaxSeq uint32

	stats Stats

	// sealer, when set (LinkAuth.Attach), takes the datagrams Send
	// originates and seals them end to end before they are routed.
	sealer sealer

	// The link and address the frame in n.in arrived from.
	inLink LinkID
	inFrom netip.AddrPort

	// Scratch, reused for every frame (nothing is allocated per forwarded frame).
	in   routed
	out  routed
	hin  hello
	buf  []byte
	ids  []NodeID
	ids2 []NodeID
}

type nbr struct {
	id       NodeID
	link     LinkID
	addr     netip.AddrPort
	sym      bool // it hears us too: usable for routing
	q        float64
	lastSeq  uint32
	lastSeen time.Time // last beacon
	heard    time.Time // last frame of any kind
	// pending is when the first data frame was sent to it since it was
	// last heard (zero: none): the fast liveness check runs from there.
	pending time.Time
	probed  time.Time // last keepalive probe
	suspect bool      // taken out of routing by the fast timeout; any frame heard restores it
}

// ringWait is a notified ring neighbour that has not answered yet.
type ringWait struct {
	since, last time.Time // first and latest notification unanswered
	tries       int
}

const (
	cacheTTL   = 60 * time.Second // unconfirmed routes are dropped after this
	maxVHops   = 64
	tombstone  = 30 * time.Second
	viewPerDir = 3
	// confirmEvery bounds how often a forwarded frame's route back to its
	// source is re-confirmed in the cache.
	confirmEvery = time.Second
	// fallbackCandidates: how many nodes nearest the target a decision
	// tries when the route to the nearest would exceed MaxHops.
	fallbackCandidates = 16
	// fingerBackoff bounds the finger refresh cycle in a stable ring, in
	// multiples of FingerInterval.
	fingerBackoff = 4
	// reviseFresh: a relay revises a frame's route only with routes it
	// confirmed first-hand this recently (a frame travelled them, or a
	// beacon). Half the cache TTL: second-hand routes, which start out
	// nearly expired, never qualify; a route through a node that died
	// since is found broken and repaired. (It was RingIntervalMax, 8 s:
	// at 10,000 nodes that left most of what relays know unused.)
	reviseFresh = cacheTTL / 2
	// transitSample: a relay with a full cache learns one in this many
	// unknown transit sources (see worthLearning).
	transitSample = 8
	// MaxFrame bounds a routed frame; larger Send requests are refused.
	// 16 KiB: a SIP INVITE of 8 KiB and more (video SDP, ICE candidates)
	// crosses the mesh in one frame (RFC 3261 §18.1.1), which the link's
	// UDP fragments where the radio MTU is smaller.
	MaxFrame = 16384
)

// ErrTooBig reports a datagram that does not fit in a frame.
var ErrTooBig = errors.New("ssr: datagram too large")

// New returns a node with the given ID. Zero fields of p take defaults;
// seed makes its timer jitter reproducible.
func New(id NodeID, p Params, env Env, seed uint64) *Node {
	d := DefaultParams
	if p.HelloInterval > 0 {
		d.HelloInterval = p.HelloInterval
	}
	if p.NeighbourTimeout > 0 {
		d.NeighbourTimeout = p.NeighbourTimeout
	}
	if p.FastInterval > 0 {
		d.FastInterval = p.FastInterval
	}
	if p.FastTimeout > 0 {
		d.FastTimeout = p.FastTimeout
	}
	if p.RingProbes > 0 {
		d.RingProbes = p.RingProbes
	}
	if p.RingInterval > 0 {
		d.RingInterval = p.RingInterval
	}
	if p.RingIntervalMax > 0 {
		d.RingIntervalMax = p.RingIntervalMax
	}
	if p.FingerInterval > 0 {
		d.FingerInterval = p.FingerInterval
	}
	if p.MaxTimeout > 0 {
		d.MaxTimeout = p.MaxTimeout
	}
	if p.SuccessorList > 0 {
		d.SuccessorList = p.SuccessorList
	}
	if p.Fingers != 0 {
		d.Fingers = max(0, min(p.Fingers, 63)) // negative: none
	}
	if p.CacheSize > 0 {
		d.CacheSize = p.CacheSize
	}
	if p.MaxHops > 0 {
		d.MaxHops = min(p.MaxHops, maxRoute)
	}
	return &Node{
		id: id, p: d, env: env,
		rng:      rand.New(rand.NewPCG(seed, uint64(id))),
		nbrs:     make(map[NodeID]*nbr),
		cache:    newCache(id, d.CacheSize, cacheTTL),
		tomb:     make(map[NodeID]time.Time),
		ringWait: make(map[NodeID]*ringWait),
		srtt:     d.RingInterval / 4,
		fingers:  make([]NodeID, d.Fingers),
		maxID:    id,
		ringIvl:  d.RingInterval,
	}
}

// ID returns the node's ID.
func (n *Node) ID() NodeID { return n.id }

// AddLink tells the node about a mesh interface.
func (n *Node) AddLink(l LinkID) {
	if i, found := slices.BinarySearch(n.links, l); !found {
		n.links = slices.Insert(n.links, i, l)
	}
}

// RemoveLink forgets an interface and the neighbours heard on it.
func (n *Node) RemoveLink(l LinkID) {
	if i, found := slices.BinarySearch(n.links, l); found {
		n.links = slices.Delete(n.links, i, i+1)
	}
	var gone []NodeID
	for id, nb := range n.nbrs {
		if nb.link == l {
			gone = append(gone, id)
		}
	}
	n.dropNeighbours(gone)
	if n.started {
		n.repairLost(n.lastTick)
	}
}

// Stats returns the node's counters.
func (n *Node) Stats() Stats { return n.stats }

// CacheLen is the number of nodes in the route cache.
func (n *Node) CacheLen() int { return n.cache.len() }

// Successor returns the believed ring successor. Like every Node method it
// must not run concurrently with another.
func (n *Node) Successor() (NodeID, bool) {
	s := n.cache.successors(n.ids[:0], 1)
	if len(s) == 0 {
		return 0, false
	}
	return s[0], true
}

// Successors returns up to SuccessorList successors, nearest first.
func (n *Node) Successors() []NodeID { return n.cache.successors(nil, n.p.SuccessorList) }

// Predecessors returns up to SuccessorList predecessors, nearest first.
func (n *Node) Predecessors() []NodeID { return n.cache.predecessors(nil, n.p.SuccessorList) }

// Route returns a copy of the cached source route to id (id last), or nil.
func (n *Node) Route(id NodeID) []NodeID {
	return slices.Clone(n.cache.route(id, time.Time{}))
}

// Fingers returns the current long-distance fingers (zero: none).
func (n *Node) Fingers() []NodeID { return slices.Clone(n.fingers) }

// Neighbours lists the symmetric neighbours.
func (n *Node) Neighbours() []Neighbour {
	out := make([]Neighbour, 0, len(n.nbrs))
	for _, nb := range n.nbrs {
		if nb.sym {
			out = append(out, Neighbour{ID: nb.id, Link: nb.link, Addr: nb.addr, Quality: nb.q, LastSeen: nb.lastSeen})
		}
	}
	slices.SortFunc(out, func(a, b Neighbour) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

func (n *Node) isNbr(id NodeID) bool {
	nb := n.nbrs[id]
	return nb != nil && nb.sym
}

func (n *Node) recentNbr(id NodeID) bool {
	nb := n.nbrs[id]
	return nb != nil && nb.sym && n.lastTick.Sub(nb.lastSeen) <= n.p.HelloInterval*3/2
}

func (n *Node) jitter(d time.Duration) time.Duration {
	// ±10 %, so that beacons and rounds of neighbours do not synchronise.
	return d - d/10 + time.Duration(n.rng.Int64N(int64(d/5)+1))
}

// NextDeadline is when Tick next has work to do.
func (n *Node) NextDeadline() time.Time {
	t := n.helloNext
	if n.ringNext.Before(t) {
		t = n.ringNext
	}
	if !n.fingerNxt.IsZero() && n.fingerNxt.Before(t) {
		t = n.fingerNxt
	}
	if !n.soonNext.IsZero() && n.soonNext.Before(t) {
		t = n.soonNext
	}
	return t
}

// soonAt makes sure the sub-second timer fires by t.
func (n *Node) soonAt(t time.Time) {
	if n.soonNext.IsZero() || t.Before(n.soonNext) {
		n.soonNext = t
	}
}

// Tick runs the timers that are due and returns the next deadline.
func (n *Node) Tick(now time.Time) time.Time {
	if !n.started {
		n.started = true
		// Random phases: nodes switched on together must not beacon together.
		n.helloNext = now.Add(time.Duration(n.rng.Int64N(int64(n.p.HelloInterval))))
		n.ringNext = now.Add(n.p.RingInterval + time.Duration(n.rng.Int64N(int64(n.p.RingInterval))))
		n.maxHeard = now
	}
	n.lastTick = now
	if !now.Before(n.helloNext) {
		n.expireNeighbours(now)
		n.sendHellos(now)
		n.helloNext = now.Add(n.jitter(n.p.HelloInterval))
	}
	if !now.Before(n.ringNext) {
		n.ringRound(now)
		n.ringNext = now.Add(n.jitter(n.ringIvl))
	}
	if !n.fingerNxt.IsZero() && !now.Before(n.fingerNxt) {
		n.fingerRound(now)
	}
	if !n.soonNext.IsZero() && !now.Before(n.soonNext) {
		n.soonNext = time.Time{}
		n.watchBusy(now)
		n.retryRing(now)
	}
	n.repairLost(now)
	return n.NextDeadline()
}

func (n *Node) expireNeighbours(now time.Time) {
	var gone []NodeID
	for id, nb := range n.nbrs {
		if now.Sub(nb.heard) > n.p.NeighbourTimeout {
			gone = append(gone, id)
		}
	}
	n.dropNeighbours(gone)
	if n.maxID != n.id && now.Sub(n.maxHeard) > n.p.MaxTimeout {
		n.deadMax, n.deadMaxSeq = n.maxID, n.maxSeq
		n.maxID, n.maxPath = n.id, n.maxPath[:0]
	}
	for id, t := range n.tomb {
		if now.After(t) {
			delete(n.tomb, id)
		}
	}
}

// dropNeighbours drops ids in ID order: the ring neighbours queued for
// repair, and so the frames sent, must not depend on map order (the
// simulator replays a run from its seed).
func (n *Node) dropNeighbours(ids []NodeID) {
	slices.Sort(ids)
	for _, id := range ids {
		n.dropNeighbour(id)
	}
}

func (n *Node) dropNeighbour(id NodeID) {
	nb := n.nbrs[id]
	if nb == nil {
		return
	}
	delete(n.nbrs, id)
	if nb.sym {
		n.cutEdge(n.id, id)
	}
}

// cutEdge drops the cached routes over link a→b. A nearest ring neighbour
// whose route went with it is queued for repairLost: the node is most
// likely alive (only a link broke), and waiting for the next ring round
// would leave the ring open for seconds.
func (n *Node) cutEdge(a, b NodeID) {
	var buf [2]NodeID
	ring := n.cache.predecessors(n.cache.successors(buf[:0], 1), 1)
	if !n.cache.removeEdge(a, b) {
		return
	}
	for _, id := range ring {
		if !n.cache.has(id) && !slices.Contains(n.lost, id) && len(n.lost) < 2*viewPerDir {
			n.lost = append(n.lost, id)
		}
	}
}

// repairLost notifies the ring neighbours whose routes broke. The
// notification finds a way through other neighbours (decide detours past a
// target it has no route to), and the reply brings a fresh route back.
// It runs at the end of each event: notify must not run inside another
// frame's handling (they share scratch space).
func (n *Node) repairLost(now time.Time) {
	// A notification may break another link and queue more; a few
	// rounds settle it (each cut removes an edge that existed).
	for round := 0; len(n.lost) > 0 && round < 4; round++ {
		k := len(n.lost)
		slices.Sort(n.lost[:k])
		for _, id := range n.lost[:k] {
			if _, dead := n.tomb[id]; !dead && !n.cache.has(id) && id != n.id {
				n.notify(now, id, false)
			}
		}
		n.lost = append(n.lost[:0], n.lost[k:]...)
	}
	n.lost = n.lost[:0]
}

func (n *Node) sendHellos(now time.Time) {
	n.helloSeq++
	h := &n.hin
	h.src, h.seq = n.id, n.helloSeq
	h.hasMax = true
	if n.maxID == n.id {
		h.maxID, h.maxSeq, h.path = n.id, n.helloSeq, h.path[:0]
	} else {
		h.maxID, h.maxSeq, h.path = n.maxID, n.maxSeq, n.maxPath
	}
	for _, l := range n.links {
		h.neigh = h.neigh[:0]
		for _, nb := range n.nbrs {
			if nb.link == l && len(h.neigh) < maxHelloNbr {
				h.neigh = append(h.neigh, nb.id)
			}
		}
		n.buf = h.appendTo(n.buf[:0])
		n.transmit(l, netip.AddrPort{}, true)
	}
	h.path = nil
}

func (n *Node) transmit(l LinkID, to netip.AddrPort, control bool) {
	n.stats.FramesOut++
	if control {
		n.stats.ControlOut++
	}
	n.env.SendFrame(l, to, n.buf)
}

// HandleFrame processes a frame received on link l from the link address
// from. Malformed frames are counted and dropped.
func (n *Node) HandleFrame(now time.Time, l LinkID, from netip.AddrPort, b []byte) {
	n.stats.FramesIn++
	n.lastTick = now
	if !n.started {
		n.Tick(now)
	}
	t, err := frameType(b)
	if err != nil {
		n.stats.Malformed++
		return
	}
	if t == typeHello {
		if err := n.hin.decode(b); err != nil {
			n.stats.Malformed++
			return
		}
		n.handleHello(now, l, from, &n.hin)
		n.repairLost(now)
		return
	}
	if err := n.in.decode(b); err != nil {
		n.stats.Malformed++
		return
	}
	n.inLink, n.inFrom = l, from
	n.handleRouted(now, &n.in)
	n.repairLost(now)
}

func (n *Node) handleHello(now time.Time, l LinkID, from netip.AddrPort, h *hello) {
	if h.src == n.id {
		return
	}
	nb := n.nbrs[h.src]
	if nb == nil {
		nb = &nbr{id: h.src, lastSeq: h.seq - 1}
		n.nbrs[h.src] = nb
		// Answer soon so the new neighbour sees the link as symmetric.
		if t := now.Add(n.p.HelloInterval / 10); t.Before(n.helloNext) {
			n.helloNext = t
		}
	}
	// Link quality: an average over beacons, each missed one counting 0.
	if gap := h.seq - nb.lastSeq; gap >= 1 && gap <= 16 {
		for ; gap > 1; gap-- {
			nb.q *= 0.8
		}
		nb.q = 0.8*nb.q + 0.2
	}
	nb.lastSeq, nb.lastSeen, nb.heard, nb.link, nb.addr = h.seq, now, now, l, from
	nb.pending, nb.suspect = time.Time{}, false
	sym := slices.Contains(h.neigh, n.id)
	switch {
	case sym && !nb.sym:
		nb.sym = true
		delete(n.tomb, h.src)
		n.ids = append(n.ids[:0], h.src)
		n.learn(n.ids, now, true)
	case !sym && nb.sym:
		nb.sym = false
		n.cutEdge(n.id, h.src)
	case sym:
		n.ids = append(n.ids[:0], h.src)
		n.learn(n.ids, now, true) // refresh
	}
	if !nb.sym || !h.hasMax {
		return
	}
	n.hearMax(now, h)
}

// seqNewer compares wrapping sequence numbers (RFC 1982 style).
func seqNewer(a, b uint32) bool { return int32(a-b) > 0 }

func (n *Node) hearMax(now time.Time, h *hello) {
	if h.maxID <= n.id || len(h.path) >= n.p.MaxHops-1 || slices.Contains(h.path, n.id) {
		return
	}
	if h.maxID == n.deadMax && !seqNewer(h.maxSeq, n.deadMaxSeq) {
		return
	}
	switch {
	case h.maxID > n.maxID:
		// A larger maximum: tell the neighbours soon, it heals the ring.
		if t := now.Add(n.p.HelloInterval / 10); t.Before(n.helloNext) {
			n.helloNext = t
		}
	case h.maxID < n.maxID:
		return
	case seqNewer(h.maxSeq, n.maxSeq):
	case h.maxSeq == n.maxSeq && len(h.path)+1 < len(n.maxPath):
	default:
		return
	}
	if h.maxID != n.maxID || seqNewer(h.maxSeq, n.maxSeq) {
		n.maxHeard = now
	}
	n.maxID, n.maxSeq = h.maxID, h.maxSeq
	n.maxPath = append(append(n.maxPath[:0], h.src), h.path...)
	n.learn(n.maxPath, now, false)
}

// learn inserts a physical path into the route cache, cut before any node
// believed dead, and keeps the cache within its bound.
func (n *Node) learn(p []NodeID, now time.Time, firstHand bool) {
	if len(n.tomb) > 0 {
		for i, id := range p {
			if _, dead := n.tomb[id]; dead {
				p = p[:i]
				break
			}
		}
	}
	if len(p) == 0 || !n.isNbr(p[0]) {
		return
	}
	if n.cache.insert(p, now, firstHand) && n.cache.len() > max(n.p.CacheSize, n.cache.floor) {
		n.cache.evict(n.pinned())
	}
}

// expiryPins are the routes kept even when unconfirmed: neighbours, the
// nearest ring neighbours (ring liveness checks those), fingers and the
// global maximum.
func (n *Node) expiryPins(ring []NodeID) []NodeID {
	ids := append([]NodeID(nil), ring...)
	for id, nb := range n.nbrs {
		if nb.sym {
			ids = append(ids, id)
		}
	}
	for _, f := range n.fingers {
		if f != 0 {
			ids = append(ids, f)
		}
	}
	return append(ids, n.maxID)
}

func (n *Node) pinned() []NodeID {
	ids := make([]NodeID, 0, len(n.nbrs)+2*n.p.SuccessorList+len(n.fingers)+1)
	for id, nb := range n.nbrs {
		if nb.sym {
			ids = append(ids, id)
		}
	}
	ids = n.cache.successors(ids, n.p.SuccessorList)
	ids = n.cache.predecessors(ids, n.p.SuccessorList)
	for _, f := range n.fingers {
		if f != 0 {
			ids = append(ids, f)
		}
	}
	if n.maxID != n.id {
		ids = append(ids, n.maxID)
	}
	return ids
}

// ---- routed frames ----

func (n *Node) handleRouted(now time.Time, r *routed) {
	pos := int(r.pos)
	if pos == 0 || r.route[pos] != n.id {
		n.stats.Dropped++
		return
	}
	n.heardFrom(now, r.route[pos-1])
	r.from = 0
	if r.flags&(flagRepaired|flagDetour) != 0 {
		r.from = r.route[pos-1]
	}
	src := r.route[0]
	if src != n.id {
		if w := n.ringWait[src]; w != nil {
			// It is alive; the wait since the last notification is a
			// (pessimistic) round-trip sample.
			n.srtt += (now.Sub(w.last) - n.srtt) / 8
			delete(n.ringWait, src)
		}
		if _, dead := n.tomb[src]; dead {
			delete(n.tomb, src)
		}
	}
	if r.hops < 255 {
		r.hops++
	}
	n.tidy(r)
	pos = int(r.pos)
	if pos > 0 {
		e := n.cache.get(src)
		if (e == nil && n.worthLearning(src, pos < len(r.route)-1)) || (e != nil && int(e.depth) > pos) {
			n.ids = reverseInto(n.ids, r.route[:pos])
			n.learn(n.ids, now, true)
		} else if e != nil && e.seen < stampOf(now.Add(-confirmEvery)) {
			// Confirming walks the whole route: once a second is
			// plenty for the TTLs it refreshes.
			n.ids = reverseInto(n.ids, r.route[:pos])
			n.cache.confirm(n.ids, now)
		}
	}
	if r.flags&flagHopByHop != 0 && r.proto == protoError {
		n.hopError(r)
	}
	if pos < len(r.route)-1 {
		if r.flags&flagHopByHop == 0 && n.improve(now, r) {
			return
		}
		n.forward(now, r)
		return
	}
	n.decide(now, r)
}

// improve lets a relay revise the rest of a frame's route with what it
// knows itself. In the thesis (§2.1.4.2) relays forward blindly until the
// route's end; in a mesh of thousands that zig-zags, each planned piece
// crossing the mesh toward a node chosen only for its ID. Here a
// cached node virtually closer to the target than the planned end becomes
// the new end (a routing decision, counted as a virtual hop), else a
// shorter cached route to the planned end replaces the planned one. Both
// keep routing loop-free: the end's distance to the target only shrinks,
// and for a fixed end the remaining hop count only shrinks (a cached depth
// never underestimates). It reports whether it took over the frame
// (delivered it or handed it to decide).
func (n *Node) improve(now time.Time, r *routed) bool {
	pos := int(r.pos)
	end := r.route[len(r.route)-1]
	// A re-route around a broken link picks the repairing node's best
	// guess, which may be virtually farther than the end planned before;
	// a relay still holding the stale route to that earlier end would
	// send the frame back into the break, over and over. Such frames
	// keep their end.
	redirect := r.flags&flagRepaired == 0 && end != r.target && int(r.vhops) < maxVHops
	if r.flags&flagDetour != 0 {
		// A detour heads past the target to nodes that should know it,
		// because the node that sent it has no route. Only a relay that
		// knows the target itself may take the frame there; any other
		// decision could hand it back to the node it came from.
		if end != r.target && n.cache.closestBefore(r.target) == r.target &&
			n.cache.fresh(r.target, now.Add(-n.p.RingIntervalMax)) {
			if path := n.cache.route(r.target, now); len(path) > 0 && path[0] != r.from && n.fits(r, len(path)) {
				n.stats.Redirected++
				r.route = append(r.route[:pos+1], path...)
				r.vhops++
				n.tidy(r)
			}
		}
		redirect = false
	}
	if redirect && cw(n.id, r.target) < cw(end, r.target) {
		// This relay is itself a better decision point than the end.
		best := n.cache.closestBefore(r.target)
		if best != n.id || r.flags&flagClosest != 0 {
			n.stats.Redirected++
			r.route = r.route[:pos+1]
			n.decide(now, r)
			return true
		}
	} else if redirect {
		// Only to a node this relay confirmed first-hand within
		// reviseFresh: its cache also holds second-hand and old routes,
		// some to nodes long gone. The target itself is worth any route:
		// the frame then needs no further decision, and a route that
		// turns out broken is repaired like any other (only a redirect
		// short of the target risks a zig-zag across the mesh, so one is
		// taken only when it is expected to save hops: redirectTo).
		fresh := now.Add(-reviseFresh)
		usable := func(c NodeID) bool { return c == r.target || n.cache.fresh(c, fresh) }
		if best := n.cache.closestBefore(r.target); best != n.id && cw(best, r.target) < cw(end, r.target) && usable(best) {
			if c, ok := n.redirectTo(r, best, end, usable); ok {
				if path := n.cache.route(c, now); len(path) > 0 && n.fits(r, len(path)) {
					n.stats.Redirected++
					r.route = append(r.route[:pos+1], path...)
					r.vhops++
					n.tidy(r)
					return false
				}
			}
		}
	}
	// A repaired frame keeps the route its repairing node chose: that node
	// has just learned of a broken link, which relays ahead may not know
	// of yet; their shorter route could lead straight back into the break
	// (and the repair back out of it, until the hop budget ends).
	if rest := len(r.route) - 1 - pos; rest > 1 && r.flags&flagRepaired == 0 {
		if e := n.cache.get(end); e != nil && int(e.depth) < rest && e.seen >= stampOf(now.Add(-reviseFresh)) {
			// Never back to the hop the frame came from: that node
			// routed it here, so a way back through it is stale.
			if path := n.cache.route(end, now); len(path) > 0 && len(path) < rest && (pos == 0 || path[0] != r.route[pos-1]) {
				n.stats.Shortened++
				r.route = append(r.route[:pos+1], path...)
				n.tidy(r)
			}
		}
	}
	return false
}

// decisionCost is the hops a frame is expected to need if sent to c on its
// cached route: the route's length, then the decisions still to come from
// c, each a leg across the mesh of about legHops, one per halving of c's
// distance to key in ring positions (Chord's fingers halve it). Greedy
// routing (thesis §2.1.4.2) takes the nearest node in ID space whatever its
// route's length; this weighs a shorter route against ID progress, so a
// node a little farther from the target on the ring but far nearer in the
// mesh wins when it saves more hops than the decision it costs.
func (n *Node) decisionCost(c, key NodeID, spacing float64) float64 {
	return float64(n.cache.depth(c)) + n.futureHops(c, key, spacing)
}

// futureHops is the hops expected after a frame reaches x (see
// decisionCost).
func (n *Node) futureHops(x, key NodeID, spacing float64) float64 {
	if x == key {
		return 0
	}
	return n.legHops * math.Log2(1+float64(cw(x, key))/spacing)
}

// ringSpacing estimates the mean ID distance between ring neighbours from
// the span of this node's successors and predecessors (IDs are uniform);
// 0 if the ring is too small to tell.
func (n *Node) ringSpacing() float64 {
	var b [16]NodeID
	k := min(n.p.SuccessorList, 8)
	s := n.cache.successors(b[:0], k)
	s = n.cache.predecessors(s, k)
	if k == 0 || len(s) < 2*k {
		return 0
	}
	for _, id := range s[:k] {
		if slices.Contains(s[k:], id) {
			return 0 // the successors reach round to the predecessors
		}
	}
	return (float64(cw(n.id, s[k-1])) + float64(cw(s[2*k-1], n.id))) / float64(2*k)
}

// cheapest returns, among best and the fallbackCandidates cached nodes
// nearest before r's target that are virtually closer to it than bound and
// pass ok, the one of least decisionCost whose route fits r. Every
// candidate lies in (bound, target] and bound is this node or the planned
// end, so a decision still makes progress and routing terminates. The
// target itself is always taken when known.
func (n *Node) cheapest(r *routed, best, bound NodeID, ok func(NodeID) bool) NodeID {
	if best == r.target || n.legHops == 0 {
		return best
	}
	sp := n.ringSpacing()
	if sp == 0 {
		return best
	}
	pick, pc := best, n.decisionCost(best, r.target, sp)
	if !n.fits(r, n.cache.depth(best)) {
		pc = math.Inf(1)
	}
	n.cache.before(r.target, fallbackCandidates, func(c NodeID) bool {
		if cw(c, r.target) >= cw(bound, r.target) {
			return false
		}
		if c == pick || !ok(c) {
			return true
		}
		if d := n.cache.depth(c); d > 0 && n.fits(r, d) {
			if cc := n.decisionCost(c, r.target, sp); cc < pc {
				pick, pc = c, cc
			}
		}
		return true
	})
	return pick
}

// redirectTo picks where a relay should send r instead of on to the planned
// end — the cheapest candidate closer to the target than the end (best, the
// nearest of them, if no estimate is possible) — and reports whether that is
// worth it: only when the candidate is expected to cost fewer hops than the
// rest of the route plus what the end will need (decisionCost). A redirect
// starts a new leg across the mesh; one that gains little on the ring only
// adds a zig-zag.
func (n *Node) redirectTo(r *routed, best, end NodeID, ok func(NodeID) bool) (NodeID, bool) {
	if best == r.target || n.legHops == 0 {
		return best, true
	}
	sp := n.ringSpacing()
	if sp == 0 {
		return best, true
	}
	c := n.cheapest(r, best, end, ok)
	rest := len(r.route) - 1 - int(r.pos)
	return c, n.decisionCost(c, r.target, sp) < float64(rest)+n.futureHops(end, r.target, sp)
}

// worthLearning decides whether the route back to an unknown source of a
// frame is cached. The destination always learns it (it will likely
// answer), and so does any node whose cache has room. A relay with a full
// cache learns sources that are closer ring neighbours than the ones it
// knows (that is how the ring finds itself, thesis §2.1.4.2) and a sample
// of the rest: learning every transit source churns a large mesh's caches,
// evicting useful routes for ones that are never used, at a cost that grows
// with the square of the route length.
func (n *Node) worthLearning(src NodeID, transit bool) bool {
	if !transit || n.cache.len() < n.p.CacheSize*3/4 {
		return true
	}
	var b [2]NodeID
	ring := n.cache.predecessors(n.cache.successors(b[:0], 1), 1)
	if len(ring) < 2 {
		return true
	}
	succ, pred := ring[0], ring[1]
	if Between(n.id, src, succ) || Between(pred, src, n.id) {
		return true // nearer on the ring than a ring neighbour we know
	}
	return n.rng.IntN(transitSample) == 0
}

func reverseInto(dst, src []NodeID) []NodeID {
	dst = dst[:0]
	for i := len(src) - 1; i >= 0; i-- {
		dst = append(dst, src[i])
	}
	return dst
}

// tidy shortens the route at this hop (SSR route shortening): it removes a
// loop through this node, skips history this node short-cuts as a direct
// neighbour of an earlier hop (so replies and learned routes are shorter),
// and skips planned hops when a later one is a direct neighbour.
func (n *Node) tidy(r *routed) {
	pos := int(r.pos)
	// The history is shortened (loop cut, neighbour short-cut) unless an
	// application datagram's history runs through this node after a
	// relay's routing decision: the frame bounced off a stale route, the
	// loop runs through the node that decided, and an error report must
	// pass that node on its way back (else the frame bounces until its
	// virtual hop budget ends). Control frames keep short histories: their
	// replies cross lossy paths, and a stale route is found by their
	// sender's own ring maintenance.
	loop := slices.Index(r.route[:pos], n.id)
	if loop < 0 || r.vhops <= 1 || r.proto != protoData {
		if loop >= 0 {
			r.route = append(r.route[:loop], r.route[pos:]...)
			pos = loop
		}
		for j := max(0, pos-6); j < pos-1; j++ {
			// Replies follow this history back: only a neighbour heard
			// very recently may short-cut it (a link may have just died
			// on the far side, unnoticed here until the neighbour times
			// out).
			if n.recentNbr(r.route[j]) {
				r.route = append(r.route[:j+1], r.route[pos:]...)
				pos = j + 1
				break
			}
		}
	}
	for k := min(len(r.route)-1, pos+6); k > pos+1; k-- {
		if n.isNbr(r.route[k]) {
			r.route = append(r.route[:pos+1], r.route[k:]...)
			break
		}
	}
	r.pos = uint8(pos)
}

// forward sends r to the next hop on its route, repairing a broken link.
func (n *Node) forward(now time.Time, r *routed) {
	pos := int(r.pos)
	next := r.route[pos+1]
	nb := n.nbrs[next]
	if nb == nil || !nb.sym {
		n.linkBroken(now, r, next)
		return
	}
	if len(r.route) > n.p.MaxHops {
		n.unreachable(now, r, whyTooLong)
		return
	}
	if int(r.hops) >= n.p.MaxHops {
		// The loop guard: whatever the routing decisions did, no frame
		// is transmitted more than MaxHops times. The source hears of it
		// (an unreachable report, like any other failure) instead of
		// waiting for an answer that cannot come.
		n.stats.HopLimit++
		n.unreachable(now, r, whyHops)
		return
	}
	r.pos++
	n.buf = r.appendHeader(n.buf[:0])
	n.buf = append(n.buf, r.payload...)
	if r.route[0] != n.id {
		n.stats.Forwarded++
	}
	if r.proto == protoData && nb.pending.IsZero() {
		// Traffic on this link: from now on its silence is watched at
		// the fast pace (watchBusy).
		nb.pending = now
		n.soonAt(now.Add(n.p.FastInterval))
	}
	n.transmit(nb.link, nb.addr, r.proto != protoData)
}

// heardFrom notes a frame received from neighbour id: proof the link works
// in its direction, and (since it routes to us) in ours. Only a frame that
// came from the neighbour's own link address counts.
func (n *Node) heardFrom(now time.Time, id NodeID) {
	nb := n.nbrs[id]
	// Zones are compared loosely: sockets may name the same interface
	// differently (a name, an index), the link says which it is.
	if nb == nil || nb.link != n.inLink || nb.addr.Port() != n.inFrom.Port() ||
		nb.addr.Addr().WithZone("") != n.inFrom.Addr().WithZone("") {
		return
	}
	nb.heard, nb.pending = now, time.Time{}
	if nb.suspect {
		nb.suspect, nb.sym = false, true
		n.ids = append(n.ids[:0], id)
		n.learn(n.ids, now, true)
	}
}

// watchBusy is the fast liveness check of the links carrying data (in the
// spirit of BFD, RFC 5880, and Babel's hello/IHU, RFC 8966 §3.4): a
// neighbour sent data that has not been heard from for FastInterval is
// probed every FastInterval/2 (an echo with ping ID 0, answered at once);
// unheard for FastTimeout it is taken out of routing, and the frames that
// follow are repaired through other neighbours. Idle links cost nothing
// beyond their beacons; a link with traffic both ways costs nothing either,
// since the traffic itself is the proof of life.
func (n *Node) watchBusy(now time.Time) {
	var ids []NodeID // few: the neighbours this node sent data to
	for id, nb := range n.nbrs {
		if !nb.pending.IsZero() {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids) // map order must not decide the order of sends
	for _, id := range ids {
		nb := n.nbrs[id]
		if nb == nil || nb.pending.IsZero() {
			continue
		}
		if !nb.sym {
			nb.pending = time.Time{}
			continue
		}
		silent := now.Sub(nb.pending)
		switch {
		case silent >= n.p.FastTimeout && n.otherNbr(id):
			n.stats.Suspected++
			nb.sym, nb.suspect, nb.pending = false, true, time.Time{}
			n.cutEdge(n.id, id)
			continue
		case silent >= n.p.FastInterval && now.Sub(nb.probed) >= n.p.FastInterval/2:
			nb.probed = now
			n.probe(now, nb)
		}
		n.soonAt(now.Add(n.p.FastInterval / 2))
	}
}

// otherNbr says whether a symmetric neighbour other than id is left to
// route through. Taking a silent neighbour out of routing is worth it
// only when the frames that follow can be repaired through another: with
// none, the cut only makes this node forget the neighbour, its ring with
// it, for as long as the neighbour is slow to answer (a node starved of
// CPU for half a second, measured under SIP load: the ring view of a
// two-node mesh flapped between the neighbour and nothing, and each flap
// restarted the DHT's hand-off window). The neighbour is then kept and
// probed until it answers or the neighbour timeout (beacons) or the
// link layer says it is gone.
func (n *Node) otherNbr(id NodeID) bool {
	for o, nb := range n.nbrs {
		if o != id && nb.sym {
			return true
		}
	}
	return false
}

// probe sends a keepalive to a neighbour: an echo request with ping ID 0,
// whose reply is not reported to the application.
func (n *Node) probe(now time.Time, nb *nbr) {
	n.stats.Probes++
	var p [12]byte
	binary.BigEndian.PutUint64(p[4:], uint64(now.UnixNano()))
	o := &n.out
	o.proto, o.flags, o.target, o.vhops, o.hops, o.pos = protoEcho, 0, nb.id, 0, 0, 0
	o.from = 0
	o.route = append(o.route[:0], n.id, nb.id)
	o.payload = p[:]
	n.forward(now, o)
}

// linkBroken handles a next hop that is no longer a neighbour: it reports
// the broken link back along the route so caches there drop it, and
// re-routes the frame from here (local repair).
func (n *Node) linkBroken(now time.Time, r *routed, next NodeID) {
	pos := int(r.pos)
	n.cutEdge(n.id, next)
	if r.proto == protoError || (r.proto != protoData && r.flags&flagRepaired != 0) {
		// Control frames are repaired once. Their histories are kept
		// short (tidy), so the report of a second break may miss the
		// node whose stale route caused it, and the frame could follow
		// that route again; ring maintenance re-sends what matters.
		// Data frames keep their loops for the report to find it.
		n.stats.Dropped++
		return
	}
	if pos > 0 {
		n.stats.LinkBroken++
		n.sendError(now, r, errLinkBroken, n.id, next)
	}
	r.route = r.route[:pos+1]
	r.flags |= flagRepaired
	n.decide(now, r)
}

// decide makes a routing decision at the end of the frame's route: deliver
// here, or extend the route greedily to the known node nearest before the
// target (thesis §2.1.4.2: always virtually closer, so it terminates).
func (n *Node) decide(now time.Time, r *routed) {
	if r.target == n.id {
		n.deliver(now, r)
		return
	}
	best := n.cache.closestBefore(r.target)
	if best == n.id {
		if r.flags&flagClosest != 0 {
			n.deliver(now, r)
			return
		}
		if r.flags&flagDetour == 0 && n.detour(now, r) {
			return
		}
		n.unreachable(now, r, whyNoNode)
		return
	}
	if int(r.vhops) >= maxVHops {
		n.unreachable(now, r, whyVHops)
		return
	}
	best = n.cheapest(r, best, r.target, func(NodeID) bool { return true })
	path := n.cache.route(best, now)
	if back := n.bounceFrom(r); back != 0 && len(path) > 0 && path[0] == back {
		// Split horizon for repairs: the node that just re-routed this
		// frame around a broken link would send it into the same break
		// (it may be the source, so no report told this node). Settle
		// for another node nearly as close, or detour past the target.
		path = nil
		n.cache.before(r.target, fallbackCandidates, func(c NodeID) bool {
			if h, ok := n.cache.firstHop(c); ok && h != back && n.fits(r, n.cache.depth(c)) {
				path = n.cache.route(c, now)
				return len(path) == 0
			}
			return true
		})
		if len(path) == 0 {
			if r.flags&(flagDetour|flagClosest) == 0 && n.detour(now, r) {
				return
			}
			path = n.cache.route(best, now)
		}
	}
	if len(path) == 0 || !n.fits(r, len(path)) {
		// Over budget: drop the loops the history kept, then settle for
		// a node nearly as close to the target with a shorter route (it
		// still makes progress; the long way would not fit at all).
		compactHistory(r)
		path = nil
		n.cache.before(r.target, fallbackCandidates, func(c NodeID) bool {
			if d := n.cache.depth(c); d > 0 && n.fits(r, d) {
				path = n.cache.route(c, now)
				return len(path) == 0
			}
			return true
		})
		if len(path) == 0 || !n.fits(r, len(path)) {
			n.unreachable(now, r, whyTooLong)
			return
		}
	}
	r.route = append(r.route, path...)
	r.vhops++
	n.tidy(r)
	n.forward(now, r)
}

// detour handles an exact frame for a target this node would be the ring
// predecessor of: the ID is in none of its routes. That may only mean this
// node lost its route with a link (one node's local view must never declare
// a live node gone), so the frame goes on to the nearest known node after
// the target — the target's successor side, which keeps a route to its
// predecessor by ring maintenance — flagged as a detour. Only if that side
// has no route either is the target reported missing: then both ring
// neighbours of the gap agree that it is not there.
func (n *Node) detour(now time.Time, r *routed) bool {
	if int(r.vhops) >= maxVHops {
		return false
	}
	back := n.bounceFrom(r)
	var path []NodeID
	n.cache.after(r.target, fallbackCandidates, func(c NodeID) bool {
		if h, ok := n.cache.firstHop(c); ok && h != back && n.fits(r, n.cache.depth(c)) {
			path = n.cache.route(c, now)
			return len(path) == 0
		}
		return true
	})
	if len(path) == 0 && back != 0 {
		// The only way on is back: the node there may still know more.
		if c := n.cache.closestAfterOr(r.target); c != 0 && n.fits(r, n.cache.depth(c)) {
			path = n.cache.route(c, now)
		}
	}
	if len(path) == 0 {
		return false
	}
	n.stats.Detoured++
	r.flags |= flagDetour
	r.route = append(r.route, path...)
	r.vhops++
	n.tidy(r)
	n.forward(now, r)
	return true
}

// bounceFrom is the hop a frame came from if that node repaired or
// detoured it (zero for others): a decision should not hand the frame
// straight back to it, since that node has just found it has no working
// route to the target, and it told nobody ahead of it.
func (n *Node) bounceFrom(r *routed) NodeID { return r.from }

// fits reports whether d more hops after this node keep r within both of
// its bounds: the route's length (the history up to this node, then d)
// and the physical hop budget (the transmissions made, then d). A frame
// whose history lost its loops (tidy, compactHistory) has made more
// transmissions than its route is long; a decision that looked at the
// route alone could send it on a path the loop guard ends before the
// target, after spending the budget (at 10,000 nodes the only failed
// probes were such hop-limit drops).
func (n *Node) fits(r *routed, d int) bool {
	return int(r.pos)+1+d <= n.p.MaxHops && int(r.hops)+d <= n.p.MaxHops
}

// compactHistory removes every loop from the travelled part of r's route
// (up to and including this node, the last element): a loop-free history
// is still a physical path back to the source.
func compactHistory(r *routed) {
	for i := 0; i < len(r.route); i++ {
		for j := len(r.route) - 1; j > i; j-- {
			if r.route[j] == r.route[i] {
				r.route = append(r.route[:i], r.route[j:]...)
				break
			}
		}
	}
	r.pos = uint8(len(r.route) - 1)
}

// Why a frame was unreachable: the reason byte of an unreachable report.
const (
	whyNoNode  = 1 // no node known closer to the target: it does not exist
	whyVHops   = 2 // the virtual hop budget ran out
	whyTooLong = 3 // the route would exceed MaxHops
	whyHops    = 4 // the frame made MaxHops transmissions (the loop guard)
)

var whyText = [...]string{whyNoNode: "no such node", whyVHops: "virtual hop budget exhausted", whyTooLong: "route too long", whyHops: "hop limit"}

func reasonText(why byte, closest bool) string {
	if int(why) < len(whyText) && whyText[why] != "" && !(closest && why == whyNoNode) {
		return whyText[why]
	}
	if closest {
		return "no route"
	}
	return "no such node"
}

func (n *Node) unreachable(now time.Time, r *routed, why byte) {
	n.stats.Dropped++
	switch r.proto {
	case protoError, protoEchoReply, protoFindReply:
		return // nobody waits for these: no report about a report
	case protoNotify:
		if len(r.payload) > 0 && r.payload[0]&1 != 0 {
			return
		}
	}
	if r.route[0] == n.id {
		switch r.proto {
		case protoData, protoEcho:
			n.env.Deliver(n.unreachableEvent(r, n.id, reasonText(why, r.flags&flagClosest != 0)))
		case protoNotify:
			// This node's own view, even after a detour: the route is
			// forgotten, but the node is not held dead (only a report
			// from the ring does that, see deliver).
			if !n.isNbr(r.target) {
				n.cache.remove(r.target)
			}
		}
		return
	}
	n.stats.Unreachable++
	n.sendError(now, r, errUnreachable|uint16(why)<<8, n.id, r.target)
}

func (n *Node) unreachableEvent(r *routed, at NodeID, why string) Unreachable {
	u := Unreachable{Target: r.target, Mode: Exact, At: at, Reason: why}
	if r.flags&flagClosest != 0 {
		u.Mode = Closest
	}
	switch r.proto {
	case protoData:
		if len(r.payload) >= 4 {
			u.DstPort = binary.BigEndian.Uint16(r.payload[2:])
		}
	case protoEcho:
		if len(r.payload) >= 4 {
			u.PingID = binary.BigEndian.Uint32(r.payload)
		}
	}
	return u
}

// sendError reports code about (a, b) to the frame's source along the
// reverse route; every node on the way processes it (hopError).
func (n *Node) sendError(now time.Time, r *routed, code uint16, a, b NodeID) {
	o := &n.out
	o.proto, o.flags, o.target, o.vhops, o.hops, o.pos = protoError, flagHopByHop, r.route[0], 0, 0, 0
	o.from = 0
	o.route = reverseInto(o.route, r.route[:r.pos+1])
	var p [1 + 8 + 8 + 1 + 4 + 1]byte
	p[0], p[22] = byte(code), byte(code>>8) // the reason: unreachable reports only
	if r.flags&flagClosest != 0 {
		p[0] |= errClosest // b is a key, not a node
	}
	binary.BigEndian.PutUint64(p[1:], uint64(a))
	binary.BigEndian.PutUint64(p[9:], uint64(b))
	p[17] = r.proto
	if r.proto == protoData && len(r.payload) >= 4 {
		binary.BigEndian.PutUint16(p[18:], binary.BigEndian.Uint16(r.payload[2:]))
	}
	if r.proto == protoEcho && len(r.payload) >= 4 {
		copy(p[18:], r.payload[:4])
	}
	o.payload = p[:]
	if len(o.route) == 1 {
		return
	}
	n.forward(now, o)
}

// errReason is an unreachable report's reason; reports without one (22
// bytes, from before the reason byte) mean the target does not exist.
func errReason(p []byte) byte {
	if len(p) > 22 && p[22] != 0 {
		return p[22]
	}
	return whyNoNode
}

// hopError applies an error report at every node it passes.
func (n *Node) hopError(r *routed) {
	if len(r.payload) < 22 {
		return
	}
	a := NodeID(binary.BigEndian.Uint64(r.payload[1:]))
	b := NodeID(binary.BigEndian.Uint64(r.payload[9:]))
	code := r.payload[0]
	switch code &^ errClosest {
	case errLinkBroken:
		if a != n.id { // this node knows its own links better
			n.cutEdge(a, b)
		}
	case errUnreachable:
		// Another node's view may be wrong; what this node confirmed
		// itself recently stands. A frame that ran out of budget says
		// nothing about its target.
		if code&errClosest == 0 && errReason(r.payload) == whyNoNode && b != n.id && !n.isNbr(b) &&
			!n.cache.fresh(b, n.lastTick.Add(-n.p.RingIntervalMax)) {
			n.cache.remove(b)
		}
	}
}

// ---- local delivery ----

func (n *Node) deliver(now time.Time, r *routed) {
	switch r.proto {
	case protoData:
		if len(r.payload) < 4 {
			n.stats.Malformed++
			return
		}
		n.stats.Delivered++
		m := Mode(r.flags & flagClosest)
		n.env.Deliver(Datagram{
			Src: r.route[0], Target: r.target, Mode: m,
			SrcPort: binary.BigEndian.Uint16(r.payload), DstPort: binary.BigEndian.Uint16(r.payload[2:]),
			Payload: slices.Clone(r.payload[4:]), Hops: int(r.hops),
		})
	case protoNotify:
		n.handleNotify(now, r)
	case protoFind:
		if len(r.payload) >= 1 {
			n.reply(now, r, protoFindReply, r.payload[:1])
		}
	case protoFindReply:
		if len(r.payload) >= 1 && int(r.payload[0]) < len(n.fingers) && r.route[0] != n.id {
			if i := r.payload[0]; n.fingers[i] != r.route[0] {
				n.fingers[i] = r.route[0]
				n.fingerChanged = true
			}
		}
	case protoEcho:
		if len(r.payload) < 12 {
			n.stats.Malformed++
			return
		}
		// The reply carries the route the request took.
		p := append(append(make([]byte, 0, 13+8*len(r.route)), r.payload[:12]...), byte(len(r.route)))
		p = appendIDs(p, r.route)
		n.reply(now, r, protoEchoReply, p)
	case protoEchoReply:
		n.handleEchoReply(r)
	case protoE2E:
		// The end-to-end handshake is link security's (LinkAuth.Deliver).
		n.env.Deliver(e2eFrame{src: r.route[0], payload: slices.Clone(r.payload)})
	case protoError:
		if len(r.payload) < 22 || r.payload[0]&^errClosest != errUnreachable {
			return
		}
		a := NodeID(binary.BigEndian.Uint64(r.payload[1:]))
		b := NodeID(binary.BigEndian.Uint64(r.payload[9:]))
		why := errReason(r.payload)
		u := Unreachable{Target: b, At: a, Reason: reasonText(why, r.payload[0]&errClosest != 0)}
		if r.payload[0]&errClosest != 0 {
			u.Mode = Closest
		} else if why == whyNoNode && !n.isNbr(b) && !n.cache.fresh(b, now.Add(-n.p.RingIntervalMax)) {
			n.cache.remove(b)
			n.tomb[b] = now.Add(tombstone)
		}
		switch r.payload[17] {
		case protoData:
			u.DstPort = binary.BigEndian.Uint16(r.payload[18:])
		case protoEcho:
			u.PingID = binary.BigEndian.Uint32(r.payload[18:])
		default:
			return // our own control traffic: nothing waits for it
		}
		n.env.Deliver(u)
	}
}

// reply answers r along its reverse route.
func (n *Node) reply(now time.Time, r *routed, proto byte, payload []byte) {
	o := &n.out
	o.proto, o.flags, o.target, o.vhops, o.hops, o.pos = proto, 0, r.route[0], 0, 0, 0
	o.from = 0
	o.route = reverseInto(o.route, r.route)
	o.payload = payload
	if len(o.route) == 1 {
		n.decide(now, o) // a reply to ourselves
		return
	}
	n.forward(now, o)
}

func (n *Node) handleEchoReply(r *routed) {
	if len(r.payload) < 13 {
		n.stats.Malformed++
		return
	}
	id := binary.BigEndian.Uint32(r.payload)
	if id == 0 {
		return // a keepalive (probe): hearing it was the point
	}
	sent := time.Unix(0, int64(binary.BigEndian.Uint64(r.payload[4:])))
	route, _, err := readIDs(nil, r.payload[13:], int(r.payload[12]))
	if err != nil {
		n.stats.Malformed++
		return
	}
	n.env.Deliver(PingReply{ID: id, From: r.route[0], Sent: sent, Route: route, Hops: len(route) - 1})
}

// ---- origination ----

// sealer seals datagrams end to end (LinkAuth, e2e.go).
type sealer interface {
	sendData(now time.Time, target NodeID, mode Mode, srcPort, dstPort uint16, payload []byte)
}

// Send originates an application datagram to target. With link security
// attached an exact datagram is sealed end to end (E2EOverhead bytes more;
// a closest one takes a kind byte, e2e.go).
func (n *Node) Send(now time.Time, target NodeID, mode Mode, srcPort, dstPort uint16, payload []byte) error {
	over := 0
	if n.sealer != nil {
		over = E2EOverhead
	}
	if routedHdr+8*n.p.MaxHops+4+over+len(payload) > MaxFrame {
		return fmt.Errorf("%w: %d bytes (at most %d)", ErrTooBig, len(payload), MaxFrame-routedHdr-8*n.p.MaxHops-4-over)
	}
	if n.sealer != nil {
		n.sealer.sendData(now, target, mode, srcPort, dstPort, payload)
		return nil
	}
	p := binary.BigEndian.AppendUint16(make([]byte, 0, 4+len(payload)), srcPort)
	p = binary.BigEndian.AppendUint16(p, dstPort)
	p = append(p, payload...)
	n.originate(now, protoData, mode, target, p)
	return nil
}

// Ping sends an echo request to the node target; the answer arrives as a
// PingReply (or Unreachable) event carrying id.
func (n *Node) Ping(now time.Time, target NodeID, id uint32) {
	var p [12]byte
	binary.BigEndian.PutUint32(p[:], id)
	binary.BigEndian.PutUint64(p[4:], uint64(now.UnixNano()))
	n.originate(now, protoEcho, Exact, target, p[:])
}

func (n *Node) originate(now time.Time, proto byte, mode Mode, target NodeID, payload []byte) {
	if !n.started {
		n.Tick(now)
	}
	o := &n.out
	o.proto, o.flags, o.target, o.vhops, o.hops, o.pos = proto, 0, target, 0, 0, 0
	o.from = 0
	if mode == Closest {
		o.flags = flagClosest
	}
	o.route = append(o.route[:0], n.id)
	o.payload = payload
	n.decide(now, o)
}

// ---- ring maintenance ----

// ringRound sends this round's notifications to the nearest successor and
// predecessor (thesis §2.1.4.2) and declares silent ones dead.
func (n *Node) ringRound(now time.Time) {
	n.ringSilence(now)
	s := n.cache.successors(n.ids2[:0], 1)
	s = n.cache.predecessors(s, 1)
	n.ids2 = s
	n.cache.expire(now, n.expiryPins(s))
	n.legHops = n.cache.meanDepth()
	var succ, pred NodeID
	if len(s) == 2 {
		succ, pred = s[0], s[1]
	}
	if succ != n.lastSucc || pred != n.lastPred {
		n.ringIvl = n.p.RingInterval
	} else {
		n.ringIvl = min(2*n.ringIvl, n.p.RingIntervalMax)
		if n.fingerNxt.IsZero() && n.p.Fingers > 0 {
			// The neighbourhood on the ring is settling: start fingers.
			n.fingerNxt = now.Add(n.fingerStep())
			n.fingerCycle = n.fingerNxt
		}
	}
	n.lastSucc, n.lastPred = succ, pred
	if len(s) == 0 {
		return
	}
	n.notify(now, succ, false)
	if pred != succ {
		n.notify(now, pred, false)
	}
}

// ringLimit is how long a ring neighbour may stay silent before it is
// declared gone (three rounds of the fastest interval, at least 2.5 of the
// current one), if RingProbes notifications went unanswered too.
func (n *Node) ringLimit() time.Duration {
	return max(3*n.p.RingInterval, n.ringIvl*5/2)
}

// ringRTO spaces the notifications re-sent to a silent ring neighbour: four
// smoothed round trips (RFC 6298 §2 uses srtt + 4·rttvar), at least
// 2·FastInterval, at most the fastest ring interval.
func (n *Node) ringRTO() time.Duration {
	return min(max(4*n.srtt, 2*n.p.FastInterval), n.p.RingInterval)
}

// retryRing re-sends a notification to each silent ring neighbour whose
// last one has had a round-trip timeout to be answered, until RingProbes
// went out. A lossy path loses a notification or its reply often (10 %
// loss per link over 7 hops and back: 3 in 4); a live node answers one of
// several, a dead one none — and a dead one is usually known sooner from
// evidence: its neighbours' timeouts produce broken-link and unreachable
// reports for the very notifications sent to it.
func (n *Node) retryRing(now time.Time) {
	if len(n.ringWait) == 0 {
		return
	}
	rto := n.ringRTO()
	var ids []NodeID // not scratch: notify uses it
	for id, w := range n.ringWait {
		if w.tries < n.p.RingProbes && now.Sub(w.last) >= rto {
			ids = append(ids, id)
		} else if w.tries < n.p.RingProbes {
			n.soonAt(w.last.Add(rto))
		}
	}
	slices.Sort(ids)
	for _, id := range ids {
		if n.ringWait[id] != nil && n.cache.has(id) {
			n.notify(now, id, false)
		}
	}
}

// ringSilence declares gone the ring neighbours that answered none of
// RingProbes notifications within ringLimit.
func (n *Node) ringSilence(now time.Time) {
	limit := n.ringLimit()
	var gone []NodeID
	for id, w := range n.ringWait {
		if now.Sub(w.since) > limit && (w.tries >= n.p.RingProbes || !n.cache.has(id)) {
			gone = append(gone, id)
		}
	}
	slices.Sort(gone) // removal order shapes the cache's slab: replayable runs
	for _, id := range gone {
		delete(n.ringWait, id)
		if !n.isNbr(id) {
			// Silence may also be a route broken by someone else's
			// death: forget the route, and block re-learning only
			// briefly so a live node is not shut out for long.
			n.cache.remove(id)
			n.tomb[id] = now.Add(limit)
		}
	}
}

// notify sends this node's ring view to id: its nearest successors and
// predecessors with their routes. The receiver learns them and replies with
// its own view, so both sides discover better ring neighbours.
func (n *Node) notify(now time.Time, id NodeID, isReply bool) {
	if !isReply {
		w := n.ringWait[id]
		if w == nil {
			w = &ringWait{since: now}
			n.ringWait[id] = w
		}
		w.last = now
		w.tries++
		n.soonAt(now.Add(n.ringRTO()))
	}
	p := n.viewPayload(now, isReply)
	o := &n.out
	o.proto, o.flags, o.target, o.vhops, o.hops, o.pos = protoNotify, 0, id, 0, 0, 0
	o.from = 0
	o.route = append(o.route[:0], n.id)
	o.payload = p
	n.decide(now, o)
}

func (n *Node) viewPayload(now time.Time, isReply bool) []byte {
	var flags byte
	if isReply {
		flags = 1
	}
	view := n.cache.successors(n.ids2[:0], viewPerDir)
	view = n.cache.predecessors(view, viewPerDir)
	n.ids2 = view
	p := make([]byte, 2, 2+len(view)*(9+8*8))
	p[0] = flags
	fresh := now.Add(-n.p.RingIntervalMax * 3 / 2)
	for i, id := range view {
		// Only first-hand, recently confirmed knowledge is passed on, so
		// stale routes to dead nodes cannot circulate.
		if slices.Contains(view[:i], id) || !n.cache.fresh(id, fresh) {
			continue
		}
		rt := n.cache.route(id, now)
		if len(rt) == 0 || len(rt) > 255 {
			continue
		}
		p = binary.BigEndian.AppendUint64(p, uint64(id))
		p = append(p, byte(len(rt)))
		p = appendIDs(p, rt)
		p[1]++
	}
	return p
}

func (n *Node) handleNotify(now time.Time, r *routed) {
	if len(r.payload) < 2 {
		n.stats.Malformed++
		return
	}
	isReply := r.payload[0]&1 != 0
	src := r.route[0]
	if src == n.id {
		return
	}
	// Route to the sender: the reverse of the frame's route (ends at src).
	back := reverseInto(n.ids[:0], r.route[:len(r.route)-1])
	n.ids = back
	// Entries that are no news are skipped: a node cached with a route as
	// short, or — when the cache is filling up — one farther on the ring
	// than the ring neighbours kept (learning walks the whole route, and
	// views arrive every round from both sides).
	var lo, hi NodeID // the SuccessorList-th predecessor and successor
	room := n.cache.len() < n.p.CacheSize*3/4
	if !room {
		var b [2 * 8]NodeID
		k := min(n.p.SuccessorList, 8)
		succ := n.cache.successors(b[:0], k)
		pred := n.cache.predecessors(b[len(succ):len(succ)], k)
		if len(succ) < k || len(pred) < k {
			room = true
		} else {
			lo, hi = pred[k-1], succ[k-1]
		}
	}
	b := r.payload[2:]
	for i := 0; i < int(r.payload[1]); i++ {
		if len(b) < 9 {
			n.stats.Malformed++
			return
		}
		id := NodeID(binary.BigEndian.Uint64(b))
		var rt []NodeID
		var err error
		rt, b, err = readIDs(n.ids2[:0], b[9:], int(b[8]))
		n.ids2 = rt
		if err != nil {
			n.stats.Malformed++
			return
		}
		if id == n.id || len(rt) == 0 || rt[len(rt)-1] != id {
			continue
		}
		if d := n.cache.depth(id); d > 0 && d <= len(back)+len(rt) {
			continue
		}
		if !room && !Between(n.id, id, hi) && !Between(lo, id, n.id) {
			continue
		}
		full := append(append(make([]NodeID, 0, len(back)+len(rt)), back...), rt...)
		n.learn(full, now, false)
	}
	if !isReply {
		n.replyNotify(now, r)
	}
}

func (n *Node) replyNotify(now time.Time, r *routed) {
	n.reply(now, r, protoNotify, n.viewPayload(now, true))
}

// ---- fingers ----

func (n *Node) fingerStep() time.Duration {
	return n.jitter(n.p.FingerInterval / time.Duration(n.p.Fingers))
}

// fingerRound refreshes one finger: a closest lookup of self + ring/2^(i+1).
// Fingers give greedy routing its O(log n) virtual hops (Chord); lookups
// stop at the first finger that falls before the successor.
func (n *Node) fingerRound(now time.Time) {
	n.fingerNxt = now.Add(n.fingerStep())
	succ, ok := n.Successor()
	if !ok {
		return
	}
	i := n.fingerIdx
	target := n.id + NodeID(uint64(1)<<(63-i))
	if !Between(n.id, target, succ) && i < len(n.fingers) {
		n.fingerIdx++
		o := &n.out
		o.proto, o.flags, o.target, o.vhops, o.hops, o.pos = protoFind, flagClosest, target, 0, 0, 0
		o.from = 0
		o.route = append(o.route[:0], n.id)
		o.payload = []byte{byte(i)}
		n.decide(now, o)
		return
	}
	for j := i; j < len(n.fingers); j++ {
		if n.fingers[j] != 0 {
			n.fingers[j] = 0
			n.fingerChanged = true
		}
	}
	n.fingerIdx = 0
	// A cycle that changed nothing suggests a stable ring: the next one
	// comes later (fingers are an optimisation; ring maintenance and
	// error reports keep routing correct meanwhile).
	if n.fingerChanged || n.fingerIvl == 0 {
		n.fingerIvl = n.p.FingerInterval
	} else {
		n.fingerIvl = min(2*n.fingerIvl, fingerBackoff*n.p.FingerInterval)
	}
	n.fingerChanged = false
	// Only about log2(ring size) fingers lie beyond the successor: the
	// next cycle starts a whole cycle length after this one did, not
	// after a fraction of it, so a refresh costs the same in any mesh size.
	if next := n.fingerCycle.Add(n.jitter(n.fingerIvl)); next.After(n.fingerNxt) {
		n.fingerNxt = next
	}
	n.fingerCycle = n.fingerNxt
}
