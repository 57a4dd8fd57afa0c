package memnet

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sipmesh/sipmesh/netx"
)

var ctx = context.Background()

// testNet is two hosts, a (eth0) and b (wlan1), on a point-to-point link,
// with IPv6 global, IPv4 and automatic link-local addresses.
type testNet struct {
	n      *Network
	a, b   *Host
	ia, ib *Interface
	l      *Link
}

func newPair(t *testing.T, clock Clock, cfg LinkConfig) *testNet {
	t.Helper()
	n := New(Config{Seed: 1, Clock: clock})
	a, b := n.AddHost("a"), n.AddHost("b")
	ia := a.AddInterface("eth0", 1500, pfx("2001:db8::1/64"), pfx("10.0.0.1/24"))
	ib := b.AddInterface("wlan1", 1500, pfx("2001:db8::2/64"), pfx("10.0.0.2/24"))
	return &testNet{n, a, b, ia, ib, n.Connect(ia, ib, cfg)}
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func udpAddr(s string) *net.UDPAddr { return net.UDPAddrFromAddrPort(netip.MustParseAddrPort(s)) }

func listen(t *testing.T, h *Host, network, addr string) net.PacketConn {
	t.Helper()
	c, err := h.ListenPacket(ctx, network, addr)
	if err != nil {
		t.Fatalf("ListenPacket(%s, %s) on %s: %v", network, addr, h.Name(), err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func mustWrite(t *testing.T, c net.PacketConn, msg string, to net.Addr) {
	t.Helper()
	if _, err := c.WriteTo([]byte(msg), to); err != nil {
		t.Fatalf("WriteTo %v: %v", to, err)
	}
}

// readMsg reads one datagram, failing the test after a (fake or virtual)
// second.
func readMsg(t *testing.T, c net.PacketConn) (string, net.Addr) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 2048)
	n, from, err := c.ReadFrom(buf)
	if err != nil {
		t.Fatalf("ReadFrom on %v: %v", c.LocalAddr(), err)
	}
	return string(buf[:n]), from
}

// expectNothing checks that nothing arrives within a (fake) second.
func expectNothing(t *testing.T, c net.PacketConn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 2048)
	if n, from, err := c.ReadFrom(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("on %v got %q from %v, err %v; want a timeout", c.LocalAddr(), buf[:n], from, err)
	}
}

func TestUnicastDelay(t *testing.T) {
	tests := []struct {
		name     string
		network  string
		bind, to string
		delay    time.Duration
	}{
		{"ipv6 global", "udp6", "[2001:db8::2]:5060", "[2001:db8::2]:5060", 10 * time.Millisecond},
		{"ipv4 to wildcard", "udp4", "0.0.0.0:5060", "10.0.0.2:5060", 25 * time.Millisecond},
		{"dual-stack wildcard gets ipv4", "udp", ":5060", "10.0.0.2:5060", time.Millisecond},
		{"zero delay", "udp", ":5060", "[2001:db8::2]:5060", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				tn := newPair(t, nil, LinkConfig{Delay: tt.delay})
				rx := listen(t, tn.b, tt.network, tt.bind)
				tx := listen(t, tn.a, "udp", ":0")
				start := time.Now()
				mustWrite(t, tx, "INVITE", udpAddr(tt.to))
				msg, from := readMsg(t, rx)
				if got := time.Since(start); got != tt.delay {
					t.Errorf("arrived after %v, want %v", got, tt.delay)
				}
				if msg != "INVITE" {
					t.Errorf("got %q", msg)
				}
				// The reply goes back to the address the datagram came from.
				mustWrite(t, rx, "200 OK", from)
				if msg, _ := readMsg(t, tx); msg != "200 OK" {
					t.Errorf("reply %q", msg)
				}
				if st := tn.l.Stats(); st.Sent != 2 || st.Delivered != 2 || st.Dropped != 0 {
					t.Errorf("stats %+v", st)
				}
			})
		})
	}
}

func TestJitterKeepsOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const delay, jitter = 20 * time.Millisecond, 15 * time.Millisecond
		tn := newPair(t, nil, LinkConfig{Delay: delay, Jitter: jitter})
		rx := listen(t, tn.b, "udp", ":7")
		tx := listen(t, tn.a, "udp", ":0")
		type arrival struct {
			msg string
			at  time.Time
		}
		arrivals := make(chan arrival, 50)
		go func() {
			buf := make([]byte, 10)
			for {
				n, _, err := rx.ReadFrom(buf)
				if err != nil {
					close(arrivals)
					return
				}
				arrivals <- arrival{string(buf[:n]), time.Now()}
			}
		}()
		sent := make(map[string]time.Time)
		for i := range 50 {
			msg := string(rune('A' + i))
			sent[msg] = time.Now()
			mustWrite(t, tx, msg, udpAddr("10.0.0.2:7"))
			time.Sleep(time.Millisecond)
		}
		var got []string
		var delays []time.Duration
		for range 50 {
			a := <-arrivals
			got = append(got, a.msg)
			delays = append(delays, a.at.Sub(sent[a.msg]))
		}
		rx.Close()
		if !slices.IsSorted(got) {
			t.Errorf("reordered: %v", got)
		}
		lo, hi := slices.Min(delays), slices.Max(delays)
		if lo < delay || hi >= delay+jitter || lo == hi {
			t.Errorf("delays in [%v, %v], want within [%v, %v) and not constant", lo, hi, delay, delay+jitter)
		}
	})
}

