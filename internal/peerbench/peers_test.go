//go:build linux && peerbench

package peerbench

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/gateway"
	"github.com/sipmesh/sipmesh/internal/netns"
	"github.com/sipmesh/sipmesh/ssr/dht"
)

var (
	roundDur  = flag.Duration("peerbench.round", 10*time.Second, "length of one measurement round of one server")
	rounds    = flag.Int("peerbench.rounds", 3, "A/B rounds per row; the table shows the median")
	rowsFlag  = flag.String("peerbench.rows", "dns,register,reg-write,calls,rtp,gateway", "rows to measure, comma-separated")
	users     = flag.Int("peerbench.users", 100, "subscribers the REGISTER load cycles through")
	window    = flag.Int("peerbench.window", 50, "SIPp's limit of calls in progress (-l): the load is closed-loop")
	serverCPU = flag.String("peerbench.server-cpu", "1", "taskset -c list for the servers (both get the same)")
	clientCPU = flag.String("peerbench.client-cpu", "0", "taskset -c list for the load generators")
)

// Addresses: the client namespace reaches the sipmesh node on one veth
// (10.77.0.0/24) and the peer server on another (10.78.0.0/24), so both
// servers listen on the standard ports and stay up the whole run, idle
// while the other is measured.
const (
	nodeAddr = "10.77.0.1"
	nodeCli  = "10.77.0.2"
	peerAddr = "10.78.0.1"
	peerCli  = "10.78.0.2"
	// the callee's addresses in the calls row
	nodeCallee = "10.77.0.3"
	peerCallee = "10.78.0.3"
	nodeName   = "n1"
	// nodeMesh is n1.mesh's address on the peer side: any address will
	// do, Unbound only has to answer the same kind of record.
	nodeMesh = "fd53:6d00::1"
	// The emulated Internet of the gateway row (198.51.100.0/24, a
	// bridge in its own namespace): the node's uplink (n1 is a gateway
	// and its LAN phones call out through it), Kamailio's uplink, and
	// the callee, a SIPp UAS (testdata/callout.xml names its address).
	nodeUplink  = "198.51.100.1"
	peerUplink  = "198.51.100.2"
	inetCallee  = "198.51.100.20"
	inetNoDNS   = "198.51.100.53" // dns-upstream: the calls name an IP literal, nothing is looked up
	inetNetmask = "/24"
)

// rig is the namespaces and the servers of one run.
type rig struct {
	t               *testing.T
	dir, bin        string
	cli, node, peer *netns.NS
	nbr             *netns.NS // the node's mesh neighbour
	inet            *netns.NS // the emulated Internet of the gateway row
	sock            string
	nodePID         int
	meshUp          time.Time      // both nodes' phone LANs up (startNode)
	stops           map[int]func() // by PID: stop a daemon (SIGTERM, then SIGKILL)
	nodeCfg         string         // n1's configuration (startNode)
	peerPID         int            // the peer server of the current row (its process group)
	kamailioPID     int
	tools           map[string]string
	added           map[int]bool // extensions addUser created
	n2Log           string
	phase           uint32       // the rtp row's last measurement phase
	rtpTargets      []*rtpTarget // the rtp row's sipmesh and rtpengine
	n2PID           int
	rtpNice0        map[int]int // processes of the rtp row's latency settings → their nice value (rtpSched)
}

