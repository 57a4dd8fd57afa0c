//go:build linux

package packaging

import (
	"bufio"
	"bytes"
	"encoding/json"
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

// rssBudget is the idle resident memory a node may use (issue 17): routers
// with 64 MB of RAM run it beside the rest of OpenWrt.
const rssBudget = 24_000_000

// TestIdleRSS checks the idle node against the RSS budget; see
// measureIdleRSS. BenchmarkIdleRSS reports the same numbers.
func TestIdleRSS(t *testing.T) {
	netns.RequireRoot(t)
	if testing.Short() {
		t.Skip("builds sipmesh and runs two nodes in namespaces for some 15 s")
	}
	m := measureIdleRSS(t)
	t.Logf("idle sipmesh node (mesh of two, phone LAN with SIP, relay, DNS, DHCP): VmRSS max %.1f MB over %v, last %.1f MB, VmHWM %.1f MB; budget %.0f MB",
		mb(m.maxRSS), rssWindow, mb(m.lastRSS), mb(m.hwm), mb(rssBudget))
	if m.maxRSS > rssBudget {
		t.Errorf("idle RSS %d bytes is over the %d-byte budget", m.maxRSS, rssBudget)
	}
}

// BenchmarkIdleRSS reports the idle node's resident memory (one
// measurement per run; ns/op is the time the measurement took).
func BenchmarkIdleRSS(b *testing.B) {
	netns.RequireRoot(b)
	m := measureIdleRSS(b)
	b.ReportMetric(float64(m.maxRSS), "idle-RSS-bytes")
	b.ReportMetric(float64(m.hwm), "peak-RSS-bytes")
}

func mb(n int64) float64 { return float64(n) / 1e6 }

type rss struct{ maxRSS, lastRSS, hwm int64 }

// rssWindow is how long the idle node's VmRSS is sampled once it is up: the
// maximum over the window is the figure, so a heap that grows on a timer
// (DHT refresh, SSR keep-alives every few seconds) counts.
const rssWindow = 10 * time.Second

// measureIdleRSS builds sipmesh as `make cross` does, starts it as a node
// in a network namespace from the packaged default config (with a mesh
// interface to a second node and a phone LAN, so every service runs), waits
// until its control socket reports the ring formed and the LAN up, then
// samples /proc/PID/status for rssWindow.
func measureIdleRSS(tb testing.TB) rss {
	tb.Helper()
	dir := tb.TempDir()
	bin := filepath.Join(dir, "sipmesh")
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "github.com/sipmesh/sipmesh/cmd/sipmesh")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		tb.Fatalf("go build: %v\n%s", err, out)
	}
	sockDir, err := os.MkdirTemp("", "smrss") // socket paths must stay short
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(sockDir) })

	node, peer, phones := netns.New(tb, "node"), netns.New(tb, "peer"), netns.New(tb, "phones")
	netns.Veth(tb, node, "m0", peer, "m0")
	node.LinkLocal(tb, "m0")
	peer.LinkLocal(tb, "m0")
	netns.Veth(tb, node, "lan0", phones, "eth0")
	// A configured lan-address is the system's to put on the interface.
	node.Run(tb, "ip", "addr", "add", "10.64.7.1/24", "dev", "lan0")

	conf, err := DefaultConfig(Deb)
	if err != nil {
		tb.Fatal(err)
	}
	nodeSock := filepath.Join(sockDir, "node.sock")
	nodeCmd := startNode(tb, node, bin, filepath.Join(dir, "node"), edit(tb, string(conf),
		"state-dir "+DebianStateDir, "state-dir "+filepath.Join(dir, "node/state"),
		"control "+DebianControl, "control "+nodeSock,
		"mesh-interface mesh0", "mesh-interface m0\nlan-interface lan0\nlan-address 10.64.7.1/24"))
	startNode(tb, peer, bin, filepath.Join(dir, "peer"), edit(tb, string(conf),
		"state-dir "+DebianStateDir, "state-dir "+filepath.Join(dir, "peer/state"),
		"control "+DebianControl, "control "+filepath.Join(sockDir, "peer.sock"),
		"mesh-interface mesh0", "mesh-interface m0"))

	// Up: the control socket answers, the ring has formed with the peer,
	// and the phone LAN's services run.
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := exec.Command(bin, "status", "--json", "--control", nodeSock).Output()
		var st struct {
			LAN        string `json:"lan"`
			Successors []any  `json:"successors"`
		}
		if err == nil && json.Unmarshal(out, &st) == nil && st.LAN != "" && len(st.Successors) > 0 {
			break
		}
		if time.Now().After(deadline) {
			tb.Fatalf("node not up after 30 s (status: %v)\n%s", err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}

	var m rss
	status := filepath.Join("/proc", strconv.Itoa(nodeCmd.Process.Pid), "status")
	for end := time.Now().Add(rssWindow); time.Now().Before(end); time.Sleep(250 * time.Millisecond) {
		v := procStatus(tb, status)
		m.lastRSS = v["VmRSS"]
		m.maxRSS = max(m.maxRSS, m.lastRSS)
		m.hwm = v["VmHWM"]
	}
	return m
}

// edit replaces each old string of the config by its new one, failing tb
// when one is missing (the default config changed under the test).
func edit(tb testing.TB, conf string, oldNew ...string) string {
	tb.Helper()
	for i := 0; i < len(oldNew); i += 2 {
		if !strings.Contains(conf, oldNew[i]+"\n") {
			tb.Fatalf("the default config has no line %q", oldNew[i])
		}
		conf = strings.Replace(conf, oldNew[i]+"\n", oldNew[i+1]+"\n", 1)
	}
	return conf
}

// startNode runs `sipmesh node` in ns and stops it with SIGTERM when tb
// ends. `ip netns exec` execs the command, so the PID is the node's own.
func startNode(tb testing.TB, ns *netns.NS, bin, dir, conf string) *exec.Cmd {
	tb.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	cfg := filepath.Join(dir, "sipmesh.conf")
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		tb.Fatal(err)
	}
	var log bytes.Buffer
	cmd := exec.Command("ip", "netns", "exec", ns.Name, bin, "node", "--config", cfg)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				tb.Errorf("node in %s did not stop cleanly: %v", ns.Name, err)
			}
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			tb.Errorf("node in %s still running 10 s after SIGTERM; killed", ns.Name)
		}
		if tb.Failed() {
			tb.Logf("log of the node in %s:\n%s", ns.Name, log.String())
		}
	})
	return cmd
}

// procStatus reads the Vm* lines of /proc/PID/status, in bytes.
func procStatus(tb testing.TB, path string) map[string]int64 {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatalf("the node is gone: %v", err)
	}
	defer f.Close()
	v := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, rest, ok := strings.Cut(sc.Text(), ":")
		fields := strings.Fields(rest)
		if !ok || !strings.HasPrefix(k, "Vm") || len(fields) != 2 || fields[1] != "kB" {
			continue
		}
		n, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			tb.Fatalf("%s: %s: %v", path, sc.Text(), err)
		}
		v[k] = n * 1024
	}
	if err := sc.Err(); err != nil {
		tb.Fatal(err)
	}
	if v["VmRSS"] == 0 {
		tb.Fatalf("%s has no VmRSS", path)
	}
	return v
}
