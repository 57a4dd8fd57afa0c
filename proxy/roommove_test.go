package proxy

import (
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/phones"
	"github.com/sipmesh/sipmesh/registrar"
	"github.com/sipmesh/sipmesh/ssr"
	"github.com/sipmesh/sipmesh/ssr/dht"
)

// wrongPairs counts, and reports, the members of a room that do not hear
// another member's tone or hear their own (tone i is partyTone(tones[i])).
func wrongPairs(t *testing.T, calls []*phones.Call, tones []int) int {
	t.Helper()
	want := partyAmplitude * partyAmplitude / 2
	bad := 0
	for i, c := range calls {
		for j := range calls {
			l := c.Level(partyTone(tones[j]))
			if (i == j && l > want/10) || (i != j && l < want/2) {
				bad++
				t.Errorf("member %d: level of member %d's tone %.3g, want %s %.3g", i, j, l,
					map[bool]string{true: "<", false: ">"}[i == j], map[bool]float64{true: want / 10, false: want / 2}[i == j])
			}
		}
	}
	return bad
}

// TestPartyLineMoves: 20 phones on 20 nodes are in room 426, which runs on
// a 21st node; that node dies. The node that owns the room's key next
// takes the members over from their records (phones/roommove.go) and
// re-INVITEs them: every member hears every other again, and the test
// measures how long the room was silent (virtual time, from the kill; the
// ring's notice of the death is immediate here, in a node it comes with
// SSR's repair and the daemon's once-a-second look at its successor). The
// members then hang up through the new node (their BYEs follow the
// refreshed target), and the room's records are gone.
func TestPartyLineMoves(t *testing.T) {
	leakcheck.Check(t)
	silence := partyLineMove(t, 21, true, false)
	t.Logf("room silent for %v (virtual) after its node died", silence)
}

// TestPartyLineStays: the ring changes so that another node owns room
// 426's key, but the node running the room lives (a node came, say): it
// answers the next owner's probe, the room stays where it is and nobody
// is re-INVITEd or cut off.
func TestPartyLineStays(t *testing.T) {
	leakcheck.Check(t)
	partyLineMove(t, 4, false, false)
}

// TestPartyLineTwoClaimants: the room's node dies and, while the ring
// repairs, two nodes each believe they own the room's key. Both claim the
// room in the store; only the newer claim takes the members over, so the
// room does not split (nor does a member's media flap between two
// mixers): 40 s later every member is in one room, hears every other,
// no call was ended, and everyone hangs up cleanly.
func TestPartyLineTwoClaimants(t *testing.T) {
	leakcheck.Check(t)
	partyLineMove(t, 6, true, true)
}

