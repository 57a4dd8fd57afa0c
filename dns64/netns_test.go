//go:build linux

package dns64

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/internal/netns"
	"github.com/sipmesh/sipmesh/netx"
)

// requireTools fails the test loudly when a real peer is not installed: CI
// installs them (Debian packages), a developer must too.
func requireTools(t testing.TB, tools map[string]string) {
	t.Helper()
	for tool, pkg := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s needs %s (Debian package %s): apt-get install %s", t.Name(), tool, pkg, pkg)
		}
	}
}

// unboundConf is a resolver that answers example. and the reverse zone
// from local data only, so no query leaves the namespace.
func unboundConf(dir, iface string, port int, data []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `server:
	interface: %s
	port: %d
	do-daemonize: no
	use-syslog: no
	logfile: ""
	verbosity: 1
	username: ""
	chroot: ""
	directory: %q
	pidfile: ""
	do-ip6: no
	access-control: 0.0.0.0/0 allow
	module-config: "iterator"
	num-threads: 1
	msg-cache-size: 4m
	rrset-cache-size: 4m
`, iface, port, dir)
	for _, d := range data {
		fmt.Fprintf(&b, "\t%s\n", d)
	}
	b.WriteString("remote-control:\n\tcontrol-enable: no\n")
	return b.String()
}

// startUnbound runs unbound with conf (inside ns when ns is not nil) until
// the test ends, killed by PID, and waits until it answers probe over UDP.
func startUnbound(t testing.TB, ns *netns.NS, nw netx.Network, conf string, probe netip.AddrPort) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "unbound.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("unbound-checkconf", path).CombinedOutput(); err != nil {
		t.Fatalf("unbound-checkconf: %v\n%s", err, out)
	}
	var cmd *exec.Cmd
	if ns != nil {
		cmd = ns.Command(context.Background(), "unbound", "-d", "-c", path)
	} else {
		cmd = exec.Command("unbound", "-d", "-c", path)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	// unbound logs "start of service" (verbosity 1) once its sockets are
	// open: wait for that line rather than polling.
	var mu sync.Mutex
	var out strings.Builder
	started := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		sc := bufio.NewScanner(pr)
		once := sync.Once{}
		for sc.Scan() {
			mu.Lock()
			out.WriteString(sc.Text() + "\n")
			mu.Unlock()
			if strings.Contains(sc.Text(), "start of service") {
				once.Do(func() { close(started) })
			}
		}
		cmd.Wait()
		pr.Close()
	}()
	t.Cleanup(func() {
		cmd.Process.Kill() // by PID: only the process this test started
		<-exited
	})
	output := func() string { mu.Lock(); defer mu.Unlock(); return out.String() }
	select {
	case <-started:
	case <-exited:
		t.Fatalf("unbound exited: %s", output())
	case <-time.After(10 * time.Second):
		t.Fatalf("unbound did not start within 10 s: %s", output())
	}
	if _, err := tryExchange(nw, "udp", probe, question("ready.invalid.", dns.TypeA), 5*time.Second); err != nil {
		t.Fatalf("unbound on %v does not answer: %v\n%s", probe, err, output())
	}
}

