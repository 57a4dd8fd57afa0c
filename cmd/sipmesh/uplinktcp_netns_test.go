//go:build linux

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/internal/netns"
)

// inetDeadTCP is a host on the emulated Internet with nothing listening
// on TCP 5060: a connection to it is refused.
const inetDeadTCP = "198.51.100.11"

// The IPv6 Internet: the gateway's uplink address and dave's.
const (
	inetGateway6 = "2001:db8:100::1"
	inetDave6    = "2001:db8:100::30"
)

// TestGatewayUplinkTCPIPv6 (issue 14): a domain whose servers speak TCP
// only, and one whose server has only an IPv6 address.
// tcp.example.net's NAPTR offers SIP+D2T alone (RFC 3263 §4.1); its SRV
// names first a server that refuses connections (priority 5), then
// example.net's Kamailio (priority 10), which listens on TCP besides UDP
// and logs the transport of each request. A baresip on n2, one mesh hop
// from the gateway n1, calls sip:bob@tcp.example.net: the gateway connects
// to the first server, is refused, goes on to the next (§4.3) and sends
// the INVITE over TCP; Kamailio forks it to bob (registered over UDP), and
// tones prove audio both ways. Kamailio's log shows the INVITE came over
// TCP from the gateway, never over UDP. Then bob calls
// sip:201@voice.example.org;transport=tcp: the gateway takes the call on
// its TCP port and 201 answers, audio both ways. Last, 201 calls
// sip:dave@v6.example.net, whose NAPTR and SRV lead to a host with an
// AAAA record and no A (RFC 3263 §4.2), where dave's baresip listens on
// IPv6 only:
// the gateway, whose uplink has a global IPv6 address besides its IPv4
// one, sends the INVITE from that address with c=IN IP6 in the SDP, and
// tones prove audio both ways (IPv4 on 201's LAN, IPv6 on the mesh and
// on the Internet).
func TestGatewayUplinkTCPIPv6(t *testing.T) {
	netns.RequireRoot(t)
	baresip := needTool(t, "baresip", "baresip-core")
	dnsmasq := needTool(t, "dnsmasq", "dnsmasq-base")
	kamailio := needTool(t, "kamailio", "kamailio")
	m := newLineMesh(t, "u", 2, 80, func(i int) string {
		switch i {
		case 0:
			return "uplink-interface up0\npublic-address " + inetGateway + "\ndns-upstream " + inetDNS + "\nsip-domain voice.example.org\n"
		case 1:
			return "lan-interface lan0\nlan-address 10.95.2.1/24\ndhcp off\ndigest-algorithms MD5\n"
		}
		return ""
	})
	inet := netns.New(t, "uinet")
	netns.Veth(t, m.nodes[0].ns, "up0", inet, "inet0")
	m.nodes[0].ns.Run(t, "ip", "addr", "add", inetGateway+"/24", "dev", "up0")
	// The uplink's global IPv6 address, there before the gateway starts
	// (nodad: usable at once).
	m.nodes[0].ns.Run(t, "ip", "addr", "add", inetGateway6+"/64", "dev", "up0", "nodad")
	inet.Run(t, "ip", "link", "add", "br0", "type", "bridge")
	inet.Run(t, "ip", "link", "set", "br0", "up")
	inet.Run(t, "ip", "link", "set", "inet0", "master", "br0")
	for _, a := range []string{inetDNS, inetKamailio, inetBob, inetDeadTCP} {
		inet.Run(t, "ip", "addr", "add", a+"/24", "dev", "br0")
	}
	startDnsmasq(t, inet, dnsmasq,
		// TCP only; the first SRV target refuses connections.
		"--naptr-record=tcp.example.net,10,10,S,SIP+D2T,,_sip._tcp.tcp.example.net",
		"--srv-host=_sip._tcp.tcp.example.net,dead.example.net,5060,5,10",
		"--srv-host=_sip._tcp.tcp.example.net,sip.example.net,5060,10,10",
		"--host-record=dead.example.net,"+inetDeadTCP,
		// IPv6 only: NAPTR, SRV, then an AAAA record and no A.
		"--naptr-record=v6.example.net,10,10,S,SIP+D2U,,_sip._udp.v6.example.net",
		"--srv-host=_sip._udp.v6.example.net,dave.v6.example.net,5060,10,10",
		"--host-record=dave.v6.example.net,"+inetDave6)
	kamLog := startKamailioNS(t, inet, kamailio, func(cfg string) string {
		cfg = strings.Replace(cfg, "disable_tcp=yes", "disable_tcp=no", 1)
		cfg = strings.Replace(cfg, "listen=udp:"+inetKamailio+":5060", "listen=udp:"+inetKamailio+":5060\nlisten=tcp:"+inetKamailio+":5060", 1)
		return strings.Replace(cfg, "\tforce_rport();\n", "\tforce_rport();\n\txlog(\"L_INFO\", \"request $rm $ru over $pr from $si\\n\");\n", 1)
	})
	pc := m.plugPhone(1, "uph")
	pc.Run(t, "ip", "addr", "add", "10.95.2.2/24", "dev", "eth0")
	m.startAll()
	m.waitRing()
	m.addUser(1, "201", "secret-201")

	const bobTone, callerTone = 1300.0, 700.0
	bobDir, bob := internetBaresip(t, inet, baresip, "bob", inetBob, "pwob", bobTone)
	phDir := t.TempDir()
	writeFile(t, filepath.Join(phDir, "config"), baresipBase+"net_interface 10.95.2.2\nsip_listen 10.95.2.2:5060\n")
	writeFile(t, filepath.Join(phDir, "accounts"), `<sip:201@10.95.2.1>;auth_pass=secret-201;regint=300;answermode=auto;audio_codecs=pcmu;ptime=20;outbound="sip:10.95.2.1;lr"`+"\n")
	writeToneWAV(t, filepath.Join(phDir, "tone.wav"), callerTone, 5*time.Second)
	phone := startBaresip(t, pc, baresip, phDir)
	m.waitBinding(0, "201", 1)
	waitFor(t, 30*time.Second, "n2 to see the gateway", func() (bool, string) {
		st, err := m.nodes[1].status(m.bin)
		if err != nil {
			return false, err.Error()
		}
		return len(st.Gateways) > 0 && st.Gateways[0].Usable, ""
	})

	res := runCall(t, phone, bob, "sip:bob@tcp.example.net")
	t.Logf("call 201 (n2) → sip:bob@tcp.example.net (TCP only, first server refusing) through the gateway n1: %v", res)
	checkTones(t, "bob (called over TCP)", bobDir, callerTone, bobTone)
	checkTones(t, "201 on n2 (caller)", phDir, bobTone, callerTone)
	b, _ := os.ReadFile(kamLog)
	log := string(b)
	if !strings.Contains(log, "request INVITE sip:bob@tcp.example.net over tcp from "+inetGateway) {
		t.Errorf("Kamailio logged no INVITE over TCP from the gateway:\n%s", lastLines(log, 30))
	}
	if strings.Contains(log, "request INVITE sip:bob@tcp.example.net over udp") {
		t.Errorf("Kamailio got the INVITE over UDP too:\n%s", lastLines(log, 30))
	}
	for line := range strings.Lines(log) {
		if strings.Contains(line, "tcp.example.net over") {
			t.Logf("Kamailio: %s", strings.TrimSpace(line))
		}
	}
	// The gateway tried the refusing server first (SRV priority 5).
	if nl, _ := os.ReadFile(m.nodes[0].log); !strings.Contains(string(nl), "trying the next one of the domain") ||
		!strings.Contains(string(nl), inetDeadTCP+":5060") {
		t.Errorf("n1's log shows no failover from %s to the next server:\n%s", inetDeadTCP, lastLines(string(nl), 30))
	} else {
		for line := range strings.Lines(string(nl)) {
			if strings.Contains(line, "trying the next one of the domain") {
				t.Logf("n1: %s", strings.TrimSpace(line))
			}
		}
	}

	// Inbound over TCP: bob calls the mesh's public domain, naming TCP.
	for _, dir := range []string{bobDir, phDir} {
		old, _ := filepath.Glob(filepath.Join(dir, "dump-*.wav"))
		for _, f := range old {
			os.Remove(f)
		}
	}
	res = runCall(t, bob, phone, "sip:201@voice.example.org;transport=tcp")
	t.Logf("call bob → sip:201@voice.example.org;transport=tcp to the gateway's TCP port → 201 on n2: %v", res)
	checkTones(t, "201 on n2 (called over TCP from the Internet)", phDir, bobTone, callerTone)
	checkTones(t, "bob (caller over TCP)", bobDir, callerTone, bobTone)
	// The call came over TCP: bob's connection to the gateway's port is
	// still open (baresip keeps it; its source is the Internet
	// namespace's first address, not always bob's). Kamailio's own
	// connection, from the first call's BYE, does not count.
	out, err := m.nodes[0].ns.Try("ss", "-Htn", "state", "established", "sport", "= :5060")
	fromBob := false
	for line := range strings.Lines(out) {
		if f := strings.Fields(line); len(f) == 4 && strings.HasPrefix(f[3], "198.51.100.") && !strings.HasPrefix(f[3], inetKamailio+":") {
			fromBob = true
		}
	}
	if err != nil || !fromBob {
		t.Errorf("no TCP connection from bob to the gateway's SIP port (%v):\n%s", err, out)
	}
	t.Logf("gateway n1's TCP connections on 5060: %s", strings.Join(strings.Fields(out), " "))
	if st, err := m.nodes[0].status(m.bin); err != nil || st.Gateway == nil || st.Gateway.TCPOpen < 2 {
		t.Errorf("n1's status: want tcp_open ≥ 2 (Kamailio's connection, bob's; %v): %+v", err, st.Gateway)
	} else {
		t.Logf("n1's status: tcp_open %d, tcp_refused %d", st.Gateway.TCPOpen, st.Gateway.TCPRefused)
	}

	// IPv6 only: dave, on a host of its own (baresip's ctrl_tcp port is
	// per namespace), answers for sip:dave@v6.example.net.
	const daveTone = 1900.0
	daveNS := netns.New(t, "udave")
	netns.Veth(t, inet, "dave0", daveNS, "eth0")
	inet.Run(t, "ip", "link", "set", "dave0", "master", "br0")
	daveNS.Run(t, "ip", "addr", "add", inetDave6+"/64", "dev", "eth0", "nodad")
	daveDir := t.TempDir()
	writeFile(t, filepath.Join(daveDir, "config"), baresipBase+"net_interface "+inetDave6+"\nsip_listen ["+inetDave6+"]:5060\n")
	writeFile(t, filepath.Join(daveDir, "accounts"), "<sip:dave@v6.example.net>;regint=0;answermode=auto;audio_codecs=pcmu;ptime=20\n")
	writeToneWAV(t, filepath.Join(daveDir, "tone.wav"), daveTone, 5*time.Second)
	dave := startBaresip(t, daveNS, baresip, daveDir, "-6")
	for _, f := range must(filepath.Glob(filepath.Join(phDir, "dump-*.wav"))) {
		os.Remove(f)
	}
	res = runCall(t, phone, dave, "sip:dave@v6.example.net")
	t.Logf("call 201 (n2) → sip:dave@v6.example.net (AAAA only) through the gateway n1 over IPv6: %v", res)
	checkTones(t, "dave (called over IPv6)", daveDir, callerTone, daveTone)
	checkTones(t, "201 on n2 (caller)", phDir, daveTone, callerTone)
	// dave's media came from the gateway's IPv6 address (its relay).
	dl, _ := os.ReadFile(dave.log)
	fromGW := false
	for line := range strings.Lines(string(dl)) {
		if strings.Contains(line, "incoming rtp") && strings.Contains(line, inetGateway6) {
			fromGW = true
			t.Logf("dave: %s", strings.TrimSpace(line))
		}
	}
	if !fromGW {
		t.Errorf("dave's media did not come from the gateway's IPv6 address:\n%s", lastLines(string(dl), 30))
	}
}