// lossPattern sends 1000 numbered datagrams over a lossy link in virtual
// time and returns the numbers that arrived.
func lossPattern(t *testing.T, seed int64) ([]int, LinkStats) {
	vc := NewVirtualClock(time.Unix(0, 0))
	n := New(Config{Seed: seed, Clock: vc})
	ia := n.AddHost("a").AddInterface("eth0", 0)
	hb := n.AddHost("b")
	ib := hb.AddInterface("eth0", 0)
	l := n.Connect(ia, ib, LinkConfig{Delay: time.Millisecond, Loss: 0.3})
	var got []int
	hb.HandlePacket(ib, 9, func(pkt []byte, _ netip.AddrPort, _ *Interface) {
		got = append(got, int(binary.BigEndian.Uint16(pkt)))
	})
	for i := range 1000 {
		if err := ia.Send(9, netip.AddrPortFrom(ib.LinkLocal(), 9), binary.BigEndian.AppendUint16(nil, uint16(i))); err != nil {
			t.Fatal(err)
		}
	}
	vc.RunFor(time.Second)
	return got, l.Stats()
}

func TestLossIsDeterministic(t *testing.T) {
	a1, st := lossPattern(t, 42)
	a2, _ := lossPattern(t, 42)
	b, _ := lossPattern(t, 43)
	if !slices.Equal(a1, a2) {
		t.Error("same seed, different drops")
	}
	if slices.Equal(a1, b) {
		t.Error("different seeds, same drops")
	}
	if len(a1) < 640 || len(a1) > 760 {
		t.Errorf("%d of 1000 arrived with 30%% loss", len(a1))
	}
	if st.Sent != 1000 || st.Loss != uint64(1000-len(a1)) || st.Delivered != uint64(len(a1)) {
		t.Errorf("stats %+v for %d arrivals", st, len(a1))
	}
}

func TestPartitionAndHeal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := newPair(t, nil, LinkConfig{Delay: 5 * time.Millisecond})
		rx := listen(t, tn.b, "udp", ":9")
		tx := listen(t, tn.a, "udp", ":0")
		to := udpAddr("[2001:db8::2]:9")

		tn.l.SetDown(true)
		mustWrite(t, tx, "lost", to) // a kernel cannot tell: no error
		expectNothing(t, rx)
		if ifs, _ := tn.b.Interfaces(); ifs[0].Up {
			t.Error("interface up on a down link")
		}
		if _, err := tn.a.Dial(ctx, "tcp", "[2001:db8::2]:80"); !errors.Is(err, syscall.EHOSTUNREACH) {
			t.Errorf("Dial over a down link: %v", err)
		}

		// In flight when the link goes down: lost too.
		tn.l.SetDown(false)
		mustWrite(t, tx, "in flight", to)
		time.Sleep(time.Millisecond)
		tn.l.SetDown(true)
		expectNothing(t, rx)

		tn.l.SetDown(false)
		mustWrite(t, tx, "healed", to)
		if msg, _ := readMsg(t, rx); msg != "healed" {
			t.Errorf("after heal got %q", msg)
		}
		if st := tn.l.Stats(); st.Down != 2 || st.Delivered != 1 {
			t.Errorf("stats %+v", st)
		}
	})
}

// lan is four hosts on an IPv4 segment, like phones on a node's LAN.
func lan(t *testing.T) (*Link, []*Host) {
	n := New(Config{})
	seg := n.NewSegment("lan", LinkConfig{Delay: time.Millisecond})
	var hosts []*Host
	for i, name := range []string{"node", "phone1", "phone2", "phone3"} {
		h := n.AddHost(name)
		seg.Attach(h.AddInterface("eth0", 1500, netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 168, 1, byte(i + 1)}), 24)))
		hosts = append(hosts, h)
	}
	return seg, hosts
}

func TestIPv4Broadcast(t *testing.T) {
	for _, to := range []string{"255.255.255.255:67", "192.168.1.255:67"} {
		t.Run(to, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				seg, hosts := lan(t)
				var socks []net.PacketConn
				for _, h := range hosts {
					socks = append(socks, listen(t, h, "udp4", "0.0.0.0:67"))
				}
				// Bound to a unicast address: no broadcasts (Linux).
				unicastOnly := listen(t, hosts[1], "udp4", "192.168.1.2:68")
				mustWrite(t, socks[0], "DHCPOFFER", udpAddr(to))
				for _, c := range socks[1:] {
					if msg, from := readMsg(t, c); msg != "DHCPOFFER" || from.String() != "192.168.1.1:67" {
						t.Errorf("got %q from %v", msg, from)
					}
				}
				expectNothing(t, socks[0]) // not the sender
				expectNothing(t, unicastOnly)
				if st := seg.Stats(); st.Sent != 1 || st.Delivered != 3 {
					t.Errorf("stats %+v", st)
				}
			})
		})
	}
}

