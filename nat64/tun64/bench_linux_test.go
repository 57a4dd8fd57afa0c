//go:build linux

package tun64

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/internal/netns"
	"github.com/sipmesh/sipmesh/nat64"
)

// The gateway path of the NAT64 benchmark: a client namespace (IPv6, and
// IPv4 for the kernel baseline) — veth — the gateway namespace — veth —
// an IPv4-only "Internet" namespace with a UDP echo server. The gateway
// runs, side by side, this package's NAT64 as the node runs it (a process
// of its own: a TUN device, Run with a nat64.Translator, the Wiring with
// its MASQUERADE out of the uplink) and TAYGA (Debian's tayga, stateless
// NAT64 on a TUN, paired with the kernel's NAT44 as its documentation
// says: a MASQUERADE of its dynamic pool out of the same uplink).
const (
	benchPrefix = "2001:db8:64::/96" // this NAT64
	taygaPrefix = "2001:db8:46::/96" // TAYGA
	benchEcho   = "10.99.0.2"        // the Internet's echo server
	benchPool   = "198.18.64.0/30"
)

type benchGW struct {
	client, gw, inet *netns.NS
	nat64Pid         int // the NAT64 process
	taygaPid         int
}

// nat64HelperEnv makes the test binary the gateway's NAT64 process
// (TestMain): the device "nat64", the Wiring for benchPrefix and
// benchPool out of "up0", Run until SIGTERM, then Down.
const nat64HelperEnv = "SIPMESH_TUN64_NAT64_HELPER"

func runNAT64Helper() {
	dev, err := OpenTUN("nat64", 1500)
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	w := Wiring{Device: "nat64", Prefix: netip.MustParsePrefix(benchPrefix), Pool: netip.MustParsePrefix(benchPool), Uplink: "up0"}
	wd, err := w.Up()
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	var pool []netip.Addr
	for a := w.Pool.Addr(); w.Pool.Contains(a); a = a.Next() {
		pool = append(pool, a)
	}
	tr, err := nat64.New(nat64.Config{Prefix: w.Prefix, Pool: pool, MTU6: 1500})
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	go func() { <-sig; cancel() }()
	fmt.Println("running")
	err = Run(ctx, dev, tr, nil)
	wd.Down()
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	os.Exit(0)
}

