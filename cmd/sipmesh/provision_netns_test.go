//go:build linux

package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/sipmesh/sipmesh/internal/netns"
)

// TestPhoneProvisionedByMAC (issue 17): a phone configures itself from
// the file the node serves for its MAC. Nodes n1–n2, each with a phone
// LAN and DHCP; two phone namespaces on n1's LAN, one on n2's. The operator binds each
// phone's MAC (its veth's) to an extension with `sipmesh phone add` (the
// node generates the passwords). Busybox udhcpc in each phone gets a
// lease and option 66, the provisioning URL on the node's web listener;
// phone 1 fetches <mac>.cfg (Yealink format) from that URL over HTTP,
// the test turns the file's account into a baresip account line, baresip
// starts and registers (the binding appears in the DHT, which the
// registrar writes only after a 200 OK to an authenticated REGISTER).
// Then phone 1 asking for phone 2's files, phone 2 asking for phone 1's,
// and a phone on n2's LAN (another LAN) asking its node for phone 1's or
// its own (bound nowhere) are refused with the same answer as a MAC
// nobody has; phone 2 gets its own. No password is in the node's log.
func TestPhoneProvisionedByMAC(t *testing.T) {
	netns.RequireRoot(t)
	busybox := needTool(t, "busybox", "busybox")
	baresip := needTool(t, "baresip", "baresip-core")
	m := newLineMesh(t, "v", 2, 60, func(i int) string {
		return fmt.Sprintf("lan-interface lan0\nlan-address 10.97.%d.1/24\ndhcp on\ndigest-algorithms MD5\n", i+1)
	})
	p1, p2 := m.plugPhone(0, "vp1"), m.plugPhone(0, "vp2")
	p3 := m.plugPhone(1, "vp3") // on n2's LAN
	mac1, mac2, mac3 := linkMAC(t, p1, "eth0"), linkMAC(t, p2, "eth0"), linkMAC(t, p3, "eth0")
	m.startAll()
	m.waitRing()

	n1 := m.nodes[0]
	for _, b := range []struct{ mac, ext string }{{mac1, "201"}, {mac2, "202"}} {
		out, err := exec.Command(m.bin, "phone", "add", "--control", n1.sock, b.mac, b.ext).CombinedOutput()
		if err != nil {
			t.Fatalf("sipmesh phone add %s %s: %v\n%s", b.mac, b.ext, err, out)
		}
		t.Logf("sipmesh phone add %s %s: %s", b.mac, b.ext, strings.TrimSpace(string(out)))
	}

	script := filepath.Join(t.TempDir(), "udhcpc.sh")
	writeFile(t, script, provisionScript)
	if err := os.Chmod(script, 0o755); err != nil {
		t.Fatal(err)
	}
	const url = "http://10.97.1.1:8080/provision/"
	ev1 := startUdhcpc(t, p1, busybox, script, "phone1", nil).wait(t, 25*time.Second, "bound")
	ev2 := startUdhcpc(t, p2, busybox, script, "phone2", nil).wait(t, 25*time.Second, "bound")
	ev3 := startUdhcpc(t, p3, busybox, script, "phone3", nil).wait(t, 25*time.Second, "bound")
	// Busybox shows option 66 as "bad": it checks it as a host name, and
	// a URL is none. Its presence shows it arrived; its value is read
	// from a DHCPINFORM (RFC 2131 §3.4) the phone sends from its lease.
	for i, ev := range []udhcpcEvent{ev1, ev2, ev3} {
		if ev.vars["tftp"] == "" {
			t.Fatalf("phone %d: no option 66 in the ACK: %v", i+1, ev.vars)
		}
	}
	opts := dhcpInform(t, p1, mac1, ev1.vars["ip"], "10.97.1.1")
	if got := string(opts[66]); got != url {
		t.Fatalf("option 66 = %q, want %q", got, url)
	}
	if got := string(opts[160]); got != url {
		t.Fatalf("option 160 = %q, want %q", got, url)
	}
	t.Logf("leases: phone 1 %s, phone 2 %s; option 66 (and 160) %s", ev1.vars["ip"], ev2.vars["ip"], opts[66])

	// The phone fetches its file, as a Yealink does after DHCP.
	code, cfg := httpGet(t, p1, url+macFile(mac1)+".cfg")
	if code != http.StatusOK {
		t.Fatalf("phone 1's own file: %d\n%s", code, cfg)
	}
	kv := yealinkKeys(cfg)
	user, pass := kv["account.1.user_name"], kv["account.1.password"]
	if user != "201" || len(pass) < 24 || kv["account.1.sip_server.1.address"] != "mesh" {
		t.Fatalf("phone 1's file has no usable account:\n%s", cfg)
	}

	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "config"), baresipBase+
		fmt.Sprintf("net_interface %s\nsip_listen %s:5060\ndns_server %s:53\n", ev1.vars["ip"], ev1.vars["ip"], ev1.vars["dns"]))
	writeToneWAV(t, filepath.Join(dir, "tone.wav"), 700, time.Second)
	// The Yealink account: AOR user@sip_server, digest user auth_name,
	// everything through the outbound proxy.
	writeFile(t, filepath.Join(dir, "accounts"), fmt.Sprintf(
		"<sip:%s@%s>;auth_user=%s;auth_pass=%s;outbound=\"sip:%s:%s\";regint=300;answermode=auto;audio_codecs=pcmu\n",
		user, kv["account.1.sip_server.1.address"], kv["account.1.auth_name"], pass,
		kv["account.1.outbound_proxy.1.address"], kv["account.1.outbound_proxy.1.port"]))
	regStart := time.Now()
	startBaresip(t, p1, baresip, dir)
	m.waitBinding(1, "201", 0)
	t.Logf("baresip configured from phone 1's file registered %v after it started", time.Since(regStart).Round(time.Millisecond))

	// Refusals all look like a MAC nobody has.
	nobody, nobodyBody := httpGet(t, p1, url+"02aa00000000.cfg")
	if nobody != http.StatusNotFound {
		t.Fatalf("unknown MAC: %d", nobody)
	}
	// n2's LAN is another LAN: its node has no binding of phone 1, and
	// phone 3 (plugged in there, bound nowhere) gets nothing either.
	url2 := "http://10.97.2.1:8080/provision/"
	for _, tc := range []struct {
		name string
		ns   *netns.NS
		url  string
	}{
		{"phone 2's Yealink file from phone 1", p1, url + macFile(mac2) + ".cfg"},
		{"phone 2's Grandstream file from phone 1", p1, url + "cfg" + macFile(mac2) + ".xml"},
		{"phone 2's Polycom file from phone 1", p1, url + macFile(mac2) + "-phone.cfg"},
		{"phone 1's file from phone 2", p2, url + macFile(mac1) + ".cfg"},
		{"phone 1's file from phone 3 on n2's LAN", p3, url2 + macFile(mac1) + ".cfg"},
		{"phone 3's own file, bound nowhere", p3, url2 + macFile(mac3) + ".cfg"},
	} {
		code, body := httpGet(t, tc.ns, tc.url)
		if code != nobody || body != nobodyBody {
			t.Errorf("%s: %d %q, want the unknown MAC's %d %q", tc.name, code, body, nobody, nobodyBody)
		}
		if strings.Contains(body, "password") {
			t.Errorf("%s: a password in the answer", tc.name)
		}
	}
	if code, body := httpGet(t, p2, url+macFile(mac2)+".cfg"); code != http.StatusOK || yealinkKeys(body)["account.1.user_name"] != "202" {
		t.Fatalf("phone 2's own file: %d\n%s", code, body)
	}
	if b, err := os.ReadFile(n1.log); err != nil || strings.Contains(string(b), pass) {
		t.Fatalf("n1's log holds phone 1's password (or cannot be read: %v)", err)
	}
}

