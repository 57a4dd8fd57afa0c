package sipalg_test

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/netx"
	"github.com/sipmesh/sipmesh/sipalg"
)

// The benchmarks relay 172-byte PCMU-sized RTP packets on kernel loopback
// from an IPv4 socket (the phone) to an IPv6 socket (the mesh peer), through
// a sipalg.Relay session and, side by side in the same run, through a plain
// Go UDP forwarder that does only ReadFromUDPAddrPort + WriteToUDPAddrPort
// (no latching, no statistics): the floor any user-space relay pays. One op
// is one packet delivered. allocs/op counts every goroutine, relay included.

type forwarder struct {
	in   netip.AddrPort // where the phone sends
	out  netip.AddrPort // the source the peer sees
	stop func()
}

func udp(b *testing.B, network, addr string) *net.UDPConn {
	b.Helper()
	c, err := netx.Kernel{}.ListenPacket(context.Background(), network, addr)
	if err != nil {
		b.Fatal(err)
	}
	return c.(*net.UDPConn)
}

func relayForwarder(b *testing.B, phone, peer netip.AddrPort) forwarder {
	lo4, lo6 := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")
	r, err := sipalg.NewRelay(sipalg.Config{
		A: sipalg.SideConfig{Name: "lan", Addr: lo4, Listen: sipalg.NetworkListener(netx.Kernel{}, lo4), PortMin: 40000, PortMax: 40999},
		B: sipalg.SideConfig{Name: "mesh", Addr: lo6, Listen: sipalg.NetworkListener(netx.Kernel{}, lo6), PortMin: 41000, PortMax: 41999},
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { r.Run(ctx) })
	s, err := r.Allocate(ctx)
	if err != nil {
		b.Fatal(err)
	}
	s.SetPeer(sipalg.SideA, phone, netip.AddrPortFrom(phone.Addr(), phone.Port()+1))
	s.SetPeer(sipalg.SideB, peer, netip.AddrPortFrom(peer.Addr(), peer.Port()+1))
	in, _ := s.Local(sipalg.SideA)
	out, _ := s.Local(sipalg.SideB)
	return forwarder{in: in, out: out, stop: func() {
		if st := s.Stats(); st.A.Dropped != 0 {
			b.Logf("relay dropped %d", st.A.Dropped)
		}
		cancel()
		wg.Wait()
	}}
}

func plainForwarder(b *testing.B, _, peer netip.AddrPort) forwarder {
	in := udp(b, "udp4", "127.0.0.1:0")
	out := udp(b, "udp6", "[::1]:0")
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 2049)
		for {
			n, _, err := in.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			out.WriteToUDPAddrPort(buf[:n], peer)
		}
	})
	return forwarder{in: in.LocalAddr().(*net.UDPAddr).AddrPort(), out: out.LocalAddr().(*net.UDPAddr).AddrPort(),
		stop: func() { in.Close(); out.Close(); wg.Wait() }}
}

var forwarders = []struct {
	name string
	make func(*testing.B, netip.AddrPort, netip.AddrPort) forwarder
}{
	{"relay", relayForwarder},
	{"plain-udp-forward", plainForwarder},
}

func endpoints(b *testing.B) (phone, peer *net.UDPConn) {
	phone = udp(b, "udp4", "127.0.0.1:0")
	peer = udp(b, "udp6", "[::1]:0")
	b.Cleanup(func() { phone.Close(); peer.Close() })
	return phone, peer
}

func addrOf(c *net.UDPConn) netip.AddrPort { return c.LocalAddr().(*net.UDPAddr).AddrPort() }

// BenchmarkRelayThroughput keeps a window of packets in flight: packets
// per second and ns per packet of sustained relaying.
func BenchmarkRelayThroughput(b *testing.B) {
	for _, f := range forwarders {
		b.Run(f.name, func(b *testing.B) {
			phone, peer := endpoints(b)
			fw := f.make(b, addrOf(phone), addrOf(peer))
			defer fw.stop()
			const window = 32
			pkt := make([]byte, 172)
			pkt[0] = 0x80
			buf := make([]byte, 2048)
			seq := uint16(0)
			sendOne := func() {
				binary.BigEndian.PutUint16(pkt[2:], seq)
				binary.BigEndian.PutUint32(pkt[4:], uint32(seq)*160)
				seq++
				if _, err := phone.WriteToUDPAddrPort(pkt, fw.in); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			sent, got := 0, 0
			for ; sent < min(window, b.N); sent++ {
				sendOne()
			}
			peer.SetReadDeadline(time.Now().Add(time.Minute)) // a lost packet fails rather than hangs
			for got < b.N {
				_, _, err := peer.ReadFromUDPAddrPort(buf)
				if err != nil {
					b.Fatal(err)
				}
				got++
				if sent < b.N {
					sendOne()
					sent++
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
		})
	}
}

// BenchmarkRelayLatency sends one packet at a time and reports the
// phone-to-peer latency through each forwarder (p50/p99), which includes
// two loopback traversals and the scheduler wake-ups of both.
func BenchmarkRelayLatency(b *testing.B) {
	for _, f := range forwarders {
		b.Run(f.name, func(b *testing.B) {
			phone, peer := endpoints(b)
			fw := f.make(b, addrOf(phone), addrOf(peer))
			defer fw.stop()
			pkt := make([]byte, 172)
			pkt[0] = 0x80
			buf := make([]byte, 2048)
			lat := make([]time.Duration, 0, b.N)
			peer.SetReadDeadline(time.Now().Add(time.Minute)) // a lost packet fails rather than hangs
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				binary.BigEndian.PutUint16(pkt[2:], uint16(i))
				t0 := time.Now()
				if _, err := phone.WriteToUDPAddrPort(pkt, fw.in); err != nil {
					b.Fatal(err)
				}
				if _, _, err := peer.ReadFromUDPAddrPort(buf); err != nil {
					if errors.Is(err, os.ErrDeadlineExceeded) {
						b.Fatal("packet lost on loopback")
					}
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
			b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
		})
	}
}