func TestDHCPClientWithoutAddress(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		seg, hosts := lan(t)
		h := hosts[0].Network().AddHost("newphone")
		ifc := h.AddInterface("eth0", 0)
		seg.Attach(ifc)
		server := listen(t, hosts[0], "udp4", "0.0.0.0:67")
		client := listen(t, h, "udp4", "0.0.0.0:68")
		mustWrite(t, client, "DISCOVER", udpAddr("255.255.255.255:67"))
		if msg, from := readMsg(t, server); msg != "DISCOVER" || from.String() != "0.0.0.0:68" {
			t.Errorf("got %q from %v", msg, from)
		}
		mustWrite(t, server, "OFFER", udpAddr("255.255.255.255:68"))
		if msg, _ := readMsg(t, client); msg != "OFFER" {
			t.Errorf("got %q", msg)
		}
		h.AddAddress(ifc, pfx("192.168.1.50/24"))
		mustWrite(t, client, "REQUEST", udpAddr("192.168.1.1:67"))
		if _, from := readMsg(t, server); from.String() != "192.168.1.50:68" {
			t.Errorf("after the lease, from %v", from)
		}
	})
}

func TestIPv6Multicast(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := New(Config{})
		seg := n.NewSegment("mesh", LinkConfig{})
		var ifcs []*Interface
		for _, name := range []string{"a", "b", "c"} {
			ifc := n.AddHost(name).AddInterface("wlan0", 0)
			seg.Attach(ifc)
			ifcs = append(ifcs, ifc)
		}
		group := netip.MustParseAddrPort("[ff02::1:2]:7000")
		join := func(i int) net.PacketConn {
			c, err := ifcs[i].Host().ListenMulticast(ctx, "wlan0", group)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			return c
		}
		sender, b1, b2, c := join(0), join(1), join(1), join(2)
		other := listen(t, ifcs[2].Host(), "udp6", "[::]:7001")
		mustWrite(t, sender, "hello", udpAddr("[ff02::1:2%wlan0]:7000"))
		mustWrite(t, sender, "other port", udpAddr("[ff02::1:2%wlan0]:7001"))
		want := netip.AddrPortFrom(ifcs[0].LinkLocal(), 7000).String()
		for _, r := range []net.PacketConn{b1, b2, c} {
			if msg, from := readMsg(t, r); msg != "hello" || from.String() != want {
				t.Errorf("got %q from %v, want from %v", msg, from, want)
			}
		}
		expectNothing(t, sender)
		expectNothing(t, other) // not joined
		// Without a zone the multicast socket's interface is used.
		mustWrite(t, b1, "no zone", udpAddr("[ff02::1:2]:7000"))
		if msg, _ := readMsg(t, c); msg != "no zone" {
			t.Errorf("got %q", msg)
		}
	})
}

func TestLinkLocalZone(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := newPair(t, nil, LinkConfig{})
		llA, llB := tn.ia.LinkLocal(), tn.ib.LinkLocal()
		if llA.Zone() != "eth0" || !llA.IsLinkLocalUnicast() || llA == llB.WithZone("eth0") {
			t.Fatalf("link-locals %v %v", llA, llB)
		}
		if again := New(Config{}).AddHost("a").AddInterface("eth0", 0).LinkLocal(); again != llA {
			t.Errorf("link-local not derived from names: %v vs %v", again, llA)
		}
		rx := listen(t, tn.b, "udp6", netip.AddrPortFrom(llB, 5060).String())
		tx := listen(t, tn.a, "udp6", "[::]:5060")
		mustWrite(t, tx, "x", net.UDPAddrFromAddrPort(netip.AddrPortFrom(llB.WithZone("eth0"), 5060)))
		_, from := readMsg(t, rx)
		// The zone is the receiving interface, wlan1, not the sender's eth0.
		if want := "[" + llA.WithZone("wlan1").String() + "]:5060"; from.String() != want {
			t.Errorf("from %v, want %v", from, want)
		}
		if got := rx.LocalAddr().String(); got != "["+llB.String()+"]:5060" {
			t.Errorf("LocalAddr %v", got)
		}
		if _, err := tx.WriteTo([]byte("x"), udpAddr("[fe80::99%nosuch]:1")); !errors.Is(err, syscall.ENODEV) {
			t.Errorf("unknown zone: %v", err)
		}
	})
}

func TestLinkScopedNeedsZone(t *testing.T) {
	n := New(Config{})
	h := n.AddHost("router")
	h.AddInterface("wlan0", 0)
	h.AddInterface("wlan1", 0)
	c := listen(t, h, "udp6", "[::]:0")
	if _, err := c.WriteTo([]byte("x"), udpAddr("[ff02::1]:1")); !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("ff02::1 without zone on two interfaces: %v", err)
	}
	if _, err := c.WriteTo([]byte("x"), udpAddr("[2001:db8:99::1]:1")); !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("off-link destination: %v", err)
	}
}