func TestPeers(t *testing.T) {
	netns.RequireRoot(t)
	r := &rig{t: t, dir: t.TempDir(), tools: map[string]string{}}
	for _, tool := range []string{"sipp", "kamailio", "unbound", "dnsperf", "taskset", "rtpengine"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Fatalf("%s not found: `make bench-peers` installs it (sip-tester, kamailio, unbound, dnsperf, util-linux, rtpengine-daemon): %v", tool, err)
		}
		r.tools[tool] = p
	}
	r.bin = filepath.Join(r.dir, "sipmesh")
	if out, err := exec.Command("go", "build", "-trimpath", "-o", r.bin, "../../cmd/sipmesh").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	r.cli, r.node, r.peer = netns.New(t, "cli"), netns.New(t, "node"), netns.New(t, "peer")
	netns.Veth(t, r.node, "lan0", r.cli, "eth0")
	netns.Veth(t, r.peer, "eth0", r.cli, "eth1")
	r.node.Run(t, "ip", "addr", "add", nodeAddr+"/24", "dev", "lan0")
	r.cli.Run(t, "ip", "addr", "add", nodeCli+"/24", "dev", "eth0")
	r.peer.Run(t, "ip", "addr", "add", peerAddr+"/24", "dev", "eth0")
	r.cli.Run(t, "ip", "addr", "add", peerCli+"/24", "dev", "eth1")
	// The callee of the calls row is another phone: an address of its own.
	r.cli.Run(t, "ip", "addr", "add", nodeCallee+"/24", "dev", "eth0")
	r.cli.Run(t, "ip", "addr", "add", peerCallee+"/24", "dev", "eth1")
	// The Internet: both servers' uplinks on one bridge with the callee.
	r.inet = netns.New(t, "inet")
	r.inet.Run(t, "ip", "link", "add", "br0", "type", "bridge")
	r.inet.Run(t, "ip", "link", "set", "br0", "up")
	r.inet.Run(t, "ip", "addr", "add", inetCallee+inetNetmask, "dev", "br0")
	for _, up := range []struct {
		ns         *netns.NS
		port, addr string
	}{{r.node, "inode", nodeUplink}, {r.peer, "ipeer", peerUplink}} {
		netns.Veth(t, up.ns, "up0", r.inet, up.port)
		r.inet.Run(t, "ip", "link", "set", up.port, "master", "br0")
		up.ns.Run(t, "ip", "addr", "add", up.addr+inetNetmask, "dev", "up0")
	}
	// The node needs a mesh: alone it has no ring, never claims its name
	// (n1.mesh would not resolve) and keeps no DHT. A second node, n2, on
	// the other end of the mesh link, on the client core, is the smallest
	// mesh (the rtp row's callee sits on its LAN).
	r.nbr = netns.New(t, "n2")
	netns.Veth(t, r.node, "mesh0", r.nbr, "mesh0")
	r.node.LinkLocal(t, "mesh0")
	r.nbr.LinkLocal(t, "mesh0")
	// n2 has a phone LAN of its own (the rtp row's callee is on it: the
	// node relays media only for calls between a LAN and the mesh).
	netns.Veth(t, r.nbr, "lan0", r.cli, "eth2")
	r.cli.Run(t, "ip", "addr", "add", n2Callee+"/24", "dev", "eth2")

	r.startNode()
	want := strings.Split(*rowsFlag, ",")
	var table, notes []string
	for _, row := range []struct {
		name, unit string
		setup      func() (sipmesh, peer func() (float64, string))
	}{
		{"dns", "/s", r.dnsRow},
		{"register", "/s", r.registerRow},
		{"reg-write", "/s", r.regWriteRow},
		{"calls", "/s", r.callsRow},
		{"rtp", " streams", r.rtpRow},
		{"gateway", "/s", r.gatewayRow}, // last: it restarts n1 as a gateway
	} {
		if !slices.Contains(want, row.name) {
			continue
		}
		ours, theirs := row.setup()
		idle := r.rss()
		var a, b []float64
		for i := range *rounds {
			x, nx := r.withCPU(r.nodePID, ours)
			y, ny := r.withCPU(r.peerPID, theirs)
			note := fmt.Sprintf("%s round %d: sipmesh %.0f%s (%s), peer %.0f%s (%s)", row.name, i+1, x, row.unit, nx, y, row.unit, ny)
			t.Log(note)
			notes = append(notes, note)
			a, b = append(a, x), append(b, y)
		}
		ma, mb := median(a), median(b)
		ratio := 0.0
		if mb > 0 {
			ratio = ma / mb
		}
		table = append(table, fmt.Sprintf("%-9s %10.0f %10.0f %8.3f", row.name, ma, mb, ratio))
		if row.name == "rtp" {
			for _, note := range r.rtpNotes(int(ma)) {
				t.Log(note)
				notes = append(notes, note)
			}
			r.rtpRestore()
		}
		t.Logf("sipmesh node after %s: %s", row.name, r.status())
		note := fmt.Sprintf("%s: node RSS %d kB idle before the load, %s", row.name, idle, r.settle(idle))
		t.Log(note)
		notes = append(notes, note)
	}
	fmt.Printf("\n%-9s %10s %10s %8s\n", "metric", "sipmesh", "peer", "ratio")
	for _, l := range table {
		fmt.Println(l)
	}
	fmt.Printf("(per second, median of %d interleaved rounds of %v; servers pinned to CPU %s; ratio = sipmesh/peer)\n",
		*rounds, *roundDur, *serverCPU)
	if slices.Contains(want, "rtp") {
		fmt.Printf("(rtp: concurrent 20 ms G.711 streams with p99 added latency <= 1 ms and loss < 0.1 %%, peer rtpengine\n"+
			" with userspace forwarding; one-way delay from the send call to the kernel's receive timestamp, relays and\n"+
			" generator at nice -20 with a 100 us slice: %v; each step of the search lasts one round and at least %d packets;\n"+
			" sipmesh's media also crosses n2's relay, which runs on the load generator's CPU %s: a bias against sipmesh)\n",
			*rtpLatency, rtpMinPackets, *clientCPU)
	}
	// The load is closed-loop (SIPp -l, dnsperf -q): a server that drops
	// requests is measured at what it completes, and its losses show here.
	for _, n := range notes {
		fmt.Println("# " + n)
	}
}

