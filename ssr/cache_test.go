package ssr

import (
	"cmp"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// The randomized test drives the cache with random operations on a random
// physical graph and, after each, checks it against brute-force answers
// computed from its entries and the graph (in the spirit of wireguard-go's
// allowedips_rand_test.go).

type cgraph struct {
	self  NodeID
	nodes []NodeID // self first
	adj   map[NodeID]map[NodeID]bool
}

func newCGraph(rng *rand.Rand, n, extra int) *cgraph {
	g := &cgraph{adj: make(map[NodeID]map[NodeID]bool)}
	seen := map[NodeID]bool{}
	for len(g.nodes) < n {
		id := NodeID(rng.Uint64())
		if rng.IntN(8) == 0 {
			id = NodeID(rng.IntN(16)) // crowd the ends of the ring too
		} else if rng.IntN(8) == 0 {
			id = ^NodeID(rng.IntN(16))
		}
		if seen[id] {
			continue
		}
		seen[id] = true
		g.nodes = append(g.nodes, id)
		g.adj[id] = map[NodeID]bool{}
	}
	g.self = g.nodes[0]
	for i := 1; i < n; i++ { // a random spanning tree, then extra edges
		g.link(g.nodes[i], g.nodes[rng.IntN(i)])
	}
	for range extra {
		g.addRandomEdge(rng)
	}
	return g
}

func (g *cgraph) link(a, b NodeID) {
	if a != b {
		g.adj[a][b], g.adj[b][a] = true, true
	}
}

func (g *cgraph) addRandomEdge(rng *rand.Rand) {
	g.link(g.nodes[rng.IntN(len(g.nodes))], g.nodes[rng.IntN(len(g.nodes))])
}

func (g *cgraph) randomNeighbour(rng *rand.Rand, n NodeID) (NodeID, bool) {
	if len(g.adj[n]) == 0 {
		return 0, false
	}
	nb := slices.Sorted(maps.Keys(g.adj[n]))
	return nb[rng.IntN(len(nb))], true
}

// walk is a random walk from self: a valid physical path as insert takes
// it. It may revisit nodes, self included.
func (g *cgraph) walk(rng *rand.Rand) []NodeID {
	var p []NodeID
	cur := g.self
	for l := 1 + rng.IntN(10); len(p) < l; {
		next, ok := g.randomNeighbour(rng, cur)
		if !ok {
			break
		}
		p = append(p, next)
		cur = next
	}
	return p
}

// subtree lists id and every entry whose parent chain reaches id.
func subtree(c *cache, id NodeID) map[NodeID]bool {
	out := map[NodeID]bool{}
	for n := range c.all() {
		for m, steps := n, 0; m != c.self && steps <= c.len(); steps++ {
			if m == id {
				out[n] = true
				break
			}
			m = c.get(m).parent
		}
	}
	return out
}

func parents(c *cache) map[NodeID]NodeID {
	m := make(map[NodeID]NodeID, c.len())
	for id, e := range c.all() {
		m[id] = e.parent
	}
	return m
}

// checkCache verifies every invariant against brute force. It restores the
// LRU times route() touches, so that checking does not steer eviction.
func checkCache(t *testing.T, c *cache, g *cgraph, rng *rand.Rand) {
	t.Helper()
	used := make(map[NodeID]stamp, c.len())
	for id, e := range c.all() {
		used[id] = e.used
	}
	defer func() {
		for id, e := range c.all() {
			e.used = used[id]
		}
	}()
	if err := cacheStructureErr(c); err != nil {
		t.Fatal(err)
	}
	ids := c.ids()
	for _, id := range ids {
		e := c.get(id)
		// (a) the route is a physical path from a neighbour of self.
		r := c.route(id, time.Time{})
		prev := c.self
		for _, n := range r {
			if !g.adj[prev][n] {
				t.Fatalf("route(%v) = %v: %v-%v is not a link", id, r, prev, n)
			}
			prev = n
		}
		if fh, ok := c.firstHop(id); !ok || fh != r[0] {
			t.Fatalf("firstHop(%v) = %v, %v; route %v", id, fh, ok, r)
		}
		if !c.has(id) || c.depth(id) != int(e.depth) {
			t.Fatalf("has/depth(%v)", id)
		}
	}
	// (b) closestBefore is the brute-force minimum of cw(n, key).
	keys := []NodeID{c.self, c.self + 1, c.self - 1, 0, ^NodeID(0)}
	for range 20 {
		keys = append(keys, NodeID(rng.Uint64()))
	}
	for _, id := range ids {
		keys = append(keys, id, id+1, id-1)
	}
	for _, key := range keys {
		best := c.self
		for _, n := range ids {
			if cw(n, key) < cw(best, key) {
				best = n
			}
		}
		if got := c.closestBefore(key); got != best {
			t.Fatalf("closestBefore(%v) = %v, want %v (self %v, cached %v)", key, got, best, c.self, ids)
		}
		// after: the cached nodes other than key in clockwise order
		// from key (detours start there).
		var want []NodeID
		for _, n := range ids {
			if n != key {
				want = append(want, n)
			}
		}
		slices.SortFunc(want, func(a, b NodeID) int { return cmp.Compare(cw(key, a), cw(key, b)) })
		want = want[:min(len(want), 3)]
		var got []NodeID
		c.after(key, 3, func(n NodeID) bool { got = append(got, n); return true })
		if !slices.Equal(got, want) {
			t.Fatalf("after(%v, 3) = %v, want %v (cached %v)", key, got, want, ids)
		}
		if first := c.closestAfterOr(key); len(want) > 0 && first != want[0] || len(want) == 0 && first != 0 {
			t.Fatalf("closestAfterOr(%v) = %v, want %v", key, first, want)
		}
	}
	// (c) successors and predecessors are the brute-force ring orders.
	succ := slices.Clone(ids)
	slices.SortFunc(succ, func(a, b NodeID) int { return cmp.Compare(cw(c.self, a), cw(c.self, b)) })
	pred := slices.Clone(ids)
	slices.SortFunc(pred, func(a, b NodeID) int { return cmp.Compare(cw(a, c.self), cw(b, c.self)) })
	for k := 0; k <= len(ids)+1; k++ {
		m := min(k, len(ids))
		if got := c.successors(nil, k); !slices.Equal(got, succ[:m]) {
			t.Fatalf("successors(%d) = %v, want %v (self %v)", k, got, succ[:m], c.self)
		}
		if got := c.predecessors(nil, k); !slices.Equal(got, pred[:m]) {
			t.Fatalf("predecessors(%d) = %v, want %v (self %v)", k, got, pred[:m], c.self)
		}
	}
}

// cacheStructureErr checks what must hold of any cache, whatever it was fed:
// (e) the sorted index is the key set, parents exist and are shallower,
// (d) children counts are real, and (a) every route is loop-free, without
// self, and ends at its node.
func cacheStructureErr(c *cache) error {
	ids := c.ids()
	if c.len() != len(ids) {
		return fmt.Errorf("len %d, entries %d", c.len(), len(ids))
	}
	if !slices.Equal(c.sorted, ids) {
		return fmt.Errorf("sorted index %v\nentries      %v", c.sorted, ids)
	}
	live := 0
	for i := range c.ents {
		if !c.ents[i].free {
			live++
		} else if !slices.Contains(c.free, int32(i)) {
			return fmt.Errorf("slot %d is free but not in the free list", i)
		}
	}
	if live != len(ids) || live+len(c.free) != len(c.ents) {
		return fmt.Errorf("slab: %d live, %d free, %d slots, %d cached", live, len(c.free), len(c.ents), len(ids))
	}
	children := map[NodeID]int32{}
	for _, id := range ids {
		e := c.get(id)
		if e.id != id || id == c.self || e.free {
			return fmt.Errorf("entry %v has id %v (self %v, free %v)", id, e.id, c.self, e.free)
		}
		if i, ok := c.slot.find(c.ents, id); !ok || &c.ents[i] != e {
			return fmt.Errorf("%v: slot index finds %d, %v", id, i, ok)
		}
		if (e.parent == c.self) != (e.up == root) || (e.up != root && c.ents[e.up].id != e.parent) {
			return fmt.Errorf("%v: parent %v, parent slot %d", id, e.parent, e.up)
		}
		if e.parent != c.self {
			p := c.get(e.parent)
			if p == nil {
				return fmt.Errorf("%v: parent %v not cached", id, e.parent)
			}
			if p.depth >= e.depth {
				return fmt.Errorf("%v: depth %d, parent %v depth %d", id, e.depth, e.parent, p.depth)
			}
		} else if e.depth != 1 {
			return fmt.Errorf("neighbour %v at depth %d", id, e.depth)
		}
		children[e.parent]++
	}
	for _, id := range ids {
		e := c.get(id)
		if e.children != children[id] {
			return fmt.Errorf("%v: children %d, real %d", id, e.children, children[id])
		}
		// Walk the parents directly: route() gives up after 256 hops.
		var r []NodeID
		for n := id; n != c.self; n = c.get(n).parent {
			if slices.Contains(r, n) {
				return fmt.Errorf("cycle through %v on the route to %v", n, id)
			}
			r = append(r, n)
		}
		if len(r) > int(e.depth) {
			return fmt.Errorf("route to %v has %d hops, depth says %d", id, len(r), e.depth)
		}
		slices.Reverse(r)
		if len(r) <= 255 {
			used := make([]stamp, len(r))
			for i, n := range r {
				used[i] = c.get(n).used
			}
			got := c.route(id, time.Unix(0, int64(e.used)))
			for i, n := range r {
				c.get(n).used = used[i] // route() marks them used; undo that
			}
			if !slices.Equal(got, r) {
				return fmt.Errorf("route(%v) = %v, parents say %v", id, got, r)
			}
		}
	}
	return nil
}

func TestCacheRandomized(t *testing.T) {
	seeds, ops := 30, 1500
	if testing.Short() {
		seeds = 5
	}
	for seed := range seeds {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(seed), 99))
			g := newCGraph(rng, 40, 30+rng.IntN(40))
			ttl := time.Duration(20+rng.IntN(200)) * time.Millisecond
			c := newCache(g.self, 1000, ttl)
			now := time.Unix(1e9, 0)
			for op := range ops {
				now = now.Add(time.Millisecond)
				before := parents(c)
				switch x := rng.IntN(100); {
				case x < 55: // learn a path
					p := g.walk(rng)
					firstHand := rng.IntN(2) == 0
					changed := c.insert(p, now, firstHand)
					after := parents(c)
					if want := !maps.Equal(before, after); changed != want {
						// changed may also be true without a visible parent change
						// only if a node was added and removed, which insert never does.
						t.Fatalf("op %d: insert(%v) = %v, parents changed %v", op, p, changed, want)
					}
					for id, par := range before {
						if after[id] == 0 && !c.has(id) {
							t.Fatalf("op %d: insert dropped %v (parent %v)", op, id, par)
						}
					}
					// Every node on p now has a route at most as long as p's.
					hops := 0
					for _, n := range p {
						if n == c.self {
							hops = 0
							continue
						}
						hops++
						if r := c.route(n, now); len(r) == 0 || len(r) > hops {
							t.Fatalf("op %d: after insert(%v), route(%v) = %v, longer than %d", op, p, n, r, hops)
						}
						if firstHand && !c.fresh(n, now) {
							t.Fatalf("op %d: first-hand insert(%v) left %v unconfirmed", op, p, n)
						}
					}
				case x < 65: // forget a node and the routes through it
					if c.len() == 0 {
						continue
					}
					id := c.sorted[rng.IntN(c.len())]
					want := subtree(c, id)
					c.remove(id)
					checkRemoved(t, op, before, c, want)
				case x < 75: // a link fails
					a := g.nodes[rng.IntN(len(g.nodes))]
					b, ok := g.randomNeighbour(rng, a)
					if !ok {
						continue
					}
					delete(g.adj[a], b)
					delete(g.adj[b], a)
					want := map[NodeID]bool{}
					if e := c.get(b); e != nil && e.parent == a {
						maps.Copy(want, subtree(c, b))
					}
					if e := c.get(a); e != nil && e.parent == b {
						maps.Copy(want, subtree(c, a))
					}
					pb, okb := before[b]
					pa, oka := before[a]
					r1 := c.removeEdge(a, b)
					r2 := c.removeEdge(b, a)
					if r1 != (okb && pb == a) || r2 != (oka && pa == b) {
						t.Fatalf("op %d: removeEdge(%v,%v) = %v, reverse %v", op, a, b, r1, r2)
					}
					checkRemoved(t, op, before, c, want)
				case x < 82: // a link appears
					g.addRandomEdge(rng)
				case x < 90: // removeEdge on an arbitrary pair: only a cached parent link counts
					a := g.nodes[rng.IntN(len(g.nodes))]
					b := g.nodes[rng.IntN(len(g.nodes))]
					want := map[NodeID]bool{}
					if e := c.get(b); e != nil && e.parent == a {
						want = subtree(c, b)
					}
					if got := c.removeEdge(a, b); got != (len(want) > 0) {
						t.Fatalf("op %d: removeEdge(%v,%v) = %v, cached parent of %v is %v", op, a, b, got, b, before[b])
					}
					checkRemoved(t, op, before, c, want)
				case x < 95: // expire unconfirmed leaves
					var pinned []NodeID
					for range rng.IntN(5) {
						pinned = append(pinned, g.nodes[rng.IntN(len(g.nodes))])
					}
					if id := g.nodes[rng.IntN(len(g.nodes))]; rng.IntN(3) == 0 && c.has(id) {
						rt := slices.Clone(c.route(id, time.Time{}))
						if !c.confirm(rt, now) {
							t.Fatalf("op %d: confirm of the cached route to %v failed", op, id)
						}
					}
					want := map[NodeID]bool{}
					for id, e := range c.all() {
						if e.children == 0 && e.seen < stampOf(now.Add(-ttl)) && !slices.Contains(pinned, id) {
							want[id] = true
						}
					}
					c.expire(now, pinned)
					checkRemoved(t, op, before, c, want)
				default: // evict under a random bound and pinned set
					c.max, c.floor = 4+rng.IntN(40), 0
					var pinned []NodeID
					for range rng.IntN(5) {
						pinned = append(pinned, g.nodes[rng.IntN(len(g.nodes))])
					}
					checkEvict(t, c, pinned)
					c.max = 1000
				}
				checkCache(t, c, g, rng)
			}
		})
	}
}

