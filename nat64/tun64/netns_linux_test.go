//go:build linux

package tun64

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/internal/netns"
	"github.com/sipmesh/sipmesh/nat64"
)

// openIn creates a TUN device inside namespace ns: on a locked thread
// switched there with setns(2) and back.
func openIn(t testing.TB, ns *netns.NS, name string, mtu int) Device {
	t.Helper()
	type res struct {
		d   Device
		err error
	}
	c := make(chan res, 1)
	go func() {
		runtime.LockOSThread() // not unlocked on failure: the thread is discarded
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			c <- res{err: err}
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open("/run/netns/"+ns.Name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			c <- res{err: err}
			return
		}
		defer unix.Close(target)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			c <- res{err: err}
			return
		}
		d, err := OpenTUN(name, mtu)
		if e := unix.Setns(orig, unix.CLONE_NEWNET); e != nil {
			c <- res{d, fmt.Errorf("leave namespace: %w", e)}
			return
		}
		runtime.UnlockOSThread()
		c <- res{d, err}
	}()
	r := <-c
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.d
}

// rig is one namespace wired as TAYGA is: the NAT64 prefix and the IPv4
// pool routed into a TUN device the translator runs on, an IPv4-only UDP
// echo server at 198.51.100.7:7 and an IPv6 host address 2001:db8::10.
type rig struct {
	ns   *netns.NS
	tr   *nat64.Translator
	dst6 netip.Addr // the echo server under 64:ff9b::/96
}