// withCPU runs one measurement and adds to its note the CPU time the
// server's process group (Kamailio forks its workers) used meanwhile, as
// a share of one core: the per-core figure of a server that was not
// saturated.
func (r *rig) withCPU(pgid int, run func() (float64, string)) (float64, string) {
	c0, t0 := groupCPU(pgid), time.Now()
	rate, note := run()
	used := groupCPU(pgid) - c0
	return rate, fmt.Sprintf("%s, %.0f%% CPU", note, 100*used.Seconds()/time.Since(t0).Seconds())
}

// groupCPU sums user and system time of the processes in group pgid
// (proc(5): fields 14 utime, 15 stime, in clock ticks of 1/100 s on
// Linux).
func groupCPU(pgid int) time.Duration {
	var ticks int64
	groupStats(pgid, func(_ int, f []string) {
		if len(f) >= 13 {
			u, _ := strconv.ParseInt(f[11], 10, 64)
			s, _ := strconv.ParseInt(f[12], 10, 64)
			ticks += u + s
		}
	})
	return time.Duration(ticks) * 10 * time.Millisecond
}

// groupStats calls fn with the PID and the /proc/PID/stat fields of each
// process in group pgid (proc(5): field 5 pgrp). The command name (field
// 2) may hold spaces: f counts from after its closing parenthesis, so
// f[0] is field 3.
func groupStats(pgid int, fn func(pid int, f []string)) {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 3 || f[2] != strconv.Itoa(pgid) {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p))); err == nil {
			fn(pid, f)
		}
	}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// startNode runs `sipmesh node` in its namespace with the default
// config but for what a user must set: name, state, control socket, the
// mesh interface, the phone LAN (lan0, addressed by the system, DHCP off
// as no phone here asks) and the administrator key to add subscribers.
// digest-algorithms MD5: SIPp (Debian's 3.6) computes MD5 digests only,
// and Kamailio's challenge is MD5 too.
func (r *rig) startNode() {
	t := r.t
	admin := filepath.Join(r.dir, "admin.key")
	adminKey, _, err := gateway.LoadOrCreateAdminKey(admin)
	if err != nil {
		t.Fatal(err)
	}
	// n2 checks the subscriber records n1 signs with the administrator key.
	adminPub := hex.EncodeToString(adminKey.Public().(ed25519.PublicKey))
	sockDir, err := os.MkdirTemp("", "smpb")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	r.sock = filepath.Join(sockDir, "n1.sock")
	// The default configuration with its phone LAN; the gateway row
	// restarts it as the mesh's Internet gateway (restartAsGateway).
	r.nodeCfg = fmt.Sprintf("name %s\nstate-dir %s\ncontrol %s\nmesh-interface mesh0\nadmin-key %s\n"+
		"lan-interface lan0\nlan-address %s/24\ndhcp off\ndigest-algorithms MD5\n",
		nodeName, filepath.Join(r.dir, "state"), r.sock, admin, nodeAddr)
	logPath := r.runNode(r.nodeCfg)
	nbrCfg := r.writeFile("n2.conf", fmt.Sprintf("name n2\nstate-dir %s\ncontrol %s\nmesh-interface mesh0\n"+
		"admin-public-key %s\nlan-interface lan0\nlan-address %s/24\ndhcp off\n",
		filepath.Join(r.dir, "n2state"), filepath.Join(sockDir, "n2.sock"), adminPub, n2Addr))
	n2Log := filepath.Join(r.dir, "n2.log")
	r.n2Log = n2Log
	r.n2PID = r.daemon("sipmesh node n2", r.nbr, *clientCPU, n2Log, r.bin, "node", "--config", nbrCfg)
	for _, l := range []string{logPath, n2Log} {
		r.waitFor(30*time.Second, "the phone LAN of "+filepath.Base(l), func() (bool, string) {
			b, _ := os.ReadFile(l)
			return bytes.Contains(b, []byte("phone LAN up")), lastLines(string(b), 10)
		})
	}
	r.meshUp = time.Now()
}

