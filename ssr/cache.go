package ssr

import (
	"cmp"
	"iter"
	"math/bits"
	"slices"
	"time"
)

// The route cache is a tree rooted at this node (SSR, thesis §2.1.4.3): every
// cached node has a parent, the previous hop on its source route, so routes
// that share a prefix share memory and a broken link removes exactly the
// subtree below it. A sorted index of the cached IDs answers the greedy
// question "which known node is closest before this key" in O(log n).
//
// Entries live by value in one slice (a slab) and point to their parents by
// slot, so walking a route follows indices instead of hashing every hop, and
// the whole cache holds no Go pointers for the garbage collector to trace:
// a simulated mesh holds millions of entries.
type cache struct {
	self   NodeID
	slot   slotIndex // cached ID → index in ents
	ents   []centry  // the slab; free slots have free set
	free   []int32   // free slots, reused first
	sorted []NodeID  // cached IDs in ascending order, self excluded
	max    int
	floor  int           // no eviction below this (pinned routes fill the cache)
	ttl    time.Duration // an unconfirmed route is dropped after this
	path   []NodeID      // scratch for route()
	pass   uint32        // evictPass counter (marks pinned routes)
	leaves []int32       // scratch for evictPass
	doomed []int32       // scratch for removeSubtree
}

// slotIndex maps cached IDs to slab slots: open addressing with linear
// probing over a power-of-two table of slot+1 (0: empty), at most half
// full. IDs are hashes, but tests use small ones, so they are mixed
// (Fibonacci hashing) before taking the top bits. A Go map did the same at
// several times the cost: lookups are most of what a relay does.
type slotIndex struct {
	tab   []int32
	n     int
	shift uint8
}

func (x *slotIndex) home(id NodeID) int {
	return int((uint64(id) * 0x9e3779b97f4a7c15) >> x.shift)
}

func (x *slotIndex) find(ents []centry, id NodeID) (int32, bool) {
	if len(x.tab) == 0 {
		return 0, false
	}
	mask := len(x.tab) - 1
	for i := x.home(id); ; i = (i + 1) & mask {
		s := x.tab[i]
		if s == 0 {
			return 0, false
		}
		if ents[s-1].id == id {
			return s - 1, true
		}
	}
}

// add indexes id (not yet indexed) at slot.
func (x *slotIndex) add(ents []centry, id NodeID, slot int32) {
	if 2*(x.n+1) > len(x.tab) {
		x.grow(ents)
	}
	mask := len(x.tab) - 1
	i := x.home(id)
	for x.tab[i] != 0 {
		i = (i + 1) & mask
	}
	x.tab[i] = slot + 1
	x.n++
}

func (x *slotIndex) grow(ents []centry) {
	old := x.tab
	size := max(16, 2*len(old))
	x.tab = make([]int32, size)
	x.shift = uint8(64 - bits.TrailingZeros(uint(size)))
	mask := size - 1
	for _, s := range old {
		if s != 0 {
			i := x.home(ents[s-1].id)
			for x.tab[i] != 0 {
				i = (i + 1) & mask
			}
			x.tab[i] = s
		}
	}
}

// remove unindexes id (its slab entry still holds the ID), shifting later
// entries of the probe run back so that no tombstones are needed.
func (x *slotIndex) remove(ents []centry, id NodeID) {
	if len(x.tab) == 0 {
		return
	}
	mask := len(x.tab) - 1
	i := x.home(id)
	for {
		s := x.tab[i]
		if s == 0 {
			return
		}
		if ents[s-1].id == id {
			break
		}
		i = (i + 1) & mask
	}
	x.tab[i] = 0
	x.n--
	for j := (i + 1) & mask; x.tab[j] != 0; j = (j + 1) & mask {
		// The entry at j may move to the hole at i unless its home lies
		// cyclically in (i, j].
		k := x.home(ents[x.tab[j]-1].id)
		if (i < j && (k <= i || k > j)) || (i > j && k <= i && k > j) {
			x.tab[i], x.tab[j] = x.tab[j], 0
			i = j
		}
	}
}

