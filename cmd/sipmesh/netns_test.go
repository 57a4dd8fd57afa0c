//go:build linux

package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/gateway"
	"github.com/sipmesh/sipmesh/internal/netns"
	"github.com/sipmesh/sipmesh/ssr"
)

// TestMeshInNamespaces runs five `sipmesh node` processes, each in a network
// namespace of its own, on veth links n1–n2–n3–n4–n5 plus the cross link
// n2–n4, speaking real UDP over IPv6 link-local addresses. It checks that
// they form the ring, that `sipmesh ping` from n1 reaches n5 and shows the
// route, and measures how long the mesh takes to route around a cut link.
// While the cross link is up, SSR's route shortening puts n1→n5 traffic on
// it (n2 skips n3 when n4 is its neighbour), so cutting n3–n4 first would
// measure nothing: the test cuts n2–n4 first (traffic falls back to
// n2–n3–n4), then heals it, checks that n2 and n4 find each other again,
// and cuts n3–n4 (traffic must take n2–n4).
func TestMeshInNamespaces(t *testing.T) {
	netns.RequireRoot(t)
	if testing.Short() {
		t.Skip("starts five nodes in network namespaces; takes some 20 s")
	}
	bin := buildSipmesh(t)
	tmp := t.TempDir()
	sockDir, err := os.MkdirTemp("", "smt") // socket paths must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })

	const n = 5
	edges := [][2]int{{1, 2}, {2, 3}, {3, 4}, {4, 5}, {2, 4}}
	ifname := func(from, to int) string { return fmt.Sprintf("ve-n%d", to) }
	spaces := make([]*netns.NS, n+1)
	for i := 1; i <= n; i++ {
		spaces[i] = netns.New(t, fmt.Sprintf("n%d", i))
	}
	ifaces := make([][]string, n+1)
	for _, e := range edges {
		a, b := e[0], e[1]
		netns.Veth(t, spaces[a], ifname(a, b), spaces[b], ifname(b, a))
		ifaces[a] = append(ifaces[a], ifname(a, b))
		ifaces[b] = append(ifaces[b], ifname(b, a))
	}
	for i := 1; i <= n; i++ {
		for _, ifn := range ifaces[i] {
			spaces[i].LinkLocal(t, ifn)
		}
	}

	// Fixed keys make the node IDs, and so the ring, the same every run.
	nodes := make([]*nsNode, n+1)
	names := map[string]string{} // node ID → n1..n5, for readable logs
	for i := 1; i <= n; i++ {
		nd := &nsNode{name: fmt.Sprintf("n%d", i), ns: spaces[i], sock: filepath.Join(sockDir, fmt.Sprintf("n%d.sock", i))}
		nd.id = writeNodeKey(t, filepath.Join(tmp, nd.name, "state"), byte(i))
		names[nd.id.String()] = nd.name
		nodes[i] = nd
	}
	start := time.Now()
	for i := 1; i <= n; i++ {
		nodes[i].start(t, bin, tmp, ifaces[i])
	}

	// The ring: every node's first successor is the next ID clockwise.
	ids := make([]ssr.NodeID, 0, n)
	for _, nd := range nodes[1:] {
		ids = append(ids, nd.id)
	}
	slices.Sort(ids)
	trueSucc := func(id ssr.NodeID) string {
		return ids[(slices.Index(ids, id)+1)%len(ids)].String()
	}
	waitFor(t, 30*time.Second, "the ring to form", func() (bool, string) {
		for _, nd := range nodes[1:] {
			st, err := nd.status(bin)
			if err != nil {
				return false, err.Error()
			}
			if st.ID != nd.id.String() {
				return false, fmt.Sprintf("%s reports ID %s, want %s (key not used?)", nd.name, st.ID, nd.id)
			}
			if len(st.Successors) == 0 || st.Successors[0].ID != trueSucc(nd.id) {
				return false, fmt.Sprintf("%s: successors %v, want %s first", nd.name, succNames(st, names), names[trueSucc(nd.id)])
			}
		}
		return true, ""
	})
	t.Logf("ring of %d nodes converged %v after the nodes started", n, time.Since(start).Round(time.Millisecond))

	n1, n5 := nodes[1], nodes[5]
	out, err := exec.Command(bin, "ping", "--control", n1.sock, "--count", "2", "--interval", "100ms", n5.id.Addr().String()).CombinedOutput()
	if err != nil {
		t.Fatalf("sipmesh ping n1→n5: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "reply from "+n5.id.Addr().String()) || !strings.Contains(string(out), "2 received") {
		t.Fatalf("sipmesh ping n1→n5 output:\n%s", out)
	}
	route := parseRoute(t, string(out))
	if len(route) < 4 || route[0] != n1.id.String() || route[len(route)-1] != n5.id.String() {
		t.Fatalf("route n1→n5 %v: want n1 first, n5 last, at least 3 hops", route)
	}
	t.Logf("sipmesh ping n1→n5:\n%s  route: %s", out, routeNames(route, names))

	// reroute pings n1→n5 until a reply comes over a route that does not
	// cross the cut link, and returns how long that took.
	reroute := func(cut [2]int, via [2]int) time.Duration {
		t.Helper()
		start := time.Now()
		var last string
		for time.Since(start) < 25*time.Second {
			out, err := exec.Command(bin, "ping", "--control", n1.sock, "--count", "1", "--timeout", "300ms", n5.id.Addr().String()).CombinedOutput()
			last = string(out)
			if err != nil {
				continue
			}
			r := parseRoute(t, last)
			if crosses(r, nodes[cut[0]].id, nodes[cut[1]].id) {
				continue // a reply still in flight before the cut, or a stale route
			}
			if !crosses(r, nodes[via[0]].id, nodes[via[1]].id) {
				t.Fatalf("after cutting n%d–n%d the route %s does not take n%d–n%d", cut[0], cut[1], routeNames(r, names), via[0], via[1])
			}
			t.Logf("cut n%d–n%d: pings n1→n5 succeed again after %v, route %s", cut[0], cut[1], time.Since(start).Round(time.Millisecond), routeNames(r, names))
			return time.Since(start)
		}
		t.Fatalf("after cutting n%d–n%d no ping n1→n5 succeeded for 25s; last attempt:\n%s", cut[0], cut[1], last)
		return 0
	}

	// Cut the cross link, which n1→n5 traffic uses: the only way left is
	// through n3.
	spaces[2].SetLink(t, ifname(2, 4), false)
	took := reroute([2]int{2, 4}, [2]int{3, 4})

	// Heal it and wait until n2 and n4 are neighbours again.
	spaces[2].SetLink(t, ifname(2, 4), true)
	spaces[2].LinkLocal(t, ifname(2, 4))
	waitFor(t, 20*time.Second, "n2 and n4 to be neighbours again", func() (bool, string) {
		for _, p := range [][2]int{{2, 4}, {4, 2}} {
			st, err := nodes[p[0]].status(bin)
			if err != nil {
				return false, err.Error()
			}
			if !slices.ContainsFunc(st.Neighbours, func(nb ssr.NeighbourStatus) bool { return nb.ID == nodes[p[1]].id.String() }) {
				return false, fmt.Sprintf("n%d neighbours: %+v", p[0], st.Neighbours)
			}
		}
		return true, ""
	})

	// Cut n3–n4: traffic must take the cross link.
	spaces[3].SetLink(t, ifname(3, 4), false)
	took2 := reroute([2]int{3, 4}, [2]int{2, 4})
	t.Logf("reroute times: %v after cutting the veth n2–n4 that carried n1→n5; %v after cutting n3–n4 (n2–n4 restored)",
		took.Round(time.Millisecond), took2.Round(time.Millisecond))
}

// nsNode is one `sipmesh node` process in a namespace.
type nsNode struct {
	name string
	ns   *netns.NS
	sock string
	id   ssr.NodeID
	log  string
	cmd  *exec.Cmd
	// extra config lines
	extra string
}

func (nd *nsNode) start(t *testing.T, bin, tmp string, ifaces []string) {
	t.Helper()
	dir := filepath.Join(tmp, nd.name)
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "name %s\nstate-dir %s\ncontrol %s\nlog-level debug\n", nd.name, filepath.Join(dir, "state"), nd.sock)
	for _, ifn := range ifaces {
		fmt.Fprintf(&cfg, "mesh-interface %s\n", ifn)
	}
	cfg.WriteString(nd.extra)
	cfgPath := filepath.Join(dir, "node.conf")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	nd.log = filepath.Join(dir, "node.log")
	// Appended to, so a restarted node's log follows the first run's.
	logf, err := os.OpenFile(nd.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	// `ip netns exec` execs the command, so the PID is the node's own.
	cmd := exec.Command("ip", "netns", "exec", nd.ns.Name, bin, "node", "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("starting %s: %v", nd.name, err)
	}
	nd.cmd = cmd
	t.Cleanup(func() {
		defer logf.Close()
		if cmd.ProcessState == nil { // not stopped by the test already
			nd.stopCmd(t, cmd)
		}
		if t.Failed() {
			b, _ := os.ReadFile(nd.log)
			if len(b) > 8000 {
				b = b[len(b)-8000:]
			}
			t.Logf("last lines of %s's log:\n%s", nd.name, b)
		}
	})
}

// stop stops the node's process (as a restart or a test's cleanup does).
func (nd *nsNode) stop(t *testing.T) {
	t.Helper()
	nd.stopCmd(t, nd.cmd)
}

func (nd *nsNode) stopCmd(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	// SIGTERM is a clean stop: the node must exit 0 and remove its
	// control socket.
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("%s did not stop cleanly on SIGTERM: %v", nd.name, err)
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Errorf("%s still running 10s after SIGTERM; killed", nd.name)
	}
	if _, err := os.Stat(nd.sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s left its control socket %s behind", nd.name, nd.sock)
	}
}