// runNode starts n1 with configuration cfg, pinned to the server core,
// and returns its log's path.
func (r *rig) runNode(cfg string) string {
	cfgPath := r.writeFile("node.conf", cfg)
	logPath := filepath.Join(r.dir, "node.log")
	// taskset and `ip netns exec` exec, so the PID is the node's own.
	r.nodePID = r.daemon("sipmesh node", r.node, *serverCPU, logPath, r.bin, "node", "--config", cfgPath)
	return logPath
}

// restartAsGateway restarts n1 as the mesh's Internet gateway (uplink
// up0): the other rows measure the default configuration, this one the
// gateway its phones' calls to the Internet leave through.
func (r *rig) restartAsGateway() {
	r.stops[r.nodePID]()
	logPath := r.runNode(r.nodeCfg + fmt.Sprintf("uplink-interface up0\npublic-address %s\ndns-upstream %s\n", nodeUplink, inetNoDNS))
	r.waitFor(30*time.Second, "the gateway's phone LAN", func() (bool, string) {
		b, _ := os.ReadFile(logPath)
		return bytes.Contains(b, []byte("phone LAN up")), lastLines(string(b), 10)
	})
}

// rss is the node's resident memory in kB (0: unknown).
func (r *rig) rss() int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", r.nodePID))
	if err != nil {
		return 0
	}
	m := regexp.MustCompile(`VmRSS:\s+(\d+) kB`).FindSubmatch(b)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// settle waits up to 60 s after a load for the node's RSS to come back
// within 10 MB of idle (issue 12) and says how it went.
func (r *rig) settle(idle int) string {
	start := time.Now()
	peak := r.rss()
	for {
		now := r.rss()
		if now <= idle+10*1024 {
			return fmt.Sprintf("%d kB when the load ended, %d kB (within 10 MB of idle) after %.0f s", peak, now, time.Since(start).Seconds())
		}
		if time.Since(start) >= 60*time.Second {
			return fmt.Sprintf("%d kB when the load ended, still %d kB after 60 s (goal: within 10 MB of idle)", peak, now)
		}
		time.Sleep(time.Second)
	}
}

// status reports the node's resident memory and the SIP counters of
// `sipmesh status --json` (where its drops show).
func (r *rig) status() string {
	rss := fmt.Sprintf("%d kB", r.rss())
	out, err := exec.Command(r.bin, "status", "--json", "--control", r.sock).Output()
	var st map[string]json.RawMessage
	if err == nil {
		err = json.Unmarshal(out, &st)
	}
	if err != nil {
		return fmt.Sprintf("RSS %s; status: %v", rss, err)
	}
	var sip bytes.Buffer
	json.Compact(&sip, st["sip"])
	return fmt.Sprintf("RSS %s; sip %s", rss, sip.String())
}

// daemon starts a server in ns pinned to cpus, and stops it
// (SIGTERM, then SIGKILL after 10 s) when the test ends.
func (r *rig) daemon(name string, ns *netns.NS, cpus, logPath string, args ...string) (pid int) {
	t := r.t
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(r.tools["taskset"], append([]string{"-c", cpus, "ip", "netns", "exec", ns.Name}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Kamailio forks its children into its own process group; signal the
	// group so none outlives the run.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			defer logf.Close()
			syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-done
				t.Errorf("%s still running 10 s after SIGTERM; killed", name)
			}
			if t.Failed() {
				b, _ := os.ReadFile(logPath)
				t.Logf("%s log:\n%s", name, lastLines(string(b), 30))
			}
		})
	}
	t.Cleanup(stop)
	if r.stops == nil {
		r.stops = map[int]func(){}
	}
	r.stops[cmd.Process.Pid] = stop
	return cmd.Process.Pid
}

// client runs a load generator in the client namespace on the client CPU.
func (r *rig) client(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, r.tools["taskset"], append([]string{"-c", *clientCPU, "ip", "netns", "exec", r.cli.Name}, args...)...)
}