// root is the parent slot of a neighbour: the parent is self.
const root = -1

type centry struct {
	id       NodeID
	parent   NodeID // self for a neighbour
	up       int32  // the parent's slot, root for a neighbour
	depth    int32  // hops from self; may overestimate after a re-parent
	children int32
	mark     uint32 // evictPass: on a pinned route in pass number mark
	used     stamp  // last used to send: the LRU order for eviction
	// seen is the last first-hand evidence that the route works: a frame
	// that travelled it, or a beacon. Second-hand routes (from another
	// node's view or gossip) start out nearly expired, so stale knowledge
	// of dead nodes cannot circulate for long.
	seen stamp
	free bool
}

// stamp is a time in Unix nanoseconds: a pointer-free time.Time.
type stamp int64

func stampOf(t time.Time) stamp {
	if t.IsZero() {
		return 0 // UnixNano is undefined so far back
	}
	return stamp(t.UnixNano())
}

// secondHandTTL is how long an unconfirmed second-hand route is kept.
const secondHandTTL = 15 * time.Second

func newCache(self NodeID, max int, ttl time.Duration) *cache {
	return &cache{self: self, max: max, ttl: ttl}
}

func (c *cache) len() int { return c.slot.n }

func (c *cache) has(id NodeID) bool { _, ok := c.slot.find(c.ents, id); return ok }

// get returns id's entry, valid until the next insertion, or nil.
func (c *cache) get(id NodeID) *centry {
	if i, ok := c.slot.find(c.ents, id); ok {
		return &c.ents[i]
	}
	return nil
}

// all iterates over the cached entries (tests and scans).
func (c *cache) all() iter.Seq2[NodeID, *centry] {
	return func(yield func(NodeID, *centry) bool) {
		for i := range c.ents {
			if e := &c.ents[i]; !e.free && !yield(e.id, e) {
				return
			}
		}
	}
}