func checkRemoved(t *testing.T, op int, before map[NodeID]NodeID, c *cache, want map[NodeID]bool) {
	t.Helper()
	for id := range before {
		if gone := !c.has(id); gone != want[id] {
			t.Fatalf("op %d: %v removed = %v, want %v (subtree %v)", op, id, gone, want[id], want)
		}
	}
	if len(before)-len(want) != c.len() {
		t.Fatalf("op %d: %d entries, want %d", op, c.len(), len(before)-len(want))
	}
}

// checkEvict runs evict and checks what it removed: only unpinned leaves,
// least recently used first, and enough of them unless it ran out.
func checkEvict(t *testing.T, c *cache, pinned []NodeID) {
	t.Helper()
	keep := map[NodeID]bool{}
	for _, id := range pinned {
		for id != c.self && c.has(id) && !keep[id] {
			keep[id] = true
			id = c.get(id).parent
		}
	}
	type leaf struct {
		id   NodeID
		used stamp
	}
	var cand []leaf
	for id, e := range c.all() {
		if e.children == 0 && !keep[id] {
			cand = append(cand, leaf{id, e.used})
		}
	}
	n0 := c.len()
	c.evict(pinned)
	for id := range keep {
		if !c.has(id) {
			t.Fatalf("evict removed %v, pinned or on a pinned route", id)
		}
	}
	if n0 <= c.max {
		if c.len() != n0 {
			t.Fatalf("evict under the bound removed %d entries", n0-c.len())
		}
		return
	}
	// The first pass removes the least recently used of the leaves there
	// were; removing them can make parents leaves, which later passes take.
	var newest stamp
	firstPass := 0
	for _, l := range cand {
		if !c.has(l.id) {
			firstPass++
			if l.used > newest {
				newest = l.used
			}
		}
	}
	if firstPass < len(cand) {
		for _, l := range cand {
			if c.has(l.id) && l.used < newest {
				t.Fatalf("evict kept leaf %v (used %v) and removed a newer one (%v)", l.id, l.used, newest)
			}
		}
	}
	if target := c.max * 7 / 8; c.len() > target {
		for id, e := range c.all() {
			if e.children == 0 && !keep[id] {
				t.Fatalf("evict stopped at %d > %d with unpinned leaf %v left", c.len(), target, id)
			}
		}
	}
}

