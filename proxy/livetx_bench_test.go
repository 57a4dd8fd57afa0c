package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"
)

// BenchmarkLiveTransactionMemory measures the heap a live server
// transaction holds (issue 11, finding 2; issue 12): OPTIONS keep-alives
// to the node, each answered 200 and kept for Timer J (32 s), the
// longest-lived kind a LAN phone can open without credentials. sipgo
// kept the whole transaction (3,480 B); its transaction now ends at the
// 200 and the guard keeps a record for the retransmissions (sipnet's
// answered.go), so what is live is a transaction in progress or such a
// record. It reports bytes per live transaction (B/live-tx); the goal is
// ≤ 1 KB.
func BenchmarkLiveTransactionMemory(b *testing.B) {
	m := newMeshRig(b, 1, func(c *SIPServiceConfig) { c.MaxTransactions = 1 << 20 })
	lan := net.UDPAddrFromAddrPort(netip.AddrPortFrom(m.nodes[0].lanIP, 5060))
	n := max(b.N, 2000)
	srcs := make([]net.PacketConn, 16)
	for i := range srcs {
		srcs[i] = m.flooder(1, byte(i+1))
	}
	svc := m.nodes[0].svc
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	for i := range n {
		pc := srcs[i%len(srcs)]
		raw := fmt.Sprintf("OPTIONS sip:10.1.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bKlive%d;rport\r\nMax-Forwards: 70\r\n"+
			"From: <sip:ka@mesh>;tag=k%d\r\nTo: <sip:10.1.0.1>\r\nCall-ID: live-%d\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
			pc.LocalAddr(), i, i, i)
		pc.WriteTo([]byte(raw), lan)
		if i%64 == 63 {
			time.Sleep(time.Millisecond) // let the node keep up (no drops)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	kept := func() int64 { st := svc.Stats(); return st.Transactions + int64(st.Answered) }
	for kept() < int64(n) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	b.StopTimer()
	live := kept()
	runtime.GC()
	runtime.ReadMemStats(&after)
	if live < int64(n)/2 {
		b.Fatalf("%d of %d transactions live: %+v", live, n, svc.Stats())
	}
	b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/float64(live), "B/live-tx")
	b.ReportMetric(float64(live), "live-tx")
}
