package phones

import (
	"context"
	"encoding/json"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// slotStore is a RoomStore in a map (registrar.MemRooms, which this
// package may not import).
type slotStore struct {
	mu sync.Mutex
	m  map[int][]byte
}

func (s *slotStore) SetMember(_ context.Context, _ string, slot int, rec []byte, _ time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[slot] = rec
	return nil
}

func (s *slotStore) Members(_ context.Context, _ string, slots int) ([][]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([][]byte, slots)
	for i := range out {
		out[i] = s.m[i]
	}
	return out, nil
}

// meshHost is the one part of a ConfHost movedAway uses.
type meshHost struct {
	ConfHost
	addr netip.AddrPort
}

func (h meshHost) MeshAddr() netip.AddrPort { return h.addr }

// TestMovedAway: a member whose record names another node has moved there
// (and is marked so that leaving keeps that record); one whose record
// names this node, or that has none, has not; a member that came from the
// LAN is never recorded.
func TestMovedAway(t *testing.T) {
	self := netip.MustParseAddrPort("[fd00::1]:5060")
	store := &slotStore{m: map[int][]byte{}}
	c := &ConfService{cfg: ConfConfig{Store: store, MaxMembers: 4}, h: meshHost{addr: self}}
	room := &confRoom{c: c, number: "426"}
	put := func(slot int, callID, node string) {
		b, _ := json.Marshal(memberRecord{Slot: slot, CallID: callID, Node: node})
		store.m[slot] = b
	}
	member := func(callID string, mesh bool) *confMember {
		return &confMember{uasDialog: uasDialog{callID: callID}, room: room, mesh: mesh}
	}
	put(0, "a", self.String())
	put(2, "b", "[fd00::2]:5060")
	ctx := context.Background()
	for _, tc := range []struct {
		m     *confMember
		moved bool
	}{
		{member("a", true), false},
		{member("b", true), true},
		{member("c", true), false},
		{member("b", false), false},
	} {
		if got := c.movedAway(ctx, tc.m); got != tc.moved || tc.m.moved.Load() != tc.moved {
			t.Errorf("member %s (mesh %v): movedAway %v, marked %v; want %v", tc.m.callID, tc.m.mesh, got, tc.m.moved.Load(), tc.moved)
		}
	}
}