// ---- unit tests ----

// testCache and ins keep the tests independent of the cache's tuning
// arguments: a TTL long enough never to expire anything, first-hand routes.
func testCache(self NodeID, max int) *cache { return newCache(self, max, time.Hour) }

func ins(c *cache, p []NodeID, now time.Time) bool { return c.insert(p, now, true) }

func TestCacheInsertKeepsShorter(t *testing.T) {
	now := time.Unix(1, 0)
	c := testCache(100, 64)
	if !ins(c, []NodeID{1, 2, 3, 4}, now) {
		t.Fatal("new path: insert = false")
	}
	if r := c.route(4, now); !slices.Equal(r, []NodeID{1, 2, 3, 4}) {
		t.Fatalf("route(4) = %v", r)
	}
	if !ins(c, []NodeID{5, 4}, now) {
		t.Fatal("shorter route: insert = false")
	}
	if r := c.route(4, now); !slices.Equal(r, []NodeID{5, 4}) {
		t.Fatalf("after a shorter path, route(4) = %v", r)
	}
	if ins(c, []NodeID{1, 2, 3, 4}, now) {
		t.Fatal("longer route: insert = true")
	}
	if r := c.route(4, now); !slices.Equal(r, []NodeID{5, 4}) {
		t.Fatalf("a longer path replaced the route: %v", r)
	}
	if ins(c, []NodeID{6, 7, 4}, now); !slices.Equal(c.route(4, now), []NodeID{5, 4}) {
		t.Fatalf("an equally long... longer path replaced the route: %v", c.route(4, now))
	}
	// The rest of a path hangs below the shorter route.
	ins(c, []NodeID{1, 2, 3, 4, 8}, now)
	if r := c.route(8, now); !slices.Equal(r, []NodeID{5, 4, 8}) {
		t.Fatalf("route(8) = %v, want below the short route to 4", r)
	}
	// Self inside a path restarts it (a route that passed through us).
	ins(c, []NodeID{1, 100, 9}, now)
	if r := c.route(9, now); !slices.Equal(r, []NodeID{9}) {
		t.Fatalf("route(9) = %v", r)
	}
	if c.get(3).children != 0 || c.get(5).children != 1 || c.get(4).children != 1 {
		t.Fatalf("children: 3:%d 5:%d 4:%d", c.get(3).children, c.get(5).children, c.get(4).children)
	}
}

