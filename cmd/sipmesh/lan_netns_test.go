//go:build linux

package main

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/gateway"
	"github.com/sipmesh/sipmesh/internal/netns"
	"github.com/sipmesh/sipmesh/ssr"
)

// TestPlugInDHCPAndDNS (issue 5): phones on the LANs of real `sipmesh
// node` processes get everything from DHCP and DNS. Three nodes in a line
// n1–n2–n3 (IPv6 link-local mesh links); n1 and n3 have phone LANs (a
// bridge with one veth per phone). n1 derives its LAN subnet from its ID
// and claims it in the DHT; n3 has a configured lan-address. Busybox
// udhcpc in each phone namespace gets a lease with option 120 =
// sipserver.mesh and the node as DNS server; dig from each phone at the
// DNS server it was given answers sipserver.mesh with that node's own LAN
// address (authoritatively); dig on n3 at n3's LAN address resolves
// n1.mesh to n1's mesh address and phone1.n1.mesh (the DHCP host name) to
// phone 1's lease; n1 restarts, keeps both leases (lease file in its state
// dir), and both udhcpc clients renew and keep their addresses.
func TestPlugInDHCPAndDNS(t *testing.T) {
	netns.RequireRoot(t)
	busybox := needTool(t, "busybox", "busybox")
	dig := needTool(t, "dig", "dnsutils")
	m := newLineMesh(t, "d", 3, 30, func(i int) string {
		switch i {
		case 0:
			return "lan-interface lan0\ndhcp on\n" // address derived and claimed
		case 2:
			return "lan-interface lan0\nlan-address 192.168.33.1/24\ndhcp on\n"
		}
		return ""
	})
	n1, n3 := m.nodes[0], m.nodes[2]
	p1 := m.plugPhone(0, "p1")
	p2 := m.plugPhone(0, "p2")
	p3 := m.plugPhone(2, "p3")
	start := time.Now()
	m.startAll()
	m.waitRing()
	t.Logf("ring of 3 formed %v after start", time.Since(start).Round(time.Millisecond))

	// n1's address appears on its LAN once it has claimed a subnet.
	var n1LAN netip.Prefix
	waitFor(t, 20*time.Second, "n1 to put its derived LAN address on lan0", func() (bool, string) {
		out, _ := n1.ns.Try("ip", "-4", "-o", "addr", "show", "dev", "lan0")
		p, ok := parseInet(out)
		n1LAN = p
		return ok, out
	})
	t.Logf("n1 claimed LAN %v (%v after start)", n1LAN, time.Since(start).Round(time.Millisecond))
	n3LAN := netip.MustParsePrefix("192.168.33.1/24")

	dir := t.TempDir()
	script := writeScript(t, dir)
	// Started only now: n1's DHCP server comes up after its claim.
	leaseStart := time.Now()
	c1 := startUdhcpc(t, p1, busybox, script, "phone1", nil)
	c2 := startUdhcpc(t, p2, busybox, script, "phone2", nil)
	c3 := startUdhcpc(t, p3, busybox, script, "phone3", nil)
	type phone struct {
		name string
		ns   *netns.NS
		c    *udhcpc
		lan  netip.Prefix
		ip   string
	}
	phones := []*phone{{"phone1", p1, c1, n1LAN, ""}, {"phone2", p2, c2, n1LAN, ""}, {"phone3", p3, c3, n3LAN, ""}}
	for _, p := range phones {
		ev := p.c.wait(t, 20*time.Second, "bound")
		p.ip = ev.vars["ip"]
		ip, err := netip.ParseAddr(p.ip)
		if err != nil || !p.lan.Masked().Contains(ip) || ip == p.lan.Addr() {
			t.Fatalf("%s bound to %q, want a host of %v", p.name, p.ip, p.lan)
		}
		node := p.lan.Addr().String()
		for k, want := range map[string]string{"sipsrv": "sipserver.mesh", "dns": node, "router": node, "serverid": node, "domain": "mesh"} {
			if got := ev.vars[k]; got != want {
				t.Errorf("%s: udhcpc got %s=%q, want %q", p.name, k, got, want)
			}
		}
		t.Logf("%s bound %v after udhcpc started: %v", p.name, time.Since(leaseStart).Round(time.Millisecond), ev.vars)
	}
	if t.Failed() {
		t.FailNow()
	}

	// sipserver.mesh, asked of the DNS server DHCP named, is that node.
	for _, p := range phones {
		dns := p.lan.Addr().String()
		out := digIn(t, p.ns, dig, dns, "sipserver.mesh", "A")
		if got := digAnswers(out); len(got) != 1 || got[0] != dns {
			t.Errorf("%s: dig @%s sipserver.mesh A answered %v, want [%s]\n%s", p.name, dns, got, dns, out)
		} else if !strings.Contains(digFlags(out), " aa") {
			t.Errorf("%s: answer for sipserver.mesh not authoritative:\n%s", p.name, out)
		} else {
			t.Logf("%s: dig @%s sipserver.mesh → %s (flags%s)", p.name, dns, got[0], digFlags(out))
		}
	}

	// On n3, n1's name (claimed in the DHT) resolves to n1's mesh address,
	// and phone1's host name (published from its lease) to its address.
	n1Mesh := n1.id.Addr().String()
	var out string
	waitFor(t, 15*time.Second, "n1.mesh to resolve on n3", func() (bool, string) {
		out = digIn(t, n3.ns, dig, n3LAN.Addr().String(), "n1.mesh", "AAAA")
		got := digAnswers(out)
		return len(got) == 1 && got[0] == n1Mesh, out
	})
	t.Logf("on n3: dig @%s n1.mesh AAAA → %s (n1's mesh address)", n3LAN.Addr(), n1Mesh)
	waitFor(t, 15*time.Second, "phone1.n1.mesh to resolve on n3", func() (bool, string) {
		out = digIn(t, n3.ns, dig, n3LAN.Addr().String(), "phone1.n1.mesh", "A")
		got := digAnswers(out)
		return len(got) == 1 && got[0] == phones[0].ip, out
	})
	t.Logf("on n3: dig @%s phone1.n1.mesh A → %s (phone 1's lease)", n3LAN.Addr(), phones[0].ip)

	// Restart n1: its leases survive in its state dir, and both its
	// phones renew and keep their addresses.
	leaseFile := filepath.Join(m.tmp, "n1", "state", "leases-lan0.json")
	n1.stop(t)
	before, err := os.ReadFile(leaseFile)
	if err != nil {
		t.Fatalf("n1 stopped without a lease file: %v", err)
	}
	for _, p := range phones[:2] {
		if !strings.Contains(string(before), `"`+p.ip+`"`) {
			t.Fatalf("lease file of n1 lacks %s's lease %s:\n%s", p.name, p.ip, before)
		}
	}
	restart := time.Now()
	n1.start(t, m.bin, m.tmp, m.ifaces[0])
	waitFor(t, 20*time.Second, "n1's phone LAN to come up again", func() (bool, string) {
		b, _ := os.ReadFile(n1.log)
		return strings.Count(string(b), "phone LAN up") >= 2, "no second \"phone LAN up\" in n1's log"
	})
	t.Logf("n1 restarted; phone LAN up again after %v", time.Since(restart).Round(time.Millisecond))
	for _, p := range phones[:2] {
		if err := p.c.cmd.Process.Signal(syscall.SIGUSR1); err != nil { // renew now
			t.Fatal(err)
		}
		ev := p.c.wait(t, 20*time.Second, "renew", "bound")
		if ev.vars["ip"] != p.ip || ev.vars["sipsrv"] != "sipserver.mesh" {
			t.Errorf("%s after n1's restart: %s %v, want to keep %s", p.name, ev.kind, ev.vars, p.ip)
		} else {
			t.Logf("%s renewed after n1's restart (%s): kept %s, %v after the restart", p.name, ev.kind, p.ip, time.Since(restart).Round(time.Millisecond))
		}
	}
	after, err := os.ReadFile(leaseFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range phones[:2] {
		if !strings.Contains(string(after), `"`+p.ip+`"`) {
			t.Errorf("n1's lease file after the restart lacks %s's lease %s:\n%s", p.name, p.ip, after)
		}
	}
}

// lineMesh is n `sipmesh node` processes in namespaces of their own on a
// line of veth links (n1–n2–…), with the mesh administrator key on every
// node so any of them can add subscribers.
type lineMesh struct {
	t        *testing.T
	bin, tmp string
	nodes    []*nsNode
	ifaces   [][]string
	ports    []int // phone ports plugged into each node's LAN bridge
}

// newLineMesh prepares the namespaces, links, keys (derived from seed, so
// IDs are stable) and configs (extra(i) appended for node i, from 0); the
// nodes start with startAll.
func newLineMesh(t *testing.T, label string, n int, seed byte, extra func(i int) string) *lineMesh {
	t.Helper()
	m := &lineMesh{t: t, bin: buildSipmesh(t), tmp: t.TempDir(), ports: make([]int, n)}
	sockDir, err := os.MkdirTemp("", "sm"+label) // socket paths must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	adminPath := filepath.Join(m.tmp, "admin.key")
	if _, _, err := gateway.LoadOrCreateAdminKey(adminPath); err != nil {
		t.Fatal(err)
	}
	spaces := make([]*netns.NS, n)
	for i := range spaces {
		spaces[i] = netns.New(t, fmt.Sprintf("%s%d", label, i+1))
	}
	m.ifaces = make([][]string, n)
	for i := 0; i+1 < n; i++ {
		a, b := fmt.Sprintf("ve-n%d", i+2), fmt.Sprintf("ve-n%d", i+1)
		netns.Veth(t, spaces[i], a, spaces[i+1], b)
		m.ifaces[i] = append(m.ifaces[i], a)
		m.ifaces[i+1] = append(m.ifaces[i+1], b)
	}
	for i, ns := range spaces {
		for _, ifn := range m.ifaces[i] {
			ns.LinkLocal(t, ifn)
		}
		nd := &nsNode{name: fmt.Sprintf("n%d", i+1), ns: ns, sock: filepath.Join(sockDir, fmt.Sprintf("n%d.sock", i+1))}
		nd.id = writeNodeKey(t, filepath.Join(m.tmp, nd.name, "state"), seed+byte(i))
		nd.extra = "admin-key " + adminPath + "\n" + extra(i)
		if strings.Contains(nd.extra, "lan-interface lan0") {
			ns.Run(t, "ip", "link", "add", "lan0", "type", "bridge")
			ns.Run(t, "ip", "link", "set", "lan0", "up")
			// A configured lan-address is the system's (as OpenWrt's
			// netifd sets it); the node only uses it.
			if _, a, ok := strings.Cut(nd.extra, "lan-address "); ok {
				a, _, _ = strings.Cut(a, "\n")
				ns.Run(t, "ip", "addr", "add", a, "dev", "lan0")
			}
		}
		m.nodes = append(m.nodes, nd)
	}
	return m
}

func (m *lineMesh) startAll() {
	for i, nd := range m.nodes {
		nd.start(m.t, m.bin, m.tmp, m.ifaces[i])
	}
}

// waitRing waits until the ring is right: every node's first successor
// is the next ID clockwise. Before that, nodes may disagree on which node
// holds a DHT key, and a record just stored may not be found yet.
func (m *lineMesh) waitRing() {
	m.t.Helper()
	ids := make([]ssr.NodeID, 0, len(m.nodes))
	for _, nd := range m.nodes {
		ids = append(ids, nd.id)
	}
	slices.Sort(ids)
	waitFor(m.t, 30*time.Second, "the ring", func() (bool, string) {
		for _, nd := range m.nodes {
			st, err := nd.status(m.bin)
			if err != nil {
				return false, err.Error()
			}
			want := ids[(slices.Index(ids, nd.id)+1)%len(ids)].String()
			if len(st.Successors) == 0 || st.Successors[0].ID != want {
				return false, fmt.Sprintf("%s: successors %+v, want %s first", nd.name, st.Successors, want)
			}
		}
		return true, ""
	})
}

// plugPhone creates a phone namespace with eth0 plugged into node i's LAN
// bridge.
func (m *lineMesh) plugPhone(i int, label string) *netns.NS {
	m.t.Helper()
	ph := netns.New(m.t, label)
	m.ports[i]++
	port := fmt.Sprintf("lp%d", m.ports[i])
	netns.Veth(m.t, m.nodes[i].ns, port, ph, "eth0")
	m.nodes[i].ns.Run(m.t, "ip", "link", "set", port, "master", "lan0")
	return ph
}

// addUser creates subscriber ext through node i's control socket.
func (m *lineMesh) addUser(i int, ext, password string) {
	m.t.Helper()
	add := exec.Command(m.bin, "user", "add", "--control", m.nodes[i].sock, ext)
	add.Stdin = strings.NewReader(password + "\n")
	if out, err := add.CombinedOutput(); err != nil {
		m.t.Fatalf("sipmesh user add %s on n%d: %v\n%s", ext, i+1, err, out)
	}
}

// waitBinding waits until node i finds ext's binding at node `at` in the
// DHT.
func (m *lineMesh) waitBinding(i int, ext string, at int) {
	m.t.Helper()
	want := m.nodes[at].id.String()
	waitFor(m.t, 20*time.Second, fmt.Sprintf("n%d to see %s's binding at n%d", i+1, ext, at+1), func() (bool, string) {
		o, err := exec.Command(m.bin, "lookup", "--control", m.nodes[i].sock, ext).CombinedOutput()
		return err == nil && strings.Contains(string(o), want[:8]), string(o)
	})
}

func needTool(t testing.TB, tool, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		t.Fatalf("%s not found (Debian package %s; make test installs it as root): this test needs the real tool: %v", tool, pkg, err)
	}
	return p
}