func TestBind(t *testing.T) {
	tests := []struct {
		name         string
		first, again [2]string // network, address
		want         error     // of the second bind
	}{
		{"same address", [2]string{"udp", "10.0.0.1:5060"}, [2]string{"udp4", "10.0.0.1:5060"}, syscall.EADDRINUSE},
		{"wildcard then address", [2]string{"udp", ":5060"}, [2]string{"udp", "10.0.0.1:5060"}, syscall.EADDRINUSE},
		{"address then wildcard", [2]string{"udp", "[2001:db8::1]:53"}, [2]string{"udp6", "[::]:53"}, syscall.EADDRINUSE},
		{"0.0.0.0 is dual-stack for udp", [2]string{"udp", "0.0.0.0:53"}, [2]string{"udp6", "[::]:53"}, syscall.EADDRINUSE},
		{"udp4 and udp6 wildcards coexist", [2]string{"udp4", ":53"}, [2]string{"udp6", ":53"}, nil},
		{"other port", [2]string{"udp", ":5060"}, [2]string{"udp", ":5061"}, nil},
		{"two addresses", [2]string{"udp", "10.0.0.1:5060"}, [2]string{"udp", "[2001:db8::1]:5060"}, nil},
		{"tcp is another table", [2]string{"udp", ":5060"}, [2]string{"tcp", ":5060"}, nil},
		{"tcp twice", [2]string{"tcp", ":5060"}, [2]string{"tcp4", "10.0.0.1:5060"}, syscall.EADDRINUSE},
		{"not our address", [2]string{"udp", ":1"}, [2]string{"udp", "10.0.0.2:5060"}, syscall.EADDRNOTAVAIL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tn := newPair(t, nil, LinkConfig{})
			open := func(na [2]string) (io.Closer, error) {
				if na[0][:3] == "tcp" {
					return tn.a.Listen(ctx, na[0], na[1])
				}
				return tn.a.ListenPacket(ctx, na[0], na[1])
			}
			c1, err := open(tt.first)
			if err != nil {
				t.Fatal(err)
			}
			c2, err := open(tt.again)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("second bind: %v, want %v", err, tt.want)
			}
			if c2 != nil {
				c2.Close()
			}
			c1.Close()
			if c, err := open(tt.again); tt.want != syscall.EADDRNOTAVAIL && err != nil {
				t.Errorf("after Close: %v", err)
			} else if c != nil {
				c.Close()
			}
		})
	}
}

func TestEphemeralPorts(t *testing.T) {
	tn := newPair(t, nil, LinkConfig{})
	c1, c2 := listen(t, tn.a, "udp", ":0"), listen(t, tn.a, "udp", ":0")
	p1, p2 := c1.LocalAddr().(*net.UDPAddr).Port, c2.LocalAddr().(*net.UDPAddr).Port
	if p1 < 32768 || p2 <= p1 {
		t.Errorf("ephemeral ports %d, %d", p1, p2)
	}
	if got := c1.LocalAddr().String(); got != "[::]:32768" {
		t.Errorf("LocalAddr %s", got)
	}
}

func TestDeadlines(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := newPair(t, nil, LinkConfig{})
		c := listen(t, tn.a, "udp", ":9")
		buf := make([]byte, 10)
		isTimeout := func(err error) bool {
			var ne net.Error
			return errors.Is(err, os.ErrDeadlineExceeded) && errors.As(err, &ne) && ne.Timeout()
		}

		start := time.Now()
		c.SetReadDeadline(start.Add(50 * time.Millisecond))
		if _, _, err := c.ReadFrom(buf); !isTimeout(err) || time.Since(start) != 50*time.Millisecond {
			t.Errorf("read: %v after %v", err, time.Since(start))
		}
		c.SetReadDeadline(start) // in the past
		if _, _, err := c.ReadFrom(buf); !isTimeout(err) {
			t.Errorf("past deadline: %v", err)
		}

		// Extending the deadline while a reader waits moves its timeout.
		c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		done := make(chan time.Duration)
		go func() {
			s := time.Now()
			c.ReadFrom(buf)
			done <- time.Since(s)
		}()
		synctest.Wait()
		c.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
		if d := <-done; d != 30*time.Millisecond {
			t.Errorf("extended deadline hit after %v", d)
		}

		c.SetReadDeadline(time.Time{})
		c.SetWriteDeadline(time.Now())
		if _, err := c.WriteTo([]byte("x"), udpAddr("10.0.0.2:9")); !isTimeout(err) {
			t.Errorf("write: %v", err)
		}
		c.SetDeadline(time.Time{})
		if _, err := c.WriteTo([]byte("x"), udpAddr("10.0.0.2:9")); err != nil {
			t.Errorf("write after clearing: %v", err)
		}
	})
}