// TestRealPeers runs the server on kernel sockets in a network namespace,
// forwarding to a real unbound in a second namespace, and asks it with
// dig: the acceptance case for DNS64 and the .mesh zone.
func TestRealPeers(t *testing.T) {
	netns.RequireRoot(t)
	requireTools(t, map[string]string{"dig": "dnsutils", "unbound": "unbound", "unbound-checkconf": "unbound"})
	leakcheck.Check(t)

	node, resolver := netns.New(t, "dns64"), netns.New(t, "unbound")
	netns.Veth(t, node, "d0", resolver, "u0")
	node.Run(t, "ip", "addr", "add", "10.53.0.1/24", "dev", "d0")
	node.Run(t, "ip", "addr", "add", "10.53.0.3/24", "dev", "d0")
	node.Run(t, "ip", "-6", "addr", "add", "fd53::1/64", "dev", "d0", "nodad")
	resolver.Run(t, "ip", "addr", "add", "10.53.0.2/24", "dev", "u0")

	data := []string{
		`local-zone: "example." static`,
		`local-data: "example. 3600 IN SOA ns.example. host.example. 1 3600 600 86400 60"`,
		`local-data: "v4only.example. 300 IN A 198.51.100.10"`,
		`local-data: "global.example. 300 IN A 8.8.8.8"`,
		`local-zone: "100.51.198.in-addr.arpa." static`,
		`local-data-ptr: "198.51.100.10 v4only.example."`,
	}
	for i := range 100 {
		data = append(data, fmt.Sprintf(`local-data: "big.example. 300 IN A 8.8.%d.%d"`, i/250, i%250+1))
	}
	upstream := netip.MustParseAddrPort("10.53.0.2:53")
	startUnbound(t, resolver, node.Network(), unboundConf(t.TempDir(), "10.53.0.2", 53, data), upstream)

	log := testLogger(t)
	zone := StaticZone{"node1.mesh": {netip.MustParseAddr("fd53::1")}, "phone.node1.mesh": {netip.MustParseAddr("10.53.0.77")}}
	// The network-specific prefix on 10.53.0.1 and fd53::1, the
	// Well-Known Prefix on 10.53.0.3.
	nsp := startServer(t, Config{Network: node.Network(), Zone: zone, Logger: log, Upstreams: []netip.AddrPort{upstream},
		Listen: []Listen{{Addr: netip.MustParseAddr("10.53.0.1")}, {Addr: netip.MustParseAddr("fd53::1")}},
		Prefix: netip.MustParsePrefix("2001:db8:64::/96")}, make(chan error, 1))
	startServer(t, Config{Network: node.Network(), Zone: zone, Logger: log, Upstreams: []netip.AddrPort{upstream},
		Listen: []Listen{{Addr: netip.MustParseAddr("10.53.0.3")}}}, make(chan error, 1))

	dig := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, err := node.Command(ctx, append([]string{"dig", "+time=3", "+tries=1"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("dig %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	short := func(args ...string) []string {
		t.Helper()
		return strings.Fields(dig(append([]string{"+short"}, args...)...))
	}
	tests := []struct {
		args []string
		want []string
	}{
		{[]string{"AAAA", "v4only.example", "@10.53.0.1"}, []string{"2001:db8:64::c633:640a"}},
		{[]string{"AAAA", "v4only.example", "@10.53.0.3"}, nil}, // RFC 6052 §3.1
		{[]string{"AAAA", "global.example", "@10.53.0.3"}, []string{"64:ff9b::808:808"}},
		{[]string{"A", "v4only.example", "@10.53.0.1"}, []string{"198.51.100.10"}},
		{[]string{"-x", "2001:db8:64::c633:640a", "@10.53.0.1"}, []string{"10.100.51.198.in-addr.arpa.", "v4only.example."}},
		{[]string{"A", "sipserver.mesh", "@10.53.0.1"}, []string{"10.53.0.1"}},
		{[]string{"A", "sipserver.mesh", "@10.53.0.3"}, []string{"10.53.0.3"}},
		{[]string{"-6", "AAAA", "sipserver.mesh", "@fd53::1"}, []string{"fd53::1"}},
		{[]string{"+tcp", "AAAA", "node1.mesh", "@10.53.0.1"}, []string{"fd53::1"}},
		{[]string{"A", "phone.node1.mesh", "@10.53.0.1"}, []string{"10.53.0.77"}},
		{[]string{"SRV", "_sip._udp.mesh", "@10.53.0.1"}, []string{"0", "0", "5060", "sipserver.mesh."}},
		{[]string{"NAPTR", "mesh", "@10.53.0.1"}, []string{"10", "10", `"S"`, `"SIP+D2U"`, `""`, "_sip._udp.mesh.", "10", "20", `"S"`, `"SIP+D2T"`, `""`, "_sip._tcp.mesh."}},
	}
	for _, tt := range tests {
		if got := short(tt.args...); !slices.Equal(got, tt.want) {
			t.Errorf("dig %v:\n got %q\nwant %q", tt.args, got, tt.want)
		}
	}

	// Status and flags: NXDOMAIN with AA and the SOA, NODATA likewise.
	out := dig("A", "nosuch.mesh", "@10.53.0.1")
	if !strings.Contains(out, "status: NXDOMAIN") || !strings.Contains(out, "flags: qr aa rd;") ||
		!strings.Contains(out, "mesh.\t\t\t30\tIN\tSOA\tsipserver.mesh. hostmaster.mesh.") {
		t.Errorf("NXDOMAIN:\n%s", out)
	}
	out = dig("A", "node1.mesh", "@10.53.0.1")
	if !strings.Contains(out, "status: NOERROR") || !strings.Contains(out, "ANSWER: 0, AUTHORITY: 1") || !strings.Contains(out, "flags: qr aa rd;") {
		t.Errorf("NODATA:\n%s", out)
	}
	// NXDOMAIN from unbound passes through DNS64 (RFC 6147 §5.1.2).
	if out := dig("AAAA", "nosuch.example", "@10.53.0.1"); !strings.Contains(out, "status: NXDOMAIN") {
		t.Errorf("upstream NXDOMAIN:\n%s", out)
	}
	// 100 A records do not fit unbound's UDP answer: the server retries
	// over TCP and synthesizes all of them for a TCP client; a UDP client
	// without EDNS gets TC, and dig's own retry over TCP gets them all.
	if got := short("+tcp", "AAAA", "big.example", "@10.53.0.1"); len(got) != 100 {
		t.Errorf("big.example over TCP: %d records", len(got))
	}
	out = dig("+noedns", "+ignore", "AAAA", "big.example", "@10.53.0.1")
	if !strings.Contains(out, "flags: qr tc rd ra;") {
		t.Errorf("big.example over UDP is not truncated:\n%s", out)
	}
	if got := short("AAAA", "big.example", "@10.53.0.1"); len(got) != 100 {
		t.Errorf("big.example with dig's TC fallback: %d records", len(got))
	}
	if st := nsp.Stats(); st.TCPRetries == 0 || st.Synthesized == 0 {
		t.Errorf("stats %+v: want TCP retries towards unbound and synthesized answers", st)
	}
	t.Logf("dig AAAA v4only.example @10.53.0.1:\n%s", dig("AAAA", "v4only.example", "@10.53.0.1"))
}