// sippUAS starts SIPp as the callee (the scenario of testdata/uas.xml)
// on port 5070 of addr in the network namespace ns, pinned to the
// clients' CPU; stop ends it and waits for it. out collects what it
// prints.
func (r *rig) sippUAS(ns, addr string) (out *lockedBuffer, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	uas := exec.CommandContext(ctx, r.tools["taskset"], "-c", *clientCPU, "ip", "netns", "exec", ns,
		r.tools["sipp"], "-sf", filepath.Join(r.abs("testdata"), "uas.xml"), "-nostdin", "-p", "5070", "-i", addr)
	out = new(lockedBuffer)
	uas.Stdout, uas.Stderr = out, out
	if err := uas.Start(); err != nil {
		cancel()
		r.t.Fatal(err)
	}
	return out, func() {
		cancel()
		uas.Wait()
	}
}

// lockedBuffer is a bytes.Buffer a process's output goes into while the
// test reads it (exec copies into it from a goroutine of its own).
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitFor polls cond every 100 ms: the servers are other processes on
// real time, with no event to wait on but their answers.
func (r *rig) waitFor(limit time.Duration, what string, cond func() (bool, string)) {
	r.t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("waited %v for %s: %s", limit, what, why)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (r *rig) writeFile(name, data string) string {
	p := filepath.Join(r.dir, name)
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		r.t.Fatal(err)
	}
	return p
}

// dnsRow: dnsperf, one client, up to 100 queries outstanding, against
// the node's DNS server on its LAN address and against Unbound serving
// the same names from local-data, one thread.
func (r *rig) dnsRow() (func() (float64, string), func() (float64, string)) {
	queries := r.writeFile("queries", "sipserver.mesh A\n"+nodeName+".mesh AAAA\n")
	conf := r.writeFile("unbound.conf", fmt.Sprintf(`server:
	interface: %s
	port: 53
	access-control: 10.78.0.0/24 allow
	num-threads: 1
	do-daemonize: no
	chroot: ""
	username: ""
	directory: "%s"
	pidfile: "%s/unbound.pid"
	use-syslog: no
	logfile: ""
	verbosity: 0
	do-ip6: no
	local-zone: "mesh." static
	local-data: "mesh. 60 IN SOA sipserver.mesh. hostmaster.mesh. 1 3600 600 86400 30"
	local-data: "sipserver.mesh. 60 IN A %s"
	local-data: "%s.mesh. 60 IN AAAA %s"
remote-control:
	control-enable: no
`, peerAddr, r.dir, r.dir, peerAddr, nodeName, nodeMesh))
	r.peerPID = r.daemon("unbound", r.peer, *serverCPU, filepath.Join(r.dir, "unbound.log"), r.tools["unbound"], "-d", "-c", conf)
	run := func(server string) (float64, string) {
		ctx, cancel := context.WithTimeout(context.Background(), *roundDur+30*time.Second)
		defer cancel()
		secs := strconv.Itoa(int(roundDur.Seconds()))
		out, err := r.client(ctx, r.tools["dnsperf"], "-s", server, "-d", queries, "-l", secs, "-q", "100", "-t", "1").CombinedOutput()
		if err != nil {
			r.t.Fatalf("dnsperf -s %s: %v\n%s", server, err, out)
		}
		qps := reFloat(`Queries per second:\s+([0-9.]+)`, string(out))
		lost := reFloat(`Queries lost:\s+\d+ \(([0-9.]+)%\)`, string(out))
		codes := regexp.MustCompile(`Response codes:\s+(.*)`).FindStringSubmatch(string(out))
		note := fmt.Sprintf("%.1f%% lost", lost)
		if codes != nil {
			note += ", " + codes[1]
		}
		return qps, note
	}
	// Both must answer the names before they are timed.
	for _, s := range []string{nodeAddr, peerAddr} {
		r.waitFor(30*time.Second, "both names to resolve at "+s, func() (bool, string) {
			out, err := r.client(context.Background(), r.tools["dnsperf"], "-s", s, "-d", queries, "-n", "1").CombinedOutput()
			return err == nil && strings.Contains(string(out), "NOERROR 2 "), string(out)
		})
	}
	return func() (float64, string) { return run(nodeAddr) }, func() (float64, string) { return run(peerAddr) }
}

