package memnet

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// BenchmarkVirtualClock measures one event, schedule plus run, with a
// given number of events pending, each scheduling its successor at a random
// delay of up to a millisecond.
func BenchmarkVirtualClock(b *testing.B) {
	for _, pending := range []int{100, 10_000, 1_000_000} {
		b.Run(fmt.Sprintf("pending=%d", pending), func(b *testing.B) {
			vc := NewVirtualClock(time.Unix(0, 0))
			var x uint64 = 1
			var tick func()
			tick = func() {
				x ^= x << 13
				x ^= x >> 7
				x ^= x << 17
				vc.schedule(time.Duration(x%1e6), tick)
			}
			for range pending {
				tick()
			}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				vc.Step()
			}
		})
	}
}

// BenchmarkVirtualClockAfterFunc is the same through the public AfterFunc,
// which allocates a Timer per call.
func BenchmarkVirtualClockAfterFunc(b *testing.B) {
	vc := NewVirtualClock(time.Unix(0, 0))
	var x uint64 = 1
	var tick func()
	tick = func() {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		vc.AfterFunc(time.Duration(x%1e6), tick)
	}
	for range 10000 {
		tick()
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		vc.Step()
	}
}

// BenchmarkHandlerDelivery is one datagram through the simulator's face:
// Send on a point-to-point link with delay, then delivery to a handler.
func BenchmarkHandlerDelivery(b *testing.B) {
	vc := NewVirtualClock(time.Unix(0, 0))
	n := New(Config{Clock: vc})
	ia := n.AddHost("a").AddInterface("mesh0", 0)
	hb := n.AddHost("b")
	ib := hb.AddInterface("mesh0", 0)
	n.Connect(ia, ib, LinkConfig{Delay: time.Millisecond, Jitter: time.Millisecond, Loss: 0.01})
	got := 0
	hb.HandlePacket(ib, 9, func(pkt []byte, _ netip.AddrPort, _ *Interface) { got += len(pkt) })
	to := netip.AddrPortFrom(ib.LinkLocal(), 9)
	pkt := make([]byte, 100)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if err := ia.Send(9, to, pkt); err != nil {
			b.Fatal(err)
		}
		vc.Step()
	}
}

// BenchmarkSocketRoundTrip is WriteTo plus ReadFrom on the socket face in
// real time with a zero-delay link.
func BenchmarkSocketRoundTrip(b *testing.B) {
	n := New(Config{})
	ia := n.AddHost("a").AddInterface("eth0", 0, netip.MustParsePrefix("10.0.0.1/24"))
	hb := n.AddHost("b")
	n.Connect(ia, hb.AddInterface("eth0", 0, netip.MustParsePrefix("10.0.0.2/24")), LinkConfig{})
	rx, _ := hb.ListenPacket(ctx, "udp4", ":9")
	defer rx.Close()
	tx, _ := ia.Host().ListenPacket(ctx, "udp4", ":0")
	defer tx.Close()
	to := udpAddr("10.0.0.2:9")
	buf := make([]byte, 200)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		tx.WriteTo(buf[:100], to)
		rx.ReadFrom(buf)
	}
}
