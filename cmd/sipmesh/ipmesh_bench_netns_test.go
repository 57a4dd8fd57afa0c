//go:build linux

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/internal/netns"
)

// BenchmarkIPNetwork (issue 15): TCP throughput (iperf3, 3 s) and ping
// RTT (ping6, 20 echoes) between the two ends of a line of four network
// namespaces (three veth hops), over the same veths, in the same run:
//
//   - sipmesh: `sipmesh node` with ip-network on in each namespace, from
//     the first node's mesh address to the last's (meship over SSR);
//   - yggdrasil: Debian's yggdrasil in each namespace (default config:
//     multicast peering on the veths, its TUN of MTU 65535), between the
//     ends' Yggdrasil addresses;
//   - kernel: static routes and IPv6 forwarding, no overlay: the bar.
//
// Each b.N round measures the three in turn. Metrics: Mbit/s and RTT
// (ms) of each, and sipmesh's ratios to the other two (throughput:
// sipmesh/other, more is better; RTT: sipmesh/other, less is better).
func BenchmarkIPNetwork(b *testing.B) {
	netns.RequireRoot(b)
	ping := needTool(b, "ping", "iputils-ping")
	iperf := needTool(b, "iperf3", "iperf3")
	ygg := needTool(b, "yggdrasil", "yggdrasil")
	bin := buildSipmesh(b)
	tmp := b.TempDir()
	sockDir, err := os.MkdirTemp("", "smb")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(sockDir) })

	const n = 4
	ns := make([]*netns.NS, n)
	for i := range ns {
		ns[i] = netns.New(b, fmt.Sprintf("ib%d", i+1))
	}
	ifs := make([][]string, n)
	for i := 0; i+1 < n; i++ {
		a, c := fmt.Sprintf("ve-n%d", i+2), fmt.Sprintf("ve-n%d", i+1)
		netns.Veth(b, ns[i], a, ns[i+1], c)
		ifs[i] = append(ifs[i], a)
		ifs[i+1] = append(ifs[i+1], c)
		// The kernel's path: link i is fd99:0:0:i::/64, .1 on the left.
		ns[i].Run(b, "ip", "addr", "add", fmt.Sprintf("fd99:0:0:%d::1/64", i), "dev", a, "nodad")
		ns[i+1].Run(b, "ip", "addr", "add", fmt.Sprintf("fd99:0:0:%d::2/64", i), "dev", c, "nodad")
	}
	for i := range ns {
		for _, ifn := range ifs[i] {
			ns[i].LinkLocal(b, ifn)
		}
		ns[i].Run(b, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")
		for l := 0; l+1 < n; l++ {
			switch {
			case l < i-1: // links to the left, via the left neighbour
				ns[i].Run(b, "ip", "-6", "route", "add", fmt.Sprintf("fd99:0:0:%d::/64", l), "via", fmt.Sprintf("fd99:0:0:%d::1", i-1))
			case l > i: // to the right
				ns[i].Run(b, "ip", "-6", "route", "add", fmt.Sprintf("fd99:0:0:%d::/64", l), "via", fmt.Sprintf("fd99:0:0:%d::2", i))
			}
		}
	}
	kernelDst := netip.MustParseAddr(fmt.Sprintf("fd99:0:0:%d::2", n-2))

	// sipmesh.
	nodes := make([]*nsNode, n)
	for i := range nodes {
		nd := &nsNode{name: fmt.Sprintf("n%d", i+1), ns: ns[i], sock: filepath.Join(sockDir, fmt.Sprintf("n%d.sock", i+1))}
		nd.id = writeNodeKey(b, filepath.Join(tmp, nd.name, "state"), byte(120+i))
		var cfg strings.Builder
		fmt.Fprintf(&cfg, "name %s\nstate-dir %s\ncontrol %s\nlog-level warn\nip-network on\n", nd.name, filepath.Join(tmp, nd.name, "state"), nd.sock)
		for _, ifn := range ifs[i] {
			fmt.Fprintf(&cfg, "mesh-interface %s\n", ifn)
		}
		path := filepath.Join(tmp, nd.name+".conf")
		if err := os.WriteFile(path, []byte(cfg.String()), 0o644); err != nil {
			b.Fatal(err)
		}
		daemon(b, ns[i], filepath.Join(tmp, nd.name+".log"), bin, "node", "--config", path)
		nodes[i] = nd
	}
	sipmeshDst := nodes[n-1].id.Addr()

	// Yggdrasil, as Debian ships it but for its admin socket and TUN name.
	var yggDst netip.Addr
	for i := range ns {
		out, err := exec.Command(ygg, "-genconf", "-json").Output()
		if err != nil {
			b.Fatalf("yggdrasil -genconf: %v", err)
		}
		var conf map[string]any
		if err := json.Unmarshal(out, &conf); err != nil {
			b.Fatal(err)
		}
		conf["AdminListen"] = "none"
		conf["IfName"] = "ygg0"
		conf["MulticastInterfaces"] = []any{map[string]any{"Regex": "ve-.*", "Beacon": true, "Listen": true, "Port": 0}}
		path := filepath.Join(tmp, fmt.Sprintf("ygg%d.conf", i+1))
		js, _ := json.Marshal(conf)
		if err := os.WriteFile(path, js, 0o600); err != nil {
			b.Fatal(err)
		}
		if i == n-1 {
			a, err := exec.Command(ygg, "-useconffile", path, "-address").Output()
			if err != nil {
				b.Fatalf("yggdrasil -address: %v", err)
			}
			yggDst = netip.MustParseAddr(strings.TrimSpace(string(a)))
		}
		daemon(b, ns[i], filepath.Join(tmp, fmt.Sprintf("ygg%d.log", i+1)), ygg, "-useconffile", path)
	}
	daemon(b, ns[n-1], filepath.Join(tmp, "iperf3.log"), iperf, "-s")

	type system struct {
		name string
		dst  netip.Addr
		mbps []float64
		rtt  []float64
	}
	systems := []*system{{name: "sipmesh", dst: sipmeshDst}, {name: "yggdrasil", dst: yggDst}, {name: "kernel", dst: kernelDst}}
	for _, s := range systems {
		waitFor(b, 60*time.Second, s.name+" to carry ping6 across three hops", func() (bool, string) {
			out, err := ns[0].Try(ping, "-6", "-c", "1", "-W", "1", s.dst.String())
			return err == nil, out
		})
	}
	b.ResetTimer()
	for range b.N {
		for _, s := range systems {
			out, err := ns[0].Try(iperf, "-6", "-c", s.dst.String(), "-t", "3", "-J")
			if err != nil {
				b.Fatalf("%s: iperf3: %v\n%s", s.name, err, out)
			}
			var res struct {
				End struct {
					Received struct {
						BPS float64 `json:"bits_per_second"`
					} `json:"sum_received"`
				} `json:"end"`
			}
			if err := json.Unmarshal([]byte(out), &res); err != nil || res.End.Received.BPS == 0 {
				b.Fatalf("%s: iperf3 output: %v\n%s", s.name, err, out)
			}
			s.mbps = append(s.mbps, res.End.Received.BPS/1e6)
			out, err = ns[0].Try(ping, "-6", "-c", "20", "-i", "0.05", "-q", s.dst.String())
			rtt, ok := avgRTT(out)
			if err != nil || !ok {
				b.Fatalf("%s: ping6: %v\n%s", s.name, err, out)
			}
			s.rtt = append(s.rtt, rtt)
		}
	}
	b.StopTimer()
	mean := func(v []float64) float64 {
		t := 0.0
		for _, x := range v {
			t += x
		}
		return t / float64(len(v))
	}
	for _, s := range systems {
		b.ReportMetric(mean(s.mbps), s.name+"_Mbit/s")
		b.ReportMetric(mean(s.rtt), s.name+"_rtt_ms")
	}
	sm, yg, kn := systems[0], systems[1], systems[2]
	b.ReportMetric(mean(sm.mbps)/mean(yg.mbps), "tput_sipmesh/ygg")
	b.ReportMetric(mean(sm.mbps)/mean(kn.mbps), "tput_sipmesh/kernel")
	b.ReportMetric(mean(sm.rtt)/mean(yg.rtt), "rtt_sipmesh/ygg")
	b.ReportMetric(mean(sm.rtt)/mean(kn.rtt), "rtt_sipmesh/kernel")
	b.ReportMetric(0, "ns/op")
}

// avgRTT is the average of ping's "rtt min/avg/max/mdev = …" line, in ms.
func avgRTT(out string) (float64, bool) {
	_, rest, ok := strings.Cut(out, "min/avg/max/mdev = ")
	if !ok {
		return 0, false
	}
	f := strings.Split(rest, "/")
	if len(f) < 2 {
		return 0, false
	}
	v, err := strconv.ParseFloat(f[1], 64)
	return v, err == nil
}

// daemon runs args in ns until the benchmark ends (SIGTERM, then wait),
// its output in logPath, shown if the benchmark fails.
func daemon(tb testing.TB, ns *netns.NS, logPath string, args ...string) {
	tb.Helper()
	logf, err := os.Create(logPath)
	if err != nil {
		tb.Fatal(err)
	}
	cmd := ns.Command(context.Background(), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		tb.Fatalf("starting %s: %v", args[0], err)
	}
	tb.Cleanup(func() {
		defer logf.Close()
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if tb.Failed() {
			b, _ := os.ReadFile(logPath)
			if len(b) > 4000 {
				b = b[len(b)-4000:]
			}
			tb.Logf("%s:\n%s", logPath, b)
		}
	})
}