func TestDeadlineOnVirtualClock(t *testing.T) {
	vc := NewVirtualClock(time.Unix(1000, 0))
	tn := newPair(t, vc, LinkConfig{})
	c := listen(t, tn.a, "udp", ":9")
	c.SetReadDeadline(vc.Now().Add(time.Hour))
	errc := make(chan error)
	go func() {
		_, _, err := c.ReadFrom(make([]byte, 1))
		errc <- err
	}()
	vc.RunFor(time.Hour - 1)
	select {
	case err := <-errc:
		t.Fatalf("deadline fired early: %v", err)
	default:
	}
	vc.RunFor(1)
	if err := <-errc; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("got %v", err)
	}
}

// TestSocketFaceOnVirtualClock: code running inside clock events may use
// sockets as long as it does not block: WriteTo never does, and ReadFrom
// returns at once when a datagram is queued.
func TestSocketFaceOnVirtualClock(t *testing.T) {
	vc := NewVirtualClock(time.Unix(0, 0))
	tn := newPair(t, vc, LinkConfig{Delay: 40 * time.Millisecond})
	rx := listen(t, tn.b, "udp", ":5060")
	tx := listen(t, tn.a, "udp", ":5060")
	var got string
	var at time.Time
	vc.AfterFunc(10*time.Millisecond, func() { mustWrite(t, tx, "OPTIONS", udpAddr("10.0.0.2:5060")) })
	vc.AfterFunc(50*time.Millisecond-1, func() {
		if st := tn.l.Stats(); st.Delivered != 0 {
			t.Errorf("delivered early: %+v", st)
		}
	})
	// Scheduled before the delivery at 50ms, so it must run later to find it.
	vc.AfterFunc(51*time.Millisecond, func() {
		buf := make([]byte, 100)
		n, _, err := rx.ReadFrom(buf)
		got, at = string(buf[:n]), vc.Now()
		if err != nil {
			t.Error(err)
		}
	})
	vc.RunFor(time.Second)
	if got != "OPTIONS" || !at.Equal(time.Unix(0, 0).Add(51*time.Millisecond)) {
		t.Errorf("got %q at %v", got, at)
	}
}

func TestCloseUnblocks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := newPair(t, nil, LinkConfig{})
		c, _ := tn.a.ListenPacket(ctx, "udp", ":9")
		ln, _ := tn.a.Listen(ctx, "tcp", ":80")
		errs := make(chan error, 2)
		go func() { _, _, err := c.ReadFrom(make([]byte, 1)); errs <- err }()
		go func() { _, err := ln.Accept(); errs <- err }()
		synctest.Wait()
		c.Close()
		ln.Close()
		for range 2 {
			err := <-errs
			var oe *net.OpError
			if !errors.Is(err, net.ErrClosed) || !errors.As(err, &oe) {
				t.Errorf("blocked call returned %v", err)
			}
		}
		if _, _, err := c.ReadFrom(nil); !errors.Is(err, net.ErrClosed) {
			t.Errorf("read after Close: %v", err)
		}
		if _, err := c.WriteTo([]byte("x"), udpAddr("10.0.0.2:9")); !errors.Is(err, net.ErrClosed) {
			t.Errorf("write after Close: %v", err)
		}
		if err := c.Close(); !errors.Is(err, net.ErrClosed) {
			t.Errorf("second Close: %v", err)
		}
	})
}

func TestNoGoroutineLeak(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := bubbleGoroutines()
		tn := newPair(t, nil, LinkConfig{Delay: time.Millisecond})
		var wg sync.WaitGroup
		var closers []io.Closer
		for i := range 5 {
			c, err := tn.b.ListenPacket(ctx, "udp", netip.AddrPortFrom(netip.IPv6Unspecified(), uint16(100+i)).String())
			if err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(time.Hour))
			closers = append(closers, c)
			wg.Go(func() {
				for {
					if _, _, err := c.ReadFrom(make([]byte, 10)); err != nil {
						return
					}
				}
			})
		}
		ln, _ := tn.b.Listen(ctx, "tcp", ":80")
		closers = append(closers, ln)
		wg.Go(func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				wg.Go(func() { io.Copy(c, c); c.Close() })
			}
		})
		tx := listen(t, tn.a, "udp", ":0")
		for i := range 5 {
			mustWrite(t, tx, "x", udpAddr(netip.AddrPortFrom(netip.MustParseAddr("2001:db8::2"), uint16(100+i)).String()))
		}
		conn, err := tn.a.Dial(ctx, "tcp", "10.0.0.2:80")
		if err != nil {
			t.Fatal(err)
		}
		conn.Write([]byte("ping"))
		conn.Read(make([]byte, 4))
		time.Sleep(time.Second) // fake: let every delivery happen
		conn.Close()
		for _, c := range closers {
			c.Close()
		}
		tx.Close()
		wg.Wait()
		synctest.Wait()
		if n := bubbleGoroutines(); n != base {
			t.Errorf("%d goroutines, %d before", n, base)
		}
	})
}