// status runs `sipmesh status --json` against the node.
func (nd *nsNode) status(bin string) (gateway.NodeStatus, error) {
	var st gateway.NodeStatus
	out, err := exec.Command(bin, "status", "--json", "--control", nd.sock).Output()
	if err != nil {
		return st, fmt.Errorf("%s: sipmesh status: %v", nd.name, err)
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return st, fmt.Errorf("%s: sipmesh status --json: %v\n%s", nd.name, err, out)
	}
	return st, nil
}

// writeNodeKey stores a key derived from seed where the node looks for it,
// as the node itself would on first start, and returns the node ID.
func writeNodeKey(t testing.TB, stateDir string, seed byte) ssr.NodeID {
	t.Helper()
	s := make([]byte, ed25519.SeedSize)
	copy(s, "sipmesh netns test node ")
	s[len(s)-1] = seed
	key := ed25519.NewKeyFromSeed(s)
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if err := os.WriteFile(filepath.Join(stateDir, gateway.KeyFile), pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	return ssr.IDFromPublicKey(key.Public().(ed25519.PublicKey))
}

// buildSipmesh builds the binary once for the test.
func buildSipmesh(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "sipmesh")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out.String())
	}
	return bin
}

// waitFor polls cond every 100 ms until it holds, failing t after limit.
// The nodes are separate processes on real time: there is no event to wait
// on but their answers.
func waitFor(t testing.TB, limit time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s: %s", limit, what, why)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// parseRoute takes the route of the first reply line of `sipmesh ping`.
func parseRoute(t *testing.T, out string) []string {
	t.Helper()
	for line := range strings.Lines(out) {
		if !strings.HasPrefix(line, "reply from ") {
			continue
		}
		_, r, ok := strings.Cut(line, "route=")
		if !ok {
			t.Fatalf("reply line without a route: %q", line)
		}
		return strings.Split(strings.TrimSpace(r), ">")
	}
	t.Fatalf("no reply line in:\n%s", out)
	return nil
}

// crosses reports whether route takes the link between a and b.
func crosses(route []string, a, b ssr.NodeID) bool {
	for i := 0; i+1 < len(route); i++ {
		x, y := route[i], route[i+1]
		if x == a.String() && y == b.String() || x == b.String() && y == a.String() {
			return true
		}
	}
	return false
}

func routeNames(route []string, names map[string]string) string {
	out := make([]string, len(route))
	for i, id := range route {
		out[i] = names[id]
		if out[i] == "" {
			out[i] = id
		}
	}
	return strings.Join(out, ">")
}

func succNames(st gateway.NodeStatus, names map[string]string) []string {
	var out []string
	for _, s := range st.Successors {
		out = append(out, names[s.ID])
	}
	return out
}