// startKamailio starts Kamailio once for the SIP rows.
func (r *rig) startKamailio() {
	if r.kamailioPID != 0 {
		r.peerPID = r.kamailioPID
		return
	}
	cfg, err := os.ReadFile("testdata/kamailio.cfg")
	if err != nil {
		r.t.Fatal(err)
	}
	p := r.writeFile("kamailio.cfg", strings.ReplaceAll(strings.ReplaceAll(string(cfg), "LISTEN", peerAddr), "UPLINK", peerUplink))
	run := filepath.Join(r.dir, "kamrun")
	if err := os.MkdirAll(run, 0o755); err != nil {
		r.t.Fatal(err)
	}
	// -m/-M: the default 64 MB of shared memory runs out at ~1000 calls/s.
	r.kamailioPID = r.daemon("kamailio", r.peer, *serverCPU, filepath.Join(r.dir, "kamailio.log"), r.tools["kamailio"],
		"-f", p, "-DD", "-E", "-Y", run, "-P", filepath.Join(run, "pid"), "-m", "256", "-M", "16")
	r.peerPID = r.kamailioPID
}

// usersCSV is SIPp's injection file: extension;[authentication ...];expires.
func (r *rig) usersCSV(name string, first, n int, expires ...int) string {
	if len(expires) == 0 {
		expires = []int{3600}
	}
	var b strings.Builder
	b.WriteString("SEQUENTIAL\n")
	// Field 2 is the REGISTER's Expires (register.xml): SIPp takes the
	// lines in order, so with several values each user cycles through
	// them.
	for _, e := range expires {
		for i := range n {
			u := first + i
			fmt.Fprintf(&b, "%d;[authentication username=%d password=pw%d];%d\n", u, u, u, e)
		}
	}
	return r.writeFile(name, b.String())
}

// addUser creates ext (password pw<ext>) through the node's control
// socket with the node's administrator key.
func (r *rig) addUser(ext int) {
	if r.added[ext] {
		return // the register row added the calls row's caller
	}
	if r.added == nil {
		r.added = map[int]bool{}
	}
	r.added[ext] = true
	add := exec.Command(r.bin, "user", "add", "--control", r.sock, strconv.Itoa(ext))
	add.Stdin = strings.NewReader(fmt.Sprintf("pw%d\n", ext))
	if out, err := add.CombinedOutput(); err != nil {
		r.t.Fatalf("sipmesh user add %d: %v\n%s", ext, err, out)
	}
}

// sippResult is what one SIPp run measured.
type sippResult struct {
	ok, failed int
	elapsed    time.Duration
}

func (s sippResult) rate() float64 {
	if s.elapsed <= 0 {
		return 0
	}
	return float64(s.ok) / s.elapsed.Seconds()
}

func (s sippResult) String() string {
	f := 0.0
	if s.ok+s.failed > 0 {
		f = 100 * float64(s.failed) / float64(s.ok+s.failed)
	}
	return fmt.Sprintf("%d ok, %d failed (%.1f%%)", s.ok, s.failed, f)
}

// sipp runs a SIPp client scenario against server for d (0: until
// -m calls are done), closed-loop with at most *window calls in
// progress, and reads its statistics file.
func (r *rig) sipp(server, scenario string, d time.Duration, extra ...string) sippResult {
	t := r.t
	stat := filepath.Join(r.dir, fmt.Sprintf("stat-%d.csv", time.Now().UnixNano()))
	args := []string{r.tools["sipp"], server, "-sf", filepath.Join(r.abs("testdata"), scenario),
		"-nostdin", "-trace_stat", "-stf", stat, "-trace_err", "-error_file", stat + ".err", "-fd", "1", "-recv_timeout", "2000"}
	if d > 0 {
		args = append(args, "-r", "100000", "-l", strconv.Itoa(*window), "-timeout", fmt.Sprintf("%ds", int(d.Seconds())), "-timeout_error")
	}
	args = append(args, extra...)
	ctx, cancel := context.WithTimeout(context.Background(), d+60*time.Second)
	defer cancel()
	cmd := r.client(ctx, args...)
	out, _ := cmd.CombinedOutput() // exit status is non-zero when a call failed
	res, err := readSippStat(stat)
	if err != nil {
		t.Fatalf("sipp %s %s: %v\n%s", scenario, server, err, lastLines(string(out), 20))
	}
	if res.failed*100 > res.ok+res.failed {
		// Over 1 % failed: show why (SIPp's error log, counted by kind).
		b, _ := os.ReadFile(stat + ".err")
		t.Logf("sipp %s %s: %v; SIPp's errors: %s", scenario, server, res, sippErrors(string(b)))
	}
	return res
}

