package ssr

import (
	"cmp"
	"slices"
	"time"
)

// The route cache is a tree rooted at this node (SSR, thesis §2.1.4.3): every
// cached node has a parent, the previous hop on its source route, so routes
// that share a prefix share memory and a broken link removes exactly the
// subtree below it. A sorted index of the cached IDs answers the greedy
// question "which known node is closest before this key" in O(log n).
type cache struct {
	self    NodeID
	entries map[NodeID]*centry
	sorted  []NodeID // cached IDs in ascending order, self excluded
	max     int
	floor   int           // no eviction below this (pinned routes fill the cache)
	ttl     time.Duration // an unconfirmed route is dropped after this
	path    []NodeID      // scratch for route()
	pass    uint32        // evictPass counter (marks pinned routes)
	leaves  []*centry     // scratch for evictPass
}

type centry struct {
	id       NodeID
	parent   NodeID // self for a neighbour
	depth    int    // hops from self; may overestimate after a re-parent
	children int
	used     time.Time // last used to send: the LRU order for eviction
	// seen is the last first-hand evidence that the route works: a frame
	// that travelled it, or a beacon. Second-hand routes (from another
	// node's view or gossip) start out nearly expired, so stale knowledge
	// of dead nodes cannot circulate for long.
	seen time.Time
	mark uint32 // evictPass: on a pinned route in pass number mark
}

// secondHandTTL is how long an unconfirmed second-hand route is kept.
const secondHandTTL = 15 * time.Second

func newCache(self NodeID, max int, ttl time.Duration) *cache {
	return &cache{self: self, entries: make(map[NodeID]*centry), max: max, ttl: ttl}
}

func (c *cache) len() int { return len(c.entries) }

func (c *cache) has(id NodeID) bool { _, ok := c.entries[id]; return ok }

// depth returns the hop count of the cached route to id, or 0 if unknown.
func (c *cache) depth(id NodeID) int {
	if e := c.entries[id]; e != nil {
		return e.depth
	}
	return 0
}

