package ssr

import (
	"testing"
	"time"
)

// TestCheapestDecision: a decision weighs a route's length against the
// progress on the ring (decisionCost). With the ring spaced 1<<40 apart:
// the nearest node before the target, 40 hops away, loses to one two ring
// positions farther and 2 hops away (two halvings, 2·legHops = 20 hops, is
// less than the 38 saved), but not to one a thousand positions farther
// (ten halvings); the target itself wins whatever its route.
func TestCheapestDecision(t *testing.T) {
	const sp = NodeID(1) << 40
	self := NodeID(1) << 60
	now := time.Unix(1000, 0)
	chain := func(prefix NodeID, id NodeID, hops int) []NodeID {
		p := make([]NodeID, 0, hops)
		for i := 1; i < hops; i++ {
			p = append(p, prefix+NodeID(i))
		}
		return append(p, id)
	}
	build := func() *Node {
		n := New(self, Params{SuccessorList: 4, Fingers: -1, CacheSize: 4096}, nil, 1)
		// Ring neighbours evenly spaced, as uniform IDs are on average.
		for i := 1; i <= 4; i++ {
			n.cache.insert([]NodeID{self + NodeID(i)*sp}, now, true)
			n.cache.insert([]NodeID{self - NodeID(i)*sp}, now, true)
		}
		n.legHops = 10
		return n
	}
	target := self + NodeID(1)<<50
	near := target - sp/2     // nearest before the target, far away
	close2 := target - 5*sp/2 // two positions farther, near in the mesh
	farID := target - 1000*sp // much farther on the ring, next door
	frame := func() *routed { return &routed{target: target, route: []NodeID{self}} }

	n := build()
	n.cache.insert(chain(1, near, 40), now, true)
	n.cache.insert(chain(1000, close2, 2), now, true)
	n.cache.insert(chain(2000, farID, 1), now, true)
	best := n.cache.closestBefore(target)
	if best != near {
		t.Fatalf("closest before the target: %v, want %v", best, near)
	}
	if got := n.cheapest(frame(), best, n.id, func(NodeID) bool { return true }); got != close2 {
		t.Errorf("cheapest: %v, want the node two positions back with a 2-hop route (%v)", got, close2)
	}
	// Not usable (a relay's second-hand knowledge): the nearest stays.
	if got := n.cheapest(frame(), best, n.id, func(c NodeID) bool { return c != close2 }); got != near {
		t.Errorf("cheapest without the 2-hop node: %v, want %v", got, near)
	}
	// The target itself, even on a long route.
	n.cache.insert(chain(3000, target, 60), now, true)
	if got := n.cheapest(frame(), n.cache.closestBefore(target), n.id, func(NodeID) bool { return true }); got != target {
		t.Errorf("cheapest with the target known: %v, want the target", got)
	}
	// No leg estimate yet: greedy, the nearest before the target.
	n = build()
	n.legHops = 0
	n.cache.insert(chain(1, near, 40), now, true)
	n.cache.insert(chain(1000, close2, 2), now, true)
	if got := n.cheapest(frame(), near, n.id, func(NodeID) bool { return true }); got != near {
		t.Errorf("cheapest before any estimate: %v, want %v", got, near)
	}
}

// TestRedirectTo: a relay five hops short of the planned end (a ring
// position before the target) does not start a 40-hop leg to a node only
// half a position nearer, but takes the target itself, and a nearby node
// that saves most of the end's remaining decisions.
func TestRedirectTo(t *testing.T) {
	const sp = NodeID(1) << 40
	self := NodeID(1) << 60
	now := time.Unix(1000, 0)
	n := New(self, Params{SuccessorList: 4, Fingers: -1, CacheSize: 4096}, nil, 1)
	for i := 1; i <= 4; i++ {
		n.cache.insert([]NodeID{self + NodeID(i)*sp}, now, true)
		n.cache.insert([]NodeID{self - NodeID(i)*sp}, now, true)
	}
	n.legHops = 10
	chain := func(prefix NodeID, id NodeID, hops int) []NodeID {
		p := make([]NodeID, 0, hops)
		for i := 1; i < hops; i++ {
			p = append(p, prefix+NodeID(i))
		}
		return append(p, id)
	}
	target := self + NodeID(1)<<50
	end := target - 64*sp // 64 positions short: six halvings to go
	src := NodeID(7)
	frame := &routed{target: target, pos: 1, route: []NodeID{src, self, 11, 12, 13, 14, end}}
	all := func(NodeID) bool { return true }

	far := target - 32*sp // one halving better, 40 hops away
	n.cache.insert(chain(100, far, 40), now, true)
	if _, ok := n.redirectTo(frame, far, end, all); ok {
		t.Errorf("redirect to a node 40 hops away that saves one halving: want none")
	}
	nearby := target - 2*sp // five halvings better, 3 hops away
	n.cache.insert(chain(200, nearby, 3), now, true)
	if c, ok := n.redirectTo(frame, n.cache.closestBefore(target), end, all); c != nearby || !ok {
		t.Errorf("redirect to a node 3 hops away that saves five halvings: got %v (%v), want %v", c, ok, nearby)
	}
	n.cache.insert(chain(300, target, 30), now, true)
	if c, ok := n.redirectTo(frame, target, end, all); c != target || !ok {
		t.Errorf("redirect to the target itself: want it")
	}
}
