//go:build linux

package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/sipmesh/sipmesh/internal/netns"
)

// The emulated Internet of the gateway tests: one namespace with the
// resolver, example.net's Kamailio and bob's baresip.
const (
	inetGateway  = "198.51.100.1"  // the gateway's uplink address
	inetDNS      = "198.51.100.53" // dnsmasq, the gateway's dns-upstream
	inetKamailio = "198.51.100.10" // sip.example.net
	inetBob      = "198.51.100.20" // bob's baresip
	inetCarol    = "198.51.100.21" // carol's baresip: the provider's customer 5550101
)

// TestBaresipCallsInternetThroughGateway (issue 14): a DHCP-provisioned
// baresip on n4 of a line n1–n2–n3–n4 (three mesh hops from the gateway
// n1, mesh links IPv6 only) calls sip:bob@example.net. n1's uplink leads
// to the "Internet" namespace: dnsmasq serves example.net's NAPTR → SRV →
// A records, Kamailio is example.net's registrar and proxy (digest
// authentication of REGISTER), and bob, a baresip there, registered with
// it. The call goes n4 → mesh → n1, which locates example.net (RFC 3263)
// and sends it out of its uplink to Kamailio, which forks it to bob; tones
// prove audio both ways through both relays. Then bob calls
// sip:201@voice.example.org, the mesh's sip-domain that DNS points at the
// gateway, and reaches 201 the other way. The gateway's trunk registers
// with the same Kamailio as its SIP provider (account 5550100, digest
// challenge answered), and bob's call to the DID sip:5550100@example.net,
// delivered by the provider to the gateway, rings 201 (`sipmesh did set
// 5550100 201`), audio both ways. An INVITE from the Internet for another
// domain sent to the gateway is refused 403, and sipvicious' svwar learns
// nothing about which extensions exist.
func TestBaresipCallsInternetThroughGateway(t *testing.T) {
	netns.RequireRoot(t)
	busybox := needTool(t, "busybox", "busybox")
	baresip := needTool(t, "baresip", "baresip-core")
	dnsmasq := needTool(t, "dnsmasq", "dnsmasq-base")
	kamailio := needTool(t, "kamailio", "kamailio")

	// The gateway's trunk: its account 5550100 at the provider
	// (example.net's Kamailio, whose reference config computes the
	// password "pw" + the user from its second character).
	pwFile := filepath.Join(t.TempDir(), "trunk.pw")
	if err := os.WriteFile(pwFile, []byte("pw550100\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	m := newLineMesh(t, "w", 4, 70, func(i int) string {
		switch i {
		case 0:
			return "uplink-interface up0\npublic-address " + inetGateway + "\ndns-upstream " + inetDNS + "\nsip-domain voice.example.org\n" +
				"trunk-registrar sip:example.net\ntrunk-user 5550100\ntrunk-password-file " + pwFile + "\ndial-prefix 0\n"
		case 3:
			return "lan-interface lan0\ndhcp on\ndigest-algorithms MD5\n"
		}
		return ""
	})
	inet := netns.New(t, "winet")
	netns.Veth(t, m.nodes[0].ns, "up0", inet, "inet0")
	m.nodes[0].ns.Run(t, "ip", "addr", "add", inetGateway+"/24", "dev", "up0")
	// The Internet's hosts share a bridge: the gateway's uplink, the
	// namespace's own servers, carol's host.
	inet.Run(t, "ip", "link", "add", "br0", "type", "bridge")
	inet.Run(t, "ip", "link", "set", "br0", "up")
	inet.Run(t, "ip", "link", "set", "inet0", "master", "br0")
	for _, a := range []string{inetDNS, inetKamailio, inetBob} {
		inet.Run(t, "ip", "addr", "add", a+"/24", "dev", "br0")
	}
	startDnsmasq(t, inet, dnsmasq)
	kamLog := startKamailioNS(t, inet, kamailio)

	pc := m.plugPhone(3, "wph")
	m.startAll()
	m.waitRing()
	m.addUser(1, "201", "secret-201")
	for i, nd := range m.nodes {
		for _, ifn := range m.ifaces[i] {
			if out, _ := nd.ns.Try("ip", "-4", "-o", "addr", "show", "dev", ifn); strings.TrimSpace(out) != "" {
				t.Fatalf("mesh link %s of %s has IPv4: %s", ifn, nd.name, out)
			}
		}
	}

	// bob registers with example.net, found by DNS as any phone would.
	const bobTone, callerTone = 1300.0, 700.0
	// The reference Kamailio computes passwords: "pw" + the user from its
	// second letter (testdata/kamailio/kamailio.cfg).
	bobDir, bob := internetBaresip(t, inet, baresip, "bob", inetBob, "pwob", bobTone)

	// The mesh phone is provisioned by DHCP, option 120 its outbound proxy.
	phDir := t.TempDir()
	writeFile(t, filepath.Join(phDir, "config.base"), baresipBase)
	writeToneWAV(t, filepath.Join(phDir, "tone.wav"), callerTone, 5*time.Second)
	c := startUdhcpc(t, pc, busybox, writeScript(t, t.TempDir()), "phone201",
		[]string{"PHONE_DIR=" + phDir, "PHONE_USER=201", "PHONE_PASS=secret-201", "PHONE_OUTBOUND=1"})
	ev := c.wait(t, 25*time.Second, "bound")
	t.Logf("phone 201 on n4 leased %s", ev.vars["ip"])
	caller := startBaresip(t, pc, baresip, phDir)
	m.waitBinding(1, "201", 3)

	// n4 must know the gateway before it can route out.
	waitFor(t, 30*time.Second, "n4 to see the gateway", func() (bool, string) {
		st, err := m.nodes[3].status(m.bin)
		if err != nil {
			return false, err.Error()
		}
		if len(st.Gateways) == 0 || !st.Gateways[0].Usable || st.Gateways[0].Name != "n1" {
			return false, fmt.Sprintf("gateways %+v", st.Gateways)
		}
		return true, ""
	})
	out, err := m.nodes[3].ns.Try(m.bin, "gateways", "--control", m.nodes[3].sock)
	if err != nil {
		t.Fatalf("sipmesh gateways on n4: %v\n%s", err, out)
	}
	t.Logf("sipmesh gateways on n4:\n%s", out)

	res := runCall(t, caller, bob, "sip:bob@example.net")
	t.Logf("call 201 (n4) → sip:bob@example.net through the gateway n1: %v", res)
	checkTones(t, "bob at example.net (called)", bobDir, callerTone, bobTone)
	checkTones(t, "201 on n4 (caller)", phDir, bobTone, callerTone)

	// Inbound: bob calls sip:201@voice.example.org, the mesh's public
	// domain, which DNS points at the gateway; n1 routes it over the mesh
	// to 201 on n4.
	for _, dir := range []string{bobDir, phDir} {
		old, _ := filepath.Glob(filepath.Join(dir, "dump-*.wav"))
		for _, f := range old {
			os.Remove(f)
		}
	}
	res = runCall(t, bob, caller, "sip:201@voice.example.org")
	t.Logf("call bob → sip:201@voice.example.org through the gateway n1 to n4: %v", res)
	checkTones(t, "201 on n4 (called from the Internet)", phDir, bobTone, callerTone)
	checkTones(t, "bob (caller)", bobDir, callerTone, bobTone)

	// The trunk: registered with the provider (which challenged it: the
	// reference config logs a REGISTER only once authenticated); bob
	// calls the DID 5550100 at the provider, which delivers the call to
	// the gateway's registered Contact; `sipmesh did` maps it to 201.
	waitFor(t, 30*time.Second, "the gateway's trunk to register", func() (bool, string) {
		st, err := m.nodes[0].status(m.bin)
		if err != nil {
			return false, err.Error()
		}
		if st.Gateway == nil || st.Gateway.Trunk == nil || !st.Gateway.Trunk.Registered {
			return false, fmt.Sprintf("%+v", st.Gateway)
		}
		return true, ""
	})
	// The provider logs a REGISTER only once its credentials verified; the
	// prefix is "{1 CSeq-number CSeq-method Call-ID}": a CSeq above 1 is a
	// REGISTER sent again with credentials after the 401 (2, or more when
	// a datagram was lost under load and the trunk tried again).
	authReg := regexp.MustCompile(`\{1 ([0-9]+) REGISTER [^}]*\} <script>: REGISTER sip:5550100@example\.net contact <sip:5550100@` +
		regexp.QuoteMeta(inetGateway) + `:5060>`)
	if b, _ := os.ReadFile(kamLog); func() bool {
		m := authReg.FindSubmatch(b)
		return m == nil || string(m[1]) == "1"
	}() {
		t.Errorf("the provider logged no authenticated REGISTER of the trunk:\n%s", lastLines(string(b), 20))
	}
	if out, err := m.nodes[1].ns.Try(m.bin, "did", "set", "--control", m.nodes[1].sock, "5550100", "201"); err != nil {
		t.Fatalf("sipmesh did set: %v\n%s", err, out)
	}
	for _, dir := range []string{bobDir, phDir} {
		old, _ := filepath.Glob(filepath.Join(dir, "dump-*.wav"))
		for _, f := range old {
			os.Remove(f)
		}
	}
	res = runCall(t, bob, caller, "sip:5550100@example.net")
	t.Logf("call bob → DID 5550100 at the provider → the gateway's trunk → 201 on n4: %v", res)
	checkTones(t, "201 on n4 (called on its DID)", phDir, bobTone, callerTone)
	checkTones(t, "bob (calling the DID)", bobDir, callerTone, bobTone)

	// Out through the trunk: 201 dials 0 + 5550101, which the provider
	// routes to carol, its customer; the provider challenges the INVITE
	// and the gateway answers with the trunk's credentials.
	const carolTone = 1900.0
	carolNS := netns.New(t, "wcarol") // a host of its own: the ctrl_tcp port is per namespace
	netns.Veth(t, inet, "carol0", carolNS, "eth0")
	inet.Run(t, "ip", "link", "set", "carol0", "master", "br0")
	carolNS.Run(t, "ip", "addr", "add", inetCarol+"/24", "dev", "eth0")
	carolDir, carol := internetBaresip(t, carolNS, baresip, "5550101", inetCarol, "pw550101", carolTone)
	waitFor(t, 15*time.Second, "n4 to see the gateway's trunk", func() (bool, string) {
		st, err := m.nodes[3].status(m.bin)
		if err != nil {
			return false, err.Error()
		}
		if len(st.Gateways) == 0 || !slices.Contains(st.Gateways[0].Offers, "trunk") || st.Gateways[0].DialPrefix != "0" {
			return false, fmt.Sprintf("gateways %+v", st.Gateways)
		}
		return true, ""
	})
	for _, f := range append(must(filepath.Glob(filepath.Join(bobDir, "dump-*.wav"))), must(filepath.Glob(filepath.Join(phDir, "dump-*.wav")))...) {
		os.Remove(f)
	}
	res = runCall(t, caller, carol, "05550101")
	t.Logf("call 201 (n4) → 0 5550101 → the gateway's trunk → carol at the provider: %v", res)
	checkTones(t, "carol (called through the trunk)", carolDir, callerTone, carolTone)
	checkTones(t, "201 on n4 (dialled 0 5550101)", phDir, carolTone, callerTone)
	if b, _ := os.ReadFile(kamLog); !strings.Contains(string(b), "authenticated INVITE sip:5550101@example.net by 5550100 from "+inetGateway) {
		t.Errorf("the provider logged no INVITE authenticated with the trunk's account:\n%s", lastLines(string(b), 20))
	} else {
		for line := range strings.Lines(string(b)) {
			if strings.Contains(line, "authenticated INVITE") {
				t.Logf("the provider's log: %s", strings.TrimSpace(line))
			}
		}
	}

	// From the Internet: the gateway relays nothing for other domains.
	for _, target := range []string{"sip:x@other.example", "sip:201@mesh"} {
		if code := sendINVITE(t, inet, inetBob, inetGateway+":5060", target); code != "403" {
			t.Errorf("INVITE %s from the Internet to the gateway: %s, want 403", target, code)
		}
	}

	// An extension scanner on the Internet learns nothing: svwar first
	// asks for a random extension, then for the ones it scans, and
	// reports those whose answer differs. Asked for 201, which exists
	// (registered, an extension of sip-domain), it gets the same 403 as
	// for the random one, for REGISTER, OPTIONS and INVITE alike (and
	// then stops: 403 is no answer it expects of a PBX).
	svwar := needTool(t, "svwar", "sipvicious")
	for _, method := range []string{"REGISTER", "OPTIONS", "INVITE"} {
		before := gatewayRefused(t, m, 0)
		out := svwarScan(t, inet, svwar, inetDNS, inetGateway, method, "201")
		refused := gatewayRefused(t, m, 0) - before
		t.Logf("svwar -m %s -e 201 %s: %d requests refused 403; svwar: %s", method, inetGateway, refused,
			strings.TrimSpace(lastLines(out, 1)))
		if !strings.Contains(out, "found nothing") || strings.Contains(out, "extension '201'") {
			t.Errorf("svwar -m %s learned something about extension 201:\n%s", method, out)
		}
		// Its probe and the question for 201 both reached the gateway:
		// the scan did run against it.
		if refused < 2 {
			t.Errorf("svwar -m %s: the gateway refused %d requests, want 2 (did the scan reach it?)\n%s", method, refused, out)
		}
	}
}