func (r *rig) abs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		r.t.Fatal(err)
	}
	return a
}

// readSippStat takes the cumulative counters of the last line of a SIPp
// -trace_stat file (semicolon-separated, header first).
func readSippStat(path string) (sippResult, error) {
	var res sippResult
	f, err := os.Open(path)
	if err != nil {
		return res, err
	}
	defer f.Close()
	cr := csv.NewReader(f)
	cr.Comma = ';'
	cr.FieldsPerRecord = -1
	recs, err := cr.ReadAll()
	if err != nil {
		return res, err
	}
	if len(recs) < 2 {
		return res, fmt.Errorf("%s: no statistics line", path)
	}
	head, last := recs[0], recs[len(recs)-1]
	col := func(name string) string {
		if i := slices.Index(head, name); i >= 0 && i < len(last) {
			return last[i]
		}
		return ""
	}
	res.ok, _ = strconv.Atoi(col("SuccessfulCall(C)"))
	res.failed, _ = strconv.Atoi(col("FailedCall(C)"))
	// StartTime and CurrentTime are "date<TAB>time<TAB>epoch.micro".
	epoch := func(name string) (float64, error) {
		f := strings.Split(col(name), "\t")
		return strconv.ParseFloat(f[len(f)-1], 64)
	}
	start, err1 := epoch("StartTime")
	now, err2 := epoch("CurrentTime")
	if err1 != nil || err2 != nil {
		return res, fmt.Errorf("%s: StartTime %q, CurrentTime %q", path, col("StartTime"), col("CurrentTime"))
	}
	res.elapsed = time.Duration((now - start) * float64(time.Second))
	return res, nil
}

// registerRow: SIPp REGISTER + 401 + authenticated REGISTER + 200,
// cycling through *users subscribers, against the node and Kamailio.
// Each user refreshes its binding many times a second: the node's
// registrar stores a refresh that changes nothing but the expiry only
// every so often (registrar.DHTLocation), so this row measures mostly
// refreshes; regWriteRow measures a REGISTER that is stored each time.
func (r *rig) registerRow() (func() (float64, string), func() (float64, string)) {
	return r.registerLoad("users.csv", 3600)
}

// regWriteRow is registerRow with every user's Expires alternating
// between an hour and half an hour: each REGISTER changes the binding,
// so the node stores each one in the DHT (signed, sent to the key's
// owner and replicas), and Kamailio updates its location table.
func (r *rig) regWriteRow() (func() (float64, string), func() (float64, string)) {
	return r.registerLoad("users-write.csv", 3600, 1800)
}

// steady waits, before the SIP rows measure, until the mesh has been
// up for the DHT's hand-off window: for that long after its ring
// neighbours change, the owner of a key asks the key's replicas before it
// answers (ssr/dht HandoffWindow), which is what a node does after it
// boots, not in the steady state the rows compare. Run alone, a SIP row
// would otherwise measure its first seconds inside that window.
func (r *rig) steady() {
	if wait := dht.DefaultParams.HandoffWindow + 2*time.Second - time.Since(r.meshUp); wait > 0 {
		r.t.Logf("waiting %v for the mesh's DHT to leave its hand-off window", wait.Round(time.Second))
		time.Sleep(wait)
	}
}

// registerLoad is the register rows' load with the Expires values given.
func (r *rig) registerLoad(csvName string, expires ...int) (func() (float64, string), func() (float64, string)) {
	r.steady()
	r.startKamailio()
	for i := range *users {
		r.addUser(2000 + i)
	}
	csvPath := r.usersCSV(csvName, 2000, *users, expires...)
	// The accounts reach the node's registrar through its DHT: wait until
	// one registration goes through on each side.
	for _, s := range []string{nodeAddr, peerAddr} {
		r.waitFor(20*time.Second, "a first REGISTER at "+s, func() (bool, string) {
			res := r.sipp(s, "register.xml", 0, "-inf", csvPath, "-m", "1")
			return res.ok == 1, res.String()
		})
	}
	run := func(server string) (float64, string) {
		res := r.sipp(server, "register.xml", *roundDur, "-inf", csvPath)
		return res.rate(), res.String()
	}
	return func() (float64, string) { return run(nodeAddr) }, func() (float64, string) { return run(peerAddr) }
}

