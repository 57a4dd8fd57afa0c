package gateway

import (
	"context"
	"testing"
	"time"
)

func BenchmarkExpOwn(b *testing.B) {
	_, own := startBenchRegistrar(b)
	lc := &loadClient{users: benchUsers, window: benchWindow, domain: "127.0.0.1", rto: 500 * time.Millisecond}
	lc.run(context.Background(), own, benchUsers)
	for b.Loop() {
		res, _ := lc.run(context.Background(), own, benchRegs)
		b.ReportMetric(float64(res.ok)/res.elapsed.Seconds(), "reg/s")
	}
}

func BenchmarkExpProcess(b *testing.B) {
	g := newRig(&testing.T{})
	_ = g
	r, _ := startBenchRegistrar(b)
	src := mustAddrPort("127.0.0.1:40000")
	i := 0
	for b.Loop() {
		i++
		raw := "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKx" + itoa(i) + ";rport\r\nMax-Forwards: 70\r\nFrom: <sip:u0001@127.0.0.1>;tag=t1\r\nTo: <sip:u0001@127.0.0.1>\r\nCall-ID: c" + itoa(i) + "@load\r\nCSeq: 1 REGISTER\r\nContact: <sip:u0001@127.0.0.1:40001>\r\nExpires: 300\r\nUser-Agent: sipmesh-load\r\nContent-Length: 0\r\n\r\n"
		out, _ := r.processDatagram(context.Background(), []byte(raw), src)
		code, _, chal := scanResponse(out)
		if code != 401 {
			b.Fatal(string(out))
		}
		_ = chal
	}
}
