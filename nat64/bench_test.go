package nat64

import (
	"encoding/binary"
	"fmt"
	"testing"
)

// BenchmarkUDP translates an established UDP flow on one goroutine (one
// core): ns/op is wall-clock ns per packet, pkt/s the packet rate per
// core, cpu-ns/pkt the CPU time per packet (the honest figure when other
// processes share the cores). Sizes are IP packet sizes on the IPv6 side
// (the IPv4 side is 20 bytes shorter).
func BenchmarkUDP(b *testing.B) {
	for _, size := range []int{84, 1280} {
		tr, _ := newTestTranslator(b, nil)
		payload := make([]byte, size-48)
		in6 := pkt6(host6, wkp(server4), 64, protoUDP, udpSeg(40000, 53, payload), nil)
		out := make([]byte, 1600)
		n, _, err := tr.In6(in6, out)
		if err != nil {
			b.Fatal(err)
		}
		port := binary.BigEndian.Uint16(out[20:n])
		in4 := pkt4(server4, pool4, 64, protoUDP, 1, 0, udpSeg(53, port, payload), true)
		run := func(name string, pkt []byte, in func([]byte, []byte) (int, bool, error)) {
			b.Run(fmt.Sprintf("%s/%dB", name, size), func(b *testing.B) {
				b.SetBytes(int64(len(pkt)))
				b.ReportAllocs()
				c0 := cpuTime()
				for b.Loop() {
					if _, _, err := in(pkt, out); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkt/s")
				if c := cpuTime() - c0; c > 0 {
					b.ReportMetric(float64(c.Nanoseconds())/float64(b.N), "cpu-ns/pkt")
				}
			})
		}
		run("6to4", in6, tr.In6)
		run("4to6", in4, tr.In4)
	}
}