func newBenchGW(b *testing.B) *benchGW {
	netns.RequireRoot(b)
	tayga, err := exec.LookPath("tayga")
	if err != nil {
		b.Fatal("tayga not installed (Debian package tayga): it is the comparison")
	}
	g := &benchGW{client: netns.New(b, "n64c"), gw: netns.New(b, "n64g"), inet: netns.New(b, "n64i")}
	netns.Veth(b, g.client, "eth0", g.gw, "lan0")
	netns.Veth(b, g.gw, "up0", g.inet, "eth0")
	g.client.Run(b, "ip", "-6", "addr", "add", "2001:db8:1::10/64", "dev", "eth0", "nodad")
	g.client.Run(b, "ip", "addr", "add", "10.98.0.10/24", "dev", "eth0")
	g.client.Run(b, "ip", "-6", "route", "add", "default", "via", "2001:db8:1::1")
	g.client.Run(b, "ip", "route", "add", "default", "via", "10.98.0.1")
	g.gw.Run(b, "ip", "-6", "addr", "add", "2001:db8:1::1/64", "dev", "lan0", "nodad")
	g.gw.Run(b, "ip", "addr", "add", "10.98.0.1/24", "dev", "lan0")
	g.gw.Run(b, "ip", "addr", "add", "10.99.0.1/24", "dev", "up0")
	g.inet.Run(b, "ip", "addr", "add", benchEcho+"/24", "dev", "eth0")
	// The Internet knows no route back to the client's IPv4 LAN: the
	// kernel baseline masquerades it like the NAT64 pools.
	g.gw.Run(b, "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "10.98.0.0/24", "-o", "up0", "-j", "MASQUERADE")

	// This NAT64, in a process of its own.
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := g.gw.Command(ctx, exe)
	cmd.Env = append(os.Environ(), nat64HelperEnv+"=1")
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cancel(); cmd.Wait() })
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "running\n" {
		b.Fatalf("NAT64 process: %q, %v", line, err)
	}
	g.nat64Pid = cmd.Process.Pid

	// TAYGA beside it.
	dir := b.TempDir()
	conf := filepath.Join(dir, "tayga.conf")
	if err := os.WriteFile(conf, []byte("tun-device tayga\nipv4-addr 198.18.65.1\nprefix "+taygaPrefix+"\ndynamic-pool 198.18.65.0/24\ndata-dir "+dir+"\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	g.gw.Run(b, tayga, "-c", conf, "--mktun")
	g.gw.Run(b, "ip", "link", "set", "tayga", "up")
	g.gw.Run(b, "ip", "-6", "route", "add", taygaPrefix, "dev", "tayga")
	g.gw.Run(b, "ip", "route", "add", "198.18.65.0/24", "dev", "tayga")
	g.gw.Run(b, "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "198.18.65.0/24", "-o", "up0", "-j", "MASQUERADE")
	tctx, tcancel := context.WithCancel(context.Background())
	tcmd := g.gw.Command(tctx, tayga, "-c", conf, "--nodetach")
	if err := tcmd.Start(); err != nil {
		tcancel()
		b.Fatal(err)
	}
	b.Cleanup(func() { tcancel(); tcmd.Wait() })
	g.taygaPid = tcmd.Process.Pid
	return g
}

// cpuTicks is the user+system CPU time of process pid in clock ticks
// (proc(5): fields 14 and 15 of /proc/pid/stat; 100 a second on Linux).
func cpuTicks(b *testing.B, pid int) int64 {
	s, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	_, rest, _ := strings.Cut(string(s), ") ") // after the command name
	f := strings.Fields(rest)
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st
}

// BenchmarkNetnsGatewayNAT64 measures the gateway's NAT64 path against
// TAYGA and against the kernel forwarding IPv4 (with NAT44) on the same
// veths, in the same run:
//
//   - rtt: one 64-byte UDP packet to the echo server and back at a time;
//     ns/op is the round trip, and its difference to ipv4-kernel what the
//     two translations and TUN crossings add.
//   - flood: bursts of 64 packets, as fast as the path takes them;
//     pkt/s is the echoes received a second, pkt/cpu-s the packets the
//     translator process translated (both ways) per second of its own
//     CPU time: packets per second per core. The kernel's forwarding runs
//     in softirq, which no process is charged for: no per-core figure.
func BenchmarkNetnsGatewayNAT64(b *testing.B) {
	g := newBenchGW(b)
	echo, err := g.inet.Network().ListenPacket(context.Background(), "udp4", benchEcho+":7")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(serveEcho(echo, nil))
	embed := func(p string) netip.Addr {
		a, err := nat64.Embed(netip.MustParsePrefix(p), netip.MustParseAddr(benchEcho))
		if err != nil {
			b.Fatal(err)
		}
		return a
	}
	for _, tc := range []struct {
		name    string
		network string
		dst     netip.Addr
		pid     int
	}{
		{"nat64", "udp6", embed(benchPrefix), g.nat64Pid},
		{"tayga", "udp6", embed(taygaPrefix), g.taygaPid},
		{"ipv4-kernel", "udp4", netip.MustParseAddr(benchEcho), 0},
	} {
		dst := netip.AddrPortFrom(tc.dst, 7)
		b.Run(tc.name+"/rtt", func(b *testing.B) {
			c := dialBench(b, g.client, tc.network, dst)
			msg, buf := make([]byte, 64), make([]byte, 2000)
			warm(b, c, msg, buf)
			c.SetReadDeadline(time.Now().Add(time.Minute))
			for b.Loop() {
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := c.Read(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(tc.name+"/flood", func(b *testing.B) {
			c := dialBench(b, g.client, tc.network, dst)
			msg, buf := make([]byte, 64), make([]byte, 2000)
			warm(b, c, msg, buf)
			const burst = 64
			var c0 int64
			if tc.pid != 0 {
				c0 = cpuTicks(b, tc.pid)
			}
			sent, got := 0, 0
			start := time.Now()
			for sent < b.N {
				k := min(burst, b.N-sent)
				for range k {
					if _, err := c.Write(msg); err != nil && !errors.Is(err, syscall.ENOBUFS) {
						b.Fatal(err)
					}
				}
				sent += k
				c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
				for range k {
					if _, err := c.Read(buf); err != nil {
						break // lost in the burst
					}
					got++
				}
			}
			el := time.Since(start)
			b.ReportMetric(float64(got)/el.Seconds(), "pkt/s")
			b.ReportMetric(100*float64(sent-got)/float64(sent), "loss%")
			if tc.pid != 0 {
				if ticks := cpuTicks(b, tc.pid) - c0; ticks > 0 {
					b.ReportMetric(float64(sent+got)/(float64(ticks)/100), "pkt/cpu-s")
				}
			}
		})
	}
}

func dialBench(b *testing.B, ns *netns.NS, network string, dst netip.AddrPort) net.Conn {
	c, err := ns.Network().Dial(context.Background(), network, dst.String())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

// warm sends until the path answers (neighbour discovery, the first
// packet of a binding).
func warm(b *testing.B, c net.Conn, msg, buf []byte) {
	for range 50 {
		c.Write(msg)
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := c.Read(buf); err == nil {
			return
		}
	}
	b.Fatal("the path never answered")
}
