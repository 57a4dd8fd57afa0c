package ssr

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// relayRig is a line of three nodes, with or without link security, in a
// steady state, and a data frame from the first to the last as the first
// Node sends it. The world's links are then cut: what nodes transmit goes
// to the tap only, so the world's queue allocates nothing.
type relayRig struct {
	w       *tnet
	a, mid  *tnode
	frame   []byte // A's data frame to C, unsealed
	wire    []byte // the last frame the tap saw
	from    int
	relayed int // frames the middle node sent on
}

func newRelayRig(tb testing.TB, mode string, payload int) *relayRig {
	var w *tnet
	switch mode {
	case "plain":
		ids := make([]NodeID, 3)
		for i := range ids {
			ids[i] = newAuthNet(1, off, nil).nodes[0].ID() + NodeID(i)
		}
		w = newTNet(ids, Params{}).line()
	case "auth", "encrypt":
		w = newAuthNet(3, func(int) bool { return mode == "encrypt" }, nil).line()
	}
	w.run(30 * time.Second)
	rig := &relayRig{w: w, a: w.nodes[0], mid: w.nodes[1]}
	if rt := rig.a.Route(w.nodes[2].ID()); len(rt) != 2 {
		tb.Fatalf("%s: route A→C %v, want via the middle node", mode, rt)
	}
	if rig.a.auth != nil {
		// The end-to-end session A–C first: the frame captured below is
		// then a sealed datagram, as every one after the first round trip.
		if err := rig.a.Send(w.now, w.nodes[2].ID(), Exact, 1000, 2000, []byte("hello")); err != nil {
			tb.Fatal(err)
		}
		w.run(time.Second)
		if st := rig.a.auth.Stats(); st.E2ESessions != 1 {
			tb.Fatalf("%s: no end-to-end session A–C: %+v", mode, st)
		}
	}
	w.connect(0, 1, false)
	w.connect(1, 2, false)
	var inner []byte
	rig.a.env = envFunc(func(_ LinkID, _ netip.AddrPort, f []byte) { inner = append(inner[:0], f...) })
	if err := rig.a.Send(w.now, w.nodes[2].ID(), Exact, 1000, 2000, make([]byte, payload)); err != nil {
		tb.Fatal(err)
	}
	rig.a.env = rig.a.auth
	if rig.a.auth == nil {
		rig.a.env = rig.a
	}
	if r, err := decodeRouted(inner); err != nil || r.proto != protoData {
		tb.Fatalf("%s: A sent %+v (%v), want a data frame", mode, r, err)
	}
	rig.frame = inner
	w.tap = func(from int, _ netip.AddrPort, b []byte) {
		rig.wire = append(rig.wire[:0], b...)
		if from == 1 {
			rig.relayed++
		}
	}
	return rig
}

type envFunc func(LinkID, netip.AddrPort, []byte)

func (f envFunc) SendFrame(l LinkID, to netip.AddrPort, b []byte) { f(l, to, b) }
func (f envFunc) Deliver(Event)                                   {}

// relayOne has A send the frame (sealed afresh: a replay would be
// refused) and the middle node receive and relay it.
func (rig *relayRig) relayOne() {
	if rig.a.auth == nil {
		rig.mid.recv(rig.w.now, rig.a.addr, rig.frame)
		return
	}
	rig.a.auth.SendFrame(0, rig.mid.addr, rig.frame)
	rig.mid.recv(rig.w.now, rig.a.addr, rig.wire)
}

// BenchmarkRelay is one relay hop of a G.711 RTP packet (172 bytes of
// payload) and of a 1200-byte one, without link security, authenticated,
// and encrypted. With link security each op also includes the sender's
// sealing (BenchmarkLinkSeal alone), as a relay hop costs one open and
// one seal.
func BenchmarkRelay(b *testing.B) {
	for _, size := range []int{172, 1200} {
		for _, mode := range []string{"plain", "auth", "encrypt"} {
			b.Run(fmt.Sprintf("%s-%d", mode, size), func(b *testing.B) {
				rig := newRelayRig(b, mode, size)
				b.ReportAllocs()
				b.SetBytes(int64(size))
				b.ResetTimer()
				for b.Loop() {
					rig.relayOne()
				}
				b.StopTimer()
				if rig.relayed != b.N {
					b.Fatalf("%d frames relayed of %d", rig.relayed, b.N)
				}
			})
		}
	}
}

// BenchmarkLinkSeal is the sender's share: sealing one frame.
func BenchmarkLinkSeal(b *testing.B) {
	for _, mode := range []string{"auth", "encrypt"} {
		b.Run(mode, func(b *testing.B) {
			rig := newRelayRig(b, mode, 172)
			b.ReportAllocs()
			b.SetBytes(int64(len(rig.frame)))
			for b.Loop() {
				rig.a.auth.SendFrame(0, rig.mid.addr, rig.frame)
			}
		})
	}
}

// TestRelayNoAlloc: a relay hop with link security allocates nothing.
func TestRelayNoAlloc(t *testing.T) {
	for _, mode := range []string{"auth", "encrypt"} {
		rig := newRelayRig(t, mode, 172)
		if n := testing.AllocsPerRun(200, rig.relayOne); n > 0 {
			t.Errorf("%s: %.1f allocations per relayed frame", mode, n)
		}
		if rig.relayed == 0 {
			t.Errorf("%s: nothing relayed", mode)
		}
	}
}