// ids lists the cached IDs in ascending order, from the slab (tests check
// the sorted index and the slot index against it).
func (c *cache) ids() []NodeID {
	var out []NodeID
	for id := range c.all() {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

// depth returns the hop count of the cached route to id, or 0 if unknown.
func (c *cache) depth(id NodeID) int {
	if e := c.get(id); e != nil {
		return int(e.depth)
	}
	return 0
}

// add caches id below the parent in slot up and returns its slot.
func (c *cache) add(id NodeID, up int32, parent NodeID, depth int32, seen, used stamp) int32 {
	e := centry{id: id, parent: parent, up: up, depth: depth, seen: seen, used: used}
	var i int32
	if k := len(c.free); k > 0 {
		i = c.free[k-1]
		c.free = c.free[:k-1]
		c.ents[i] = e
	} else {
		i = int32(len(c.ents))
		c.ents = append(c.ents, e)
	}
	c.slot.add(c.ents, id, i)
	c.addSorted(id)
	if up != root {
		c.ents[up].children++
	}
	return i
}

// insert learns the physical path p (p[0] a neighbour, each element a
// physical neighbour of the one before). Where a shorter route to a node on
// p is already cached, the rest of p hangs below that route instead. It
// reports whether a node was added or re-parented.
func (c *cache) insert(p []NodeID, now time.Time, firstHand bool) bool {
	prev, up, d := c.self, int32(root), int32(0)
	t := stampOf(now)
	changed := false
	for _, n := range p {
		if n == c.self {
			prev, up, d = c.self, root, 0
			continue
		}
		d++
		i, ok := c.slot.find(c.ents, n)
		if !ok {
			i = c.add(n, up, prev, d, stampOf(now.Add(secondHandTTL-c.ttl)), t)
			changed = true
		} else if e := &c.ents[i]; e.depth > d && e.up == up {
			e.depth = d
		} else if e.depth > d && !c.isAncestorSlot(i, up) {
			// A shorter route. Depths below n become overestimates; they
			// only steer the choice between routes, never correctness.
			if e.up != root {
				c.ents[e.up].children--
			}
			e.parent, e.up, e.depth = prev, up, d
			if up != root {
				c.ents[up].children++
			}
			changed = true
		}
		e := &c.ents[i]
		if firstHand {
			e.seen = t
		}
		e.used = t
		prev, up, d = n, i, e.depth
	}
	return changed
}

// confirm marks the cached route to the last node of p fresh if it is
// exactly p (p[0] a neighbour): a frame just travelled it. A different
// cached route proves nothing about itself and stays as it is.
func (c *cache) confirm(p []NodeID, now time.Time) bool {
	if len(p) == 0 {
		return false
	}
	i, ok := c.slot.find(c.ents, p[len(p)-1])
	if !ok {
		return false
	}
	last := i
	for k := len(p) - 1; k >= 0; k-- {
		if i == root || c.ents[i].id != p[k] {
			return false
		}
		i = c.ents[i].up
	}
	if i != root {
		return false
	}
	t := stampOf(now)
	for i = last; i != root; i = c.ents[i].up {
		c.ents[i].seen = t
	}
	return true
}

// fresh reports whether id's route was confirmed first-hand since t.
func (c *cache) fresh(id NodeID, t time.Time) bool {
	e := c.get(id)
	return e != nil && e.seen >= stampOf(t)
}

// expire removes leaves whose routes have not been confirmed within the
// cache's TTL, except the pinned ones.
func (c *cache) expire(now time.Time, pinned []NodeID) {
	limit := stampOf(now.Add(-c.ttl))
	var doomed []NodeID
	for i := range c.ents {
		e := &c.ents[i]
		if !e.free && e.children == 0 && e.seen < limit && !slices.Contains(pinned, e.id) {
			doomed = append(doomed, e.id)
		}
	}
	for _, id := range doomed {
		c.remove(id)
	}
}

// isAncestor reports whether a lies on the cached route to n (or is n).
func (c *cache) isAncestor(a, n NodeID) bool {
	ia, ok := c.slot.find(c.ents, a)
	if !ok {
		return false
	}
	in, ok := c.slot.find(c.ents, n)
	if !ok {
		return false
	}
	return c.isAncestorSlot(ia, in)
}

func (c *cache) isAncestorSlot(a, n int32) bool {
	for steps := 0; n != root && steps < 512; steps++ {
		if n == a {
			return true
		}
		n = c.ents[n].up
	}
	return false
}

// route returns the cached path to id (first hop first, id last) in a
// scratch slice valid until the next call, or nil. A non-zero now marks
// every node on it used.
func (c *cache) route(id NodeID, now time.Time) []NodeID {
	c.path = c.path[:0]
	i, ok := c.slot.find(c.ents, id)
	if !ok {
		return nil
	}
	t := stamp(0)
	if !now.IsZero() {
		t = stampOf(now)
	}
	for ; i != root; i = c.ents[i].up {
		if len(c.path) >= maxRoute {
			return nil
		}
		e := &c.ents[i]
		if t != 0 {
			e.used = t
		}
		c.path = append(c.path, e.id)
	}
	slices.Reverse(c.path)
	return c.path
}

// firstHop returns the neighbour a packet to id leaves through.
func (c *cache) firstHop(id NodeID) (NodeID, bool) {
	i, ok := c.slot.find(c.ents, id)
	if !ok {
		return 0, false
	}
	for steps := 0; steps < 512; steps++ {
		e := &c.ents[i]
		if e.up == root {
			return e.id, true
		}
		i = e.up
	}
	return 0, false
}

// remove drops id and its whole subtree (routes through it).
func (c *cache) remove(id NodeID) {
	i, ok := c.slot.find(c.ents, id)
	if !ok {
		return
	}
	if up := c.ents[i].up; up != root {
		c.ents[up].children--
	}
	c.removeSubtree(i)
}

// removeEdge drops the subtree below b if its cached route uses link a→b.
func (c *cache) removeEdge(a, b NodeID) bool {
	e := c.get(b)
	if e == nil || e.parent != a {
		return false
	}
	c.remove(b)
	return true
}

func (c *cache) drop(i int32) {
	e := &c.ents[i]
	c.slot.remove(c.ents, e.id)
	c.delSorted(e.id)
	*e = centry{free: true}
	c.free = append(c.free, i)
}

func (c *cache) removeSubtree(i int32) {
	if c.ents[i].children == 0 {
		c.drop(i)
		return
	}
	// Collect the subtree by scans of the (small, bounded) slab, each
	// taking the entries whose parent is already doomed: cheaper than
	// keeping child lists on every insert.
	c.pass++
	c.ents[i].mark = c.pass
	doomed := append(c.doomed[:0], i)
	for grew := true; grew; {
		grew = false
		for j := range c.ents {
			e := &c.ents[j]
			if !e.free && e.mark != c.pass && e.up != root && c.ents[e.up].mark == c.pass {
				e.mark = c.pass
				doomed = append(doomed, int32(j))
				grew = true
			}
		}
	}
	for _, j := range doomed {
		c.drop(j)
	}
	c.doomed = doomed[:0]
}

// evict removes least recently used leaves until the cache is at 3/4 of
// its bound (batches amortise the scan). Routes to the pinned nodes —
// neighbours, ring entries, fingers, the global maximum — and every node on
// them are kept, so the bound is soft by the size of those routes.
func (c *cache) evict(pinned []NodeID) {
	if c.len() <= max(c.max, c.floor) {
		return
	}
	// Each pass removes least recently used leaves; removing them can make
	// their parents leaves, which the next pass takes.
	target := c.max * 3 / 4
	for c.len() > target && c.evictPass(pinned, target) {
	}
	// When pinned routes hold more than the target, scanning again on the
	// next insert would free nothing: wait for another quarter to arrive.
	c.floor = 0
	if c.len() > target {
		c.floor = c.len() + c.max/4
	}
}

func (c *cache) evictPass(pinned []NodeID, target int) bool {
	// Mark the routes to pinned nodes with this pass's number instead of
	// collecting them in a set: eviction runs often in large meshes.
	c.pass++
	for _, id := range pinned {
		i, ok := c.slot.find(c.ents, id)
		for steps := 0; ok && i != root && steps < 512; steps++ {
			e := &c.ents[i]
			if e.mark == c.pass {
				break
			}
			e.mark = c.pass
			i = e.up
		}
	}
	// Every unpinned entry, least recently used first and, among equals,
	// deepest first: using a route marks every node on it, so a parent is
	// never older than its children and comes after them. Removing in this
	// order takes a whole stale branch in one pass, leaf by leaf, instead
	// of one pass per level of the tree (routes in a large mesh are tens of
	// hops deep).
	cand := c.leaves[:0]
	for i := range c.ents {
		if e := &c.ents[i]; !e.free && e.mark != c.pass {
			cand = append(cand, int32(i))
		}
	}
	// Ties broken by ID: slot order depends on history, and a simulation
	// must replay the same under the same seed.
	slices.SortFunc(cand, func(a, b int32) int {
		ea, eb := &c.ents[a], &c.ents[b]
		if c := cmp.Compare(ea.used, eb.used); c != 0 {
			return c
		}
		if c := cmp.Compare(eb.depth, ea.depth); c != 0 {
			return c
		}
		return cmp.Compare(ea.id, eb.id)
	})
	removed := false
	for _, i := range cand {
		if c.len() <= target {
			break
		}
		e := &c.ents[i]
		if e.free || e.children > 0 {
			continue
		}
		if up := e.up; up != root {
			c.ents[up].children--
		}
		c.drop(i)
		removed = true
	}
	c.leaves = cand[:0]
	return removed
}

func (c *cache) addSorted(n NodeID) {
	i, found := slices.BinarySearch(c.sorted, n)
	if !found {
		c.sorted = slices.Insert(c.sorted, i, n)
	}
}

func (c *cache) delSorted(n NodeID) {
	if i, found := slices.BinarySearch(c.sorted, n); found {
		c.sorted = slices.Delete(c.sorted, i, i+1)
	}
}

// closestBefore returns the cached node or self that is nearest before key
// going clockwise: the node minimising cw(n, key). If it is self, no known
// node lies in (self, key] and this node is responsible for key.
func (c *cache) closestBefore(key NodeID) NodeID {
	best := c.self
	if len(c.sorted) > 0 {
		// Largest cached ID ≤ key, wrapping to the largest overall.
		i, found := slices.BinarySearch(c.sorted, key)
		var n NodeID
		switch {
		case found:
			n = c.sorted[i]
		case i > 0:
			n = c.sorted[i-1]
		default:
			n = c.sorted[len(c.sorted)-1]
		}
		if cw(n, key) < cw(best, key) {
			best = n
		}
	}
	return best
}

// closestAfterOr returns the cached node nearest after key clockwise, or 0
// if the cache is empty.
func (c *cache) closestAfterOr(key NodeID) NodeID {
	var id NodeID
	c.after(key, 1, func(x NodeID) bool { id = x; return false })
	return id
}

// after calls fn for up to k cached nodes following key clockwise (key
// excluded), nearest first, until fn returns false.
func (c *cache) after(key NodeID, k int, fn func(NodeID) bool) {
	n := len(c.sorted)
	i, found := slices.BinarySearch(c.sorted, key)
	if found {
		i++
	}
	for j := 0; j < k && j < n; j++ {
		if id := c.sorted[(i+j)%n]; id == key || !fn(id) {
			return
		}
	}
}

// before calls fn for up to k cached nodes virtually closer to key than
// self — in (self, key] — nearest to key first, until fn returns false.
func (c *cache) before(key NodeID, k int, fn func(NodeID) bool) {
	n := len(c.sorted)
	if n == 0 {
		return
	}
	// The largest cached ID ≤ key, wrapping to the largest overall.
	i, found := slices.BinarySearch(c.sorted, key)
	if !found {
		i--
	}
	for j := 0; j < k && j < n; j++ {
		id := c.sorted[((i-j)%n+n)%n]
		if cw(id, key) >= cw(c.self, key) || !fn(id) {
			return
		}
	}
}

// successors appends up to k cached nodes following self clockwise.
func (c *cache) successors(dst []NodeID, k int) []NodeID {
	n := len(c.sorted)
	if n == 0 {
		return dst
	}
	i, _ := slices.BinarySearch(c.sorted, c.self+1)
	if c.self == ^NodeID(0) {
		i = 0
	}
	for j := 0; j < k && j < n; j++ {
		dst = append(dst, c.sorted[(i+j)%n])
	}
	return dst
}

// predecessors appends up to k cached nodes preceding self.
func (c *cache) predecessors(dst []NodeID, k int) []NodeID {
	n := len(c.sorted)
	if n == 0 {
		return dst
	}
	i, _ := slices.BinarySearch(c.sorted, c.self) // first ≥ self; self is not cached
	for j := 1; j <= k && j <= n; j++ {
		dst = append(dst, c.sorted[((i-j)%n+n)%n])
	}
	return dst
}

// meanDepth is the mean hop count of the cached routes (0 if none).
func (c *cache) meanDepth() float64 {
	var sum, k int64
	for i := range c.ents {
		if e := &c.ents[i]; !e.free {
			sum += int64(e.depth)
			k++
		}
	}
	if k == 0 {
		return 0
	}
	return float64(sum) / float64(k)
}
