package meship

import (
	"testing"
	"time"
)

// BenchmarkPlane carries 1280-byte packets from a fake TUN on node 0 to
// one on node 3 of four ssr Routers in a line on memnet (in-process, real
// time, links without delay), at most 128 in flight: the cost of a packet
// through the plane and three mesh hops (link security per hop, the
// end-to-end seal), on this machine's cores. pkts/s is the rate.
func BenchmarkPlane(b *testing.B) {
	m := newTestMeshDelay(b, 4, 0, nil)
	src, dst := m.tuns[0], m.tuns[3]
	a, d := m.routers[0].ID(), m.routers[3].ID()
	pkt := testPacket(LANAddr(a).Next(), LANAddr(d).Next(), 17, 1280-ipv6Len)
	const window = 128
	// Warm up: the end-to-end session exists before the clock starts.
	src.in <- pkt
	select {
	case <-dst.out:
	case <-time.After(5 * time.Second):
		b.Fatal("the first packet did not arrive")
	}
	b.SetBytes(int64(len(pkt)))
	b.ResetTimer()
	start := time.Now()
	inFlight, got, lost := 0, 0, 0
	for sent := 0; sent < b.N; {
		for inFlight < window && sent < b.N {
			src.in <- pkt
			sent++
			inFlight++
		}
		select {
		case <-dst.out:
			got++
		case <-time.After(time.Second):
			lost += inFlight // counted, and the window opens again
			inFlight = 0
			continue
		}
		inFlight--
	}
	for inFlight > 0 {
		select {
		case <-dst.out:
			got++
			inFlight--
		case <-time.After(time.Second):
			lost += inFlight
			inFlight = 0
		}
	}
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(got)/el.Seconds(), "pkts/s")
	b.ReportMetric(float64(lost)/float64(b.N), "lost/op")
	if lost > 0 {
		for i, p := range m.planes {
			b.Logf("node %d: %+v; router %+v", i, p.Stats(), m.routers[i].Status().Driver)
		}
	}
}
