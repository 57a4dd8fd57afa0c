//go:build linux && nat64tun

package tun64

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/internal/netns"
	"github.com/sipmesh/sipmesh/nat64"
)

// openIn creates a TUN device inside namespace ns: on a locked thread
// switched there with setns(2) and back.
func openIn(t *testing.T, ns *netns.NS, name string, mtu int) Device {
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

// TestNetnsTAYGAWiring runs the translator on a real TUN device in a
// namespace wired as TAYGA is: the NAT64 prefix and the IPv4 pool routed
// into the device. An IPv6 socket reaches an IPv4-only UDP echo server
// through 64:ff9b::/96, and ping6 gets its echo reply from an IPv4
// address.
func TestNetnsTAYGAWiring(t *testing.T) {
	netns.RequireRoot(t)
	leakcheck.Check(t)
	ns := netns.New(t, "nat64")
	dev := openIn(t, ns, "nat64", 1500)
	ns.Run(t, "ip", "link", "set", "nat64", "up")
	ns.Run(t, "ip", "-6", "route", "add", "64:ff9b::/96", "dev", "nat64")
	ns.Run(t, "ip", "route", "add", "192.0.2.1/32", "dev", "nat64")
	ns.Run(t, "ip", "addr", "add", "198.51.100.7/32", "dev", "lo")
	ns.Run(t, "ip", "-6", "addr", "add", "2001:db8::10/128", "dev", "lo")
	ns.Run(t, "sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.nat64.rp_filter=0")

	tr, err := nat64.New(nat64.Config{Pool: []netip.Addr{netip.MustParseAddr("192.0.2.1")}, MTU6: 1500})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() { res <- Run(ctx, dev, tr, nil) }()
	defer func() {
		cancel()
		if err := <-res; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	netw := ns.Network()
	echo, err := netw.ListenPacket(ctx, "udp4", "198.51.100.7:7")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		buf := make([]byte, 2000)
		for {
			n, from, err := echo.ReadFrom(buf)
			if err != nil {
				return
			}
			if !strings.HasPrefix(from.String(), "192.0.2.1:") {
				buf = append(buf[:0], "wrong source "+from.String()...)
				n = len(buf)
			}
			echo.WriteTo(buf[:n], from)
		}
	}()
	client, err := netw.ListenPacket(ctx, "udp6", "[2001:db8::10]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	dst, _ := nat64.Embed(nat64.WellKnownPrefix, netip.MustParseAddr("198.51.100.7"))
	udpDst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 7))
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2000)
	for _, msg := range []string{"hello over NAT64", strings.Repeat("x", 1400)} {
		if _, err := client.WriteTo([]byte(msg), udpDst); err != nil {
			t.Fatal(err)
		}
		n, from, err := client.ReadFrom(buf)
		if err != nil {
			t.Fatalf("no echo: %v (translator %+v)", err, tr.Stats())
		}
		if string(buf[:n]) != msg || from.String() != udpDst.String() {
			t.Fatalf("echo %q from %v", buf[:min(n, 40)], from)
		}
	}
	if out, err := ns.Try("ping", "-6", "-c", "1", "-W", "5", dst.String()); err != nil {
		t.Fatalf("ping6 through NAT64: %v\n%s", err, out)
	}
	if s := tr.Stats(); s.Out4 < 3 || s.Out6 < 3 {
		t.Fatalf("stats %+v", s)
	}
}