// parseInet returns the first IPv4 address in `ip -4 -o addr` output.
func parseInet(out string) (netip.Prefix, bool) {
	f := strings.Fields(out)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "inet" {
			p, err := netip.ParsePrefix(f[i+1])
			return p, err == nil
		}
	}
	return netip.Prefix{}, false
}

// udhcpcScript is the hook busybox udhcpc runs on every state change. It
// configures the address as a phone's stack would and prints one line per
// event with what the client received ($sipsrv: option 120, asked for
// with -O sipsrv). With PHONE_DIR set it also provisions a baresip phone
// there, as a desk phone uses its DHCP answer: the SIP server named by
// option 120 becomes the account's domain (and so its registrar), the
// DNS servers resolve it, and the leased address is the phone's own.
const udhcpcScript = `#!/bin/sh
case "$1" in
bound|renew)
	ip addr replace "$ip/$subnet" dev "$interface"
	if [ -n "$PHONE_DIR" ]; then
		{
			cat "$PHONE_DIR/config.base"
			echo "net_interface $ip"
			echo "sip_listen $ip:5060"
			for d in $dns; do echo "dns_server $d:53"; done
		} >"$PHONE_DIR/config"
		# Option 120 names the phone's outbound proxy (RFC 3361 §1); only
		# the tests that dial outside the mesh need it said (PHONE_OUTBOUND).
		ob=""
		[ -n "$PHONE_OUTBOUND" ] && ob=";outbound=\"sip:$sipsrv;lr\""
		echo "<sip:$PHONE_USER@$sipsrv>;auth_pass=$PHONE_PASS;regint=300;answermode=auto;audio_codecs=pcmu;ptime=20$ob" >"$PHONE_DIR/accounts"
	fi
	;;
deconfig)
	ip addr flush dev "$interface"
	;;
esac
echo "EVENT $1 ip=$ip subnet=$subnet router=$router dns=$dns domain=$domain serverid=$serverid lease=$lease sipsrv=$sipsrv"
`

