package registrar

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/sipmesh/sipmesh/ssr/dht"
)

// The records of a party-line room's members (phones.RoomStore), which
// let the room's next node take the members over when the room's node
// dies (phones/roommove.go). One key per room and slot, so that each
// record stays within dht.MaxValue; the node running the room writes its
// members' slots, and the node that takes the room over writes the same
// slots under its own name. A reader therefore takes, per slot, the newest
// record of any writer: each value starts with the time it was written
// (8 bytes, Unix nanoseconds, big-endian), and an emptied slot is a value
// with nothing after the time, so it outranks the member's older record
// written by the node that died (a DHT tombstone would hide only the
// writer's own).

// roomKeyPrefix + room + " " + slot: a member record of the room.
const roomKeyPrefix = "room:"

func roomSlotKey(room string, slot int) string {
	return roomKeyPrefix + room + " " + strconv.Itoa(slot)
}

// DHTRooms is the party line's RoomStore on the DHT.
type DHTRooms struct{ DHT DHT }

// SetMember implements phones.RoomStore.
func (s *DHTRooms) SetMember(ctx context.Context, room string, slot int, rec []byte, ttl time.Duration) error {
	if 8+len(rec) > dht.MaxValue {
		return fmt.Errorf("room %s member record of %d bytes: larger than a DHT value", room, len(rec))
	}
	v := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(rec)), uint64(time.Now().UnixNano()))
	return s.DHT.Put(ctx, roomSlotKey(room, slot), append(v, rec...), ttl)
}

// Members implements phones.RoomStore: the slots are read in parallel.
func (s *DHTRooms) Members(ctx context.Context, room string, slots int) ([][]byte, error) {
	out := make([][]byte, slots)
	errs := make([]error, slots)
	var wg sync.WaitGroup
	for i := range slots {
		wg.Go(func() {
			recs, err := s.DHT.Get(ctx, roomSlotKey(room, i)) // none: not found
			if err != nil {
				errs[i] = err
				return
			}
			var best uint64
			for _, r := range recs {
				if r.Tombstone || len(r.Value) < 8 {
					continue
				}
				if t := binary.BigEndian.Uint64(r.Value); t > best {
					best, out[i] = t, r.Value[8:]
				}
			}
			if len(out[i]) == 0 {
				out[i] = nil
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return out, fmt.Errorf("room %s records: %w", room, err)
	}
	return out, nil
}

// MemRooms is a RoomStore in memory, shared by the nodes of a test as the
// DHT would be; it survives any node.
type MemRooms struct {
	mu sync.Mutex
	m  map[string][]byte
}

// SetMember implements phones.RoomStore.
func (s *MemRooms) SetMember(_ context.Context, room string, slot int, rec []byte, _ time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[string][]byte)
	}
	if rec == nil {
		delete(s.m, roomSlotKey(room, slot))
	} else {
		s.m[roomSlotKey(room, slot)] = append([]byte(nil), rec...)
	}
	return nil
}

// Members implements phones.RoomStore.
func (s *MemRooms) Members(_ context.Context, room string, slots int) ([][]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([][]byte, slots)
	for i := range out {
		if b := s.m[roomSlotKey(room, i)]; b != nil {
			out[i] = append([]byte(nil), b...)
		}
	}
	return out, nil
}