// svwarScan runs sipvicious' svwar in ns from bindIP against target with
// method over the extensions exts, bounded in time, and returns its
// output. Its session files go to a temporary HOME.
func svwarScan(t *testing.T, ns *netns.NS, svwar, bindIP, target, method, exts string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := ns.Command(ctx, "env", "HOME="+t.TempDir(), svwar, "-m", method, "-e", exts, "--force",
		"-b", bindIP, "-P", "5099", "-x", bindIP, "--maximumtime=5", "-t", "0.05", target)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("svwar -m %s did not end within 60 s:\n%s", method, out)
	}
	if err != nil {
		t.Fatalf("svwar -m %s: %v\n%s", method, err, out)
	}
	return string(out)
}

// gatewayRefused is how many requests from the Internet node i's gateway
// refused 403 so far.
func gatewayRefused(t *testing.T, m *lineMesh, i int) uint64 {
	t.Helper()
	st, err := m.nodes[i].status(m.bin)
	if err != nil {
		t.Fatal(err)
	}
	if st.Gateway == nil {
		t.Fatalf("n%d has no gateway role", i+1)
	}
	return st.Gateway.Refused
}

// startDnsmasq serves example.net's SIP location records on inetDNS:53,
// and the records of extra (dnsmasq options), and waits until it answers.
func startDnsmasq(t *testing.T, ns *netns.NS, bin string, extra ...string) {
	t.Helper()
	dir := t.TempDir()
	cmd := ns.Command(context.Background(), bin, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
		"--bind-interfaces", "--listen-address="+inetDNS, "--port=53", "--user=root", "--pid-file="+filepath.Join(dir, "pid"),
		"--log-queries", "--log-facility=-",
		// RFC 3263 §4.1: NAPTR for UDP, then SRV, then the host's A.
		`--naptr-record=example.net,10,10,S,SIP+D2U,,_sip._udp.example.net`,
		"--srv-host=_sip._udp.example.net,sip.example.net,5060,10,10",
		"--host-record=sip.example.net,"+inetKamailio,
		// The mesh's public domain, pointed at the gateway (sip-domain).
		"--host-record=voice.example.org,"+inetGateway)
	cmd.Args = append(cmd.Args, extra...)
	startDaemon(t, cmd, filepath.Join(dir, "dnsmasq.log"), "dnsmasq")
	nw := ns.Network()
	waitFor(t, 10*time.Second, "dnsmasq to answer", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		conn, err := nw.Dial(ctx, "udp", inetDNS+":53")
		if err != nil {
			return false, err.Error()
		}
		defer conn.Close()
		q := new(dns.Msg)
		q.SetQuestion("sip.example.net.", dns.TypeA)
		c := &dns.Conn{Conn: conn}
		c.SetDeadline(time.Now().Add(time.Second))
		if err := c.WriteMsg(q); err != nil {
			return false, err.Error()
		}
		r, err := c.ReadMsg()
		if err != nil || len(r.Answer) == 0 {
			return false, fmt.Sprintf("%v %v", r, err)
		}
		return true, ""
	})
}

