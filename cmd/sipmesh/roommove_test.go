//go:build !router

package main

import (
	"context"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/phones"
)

// TestPartyLineMovesOnMesh: the room moves with the daemon's own parts (in
// virtual time): five real nodes on the in-memory network, a phone on
// each in room 426; the node running the room is killed. SSR repairs the
// ring, the dead node's predecessor sees its successor change and takes
// the room over from the members' records in the DHT (registrar.DHTRooms),
// re-INVITEing them: the four members left hear each other again. The
// silence is measured from the kill and includes the neighbours' timeout,
// the ring's repair, the once-a-second successor check and the probe of
// the dead node.
func TestPartyLineMovesOnMesh(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, partyLineMovesOnMesh)
}

func partyLineMovesOnMesh(t *testing.T) {
	// A ring of radio links, n1–n2–n3–n4–n5–n1: whichever node dies, the
	// others stay connected (a node whose only path led through the dead
	// one would be cut off with its phone, a loss no room can survive).
	ring := [][]int{{1, 4}, {0, 2}, {1, 3}, {2, 4}, {3, 0}}
	m := startMesh(t, meshConfig{Nodes: 5, Seed: 11, Adj: ring})
	defer stopMesh(t, m)
	addPhones(t, m, 1, phones.Policy{Mode: phones.AutoAnswer})
	ctx := context.Background()
	calls := make([]*phones.Call, len(m.phones))
	for i, p := range m.phones {
		c, err := p.Call(ctx, phones.PartyLine, phones.CallOptions{})
		if err != nil {
			t.Fatalf("%s: call 426: %v", p.Ext, err)
		}
		calls[i] = c
	}
	time.Sleep(2 * time.Second)
	owner := -1
	for i, n := range m.nodes {
		if rooms := n.SIP().Rooms(); len(rooms) > 0 {
			owner = i
		}
	}
	if owner < 0 {
		t.Fatal("no node runs room 426")
	}
	var live []int // the members whose phones are not on the room's node
	for i, p := range m.phones {
		if p.Node != owner {
			live = append(live, i)
		}
	}
	heardAll := func(when string) {
		t.Helper()
		want := demoToneAmplitude * demoToneAmplitude / 2
		for _, i := range live {
			for _, j := range live {
				l := calls[i].FrameLevel(m.phones[j].Hz)
				if (i == j && l > want/20) || (i != j && l < want/4) {
					t.Errorf("%s: %s's tone at level %.3g (%s)", m.phones[i].Ext, m.phones[j].Ext, l, when)
				}
			}
		}
	}
	heardAll("before the move")

	killed := time.Now()
	m.kill(owner)
	const drained = 100 * time.Millisecond // what was on its way
	time.Sleep(drained)
	base := make([]uint64, len(calls))
	for _, i := range live {
		base[i] = calls[i].Stats().Received
	}
	back := map[int]time.Duration{}
	for len(back) < len(live) {
		if time.Since(killed) > time.Minute {
			t.Fatalf("room not back a minute after its node died: %d of %d members hear it", len(back), len(live))
		}
		time.Sleep(20 * time.Millisecond)
		for _, i := range live {
			if _, ok := back[i]; !ok && calls[i].Stats().Received > base[i] {
				back[i] = time.Since(killed)
			}
		}
	}
	var ds []time.Duration
	for _, d := range back {
		ds = append(ds, d)
	}
	next := -1
	for i, n := range m.nodes {
		if rooms := n.SIP().Rooms(); i != owner && len(rooms) > 0 {
			next = i
		}
	}
	t.Logf("room 426: %s died, %s took %d members over; silence %v to %v (virtual, from the kill)",
		nodeName(owner), nodeName(max(next, 0)), len(live), slices.Min(ds).Round(time.Millisecond), slices.Max(ds).Round(time.Millisecond))
	time.Sleep(2 * time.Second)
	heardAll("after the move")
	for _, i := range live {
		if err := calls[i].Hangup(ctx); err != nil {
			t.Errorf("%s: hangup after the move: %v", m.phones[i].Ext, err)
		}
	}
}