// TestCacheReparentNoCycle builds stale depths (a subtree whose root moved
// closer keeps its old, larger depths) and then offers paths on which an
// ancestor follows its own descendant. No cycle may form.
func TestCacheReparentNoCycle(t *testing.T) {
	now := time.Unix(1, 0)
	const self = 1000
	c := testCache(self, 64)
	// A deep at 5, with descendants X (6) and D (7).
	ins(c, []NodeID{1, 2, 3, 4, 50, 60, 70}, now)
	// A re-learned 2 hops away: X and D keep depths 6 and 7 (real 3 and 4).
	ins(c, []NodeID{5, 50}, now)
	if c.depth(60) != 6 || len(c.route(60, now)) != 3 {
		t.Fatalf("setup: depth(60) = %d, route %v", c.depth(60), c.route(60, now))
	}
	check := func(step string) {
		t.Helper()
		for id := range c.all() {
			seen := map[NodeID]bool{}
			for n := id; n != self; n = c.get(n).parent {
				if seen[n] {
					t.Fatalf("%s: cycle through %v", step, n)
				}
				seen[n] = true
				if c.get(n) == nil {
					t.Fatalf("%s: %v has no entry", step, n)
				}
			}
		}
	}
	// Paths where the ancestor A (50) follows its descendant D (70) or X (60).
	for i, p := range [][]NodeID{
		{5, 50, 60, 70, 50},
		{5, 50, 60, 70, 60, 50},
		{1, 2, 70, 50},         // D at 3 < 7: D moves, then A (2) stays
		{1, 60, 50},            // X at 2 < 6: X moves under 1; A at 3 > 2: stays
		{9, 70, 60, 50, 5},     // D at 2, X at 3, A at 4: A stays (2), 5 stays (1)
		{1, 2, 3, 4, 50, 9, 1}, // the old deep path again, ending in a neighbour
	} {
		ins(c, p, now)
		check(fmt.Sprint("path ", i, " ", p))
		for id := range c.all() {
			r := c.route(id, now)
			if len(r) == 0 || r[len(r)-1] != id || slices.Contains(r, self) {
				t.Fatalf("path %d: route(%v) = %v", i, id, r)
			}
			if u := slices.Compact(slices.Sorted(slices.Values(r))); len(u) != len(r) {
				t.Fatalf("path %d: route(%v) = %v repeats a node", i, id, r)
			}
		}
	}
	if r := c.route(50, now); !slices.Equal(r, []NodeID{5, 50}) {
		t.Fatalf("route(50) = %v", r)
	}
	// The guard: a node counts as its own ancestor; D is no longer on A's
	// route. (Since a child's depth always exceeds its parent's, which
	// checkCache verifies, insert's depth test alone already rules cycles out.)
	if !c.isAncestor(50, 50) || c.isAncestor(70, 50) {
		t.Fatal("isAncestor")
	}
}