// callsRow: SIPp UAC (port 5061) → proxy → SIPp UAS (another address,
// port 5070, the
// scenario of testdata/uas.xml) registered as 3000 behind it.
func (r *rig) callsRow() (func() (float64, string), func() (float64, string)) {
	r.steady()
	r.startKamailio()
	r.addUser(3000)
	r.addUser(2000) // the caller: calls from the LAN are authenticated (407)
	csvPath := r.usersCSV("callee.csv", 3000, 1)
	callerCSV := r.usersCSV("caller.csv", 2000, 1)
	run := func(server, local, callee string) (float64, string) {
		// Register the callee from the UAS's own port, then answer there.
		r.waitFor(20*time.Second, "callee 3000 to register at "+server, func() (bool, string) {
			res := r.sipp(server, "register.xml", 0, "-inf", csvPath, "-m", "1", "-p", "5070", "-i", callee)
			return res.ok == 1, res.String()
		})
		_, stop := r.sippUAS(r.cli.Name, callee)
		defer stop()
		res := r.sipp(server, "call.xml", *roundDur, "-inf", callerCSV, "-p", "5061", "-i", local)
		return res.rate(), res.String()
	}
	return func() (float64, string) { return run(nodeAddr, nodeCli, nodeCallee) },
		func() (float64, string) { return run(peerAddr, peerCli, peerCallee) }
}

// gatewayRow: the calls of the calls row, but to an Internet callee: a
// SIPp UAC on the LAN (port 5061) → the node, which is the mesh's
// gateway, out of its uplink (proxy's uplink.go: its phones' service
// hands the call to its Internet side, which sends it from the uplink
// with its own Record-Route) → SIPp UAS on the Internet; against the same
// calls through Kamailio as a plain outbound proxy (challenge, then
// relay from its uplink address). The caller is authenticated on both.
func (r *rig) gatewayRow() (func() (float64, string), func() (float64, string)) {
	r.restartAsGateway()
	r.startKamailio()
	r.addUser(2000)
	callerCSV := r.usersCSV("caller.csv", 2000, 1)
	r.waitFor(30*time.Second, "the node to choose itself as gateway", func() (bool, string) {
		out, err := exec.Command(r.bin, "gateways", "--json", "--control", r.sock).CombinedOutput()
		return err == nil && strings.Contains(strings.Join(strings.Fields(string(out)), ""), `"usable":true`), string(out)
	})
	run := func(server, local string) (float64, string) {
		uasOut, stop := r.sippUAS(r.inet.Name, inetCallee)
		defer stop()
		// One call first: the route works, and SIPp's UAS is listening.
		r.waitFor(20*time.Second, "a first call out through "+server, func() (bool, string) {
			res := r.sipp(server, "callout.xml", 0, "-inf", callerCSV, "-m", "1", "-p", "5061", "-i", local)
			return res.ok == 1, res.String() + "; UAS: " + lastLines(uasOut.String(), 5)
		})
		res := r.sipp(server, "callout.xml", *roundDur, "-inf", callerCSV, "-p", "5061", "-i", local)
		return res.rate(), res.String()
	}
	return func() (float64, string) { return run(nodeAddr, nodeCli) },
		func() (float64, string) { return run(peerAddr, peerCli) }
}

func reFloat(re, s string) float64 {
	m := regexp.MustCompile(re).FindStringSubmatch(s)
	if m == nil {
		return 0
	}
	f, _ := strconv.ParseFloat(m[1], 64)
	return f
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// sippErrors counts the events of a SIPp error file by kind: the text
// after the timestamp up to the first quote or colon, numbers blanked.
func sippErrors(s string) string {
	ev := regexp.MustCompile(`\d{10}\.\d{6}: ([^'\n]{0,40})`)
	digits := regexp.MustCompile(`[0-9]+(-[0-9]+@[0-9.]+)?`)
	n := map[string]int{}
	for _, m := range ev.FindAllStringSubmatch(s, -1) {
		n[strings.TrimSpace(digits.ReplaceAllString(m[1], "N"))]++
	}
	var out []string
	for k, v := range n {
		out = append(out, fmt.Sprintf("%d× %q", v, k))
	}
	slices.Sort(out)
	return strings.Join(out, "; ")
}
