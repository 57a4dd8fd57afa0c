//go:build linux

package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/internal/netns"
)

// The gateway behind a NAT router: its uplink is on a private network,
// and a router namespace masquerades it to the emulated Internet.
const (
	natPrivate = "192.168.77.2"  // the gateway's uplink address
	natRouter  = "192.168.77.1"  // the router's private side
	natPublic  = inetGateway     // the router's public side: the gateway's public address
	inetSTUN   = "198.51.100.3"  // coturn, STUN only
	natPhoneIP = "10.97.13.2"    // the mesh phone on n3
	natLANIP   = "10.97.13.1/24" // n3's phone LAN
)

// TestGatewayBehindNAT (issue 14): the gateway n1 of a line n1–n2–n3
// reaches the Internet through a NAT router (iptables MASQUERADE) and has
// no configured public address: it learns it from a STUN server on the
// Internet (coturn, RFC 8489). A baresip on n3 calls
// sip:bob@example.net: the gateway writes the router's public address
// into Via, Record-Route and the SDP it sends (Kamailio logs what it
// received), and tones prove audio both ways through the router. The
// trunk registers with the public address as its Contact, and bob's call
// to the DID comes back through the router's mapping (kept alive by the
// trunk's keep-alives) to the phone, audio both ways. The relay's empty
// datagram to bob's media address (sipalg.SideConfig.Punch) opens the
// router's mapping before bob's first RTP arrives.
func TestGatewayBehindNAT(t *testing.T) {
	netns.RequireRoot(t)
	baresip := needTool(t, "baresip", "baresip-core")
	dnsmasq := needTool(t, "dnsmasq", "dnsmasq-base")
	kamailio := needTool(t, "kamailio", "kamailio")
	turnserver := needTool(t, "turnserver", "coturn")
	iptables := needTool(t, "iptables", "iptables")

	pwFile := filepath.Join(t.TempDir(), "trunk.pw")
	if err := os.WriteFile(pwFile, []byte("pw550100\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	m := newLineMesh(t, "x", 3, 110, func(i int) string {
		switch i {
		case 0:
			return "uplink-interface up0\nstun-server " + inetSTUN + ":3478\ndns-upstream " + inetDNS + "\n" +
				"trunk-registrar sip:example.net\ntrunk-user 5550100\ntrunk-password-file " + pwFile + "\ndial-prefix 0\n"
		case 2:
			return "lan-interface lan0\nlan-address " + natLANIP + "\ndhcp off\ndigest-algorithms MD5\n"
		}
		return ""
	})
	// n1 — router — Internet.
	router := netns.New(t, "xnat")
	netns.Veth(t, m.nodes[0].ns, "up0", router, "lan0")
	m.nodes[0].ns.Run(t, "ip", "addr", "add", natPrivate+"/24", "dev", "up0")
	m.nodes[0].ns.Run(t, "ip", "route", "add", "default", "via", natRouter, "dev", "up0")
	router.Run(t, "ip", "addr", "add", natRouter+"/24", "dev", "lan0")
	inet := netns.New(t, "xinet")
	netns.Veth(t, router, "wan0", inet, "inet0")
	router.Run(t, "ip", "addr", "add", natPublic+"/24", "dev", "wan0")
	router.Run(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	router.Run(t, iptables, "-t", "nat", "-A", "POSTROUTING", "-o", "wan0", "-j", "MASQUERADE")
	// The firewall of every home router (OpenWrt's default: the wan zone's
	// input REJECT): a datagram from the Internet that no mapping lets in
	// is refused, not handed to the router's own stack. Without this rule
	// the kernel records such a datagram as a flow of its own, and the
	// far end's first RTP, if it came before the relay's empty datagram,
	// kept the relay's port for itself for the whole call (no audio from
	// bob, in about one run of ten under load).
	router.Run(t, iptables, "-A", "INPUT", "-i", "wan0", "-m", "conntrack", "!", "--ctstate", "ESTABLISHED,RELATED", "-j", "REJECT")
	inet.Run(t, "ip", "link", "add", "br0", "type", "bridge")
	inet.Run(t, "ip", "link", "set", "br0", "up")
	inet.Run(t, "ip", "link", "set", "inet0", "master", "br0")
	for _, a := range []string{inetDNS, inetKamailio, inetSTUN} {
		inet.Run(t, "ip", "addr", "add", a+"/24", "dev", "br0")
	}
	// bob on a host of his own: the router lets in only what comes from
	// the address its mapping names, and a host with several addresses
	// on one interface would send his RTP from the first of them.
	bobNS := netns.New(t, "xbob")
	netns.Veth(t, inet, "bob0", bobNS, "eth0")
	inet.Run(t, "ip", "link", "set", "bob0", "master", "br0")
	bobNS.Run(t, "ip", "addr", "add", inetBob+"/24", "dev", "eth0")
	startDnsmasq(t, inet, dnsmasq)
	kamLog := startKamailioNS(t, inet, kamailio)
	stunDir := t.TempDir()
	startDaemon(t, inet.Command(context.Background(), turnserver, "-n", "--stun-only", "--no-cli", "--no-tls", "--no-dtls",
		"--listening-ip="+inetSTUN, "--listening-port=3478", "--pidfile="+filepath.Join(stunDir, "turnserver.pid"),
		"--log-file=stdout", "--simple-log"), filepath.Join(stunDir, "turnserver.log"), "turnserver")

	pc := m.plugPhone(2, "xph")
	pc.Run(t, "ip", "addr", "add", natPhoneIP+"/24", "dev", "eth0")
	m.startAll()
	m.waitRing()
	m.addUser(1, "201", "secret-201")

	// The gateway learns the router's address by STUN.
	waitFor(t, 30*time.Second, "n1 to learn its public address by STUN and register its trunk", func() (bool, string) {
		st, err := m.nodes[0].status(m.bin)
		if err != nil {
			return false, err.Error()
		}
		g := st.Gateway
		return g != nil && g.Public == natPublic && g.Address == natPrivate && g.Trunk != nil && g.Trunk.Registered, fmt.Sprintf("%+v", g)
	})
	// The provider saw the public address as the trunk's Contact.
	authReg := regexp.MustCompile(`REGISTER sip:5550100@example\.net contact <sip:5550100@` + regexp.QuoteMeta(natPublic) + `:5060>`)
	if b, _ := os.ReadFile(kamLog); !authReg.Match(b) {
		t.Errorf("the provider logged no REGISTER with the public address as Contact:\n%s", lastLines(string(b), 20))
	}

	const bobTone, phoneTone = 1300.0, 700.0
	// -s: bob's log shows the SIP messages it receives.
	bobDir, bob := internetBaresip(t, bobNS, baresip, "bob", inetBob, "pwob", bobTone, "-s")
	phDir := t.TempDir()
	writeFile(t, filepath.Join(phDir, "config"), baresipBase+"net_interface "+natPhoneIP+"\nsip_listen "+natPhoneIP+":5060\n")
	lan, _, _ := strings.Cut(natLANIP, "/")
	writeFile(t, filepath.Join(phDir, "accounts"), `<sip:201@`+lan+`>;auth_pass=secret-201;regint=300;answermode=auto;audio_codecs=pcmu;ptime=20;outbound="sip:`+lan+`;lr"`+"\n")
	writeToneWAV(t, filepath.Join(phDir, "tone.wav"), phoneTone, 5*time.Second)
	phone := startBaresip(t, pc, baresip, phDir)
	m.waitBinding(1, "201", 2)
	waitFor(t, 30*time.Second, "n3 to see the gateway", func() (bool, string) {
		st, err := m.nodes[2].status(m.bin)
		if err != nil {
			return false, err.Error()
		}
		return len(st.Gateways) > 0 && st.Gateways[0].Usable && st.Gateways[0].Name == "n1", fmt.Sprintf("%+v", st.Gateways)
	})

	res := runCall(t, phone, bob, "sip:bob@example.net")
	t.Logf("call 201 (n3) → sip:bob@example.net through n1 behind NAT: %v", res)
	checkTones(t, "bob at example.net (called through the NAT)", bobDir, phoneTone, bobTone)
	checkTones(t, "201 on n3 (caller)", phDir, bobTone, phoneTone)
	// bob's baresip logs the INVITE it received: the gateway's Record-Route
	// and the SDP name the public address, never the private one.
	b, _ := os.ReadFile(bob.log)
	for _, want := range []string{"<sip:" + natPublic + ":5060;lr;", "c=IN IP4 " + natPublic} {
		if !strings.Contains(string(b), want) {
			t.Errorf("bob's log has no %q: the gateway did not write its public address", want)
		}
	}
	if strings.Contains(string(b), natPrivate) {
		t.Errorf("bob's log names the gateway's private address %s:\n%s", natPrivate, lastLines(string(b), 60))
	}

	// Inbound through the router: the provider delivers the DID's call to
	// the trunk's Contact, the public address, through the mapping the
	// REGISTERs and keep-alives hold open.
	if out, err := m.nodes[1].ns.Try(m.bin, "did", "set", "--control", m.nodes[1].sock, "5550100", "201"); err != nil {
		t.Fatalf("sipmesh did set: %v\n%s", err, out)
	}
	for _, f := range append(must(filepath.Glob(filepath.Join(bobDir, "dump-*.wav"))), must(filepath.Glob(filepath.Join(phDir, "dump-*.wav")))...) {
		os.Remove(f)
	}
	res = runCall(t, bob, phone, "sip:5550100@example.net")
	t.Logf("call bob → DID 5550100 → the provider → n1 behind NAT → 201 on n3: %v", res)
	checkTones(t, "201 on n3 (called on its DID through the NAT)", phDir, bobTone, phoneTone)
	checkTones(t, "bob (calling the DID)", bobDir, phoneTone, bobTone)
}