func newRig(t testing.TB) *rig {
	t.Helper()
	netns.RequireRoot(t)
	ns := netns.New(t, "nat64")
	dev := openIn(t, ns, "nat64", 1500)
	ns.Run(t, "ip", "link", "set", "nat64", "up")
	ns.Run(t, "ip", "-6", "route", "add", "64:ff9b::/96", "dev", "nat64")
	ns.Run(t, "ip", "route", "add", "192.0.2.1/32", "dev", "nat64")
	ns.Run(t, "ip", "addr", "add", "198.51.100.7/32", "dev", "lo")
	ns.Run(t, "ip", "addr", "add", "198.51.100.8/32", "dev", "lo")
	ns.Run(t, "ip", "-6", "addr", "add", "2001:db8::10/128", "dev", "lo", "nodad")
	ns.Run(t, "sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.nat64.rp_filter=0")

	tr, err := nat64.New(nat64.Config{Pool: []netip.Addr{netip.MustParseAddr("192.0.2.1")}, MTU6: 1500})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() { res <- Run(ctx, dev, tr, nil) }()
	echo, err := ns.Network().ListenPacket(ctx, "udp4", "198.51.100.7:7")
	if err != nil {
		t.Fatal(err)
	}
	stopEcho := serveEcho(echo, func(p []byte, from net.Addr) []byte {
		// The pool, the direct client, or TAYGA's dynamic pool.
		if ap, ok := from.(*net.UDPAddr); ok && ap.IP.String() != "192.0.2.1" && ap.IP.String() != "198.51.100.8" && !strings.HasPrefix(ap.IP.String(), "192.168.255.") {
			return []byte("wrong source " + from.String())
		}
		return p
	})
	t.Cleanup(func() {
		cancel()
		stopEcho()
		if err := <-res; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	dst, _ := nat64.Embed(nat64.WellKnownPrefix, netip.MustParseAddr("198.51.100.7"))
	return &rig{ns: ns, tr: tr, dst6: dst}
}

// client opens a UDP socket in the rig's namespace.
func (r *rig) client(t testing.TB, network, addr string) net.PacketConn {
	t.Helper()
	// An address just added can refuse a bind for a moment
	// (EADDRNOTAVAIL, seen twice in parallel make test runs): wait for it
	// to become usable, as a service started at boot would.
	var c net.PacketConn
	var err error
	for try := 0; try < 100; try++ {
		if c, err = r.ns.Network().ListenPacket(context.Background(), network, addr); !errors.Is(err, syscall.EADDRNOTAVAIL) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestNetnsTAYGAWiring: an IPv6 socket reaches the IPv4-only UDP echo
// server through 64:ff9b::/96 and the TUN loop, the server sees the pool
// address, and ping6 gets its echo reply from an IPv4 address.
func TestNetnsTAYGAWiring(t *testing.T) {
	leakcheck.Check(t)
	r := newRig(t)
	client := r.client(t, "udp6", "[2001:db8::10]:0")
	udpDst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(r.dst6, 7))
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2000)
	for _, msg := range []string{"hello over NAT64", strings.Repeat("x", 1400)} {
		if _, err := client.WriteTo([]byte(msg), udpDst); err != nil {
			t.Fatal(err)
		}
		n, from, err := client.ReadFrom(buf)
		if err != nil {
			t.Fatalf("no echo: %v (translator %+v)", err, r.tr.Stats())
		}
		if string(buf[:n]) != msg || from.String() != udpDst.String() {
			t.Fatalf("echo %q from %v", buf[:min(n, 40)], from)
		}
	}
	if out, err := r.ns.Try("ping", "-6", "-c", "1", "-W", "5", r.dst6.String()); err != nil {
		t.Fatalf("ping6 through NAT64: %v\n%s", err, out)
	}
	if s := r.tr.Stats(); s.Out4 < 3 || s.Out6 < 3 {
		t.Fatalf("stats %+v", s)
	}
}

// startTAYGA runs TAYGA (Debian's tayga, a userspace stateless NAT64 on a
// TUN device) in the rig's namespace beside the translator: prefix
// 2001:db8:64::/96, dynamic pool 192.168.255.0/24 on device "tayga".
func (r *rig) startTAYGA(t testing.TB) netip.Addr {
	t.Helper()
	if _, err := exec.LookPath("tayga"); err != nil {
		t.Fatal("tayga not installed (Debian package tayga): it is the comparison")
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "tayga.conf")
	if err := os.WriteFile(conf, []byte("tun-device tayga\nipv4-addr 192.168.255.1\nprefix 2001:db8:64::/96\ndynamic-pool 192.168.255.0/24\ndata-dir "+dir+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r.ns.Run(t, "tayga", "-c", conf, "--mktun")
	r.ns.Run(t, "ip", "link", "set", "tayga", "up")
	r.ns.Run(t, "ip", "-6", "route", "add", "2001:db8:64::/96", "dev", "tayga")
	r.ns.Run(t, "ip", "route", "add", "192.168.255.0/24", "dev", "tayga")
	r.ns.Run(t, "sysctl", "-q", "-w", "net.ipv4.conf.tayga.rp_filter=0")
	ctx, cancel := context.WithCancel(context.Background())
	cmd := r.ns.Command(ctx, "tayga", "-c", conf, "--nodetach")
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	return netip.MustParseAddr("2001:db8:64::198.51.100.7")
}

// BenchmarkNetnsUDPEcho measures a UDP round trip to the IPv4 echo server
// through this NAT64 (IPv6 socket, TUN loop, kernel), through TAYGA on
// the same kind of wiring, and over IPv4 with no translation (kernel
// loopback): ns/op is the round-trip time; the difference to
// ipv4-direct is what two translations and two TUN crossings add.
// serveEcho answers each datagram arriving on pc, as an echo server
// (RFC 862) does, with what reply makes of it (nil: the datagram itself)
// until pc is closed. stop closes pc and waits for the server to end.
func serveEcho(pc net.PacketConn, reply func(p []byte, from net.Addr) []byte) (stop func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2000)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			p := buf[:n]
			if reply != nil {
				p = reply(p, from)
			}
			pc.WriteTo(p, from)
		}
	}()
	return func() {
		pc.Close()
		<-done
	}
}

func BenchmarkNetnsUDPEcho(b *testing.B) {
	r := newRig(b)
	tayga := r.startTAYGA(b)
	for _, tc := range []struct {
		name, network, local string
		to                   netip.AddrPort
	}{
		{"nat64", "udp6", "[2001:db8::10]:0", netip.AddrPortFrom(r.dst6, 7)},
		{"tayga", "udp6", "[2001:db8::10]:0", netip.AddrPortFrom(tayga, 7)},
		{"ipv4-direct", "udp4", "198.51.100.8:0", netip.MustParseAddrPort("198.51.100.7:7")},
	} {
		b.Run(tc.name, func(b *testing.B) {
			c := r.client(b, tc.network, tc.local)
			to := net.UDPAddrFromAddrPort(tc.to)
			msg := make([]byte, 64)
			buf := make([]byte, 2000)
			c.SetReadDeadline(time.Now().Add(time.Minute))
			for b.Loop() {
				if _, err := c.WriteTo(msg, to); err != nil {
					b.Fatal(err)
				}
				if _, _, err := c.ReadFrom(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