// insert learns the physical path p (p[0] a neighbour, each element a
// physical neighbour of the one before). Where a shorter route to a node on
// p is already cached, the rest of p hangs below that route instead. It
// reports whether a node was added or re-parented.
func (c *cache) insert(p []NodeID, now time.Time, firstHand bool) bool {
	prev, d := c.self, 0
	changed := false
	for _, n := range p {
		if n == c.self {
			prev, d = c.self, 0
			continue
		}
		d++
		e := c.entries[n]
		switch {
		case e == nil:
			e = &centry{id: n, parent: prev, depth: d, seen: now.Add(secondHandTTL - c.ttl)}
			c.entries[n] = e
			c.addSorted(n)
			c.child(prev, 1)
			changed = true
		case e.depth > d && e.parent == prev:
			e.depth = d
		case e.depth > d && !c.isAncestor(n, prev):
			// A shorter route. Depths below n become overestimates; they
			// only steer the choice between routes, never correctness.
			c.child(e.parent, -1)
			e.parent, e.depth = prev, d
			c.child(prev, 1)
			changed = true
		}
		if firstHand {
			e.seen = now
		}
		e.used = now
		prev, d = n, e.depth
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
	n := p[len(p)-1]
	for i := len(p) - 1; i >= 0; i-- {
		e := c.entries[n]
		if e == nil || p[i] != n {
			return false
		}
		n = e.parent
	}
	if n != c.self {
		return false
	}
	for _, id := range p {
		c.entries[id].seen = now
	}
	return true
}

// fresh reports whether id's route was confirmed first-hand since t.
func (c *cache) fresh(id NodeID, t time.Time) bool {
	e := c.entries[id]
	return e != nil && !e.seen.Before(t)
}

// expire removes leaves whose routes have not been confirmed within the
// cache's TTL, except the pinned ones.
func (c *cache) expire(now time.Time, pinned []NodeID) {
	limit := now.Add(-c.ttl)
	var doomed []NodeID
	for _, e := range c.entries {
		if e.children == 0 && e.seen.Before(limit) && !slices.Contains(pinned, e.id) {
			doomed = append(doomed, e.id)
		}
	}
	for _, id := range doomed {
		c.remove(id)
	}
}

// isAncestor reports whether a lies on the cached route to n (or is n).
func (c *cache) isAncestor(a, n NodeID) bool {
	for steps := 0; n != c.self && steps < 512; steps++ {
		if n == a {
			return true
		}
		e := c.entries[n]
		if e == nil {
			return false
		}
		n = e.parent
	}
	return false
}

func (c *cache) child(id NodeID, delta int) {
	if e := c.entries[id]; e != nil {
		e.children += delta
	}
}

// route returns the cached path to id (first hop first, id last) in a
// scratch slice valid until the next call, or nil.
func (c *cache) route(id NodeID, now time.Time) []NodeID {
	c.path = c.path[:0]
	for n := id; n != c.self; {
		e := c.entries[n]
		if e == nil || len(c.path) >= maxRoute {
			return nil
		}
		if !now.IsZero() {
			e.used = now
		}
		c.path = append(c.path, n)
		n = e.parent
	}
	slices.Reverse(c.path)
	return c.path
}

// firstHop returns the neighbour a packet to id leaves through.
func (c *cache) firstHop(id NodeID) (NodeID, bool) {
	for steps := 0; steps < 512; steps++ {
		e := c.entries[id]
		if e == nil {
			return 0, false
		}
		if e.parent == c.self {
			return id, true
		}
		id = e.parent
	}
	return 0, false
}

// remove drops id and its whole subtree (routes through it).
func (c *cache) remove(id NodeID) {
	e := c.entries[id]
	if e == nil {
		return
	}
	c.child(e.parent, -1)
	c.removeSubtree(id)
}

// removeEdge drops the subtree below b if its cached route uses link a→b.
func (c *cache) removeEdge(a, b NodeID) bool {
	e := c.entries[b]
	if e == nil || e.parent != a {
		return false
	}
	c.remove(b)
	return true
}

func (c *cache) removeSubtree(id NodeID) {
	if c.entries[id].children == 0 {
		delete(c.entries, id)
		c.delSorted(id)
		return
	}
	// Collect the subtree by repeated scans of the (small, bounded) cache:
	// cheaper than keeping child lists on every insert.
	doomed := map[NodeID]bool{id: true}
	{
		for grew := true; grew; {
			grew = false
			for n, e := range c.entries {
				if !doomed[n] && doomed[e.parent] {
					doomed[n] = true
					grew = true
				}
			}
		}
	}
	for n := range doomed {
		delete(c.entries, n)
		c.delSorted(n)
	}
}

// evict removes least recently used leaves until the cache is at 3/4 of
// its bound (batches amortise the scan). Routes to the pinned nodes —
// neighbours, ring entries, fingers, the global maximum — and every node on
// them are kept, so the bound is soft by the size of those routes.
func (c *cache) evict(pinned []NodeID) {
	if len(c.entries) <= max(c.max, c.floor) {
		return
	}
	// Each pass removes least recently used leaves; removing them can make
	// their parents leaves, which the next pass takes.
	target := c.max * 3 / 4
	for len(c.entries) > target && c.evictPass(pinned, target) {
	}
	// When pinned routes hold more than the target, scanning again on the
	// next insert would free nothing: wait for another quarter to arrive.
	c.floor = 0
	if len(c.entries) > target {
		c.floor = len(c.entries) + c.max/4
	}
}

func (c *cache) evictPass(pinned []NodeID, target int) bool {
	// Mark the routes to pinned nodes with this pass's number instead of
	// collecting them in a set: eviction runs often in large meshes.
	c.pass++
	for _, id := range pinned {
		for steps := 0; id != c.self && steps < 512; steps++ {
			e := c.entries[id]
			if e == nil || e.mark == c.pass {
				break
			}
			e.mark = c.pass
			id = e.parent
		}
	}
	leaves := c.leaves[:0]
	for _, e := range c.entries {
		if e.children == 0 && e.mark != c.pass {
			leaves = append(leaves, e)
		}
	}
	// Ties broken by ID: map order is random, and a simulation must
	// replay the same under the same seed.
	slices.SortFunc(leaves, func(a, b *centry) int {
		if c := a.used.Compare(b.used); c != 0 {
			return c
		}
		return cmp.Compare(a.id, b.id)
	})
	for _, e := range leaves {
		if len(c.entries) <= target {
			break
		}
		c.remove(e.id)
	}
	clear(leaves)
	c.leaves = leaves[:0]
	return len(leaves) > 0
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
