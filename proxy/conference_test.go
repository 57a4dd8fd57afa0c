package proxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/phones"
	"github.com/sipmesh/sipmesh/ssr"
)

// roomExts are the extensions of the party line test's phones, 210–229.
func roomExts() []string {
	var out []string
	for i := range 20 {
		out = append(out, strconv.Itoa(210+i))
	}
	return out
}

// withRooms gives every node of an n-node rig the party line, the rooms'
// owner computed from the rig's node IDs as every node would.
func withRooms(m **meshRig, n int) func(*SIPServiceConfig) {
	var ids []ssr.NodeID
	for i := 1; i <= n; i++ {
		ids = append(ids, nodeID(i))
	}
	return func(c *SIPServiceConfig) {
		lan, mesh := c.LANAddr.Addr(), c.MeshAddr.Addr()
		node := fmt.Sprintf("node%d", lan.As4()[1])
		c.Rooms = &RoomsConfig{
			Listen: func(ctx context.Context, onMesh bool) (net.PacketConn, error) {
				a := lan
				if onMesh {
					a = mesh
				}
				return (*m).nw.Host(node).ListenPacket(ctx, "udp", netip.AddrPortFrom(a, 0).String())
			},
			Owner: func(room string) ssr.NodeID { return RingOwner(ids, RoomKey(room)) },
		}
	}
}

// partyTone is the tone of the party line test's phone i: 25 Hz off the
// announcement tones, 50 Hz apart, quiet enough that twenty do not clip.
func partyTone(i int) float64 { return 425 + 50*float64(i) }

const partyAmplitude = 0.03

// TestPartyLine: 20 phones on 20 nodes dial 426; the room runs on the one
// node that owns its key, the others reach it through their relays, and
// every member hears every other member's tone and not its own. When they
// hang up, the room's mixer stops.
func TestPartyLine(t *testing.T) {
	leakcheck.Check(t)
	const n = 20
	synctest.Test(t, func(t *testing.T) {
		var m *meshRig
		m = newMeshRig(t, n, withRooms(&m, n))
		var ps []*phones.Phone
		for i := range n {
			nd := m.nodes[i]
			ext := roomExts()[i]
			ip := netip.AddrFrom4([4]byte{10, byte(i + 1), 0, 20})
			h := m.nw.AddHost("party-" + ext)
			nd.lan.Attach(h.AddInterface("eth0", 1500, netip.PrefixFrom(ip, 24)))
			p, err := phones.New(phones.Config{Settings: phones.Settings{User: ext, Password: "secret" + ext,
				Server: netip.AddrPortFrom(nd.lanIP, 5060), LocalAddr: ip, ToneHz: partyTone(i),
				ToneAmplitude: partyAmplitude}, Network: h})
			if err != nil {
				t.Fatal(err)
			}
			m.wg.Go(func() { p.Run(m.ctx) })
			ps = append(ps, p)
		}
		synctest.Wait()
		owner := int(RingOwner(func() []ssr.NodeID {
			var ids []ssr.NodeID
			for i := 1; i <= n; i++ {
				ids = append(ids, nodeID(i))
			}
			return ids
		}(), RoomKey(phones.PartyLine)) - 0x1000)
		calls := make([]*phones.Call, n)
		for i, p := range ps {
			c, err := p.Call(m.ctx, phones.PartyLine, phones.CallOptions{})
			if err != nil {
				t.Fatalf("phone %d: call 426: %v", i, err)
			}
			calls[i] = c
		}
		time.Sleep(2 * time.Second) // a second of everyone talking fills the detectors
		for i, nd := range m.nodes {
			rooms := nd.svc.Rooms()
			if i+1 == owner {
				if len(rooms) != 1 || rooms[0].Number != "426" || rooms[0].Members != n {
					t.Errorf("owner node %d runs %+v, want room 426 with %d members", owner, rooms, n)
				}
			} else if len(rooms) != 0 {
				t.Errorf("node %d runs rooms %+v; only node %d should", i+1, rooms, owner)
			}
		}
		tones := make([]int, n)
		for i := range tones {
			tones[i] = i
		}
		bad := wrongPairs(t, calls, tones)
		t.Logf("room 426 on node %d: %d members on %d nodes, %d of %d pairs wrong", owner, n, n, bad, n*n)
		for i, nd := range m.nodes {
			if st := nd.svc.Stats(); i+1 != owner && st.Calls != 1 {
				t.Errorf("node %d anchors %d calls in its relay, want its member's 1", i+1, st.Calls)
			}
		}

		// Leaving is announced: the others hear the leave tone.
		const leaveWant = 1e-6 // 100 ms of −26 dBFS in a 1 s window: ~1.2e-5
		if l := calls[1].Level(700); l > leaveWant/10 {
			t.Errorf("a leave tone before anyone left: %.3g", l)
		}
		if err := calls[0].Hangup(m.ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)
		if l := calls[1].Level(700); l < leaveWant {
			t.Errorf("member 1 does not hear member 0 leave: level %.3g", l)
		}
		for _, c := range calls[1:] {
			if err := c.Hangup(m.ctx); err != nil {
				t.Errorf("hangup: %v", err)
			}
		}
		time.Sleep(100 * time.Millisecond)
		synctest.Wait()
		if rooms := m.nodes[owner-1].svc.Rooms(); len(rooms) != 0 {
			t.Errorf("after everyone left: %+v, want an idle room without a mixer", rooms)
		}
	})
}