func TestCacheRemoveEdgeSubtree(t *testing.T) {
	now := time.Unix(1, 0)
	c := testCache(0, 64)
	//   1 ─ 2 ─ 3 ─ 4
	//        └─ 5 ─ 6
	//   7 ─ 8
	ins(c, []NodeID{1, 2, 3, 4}, now)
	ins(c, []NodeID{1, 2, 5, 6}, now)
	ins(c, []NodeID{7, 8}, now)
	if c.removeEdge(3, 2) || c.removeEdge(1, 3) || c.removeEdge(9, 10) || c.removeEdge(0, 2) {
		t.Fatal("removeEdge of a link no cached route uses returned true")
	}
	if c.len() != 8 {
		t.Fatalf("len %d", c.len())
	}
	if !c.removeEdge(1, 2) {
		t.Fatal("removeEdge(1, 2) = false")
	}
	got := c.ids()
	if !slices.Equal(got, []NodeID{1, 7, 8}) || !slices.Equal(c.sorted, got) {
		t.Fatalf("after removeEdge(1, 2): %v (sorted %v)", got, c.sorted)
	}
	if c.get(1).children != 0 {
		t.Fatalf("children of 1: %d", c.get(1).children)
	}
	if !c.removeEdge(0, 7) || c.len() != 1 {
		t.Fatalf("removeEdge(self, 7): %v", c.ids())
	}
}