// partyLineMove puts a phone on each of n-1 nodes in room 426, which runs
// on the n-th; then the ring changes so that another node owns the room's
// key, with the room's node killed (kill) or alive, and with a second node
// claiming the room too (split). It returns the longest silence a member
// had after the kill.
func partyLineMove(t *testing.T, n int, kill, split bool) time.Duration {
	var silence time.Duration
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var live []ssr.NodeID
		for i := 1; i <= n; i++ {
			live = append(live, nodeID(i))
		}
		owner := func(room string) ssr.NodeID {
			mu.Lock()
			defer mu.Unlock()
			return RingOwner(live, RoomKey(room))
		}
		store := &registrar.MemRooms{}
		var claimant atomic.Uint64 // a second node that believes it owns the room
		var m *meshRig
		rooms := withRooms(&m, n)
		m = newMeshRig(t, n, func(c *SIPServiceConfig) {
			rooms(c)
			self := c.Node
			c.Rooms.Owner, c.Rooms.Store = func(room string) ssr.NodeID {
				if split && claimant.Load() == uint64(self) {
					return self // a view of the ring under repair
				}
				return owner(room)
			}, store
		})
		first := int(owner(phones.PartyLine) - 0x1000)
		var (
			ps    []*phones.Phone
			tones []int
			nodes []int
		)
		for i := range n {
			if i+1 == first {
				continue
			}
			k := len(ps)
			ext := roomExts()[k]
			ip := netip.AddrFrom4([4]byte{10, byte(i + 1), 0, 20})
			h := m.nw.AddHost("party-" + ext)
			m.nodes[i].lan.Attach(h.AddInterface("eth0", 1500, netip.PrefixFrom(ip, 24)))
			p, err := phones.New(phones.Config{Settings: phones.Settings{User: ext, Password: "secret" + ext,
				Server: netip.AddrPortFrom(m.nodes[i].lanIP, 5060), LocalAddr: ip, ToneHz: partyTone(k),
				ToneAmplitude: partyAmplitude}, Network: h})
			if err != nil {
				t.Fatal(err)
			}
			m.wg.Go(func() { p.Run(m.ctx) })
			ps, tones, nodes = append(ps, p), append(tones, k), append(nodes, i+1)
		}
		synctest.Wait()
		calls := make([]*phones.Call, len(ps))
		for i, p := range ps {
			c, err := p.Call(m.ctx, phones.PartyLine, phones.CallOptions{})
			if err != nil {
				t.Fatalf("phone %d: call 426: %v", i, err)
			}
			calls[i] = c
		}
		time.Sleep(2 * time.Second)
		if bad := wrongPairs(t, calls, tones); bad > 0 {
			t.Fatalf("before the move: %d of %d pairs wrong", bad, len(calls)*len(calls))
		}

		recs, _ := store.Members(m.ctx, phones.PartyLine, phones.DefaultConfMembers)
		size, stored := 0, 0
		for _, r := range recs {
			if r != nil {
				size, stored = max(size, len(r)), stored+1
			}
		}
		if stored != len(calls) || size > dht.MaxValue-8 { // registrar.DHTRooms adds 8 bytes
			t.Fatalf("%d member records of up to %d bytes, want %d within a DHT value", stored, size, len(calls))
		}

		// The room's node dies (or another comes before it); the ring
		// tells the others at once.
		killed := time.Now()
		if kill {
			m.nodes[first-1].kill()
		}
		mu.Lock()
		live = slices.DeleteFunc(live, func(id ssr.NodeID) bool { return id == nodeID(first) })
		mu.Unlock()
		next := int(owner(phones.PartyLine) - 0x1000)
		if split {
			second := 1
			for second == first || second == next {
				second++
			}
			claimant.Store(uint64(nodeID(second)))
		}
		for i, nd := range m.nodes {
			if i+1 != first || !kill {
				nd.svc.RingChanged()
			}
		}
		if split {
			// Both claimants take the members over; each member follows
			// the last re-INVITE it got. The other node, without their
			// media, lets them go quietly after EchoIdle.
			time.Sleep(phones.EchoIdle + 10*time.Second)
			for i, c := range calls {
				select {
				case <-c.Done():
					t.Errorf("member %d's call ended (status %d): a claimant hung it up", i, c.Status())
				default:
				}
			}
			per := map[int]int{}
			for i, nd := range m.nodes {
				for _, r := range nd.svc.Rooms() {
					per[i+1] += r.Members
				}
			}
			total := 0
			for _, k := range per {
				total += k
			}
			if total != len(calls) {
				t.Errorf("%d members in rooms %v after the claimants settled, want each of the %d once", total, per, len(calls))
			}
			if bad := wrongPairs(t, calls, tones); bad > 0 {
				t.Errorf("after the claimants settled: %d of %d pairs wrong", bad, len(calls)*len(calls))
			}
			t.Logf("two claimants (nodes %d and %d): members per node %v; no call ended", next, claimant.Load()-0x1000, per)
			for _, c := range calls {
				if err := c.Hangup(m.ctx); err != nil {
					t.Errorf("hangup: %v", err)
				}
			}
			time.Sleep(100 * time.Millisecond)
			synctest.Wait()
			for i, nd := range m.nodes {
				if rooms := nd.svc.Rooms(); len(rooms) != 0 {
					t.Errorf("node %d after everyone left: %+v", i+1, rooms)
				}
			}
			return
		}
		if !kill {
			time.Sleep(3 * time.Second) // the probe and anything it would start
			if bad := wrongPairs(t, calls, tones); bad > 0 {
				t.Errorf("after the ring changed: %d of %d pairs wrong", bad, len(calls)*len(calls))
			}
			if rooms := m.nodes[first-1].svc.Rooms(); len(rooms) != 1 || rooms[0].Members != len(calls) {
				t.Errorf("node %d runs %+v, want room 426 still with %d members", first, rooms, len(calls))
			}
			if rooms := m.nodes[next-1].svc.Rooms(); len(rooms) != 0 {
				t.Errorf("node %d took room 426 from a live node: %+v", next, rooms)
			}
			for _, c := range calls {
				if err := c.Hangup(m.ctx); err != nil {
					t.Errorf("hangup: %v", err)
				}
			}
			time.Sleep(100 * time.Millisecond)
			synctest.Wait()
			return
		}
		// What was in flight at the kill arrives within the links' delay;
		// after that a member hears nothing until the room is back.
		const drained = 50 * time.Millisecond
		time.Sleep(drained)
		base := make([]uint64, len(calls))
		for i, c := range calls {
			base[i] = c.Stats().Received
		}
		back := make([]time.Duration, len(calls))
		for left := len(calls); left > 0; {
			if time.Since(killed) > 30*time.Second {
				t.Fatalf("room not back 30 s after its node died: %d members still silent", left)
			}
			time.Sleep(5 * time.Millisecond)
			for i, c := range calls {
				if back[i] == 0 && c.Stats().Received > base[i] {
					back[i] = time.Since(killed)
					left--
				}
			}
		}
		silence = slices.Max(back)
		t.Logf("room 426: node %d died, node %d took %d members over; silence %v to %v (virtual, from the kill)",
			first, next, len(calls), slices.Min(back), silence)

		time.Sleep(2 * time.Second) // the detectors' window holds only the new room
		if bad := wrongPairs(t, calls, tones); bad > 0 {
			t.Errorf("after the move: %d of %d pairs wrong", bad, len(calls)*len(calls))
		}
		if rooms := m.nodes[next-1].svc.Rooms(); len(rooms) != 1 || rooms[0].Members != len(calls) {
			t.Errorf("node %d runs %+v after the move, want room 426 with %d members", next, rooms, len(calls))
		}
		for _, c := range calls {
			if err := c.Hangup(m.ctx); err != nil {
				t.Errorf("hangup after the move: %v", err)
			}
		}
		time.Sleep(100 * time.Millisecond)
		synctest.Wait()
		if rooms := m.nodes[next-1].svc.Rooms(); len(rooms) != 0 {
			t.Errorf("after everyone left: %+v, want an idle room", rooms)
		}
		recs, _ = store.Members(m.ctx, phones.PartyLine, phones.DefaultConfMembers)
		for slot, r := range recs {
			if r != nil {
				t.Errorf("slot %d still recorded after everyone left: %s", slot, r)
			}
		}
	})
	return silence
}
