package phones_test

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/netx"
	"github.com/sipmesh/sipmesh/phones"
)

// freePort returns a UDP port of the loopback address that was free a
// moment ago.
func freePort(t *testing.T, ip string) uint16 {
	t.Helper()
	c, err := net.ListenPacket("udp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return uint16(c.LocalAddr().(*net.UDPAddr).Port)
}

// TestKernelLoopback: the same peer-to-peer call as TestPeerToPeer, on
// kernel sockets over loopback (IPv4 and IPv6), in real time.
func TestKernelLoopback(t *testing.T) {
	for _, ip := range []string{"127.0.0.1", "::1"} {
		t.Run(ip, func(t *testing.T) {
			leakcheck.Check(t)
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			defer wg.Wait()
			defer cancel()
			phone := func(user string, tone float64, pol phones.Policy) *phones.Phone {
				p, err := phones.New(phones.Config{Settings: phones.Settings{User: user,
					LocalAddr: netip.MustParseAddr(ip), SIPPort: freePort(t, ip), ToneHz: tone},
					Policy: pol, Network: netx.Kernel{}, Logger: logger()})
				if err != nil {
					t.Fatal(err)
				}
				wg.Go(func() { p.Run(ctx) })
				return p
			}
			a := phone("201", toneA, phones.Policy{})
			b := phone("202", toneB, phones.Policy{ExpectHz: toneA})
			c, err := a.Call(ctx, b.Contact(), phones.CallOptions{ExpectHz: toneB})
			if err != nil {
				t.Fatal(err)
			}
			in := <-b.Incoming()
			time.Sleep(1500 * time.Millisecond) // the detector needs a second of audio
			if !c.HeardRemote() || c.Heard(toneA) || !in.HeardRemote() || in.Heard(toneB) {
				t.Errorf("caller heard callee %v, itself %v; callee heard caller %v, itself %v",
					c.HeardRemote(), c.Heard(toneA), in.HeardRemote(), in.Heard(toneB))
			}
			if err := c.Hangup(ctx); err != nil {
				t.Fatal(err)
			}
			<-in.Done()
		})
	}
}