// provisionScript is a udhcpc hook that configures the address and
// reports the lease with option 66 ($tftp).
const provisionScript = `#!/bin/sh
case "$1" in
bound|renew) ip addr replace "$ip/$subnet" dev "$interface" ;;
deconfig) ip addr flush dev "$interface" ;;
esac
echo "EVENT $1 ip=$ip dns=$dns tftp=$tftp"
`

// dhcpInform sends a DHCPINFORM from ip (the namespace's lease) to
// server asking for options 66 and 160, and returns the ACK's options.
func dhcpInform(t *testing.T, ns *netns.NS, mac, ip, server string) map[uint8][]byte {
	t.Helper()
	hw, err := net.ParseMAC(mac)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pc, err := ns.Network().ListenPacket(ctx, "udp4", ip+":68")
	if err != nil {
		t.Fatalf("DHCPINFORM socket in %s: %v", ns.Name, err)
	}
	defer pc.Close()
	msg, err := dhcpv4.NewInform(hw, net.ParseIP(ip), dhcpv4.WithRequestedOptions(
		dhcpv4.OptionTFTPServerName, dhcpv4.GenericOptionCode(160)))
	if err != nil {
		t.Fatal(err)
	}
	to := &net.UDPAddr{IP: net.ParseIP(server), Port: 67}
	buf := make([]byte, 1500)
	// Sent again each second: UDP, and the server may be probing.
	for range 10 {
		if _, err := pc.WriteTo(msg.ToBytes(), to); err != nil {
			t.Fatalf("DHCPINFORM: %v", err)
		}
		pc.SetReadDeadline(time.Now().Add(time.Second))
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				break
			}
			ack, err := dhcpv4.FromBytes(buf[:n])
			if err != nil || ack.TransactionID != msg.TransactionID || ack.MessageType() != dhcpv4.MessageTypeAck {
				continue
			}
			out := make(map[uint8][]byte)
			for code, v := range ack.Options {
				out[code] = v
			}
			return out
		}
	}
	t.Fatalf("no DHCPACK to a DHCPINFORM from %s", ip)
	return nil
}

// linkMAC returns an interface's MAC in ns.
func linkMAC(t *testing.T, ns *netns.NS, ifname string) string {
	t.Helper()
	f := strings.Fields(ns.Run(t, "ip", "-o", "link", "show", "dev", ifname))
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "link/ether" {
			return f[i+1]
		}
	}
	t.Fatalf("no MAC of %s in %s", ifname, ns.Name)
	return ""
}

// macFile is a MAC as phones write it in file names.
func macFile(mac string) string { return strings.ReplaceAll(mac, ":", "") }

// httpGet fetches url from inside ns (the source address is the
// namespace's own, as a phone's would be).
func httpGet(t *testing.T, ns *netns.NS, url string) (int, string) {
	t.Helper()
	nw := ns.Network()
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return nw.Dial(ctx, network, addr)
	}}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s in %s: %v", url, ns.Name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatalf("GET %s in %s: %v", url, ns.Name, err)
	}
	return resp.StatusCode, string(b)
}

// yealinkKeys parses a Yealink key = value file.
func yealinkKeys(s string) map[string]string {
	kv := make(map[string]string)
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		if k, v, ok := strings.Cut(line, " = "); ok {
			kv[k] = v
		}
	}
	return kv
}
