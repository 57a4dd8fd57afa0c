package phones_test

import (
	"context"
	"net/netip"
	"sync"
	"testing"

	"github.com/sipmesh/sipmesh/memnet"
	"github.com/sipmesh/sipmesh/phones"
)

// BenchmarkCallSetup measures a whole call between two phones on the
// in-memory network, in real time: INVITE/180/200/ACK, media start,
// BYE/200, media stop. It is the phone side's share of the proxy's "calls
// set up per second".
func BenchmarkCallSetup(b *testing.B) {
	nw := memnet.New(memnet.Config{})
	lan := nw.NewSegment("lan", memnet.LinkConfig{})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	phone := func(user, ip string) *phones.Phone {
		h := nw.AddHost(user)
		lan.Attach(h.AddInterface("eth0", 1500, netip.PrefixFrom(netip.MustParseAddr(ip), 24)))
		p, err := phones.New(phones.Config{Settings: phones.Settings{User: user, LocalAddr: netip.MustParseAddr(ip),
			ToneHz: toneA}, Network: h})
		if err != nil {
			b.Fatal(err)
		}
		wg.Go(func() { p.Run(ctx) })
		return p
	}
	x, y := phone("201", "192.168.1.10"), phone("202", "192.168.1.11")
	b.ResetTimer()
	for b.Loop() {
		c, err := x.Call(ctx, y.Contact(), phones.CallOptions{})
		if err != nil {
			b.Fatal(err)
		}
		in := <-y.Incoming()
		if err := c.Hangup(ctx); err != nil {
			b.Fatal(err)
		}
		<-in.Done()
	}
}