func TestCacheEvictPinned(t *testing.T) {
	c := testCache(0, 16)
	t0 := time.Unix(1, 0)
	// 32 entries: 8 neighbours with 3 leaves each, the oldest first.
	for i := range 8 {
		n := NodeID(10 * (i + 1))
		for j := range 3 {
			ins(c, []NodeID{n, n + 1 + NodeID(j)}, t0.Add(time.Duration(3*i+j)*time.Second))
		}
	}
	pinned := []NodeID{11, 23} // two old leaves: they and their routes stay
	c.evict(pinned)
	for _, id := range []NodeID{10, 11, 20, 23} {
		if !c.has(id) {
			t.Fatalf("evicted %v, on a pinned route", id)
		}
	}
	if c.len() != 16*3/4 {
		t.Fatalf("evict left %d entries, want %d", c.len(), 16*3/4)
	}
	// Least recently used first, whole branches in one pass (a parent is
	// used whenever a child's route is): the pinned routes stay, the
	// branches of 70 and 80 (the newest) stay, everything else goes.
	want := []NodeID{10, 11, 20, 23, 70, 71, 72, 73, 80, 81, 82, 83}
	if got := c.ids(); !slices.Equal(got, want) {
		t.Fatalf("after evict: %v, want %v", got, want)
	}
	// All pinned: nothing to do, the bound is soft.
	c = testCache(0, 2)
	ins(c, []NodeID{1, 2, 3, 4}, t0)
	c.evict([]NodeID{4})
	if c.len() != 4 {
		t.Fatalf("evicted a pinned route: %d left", c.len())
	}
}