func writeScript(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "udhcpc.sh")
	if err := os.WriteFile(p, []byte(udhcpcScript), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

type udhcpcEvent struct {
	kind string
	vars map[string]string
}

// udhcpc is a busybox udhcpc process that stays running after it is
// bound, reporting the script's events.
type udhcpc struct {
	cmd    *exec.Cmd
	events chan udhcpcEvent
	stderr strings.Builder
}

func startUdhcpc(t *testing.T, ns *netns.NS, busybox, script, hostname string, env []string) *udhcpc {
	t.Helper()
	// -f foreground, -O sipsrv asks for option 120 and -O tftp for
	// option 66 (the provisioning URL), -x sends a host name; -t/-T: up
	// to 20 discovers a second apart.
	u := &udhcpc{cmd: ns.Command(context.Background(), busybox, "udhcpc", "-f", "-i", "eth0", "-s", script,
		"-O", "sipsrv", "-O", "tftp", "-x", "hostname:"+hostname, "-t", "20", "-T", "1"),
		events: make(chan udhcpcEvent, 32)}
	u.cmd.Env = append(append(os.Environ(), "PATH=/usr/sbin:/usr/bin:/sbin:/bin"), env...)
	stdout, err := u.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	u.cmd.Stderr = &u.stderr
	if err := u.cmd.Start(); err != nil {
		t.Fatalf("start udhcpc: %v", err)
	}
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) < 2 || f[0] != "EVENT" {
				continue
			}
			ev := udhcpcEvent{kind: f[1], vars: make(map[string]string)}
			for _, kv := range f[2:] {
				if k, v, ok := strings.Cut(kv, "="); ok {
					ev.vars[k] = v
				}
			}
			select {
			case u.events <- ev:
			default: // nobody waits for that many events
			}
		}
	}()
	t.Cleanup(func() {
		u.cmd.Process.Kill()
		<-scanned
		u.cmd.Wait()
		if t.Failed() {
			t.Logf("udhcpc %s stderr:\n%s", hostname, lastLines(u.stderr.String(), 20))
		}
	})
	return u
}