// startKamailioNS runs the reference Kamailio (testdata/kamailio, digest
// authentication of REGISTER) as example.net on inetKamailio:5060, its
// configuration changed by edits.
func startKamailioNS(t *testing.T, ns *netns.NS, bin string, edits ...func(string) string) (logPath string) {
	t.Helper()
	cfg, err := os.ReadFile(filepath.Join("..", "..", "testdata", "kamailio", "kamailio.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Replace(string(cfg), "listen=udp:127.0.0.1:5070", "listen=udp:"+inetKamailio+":5060", 1)
	if text == string(cfg) {
		t.Fatal("kamailio.cfg: no listen line to move")
	}
	for _, e := range edits {
		text = e(text)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "kamailio.cfg")
	writeFile(t, path, text)
	cmd := ns.Command(context.Background(), bin, "-f", path, "-DD", "-E", "-m", "64", "-M", "8", "-Y", dir,
		"-P", filepath.Join(dir, "kamailio.pid"), "-A", "WITH_AUTH", "-A", "WITH_INVITE_AUTH")
	logPath = filepath.Join(dir, "kamailio.log")
	startDaemon(t, cmd, logPath, "kamailio")
	nw := ns.Network()
	waitFor(t, 10*time.Second, "kamailio to answer OPTIONS", func() (bool, string) {
		code := ""
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		conn, err := nw.Dial(ctx, "udp", inetKamailio+":5060")
		if err != nil {
			return false, err.Error()
		}
		defer conn.Close()
		fmt.Fprintf(conn, "OPTIONS sip:%s SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bKkp;rport\r\nMax-Forwards: 70\r\nFrom: <sip:ping@example.net>;tag=p\r\nTo: <sip:%s>\r\nCall-ID: kping\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
			inetKamailio, conn.LocalAddr(), inetKamailio)
		conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		buf := make([]byte, 2048)
		n, err := conn.Read(buf)
		if err == nil {
			code = string(buf[:min(n, 12)])
		}
		return strings.HasPrefix(code, "SIP/2.0 200"), code
	})
	return logPath
}

// startDaemon starts cmd with its output in logPath, stops it (by its
// PID) when the test ends, and shows the log's end if the test failed.
func startDaemon(t *testing.T, c *exec.Cmd, logPath, name string) {
	t.Helper()
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	c.Stdout, c.Stderr = logf, logf
	if err := c.Start(); err != nil {
		logf.Close()
		t.Fatalf("starting %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { c.Wait(); close(done) }()
	t.Cleanup(func() {
		c.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			c.Process.Kill()
			<-done
		}
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("%s log:\n%s", name, lastLines(string(b), 60))
		}
	})
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// sendINVITE sends one INVITE for target from src (in ns) to dst and
// returns the final status code it gets ("" when none in 5 s).
func sendINVITE(t *testing.T, ns *netns.NS, src, dst, target string) string {
	t.Helper()
	conn, err := ns.Network().ListenPacket(context.Background(), "udp4", src+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	to, err := net.ResolveUDPAddr("udp4", dst)
	if err != nil {
		t.Fatal(err)
	}
	local := conn.LocalAddr().String()
	msg := fmt.Sprintf("INVITE %s SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bKprobe%d;rport\r\nMax-Forwards: 70\r\n"+
		"From: <sip:probe@%s>;tag=pr\r\nTo: <%s>\r\nCall-ID: probe%d@%s\r\nCSeq: 1 INVITE\r\nContact: <sip:probe@%s>\r\nContent-Length: 0\r\n\r\n",
		target, local, time.Now().UnixNano(), src, target, time.Now().UnixNano(), src, local)
	if _, err := conn.WriteTo([]byte(msg), to); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	deadline := time.Now().Add(5 * time.Second)
	for {
		conn.SetReadDeadline(deadline)
		n, _, err := conn.ReadFrom(buf)
		if err != nil {
			return ""
		}
		line, _, _ := strings.Cut(string(buf[:n]), "\r\n")
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "SIP/2.0" && f[1] >= "200" {
			return f[1]
		}
	}
}

// TestGatewayFailover (issue 14): two gateways, n1 and n5, at the ends of
// a line n1–n2–n3–n4–n5, both with the same trunk account at the
// provider; a baresip on n3 (two hops from each). n1 is killed (SIGKILL):
// a call out to sip:bob@example.net placed at once is answered through
// n5 (n3 waits 2 s for n1's 100 Trying, then tries n5), and bob's call
// to the DID reaches the phone (the provider forks to both registered
// Contacts; n5's answers); the test reports the seconds.
func TestGatewayFailover(t *testing.T) {
	netns.RequireRoot(t)
	baresip := needTool(t, "baresip", "baresip-core")
	dnsmasq := needTool(t, "dnsmasq", "dnsmasq-base")
	kamailio := needTool(t, "kamailio", "kamailio")
	pwFile := filepath.Join(t.TempDir(), "trunk.pw")
	if err := os.WriteFile(pwFile, []byte("pw550100\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	gw := func(addr string) string {
		return "uplink-interface up0\npublic-address " + addr + "\ndns-upstream " + inetDNS + "\n" +
			"trunk-registrar sip:example.net\ntrunk-user 5550100\ntrunk-password-file " + pwFile + "\ndial-prefix 0\n"
	}
	const gw5 = "198.51.100.5"
	m := newLineMesh(t, "f", 5, 90, func(i int) string {
		switch i {
		case 0:
			return gw(inetGateway)
		case 4:
			return gw(gw5)
		case 2:
			return "lan-interface lan0\nlan-address 10.97.3.1/24\ndhcp off\ndigest-algorithms MD5\n"
		}
		return ""
	})
	inet := netns.New(t, "finet")
	inet.Run(t, "ip", "link", "add", "br0", "type", "bridge")
	inet.Run(t, "ip", "link", "set", "br0", "up")
	for _, g := range []struct {
		node int
		addr string
	}{{0, inetGateway}, {4, gw5}} {
		port := fmt.Sprintf("inet%d", g.node+1)
		netns.Veth(t, m.nodes[g.node].ns, "up0", inet, port)
		inet.Run(t, "ip", "link", "set", port, "master", "br0")
		m.nodes[g.node].ns.Run(t, "ip", "addr", "add", g.addr+"/24", "dev", "up0")
	}
	for _, a := range []string{inetDNS, inetKamailio, inetBob} {
		inet.Run(t, "ip", "addr", "add", a+"/24", "dev", "br0")
	}
	startDnsmasq(t, inet, dnsmasq)
	startKamailioNS(t, inet, kamailio)
	pc := m.plugPhone(2, "fph")
	pc.Run(t, "ip", "addr", "add", "10.97.3.2/24", "dev", "eth0")
	m.startAll()
	m.waitRing()
	m.addUser(1, "201", "secret-201")
	if out, err := m.nodes[1].ns.Try(m.bin, "did", "set", "--control", m.nodes[1].sock, "5550100", "201"); err != nil {
		t.Fatalf("sipmesh did set: %v\n%s", err, out)
	}

	bobDir := t.TempDir()
	writeFile(t, filepath.Join(bobDir, "config"), baresipBase+"net_interface "+inetBob+"\nsip_listen "+inetBob+":5060\ndns_server "+inetDNS+":53\n")
	writeFile(t, filepath.Join(bobDir, "accounts"), "<sip:bob@example.net>;auth_pass=pwob;regint=300;answermode=auto;audio_codecs=pcmu;ptime=20\n")
	writeToneWAV(t, filepath.Join(bobDir, "tone.wav"), 1300, 30*time.Second)
	bob := startBaresip(t, inet, baresip, bobDir)
	phDir := t.TempDir()
	writeFile(t, filepath.Join(phDir, "config"), baresipBase+"net_interface 10.97.3.2\nsip_listen 10.97.3.2:5060\n")
	writeFile(t, filepath.Join(phDir, "accounts"), `<sip:201@10.97.3.1>;auth_pass=secret-201;regint=300;answermode=auto;audio_codecs=pcmu;ptime=20;outbound="sip:10.97.3.1;lr"`+"\n")
	writeToneWAV(t, filepath.Join(phDir, "tone.wav"), 700, 30*time.Second)
	phone := startBaresip(t, pc, baresip, phDir)
	m.waitBinding(1, "201", 2)
	waitFor(t, 30*time.Second, "both trunks registered and both gateways seen from n3", func() (bool, string) {
		st, err := m.nodes[2].status(m.bin)
		if err != nil {
			return false, err.Error()
		}
		n := 0
		for _, g := range st.Gateways {
			if g.Usable && slices.Contains(g.Offers, "trunk") {
				n++
			}
		}
		return n == 2, fmt.Sprintf("%+v", st.Gateways)
	})
	if out, err := m.nodes[2].ns.Try(m.bin, "gateways", "--control", m.nodes[2].sock); err == nil {
		t.Logf("sipmesh gateways on n3:\n%s", out)
	}

	// call dials target from ua and reports whether the callee answered
	// within limit and when (since the dial), hanging up either way.
	call := func(from, to *baresipUA, target string, limit time.Duration) (bool, time.Duration) {
		for len(from.events) > 0 {
			<-from.events
		}
		start := time.Now()
		from.command(t, "dial", target)
		timer := time.NewTimer(limit)
		defer timer.Stop()
		for {
			select {
			case ev := <-from.events:
				switch ev.Type {
				case "CALL_ESTABLISHED":
					took := time.Since(start)
					from.command(t, "hangup", "")
					for range 50 { // wait for both sides to close
						select {
						case ev := <-from.events:
							if ev.Type == "CALL_CLOSED" {
								return true, took
							}
						case <-time.After(100 * time.Millisecond):
						}
					}
					return true, took
				case "CALL_CLOSED":
					return false, 0
				}
			case <-timer.C:
				from.command(t, "hangup", "")
				return false, 0
			}
		}
	}
	if ok, _ := call(phone, bob, "sip:bob@example.net", 10*time.Second); !ok {
		t.Fatal("the first call out failed with both gateways up")
	}
	if ok, _ := call(bob, phone, "sip:5550100@example.net", 10*time.Second); !ok {
		t.Fatal("the first DID call failed with both gateways up")
	}

	m.nodes[0].cmd.Process.Kill()
	m.nodes[0].cmd.Wait()
	killed := time.Now()
	// Inbound at once: the provider forks the DID's call to both
	// registered Contacts; n5 answers. The seconds until it works: from
	// the kill to the answer.
	ok, _ := call(bob, phone, "sip:5550100@example.net", 10*time.Second)
	if !ok {
		t.Fatal("a DID call placed at once after n1's kill failed")
	}
	in := time.Since(killed)
	// Outbound right after: n3 spreads calls over both (equal rating),
	// so one of two calls goes to the dead n1, gets no 100 Trying within
	// 2 s and goes to n5 (proxy's gatewayTry). The seconds until a call
	// out works: from the kill to the slower of the two answers.
	var outs []time.Duration
	var out time.Duration
	for i := range 2 {
		ok, took := call(phone, bob, "sip:bob@example.net", 10*time.Second)
		if !ok {
			t.Fatalf("call out %d right after n1's kill failed", i+1)
		}
		outs = append(outs, took.Round(100*time.Millisecond))
		out = max(out, took)
	}
	// n3's view drops n1 once a call found it silent (or its record
	// expired, or 3 pings failed).
	waitFor(t, 30*time.Second, "n3 to stop choosing the dead n1", func() (bool, string) {
		st, err := m.nodes[2].status(m.bin)
		if err != nil {
			return false, err.Error()
		}
		for _, g := range st.Gateways {
			if g.Name == "n1" && g.Usable {
				return false, fmt.Sprintf("%+v", st.Gateways)
			}
		}
		return true, ""
	})
	detected := time.Since(killed)
	for range 3 {
		if ok, took := call(phone, bob, "sip:bob@example.net", 10*time.Second); !ok {
			t.Error("a call out failed after the failover")
		} else if took > time.Second {
			t.Errorf("a call out took %v to be answered after n3 dropped n1, want no wait for the dead gateway", took)
		}
	}
	t.Logf("gateway n1 killed: a DID call placed at once was answered %.1f s after the kill (the provider forks to both trunks' Contacts); "+
		"then two calls out, answered %v after their dial (the one sent to the dead n1 waited 2 s for its 100 Trying): "+
		"a call out works again %.1f s after it is placed; n3's view shows n1 unusable %.1f s after the kill",
		in.Seconds(), outs, out.Seconds(), detected.Seconds())
}

// internetBaresip starts a baresip registered with example.net as user
// (password pass) at addr in ns, sending a tone of hz, with baresip's
// extra args, and waits for its registration. It returns its directory (its recordings land there).
func internetBaresip(t *testing.T, ns *netns.NS, baresip, user, addr, pass string, hz float64, args ...string) (string, *baresipUA) {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "config"), baresipBase+"net_interface "+addr+"\nsip_listen "+addr+":5060\ndns_server "+inetDNS+":53\n")
	writeFile(t, filepath.Join(dir, "accounts"), "<sip:"+user+"@example.net>;auth_pass="+pass+";regint=300;answermode=auto;audio_codecs=pcmu;ptime=20\n")
	writeToneWAV(t, filepath.Join(dir, "tone.wav"), hz, 5*time.Second)
	ua := startBaresip(t, ns, baresip, dir, args...)
	// Its REGISTER_OK event may come before ctrl_tcp is connected: its
	// log tells.
	waitFor(t, 15*time.Second, user+" to register with example.net", func() (bool, string) {
		b, _ := os.ReadFile(ua.log)
		return strings.Contains(string(b), user+"@example.net: {0/UDP/v4} 200 OK"), lastLines(string(b), 3)
	})
	return dir, ua
}