// TestCacheEvictChain: evict must reach 7/8 of its bound when enough
// unpinned entries exist, even when they hang in chains (a route of many
// hops has a single leaf).
func TestCacheEvictChain(t *testing.T) {
	c := testCache(0, 8)
	t0 := time.Unix(1, 0)
	ins(c, []NodeID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, t0)
	c.evict([]NodeID{1})
	if c.len() > 8*7/8 {
		knownBug(t, "evict stopped at %d entries, bound 8 (target %d): it removes only the leaves present when it starts, so a chain of unpinned nodes loses one node per call", c.len(), 8*7/8)
	}
	if !c.has(1) {
		t.Fatal("evicted the pinned neighbour")
	}
}

func TestCacheEmptyAndWrap(t *testing.T) {
	c := testCache(^NodeID(0), 8)
	if c.closestBefore(5) != ^NodeID(0) || len(c.successors(nil, 3)) != 0 || len(c.predecessors(nil, 3)) != 0 {
		t.Fatal("empty cache")
	}
	if c.route(5, time.Time{}) != nil {
		t.Fatal("route to an unknown node")
	}
	if _, ok := c.firstHop(5); ok {
		t.Fatal("firstHop to an unknown node")
	}
	ins(c, []NodeID{0, 5, 1 << 63}, time.Time{})
	if got := c.successors(nil, 5); !slices.Equal(got, []NodeID{0, 5, 1 << 63}) {
		t.Fatalf("successors of the top ID: %v", got)
	}
	if got := c.predecessors(nil, 5); !slices.Equal(got, []NodeID{1 << 63, 5, 0}) {
		t.Fatalf("predecessors of the top ID: %v", got)
	}
	if got := c.closestBefore(4); got != 0 {
		t.Fatalf("closestBefore(4) = %v", got)
	}
	if got := c.closestBefore(^NodeID(0) - 1); got != 1<<63 {
		t.Fatalf("closestBefore(max-1) = %v", got)
	}
	// Only self: every key is ours.
	c = testCache(0, 8)
	ins(c, []NodeID{0, 0}, time.Time{})
	if c.len() != 0 || c.closestBefore(7) != 0 {
		t.Fatal("self inserted into its own cache")
	}
}

// TestSlotIndexAgainstMap drives the open-addressing index with random
// adds and removes (clustered small IDs too, the worst case for probing)
// and compares every lookup with a Go map.
func TestSlotIndexAgainstMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	var x slotIndex
	var ents []centry
	ref := map[NodeID]int32{}
	randomID := func() NodeID {
		if rng.IntN(2) == 0 {
			return NodeID(rng.IntN(64))
		}
		return NodeID(rng.Uint64())
	}
	for op := range 20000 {
		id := randomID()
		if s, ok := ref[id]; ok && rng.IntN(2) == 0 {
			x.remove(ents, id)
			delete(ref, id)
			ents[s] = centry{free: true}
		} else if !ok {
			s := int32(len(ents))
			ents = append(ents, centry{id: id})
			x.add(ents, id, s)
			ref[id] = s
		}
		if x.n != len(ref) {
			t.Fatalf("op %d: %d indexed, want %d", op, x.n, len(ref))
		}
		for range 4 {
			q := randomID()
			got, ok := x.find(ents, q)
			want, wok := ref[q]
			if ok != wok || (ok && got != want) {
				t.Fatalf("op %d: find(%v) = %d, %v; want %d, %v", op, q, got, ok, want, wok)
			}
		}
	}
}
