package ssr_test

import (
	"net/netip"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/memnet"
	"github.com/sipmesh/sipmesh/ssr"
)

// TestMediaFollowsRepair: a paced datagram stream both ways between two
// mesh sockets (a call's RTP, 50 packets/s) across a physical ring of five
// routers with the default timers, and the link carrying it cut — once
// with a carrier loss the link layer reports, once silently (a radio link
// that stops delivering). The stream is never re-opened or re-addressed:
// it flows on the repaired path by itself, and neither direction is silent
// for more than 1 s (virtual time).
func TestMediaFollowsRepair(t *testing.T) {
	for _, silent := range []bool{false, true} {
		name := "carrier"
		if silent {
			name = "silent"
		}
		t.Run(name, func(t *testing.T) {
			leakcheck.Check(t)
			synctest.Test(t, func(t *testing.T) { mediaAcrossCut(t, silent) })
		})
	}
}

func mediaAcrossCut(t *testing.T, silent bool) {
	edges := [][2]int{{0, 1}, {1, 2}, {2, 3}, {3, 4}, {0, 4}}
	m := newMeshWith(t, 5, edges, 2*time.Millisecond, ssr.Params{})
	m.waitRing(60 * time.Second)
	a, b := m.routers[0], m.routers[2]
	ca, err := a.ListenPacket(5004)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := b.ListenPacket(5004)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu      sync.Mutex
		arrived [2][]time.Time // [0]: a→b, [1]: b→a
		wg      sync.WaitGroup
	)
	stop := make(chan struct{})
	for k, c := range []struct {
		from, to meshSocket
		dst      netip.AddrPort
	}{
		{ca.(meshSocket), cb.(meshSocket), netip.AddrPortFrom(b.Addr(), 5004)},
		{cb.(meshSocket), ca.(meshSocket), netip.AddrPortFrom(a.Addr(), 5004)},
	} {
		wg.Go(func() {
			payload := make([]byte, 172) // G.711 20 ms + RTP header
			for {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				c.from.WriteToUDPAddrPort(payload, c.dst)
			}
		})
		wg.Go(func() {
			buf := make([]byte, 2048)
			for {
				if _, _, err := c.to.ReadFromUDPAddrPort(buf); err != nil {
					return
				}
				mu.Lock()
				arrived[k] = append(arrived[k], time.Now())
				mu.Unlock()
			}
		})
	}
	time.Sleep(2 * time.Second)
	// The link the a→b stream takes: its first hop from a.
	first := m.firstHop(a, b)
	cut := [2]int{min(0, first), max(0, first)}
	l := m.links[cut]
	if l == nil {
		t.Fatalf("no link %v", cut)
	}
	cutAt := time.Now()
	if silent {
		l.Set(memnet.LinkConfig{Delay: 2 * time.Millisecond, Loss: 1})
	} else {
		l.SetCarrier(false)
	}
	time.Sleep(5 * time.Second)
	close(stop)
	ca.Close()
	cb.Close()
	wg.Wait()
	for k := range 2 {
		last, gap := cutAt.Add(-100*time.Millisecond), time.Duration(0)
		n := 0
		for _, at := range arrived[k] {
			if at.Before(last) {
				continue
			}
			gap = max(gap, at.Sub(last))
			last = at
			n++
		}
		t.Logf("cut %v (silent %v): direction %d: longest gap %v, %d packets after the cut", cut, silent, k, gap, n)
		if gap > time.Second || n < 200 {
			t.Errorf("cut %v: direction %d silent for %v (%d packets in 5 s)", cut, k, gap, n)
		}
	}
}

type meshSocket interface {
	WriteToUDPAddrPort([]byte, netip.AddrPort) (int, error)
	ReadFromUDPAddrPort([]byte) (int, netip.AddrPort, error)
	Close() error
}

// firstHop is the index of the router the route from a to its ring
// neighbour b leaves a by.
func (m *mesh) firstHop(a, b *ssr.Router) int {
	st := a.Status()
	for _, peer := range append(st.Successors, st.Predecessors...) {
		if peer.ID == b.ID().String() && len(peer.Route) > 0 {
			return slices.IndexFunc(m.routers, func(r *ssr.Router) bool { return r.ID().String() == peer.Route[0] })
		}
	}
	m.t.Fatalf("%v has no ring route to %v", a.ID(), b.ID())
	return -1
}