// wait returns the next event of one of kinds, failing t after limit.
func (u *udhcpc) wait(t *testing.T, limit time.Duration, kinds ...string) udhcpcEvent {
	t.Helper()
	timer := time.NewTimer(limit)
	defer timer.Stop()
	for {
		select {
		case ev := <-u.events:
			for _, k := range kinds {
				if ev.kind == k {
					return ev
				}
			}
			t.Logf("udhcpc event %s %v", ev.kind, ev.vars)
		case <-timer.C:
			t.Fatalf("udhcpc: no %v event within %v; stderr:\n%s", kinds, limit, lastLines(u.stderr.String(), 20))
		}
	}
}

// digIn runs dig in ns against server and returns its output.
func digIn(t *testing.T, ns *netns.NS, dig, server, name, qtype string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, _ := ns.Command(ctx, dig, "+time=1", "+tries=2", "+norecurse", "@"+server, name, qtype).CombinedOutput()
	return string(out)
}

// digAnswers returns the data of the answer section's records.
func digAnswers(out string) []string {
	var got []string
	in := false
	for line := range strings.Lines(out) {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, ";; ANSWER SECTION"):
			in = true
		case line == "" || strings.HasPrefix(line, ";"):
			in = false
		case in:
			f := strings.Fields(line)
			got = append(got, f[len(f)-1])
		}
	}
	return got
}

var digFlagsRE = regexp.MustCompile(`;; flags:([^;]*);`)

// digFlags returns the header flags dig printed (" qr aa", …).
func digFlags(out string) string {
	if m := digFlagsRE.FindStringSubmatch(out); m != nil {
		return m[1]
	}
	return ""
}