func TestTCP(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := newPair(t, nil, LinkConfig{Delay: time.Millisecond})
		ln, err := tn.b.Listen(ctx, "tcp", ":5060")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { io.Copy(c, c); c.Close() }()
			}
		}()
		for _, addr := range []string{"10.0.0.2:5060", "[2001:db8::2]:5060",
			"[" + tn.ib.LinkLocal().WithZone("eth0").String() + "]:5060"} {
			c, err := tn.a.Dial(ctx, "tcp", addr)
			if err != nil {
				t.Fatalf("Dial %s: %v", addr, err)
			}
			if got := c.RemoteAddr().String(); got != addr {
				t.Errorf("RemoteAddr %s, want %s", got, addr)
			}
			msg := []byte("REGISTER sip:mesh SIP/2.0\r\n\r\n")
			go c.Write(msg)
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
				t.Errorf("echo %q, %v", got, err)
			}
			c.Close()
			if _, err := c.Read(got); !errors.Is(err, net.ErrClosed) {
				t.Errorf("read after Close: %v", err)
			}
		}
		if _, err := tn.a.Dial(ctx, "tcp", "10.0.0.2:5061"); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("no listener: %v", err)
		}
		if _, err := tn.a.Dial(ctx, "tcp", "10.0.0.3:5060"); !errors.Is(err, syscall.EHOSTUNREACH) {
			t.Errorf("no such neighbour: %v", err)
		}
		if _, err := tn.a.Dial(ctx, "tcp", "192.0.2.1:5060"); !errors.Is(err, syscall.ENETUNREACH) {
			t.Errorf("off-link: %v", err)
		}
	})
}

func TestDialUDPAndLocal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := newPair(t, nil, LinkConfig{Delay: time.Millisecond})
		srv := listen(t, tn.b, "udp", ":53")
		c, err := tn.a.Dial(ctx, "udp", "10.0.0.2:53")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("query"))
		_, from := readMsg(t, srv)
		if from.String() != c.LocalAddr().String() {
			t.Errorf("from %v, LocalAddr %v", from, c.LocalAddr())
		}
		stranger := listen(t, tn.b, "udp", ":54")
		mustWrite(t, stranger, "spoof", from) // a connected socket filters
		mustWrite(t, srv, "answer", from)
		buf := make([]byte, 10)
		c.SetReadDeadline(time.Now().Add(time.Second))
		if n, err := c.Read(buf); err != nil || string(buf[:n]) != "answer" {
			t.Errorf("Read %q, %v", buf[:n], err)
		}

		lc, err := tn.a.Dial(ctx, "udp4", "localhost:99")
		if err != nil {
			t.Fatal(err)
		}
		defer lc.Close()

		// Own addresses and loopback are delivered locally, at once.
		local := listen(t, tn.a, "udp", ":99")
		for _, to := range []string{"127.0.0.1:99", "[::1]:99", "10.0.0.1:99", "[2001:db8::1]:99"} {
			start := time.Now()
			mustWrite(t, local, to, udpAddr(to))
			if msg, _ := readMsg(t, local); msg != to || time.Since(start) != 0 {
				t.Errorf("to %s: got %q after %v", to, msg, time.Since(start))
			}
		}
		if _, err := lc.Write([]byte("dialed")); err != nil {
			t.Fatal(err)
		}
		if msg, from := readMsg(t, local); msg != "dialed" || from.String() != lc.LocalAddr().String() {
			t.Errorf("got %q from %v", msg, from)
		}
	})
}

func TestMTU(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := New(Config{})
		a, b := n.AddHost("a"), n.AddHost("b")
		ia, ib := a.AddInterface("eth0", 1280), b.AddInterface("eth0", 1280)
		l := n.Connect(ia, ib, LinkConfig{})
		rx := listen(t, b, "udp6", "[::]:9")
		tx := listen(t, a, "udp6", "[::]:9")
		to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(ib.LinkLocal().WithZone("eth0"), 9))
		if _, err := tx.WriteTo(make([]byte, 1280-48), to); err != nil {
			t.Errorf("largest datagram: %v", err)
		}
		if _, err := tx.WriteTo(make([]byte, 1280-47), to); !errors.Is(err, syscall.EMSGSIZE) {
			t.Errorf("one byte too many: %v", err)
		}
		if err := ia.Send(9, netip.AddrPortFrom(ib.LinkLocal(), 9), make([]byte, 1300)); !errors.Is(err, syscall.EMSGSIZE) {
			t.Errorf("Send: %v", err)
		}
		if msg, _ := readMsg(t, rx); len(msg) != 1232 {
			t.Errorf("got %d bytes", len(msg))
		}
		expectNothing(t, rx)
		if st := l.Stats(); st.TooBig != 2 || st.Dropped != 2 || st.Delivered != 1 {
			t.Errorf("stats %+v", st)
		}
	})
}

func TestSocketQueueBound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := New(Config{SocketQueue: 4})
		ia := n.AddHost("a").AddInterface("eth0", 0, pfx("10.0.0.1/24"))
		hb := n.AddHost("b")
		l := n.Connect(ia, hb.AddInterface("eth0", 0, pfx("10.0.0.2/24")), LinkConfig{})
		listen(t, hb, "udp", ":9") // never read
		tx := listen(t, ia.Host(), "udp", ":0")
		for range 10 {
			mustWrite(t, tx, "x", udpAddr("10.0.0.2:9"))
		}
		mustWrite(t, tx, "x", udpAddr("10.0.0.2:10")) // nobody listens
		synctest.Wait()
		if st := l.Stats(); st.Delivered != 4 || st.QueueFull != 6 || st.NoReceiver != 1 {
			t.Errorf("stats %+v", st)
		}
	})
}

func TestInterfaces(t *testing.T) {
	tn := newPair(t, nil, LinkConfig{})
	ifs, err := tn.b.Interfaces()
	if err != nil || len(ifs) != 1 {
		t.Fatalf("%v, %v", ifs, err)
	}
	got := ifs[0]
	if got.Index != 1 || got.Name != "wlan1" || got.MTU != 1500 || !got.Up || !got.Multicast || len(got.Addrs) != 3 {
		t.Errorf("%+v", got)
	}
	if got.LinkLocal() != tn.ib.LinkLocal() {
		t.Errorf("netx LinkLocal %v, memnet %v", got.LinkLocal(), tn.ib.LinkLocal())
	}
}

func TestVirtualClockOrder(t *testing.T) {
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	vc := NewVirtualClock(start)
	var got []string
	at := func(name string) func() {
		return func() { got = append(got, name+"@"+vc.Now().Sub(start).String()) }
	}
	vc.AfterFunc(10*time.Millisecond, at("a"))
	stopped := vc.AfterFunc(10*time.Millisecond, at("b"))
	vc.AfterFunc(10*time.Millisecond, at("c"))
	vc.AfterFunc(5*time.Millisecond, func() {
		at("d")()
		vc.AfterFunc(5*time.Millisecond, at("e")) // same time as a, c: after them
		vc.AfterFunc(0, at("f"))
	})
	if !stopped.Stop() || stopped.Stop() {
		t.Error("Stop should succeed once")
	}
	if vc.Pending() != 3 {
		t.Errorf("Pending %d", vc.Pending())
	}
	vc.RunUntil(start.Add(7 * time.Millisecond))
	if !vc.Now().Equal(start.Add(7 * time.Millisecond)) {
		t.Errorf("Now %v after RunUntil", vc.Now())
	}
	for vc.Step() {
	}
	want := []string{"d@5ms", "f@5ms", "a@10ms", "c@10ms", "e@10ms"}
	if !slices.Equal(got, want) {
		t.Errorf("order %v, want %v", got, want)
	}
}

// TestVirtualClockHeap checks the heap against sorting, with random stops.
func TestVirtualClockHeap(t *testing.T) {
	vc := NewVirtualClock(time.Unix(0, 0))
	type ev struct{ at, seq int }
	var want, got []ev
	timers := map[int]Timer{}
	x := uint32(1)
	rnd := func(n uint32) int { x ^= x << 13; x ^= x >> 17; x ^= x << 5; return int(x % n) }
	for i := range 2000 {
		e := ev{rnd(300), i}
		timers[i] = vc.AfterFunc(time.Duration(e.at), func() { got = append(got, e) })
		want = append(want, e)
	}
	for i := 0; i < 2000; i += 1 + rnd(7) {
		timers[i].Stop()
		want = slices.DeleteFunc(want, func(e ev) bool { return e.seq == i })
	}
	slices.SortStableFunc(want, func(a, b ev) int { return a.at - b.at })
	if vc.Pending() != len(want) {
		t.Errorf("Pending %d, want %d", vc.Pending(), len(want))
	}
	vc.RunFor(time.Second)
	if !slices.Equal(got, want) {
		t.Error("heap order differs from a stable sort")
	}
}

func TestHandlerFace(t *testing.T) {
	start := time.Unix(0, 0)
	vc := NewVirtualClock(start)
	n := New(Config{Clock: vc})
	seg := n.NewSegment("radio", LinkConfig{Delay: 3 * time.Millisecond})
	var ifcs []*Interface
	type rx struct {
		host, msg string
		from      netip.AddrPort
		at        time.Duration
	}
	var got []rx
	for _, name := range []string{"n1", "n2", "n3"} {
		h := n.AddHost(name)
		ifc := h.AddInterface("mesh0", 0)
		seg.Attach(ifc)
		ifcs = append(ifcs, ifc)
		h.HandlePacket(ifc, 4000, func(pkt []byte, from netip.AddrPort, ifc *Interface) {
			got = append(got, rx{ifc.Host().Name(), string(pkt), from, vc.Now().Sub(start)})
			pkt[0] = 'X' // ours to keep and modify
			if string(pkt) == "Xello" && ifc.Host().Name() == "n2" {
				ifc.Send(4000, from, []byte("reply")) // from inside a handler
			}
		})
	}
	buf := []byte("hello")
	if err := ifcs[0].Send(4000, netip.MustParseAddrPort("[ff02::1]:4000"), buf); err != nil {
		t.Fatal(err)
	}
	buf[0] = 'j' // the sender reuses its buffer
	vc.RunFor(3*time.Millisecond - 1)
	if len(got) != 0 {
		t.Fatalf("delivered before the delay: %v", got)
	}
	vc.RunFor(time.Second)
	from1 := netip.AddrPortFrom(ifcs[0].LinkLocal(), 4000)
	from2 := netip.AddrPortFrom(ifcs[1].LinkLocal(), 4000)
	want := []rx{
		{"n2", "hello", from1, 3 * time.Millisecond},
		{"n3", "hello", from1, 3 * time.Millisecond},
		{"n1", "reply", from2, 6 * time.Millisecond},
	}
	if !slices.Equal(got, want) {
		t.Errorf("got %v\nwant %v", got, want)
	}
	if err := ifcs[0].Send(4000, netip.MustParseAddrPort("192.0.2.1:1"), nil); !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("off-link Send: %v", err)
	}
}

func Example() {
	n := New(Config{Seed: 1})
	a, b := n.AddHost("a"), n.AddHost("b")
	n.Connect(a.AddInterface("eth0", 1500, netip.MustParsePrefix("10.0.0.1/24")),
		b.AddInterface("eth0", 1500, netip.MustParsePrefix("10.0.0.2/24")),
		LinkConfig{Delay: time.Millisecond})

	srv, _ := b.ListenPacket(context.Background(), "udp4", ":5060")
	defer srv.Close()
	cli, _ := a.ListenPacket(context.Background(), "udp4", ":0")
	defer cli.Close()
	cli.WriteTo([]byte("OPTIONS"), &net.UDPAddr{IP: net.IPv4(10, 0, 0, 2), Port: 5060})
	buf := make([]byte, 100)
	nr, from, _ := srv.ReadFrom(buf)
	fmt.Println(string(buf[:nr]), "from", from)
	// Output: OPTIONS from 10.0.0.1:32768
}

// bubbleGoroutines counts the goroutines of the calling synctest bubble.
// runtime.NumGoroutine counts the whole process, where the runtime starts
// helpers lazily and an earlier test's goroutines may still be ending: under
// load that made a leak check fail with no leak.
func bubbleGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	// Goroutine headers read "goroutine 7 [chan receive, synctest bubble 1]:";
	// the bubble's own number is on the calling goroutine's header, first.
	first, _, _ := bytes.Cut(buf, []byte("\n"))
	i := bytes.Index(first, []byte("synctest bubble "))
	if i < 0 {
		panic("bubbleGoroutines called outside a synctest bubble")
	}
	tag := first[i:bytes.LastIndexByte(first, ']')]
	count := 0
	for _, line := range bytes.Split(buf, []byte("\n")) {
		if bytes.HasPrefix(line, []byte("goroutine ")) && bytes.Contains(line, append(slices.Clip(tag), ']')) {
			count++
		}
	}
	return count
}

// TestWatchLinksCarrier: SetCarrier reports to the watchers of both ends;
// SetDown cuts silently.
func TestWatchLinksCarrier(t *testing.T) {
	n := New(Config{Seed: 1})
	a, b := n.AddHost("a"), n.AddHost("b")
	ia, ib := a.AddInterface("m0", 0), b.AddInterface("m1", 0)
	l := n.Connect(ia, ib, LinkConfig{})
	ctx, cancel := context.WithCancel(context.Background())
	evs := make(chan netx.LinkEvent, 8)
	var wg sync.WaitGroup
	for _, h := range []*Host{a, b} {
		wg.Go(func() { h.WatchLinks(ctx, func(ev netx.LinkEvent) { evs <- ev }) })
	}
	// WatchLinks registers before it blocks; wait until both have.
	for {
		n.mu.Lock()
		k := len(a.watches) + len(b.watches)
		n.mu.Unlock()
		if k == 2 {
			break
		}
		runtime.Gosched()
	}
	l.SetDown(true)
	l.SetDown(false)
	l.SetCarrier(false)
	got := map[string]bool{}
	for range 2 {
		ev := <-evs
		if ev.Up {
			t.Errorf("event %+v: want carrier lost", ev)
		}
		got[ev.Name] = true
	}
	if !got["m0"] || !got["m1"] || len(evs) != 0 {
		t.Errorf("events for %v (and %d more), want m0 and m1 once", got, len(evs))
	}
	if ifs, _ := a.Interfaces(); ifs[0].Up {
		t.Errorf("interface up after the carrier was lost")
	}
	cancel()
	wg.Wait()
}

// TestRealClockDueAtOnce: a call due at once runs (in its own goroutine)
// and its Timer cannot stop it; a later one can be stopped.
func TestRealClockDueAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ran := make(chan struct{})
		tm := RealClock{}.AfterFunc(0, func() { close(ran) })
		<-ran
		if tm.Stop() {
			t.Error("Stop of a call already started reported true")
		}
		later := RealClock{}.AfterFunc(time.Second, func() { t.Error("a stopped call ran") })
		if !later.Stop() {
			t.Error("Stop of a pending call reported false")
		}
		time.Sleep(2 * time.Second)
	})
}
