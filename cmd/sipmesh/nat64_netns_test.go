//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/internal/netns"
	"github.com/sipmesh/sipmesh/nat64/tun64"
)

// The "Internet" of the NAT64 test: an IPv4-only namespace behind the
// gateway's uplink with unbound (v4only.example A 198.51.100.10), an HTTP
// server and a UDP echo at that address.
const (
	n64Server = "198.51.100.10"
	n64Synth  = "2001:db8:64::c633:640a" // n64Server under nat64-prefix
	n64CLAT   = "fd00:64:c1a7::/96"
)

// TestNAT64CLATThroughGateway (issue 15): a gateway node n1 (uplink up0
// to an IPv4-only "Internet"; nat64-prefix 2001:db8:64::/96; clat-prefix
// fd00:64:c1a7::/96) with one dual-stack host on its LAN:
//
//   - IPv6: the host resolves v4only.example through the node's DNS64
//     (synthesized with the gateway's announced prefix), fetches
//     http://[2001:db8:64::c633:640a]/ through the NAT64, and a UDP
//     packet to a closed port comes back as ICMPv6 port unreachable
//     (ECONNREFUSED), the ICMPv4 error translated (RFC 7915 §4.2).
//   - IPv4: the same host fetches http://198.51.100.10/ and gets its UDP
//     echo through the CLAT and the NAT64 (464XLAT, RFC 6877); the
//     server sees the uplink's address.
//   - The firewall rules are in place while the node runs (README) and
//     gone when it stops, and after a kill -9 the next start leaves each
//     rule once and its stop none.
func TestNAT64CLATThroughGateway(t *testing.T) {
	netns.RequireRoot(t)
	dig := needTool(t, "dig", "dnsutils")
	unbound := needTool(t, "unbound", "unbound")
	needTool(t, "iptables", "iptables")

	m := newLineMesh(t, "x", 2, 90, func(i int) string {
		if i == 0 {
			return "lan-interface lan0\nlan-address 10.98.1.1/24\ndhcp off\ndns-upstream 10.98.53.2\n" +
				"uplink-interface up0\npublic-address 203.0.113.1\nnat64-prefix 2001:db8:64::/96\nclat-prefix " + n64CLAT + "\n"
		}
		return ""
	})
	gw := m.nodes[0].ns
	inet := netns.New(t, "xinet")
	netns.Veth(t, gw, "up0", inet, "eth0")
	gw.Run(t, "ip", "addr", "add", "10.98.53.1/24", "dev", "up0")
	gw.Run(t, "ip", "route", "add", "default", "via", "10.98.53.2")
	inet.Run(t, "ip", "addr", "add", "10.98.53.2/24", "dev", "eth0")
	inet.Run(t, "ip", "addr", "add", n64Server+"/32", "dev", "lo")
	// A router that forwards nothing it was not told to.
	gw.Run(t, "iptables", "-P", "FORWARD", "DROP")
	gw.Run(t, "ip6tables", "-P", "FORWARD", "DROP")
	startUnbound(t, inet, unbound, dig)
	seen := startInternetServers(t, inet)

	m.startAll()
	host := m.plugPhone(0, "xh")
	host.Run(t, "ip", "addr", "add", "10.98.1.2/24", "dev", "eth0")
	host.Run(t, "ip", "route", "add", "default", "via", "10.98.1.1")
	// IPv6 on the LAN by hand (router advertisements are the mesh IP data
	// plane's business): the host routes the NAT64 prefix to the node.
	gw.Run(t, "ip", "-6", "addr", "add", "2001:db8:1::1/64", "dev", "lan0", "nodad")
	host.Run(t, "ip", "-6", "addr", "add", "2001:db8:1::10/64", "dev", "eth0", "nodad")
	host.Run(t, "ip", "-6", "route", "add", "2001:db8:64::/96", "via", "2001:db8:1::1")

	// DNS64 with the gateway's prefix (announced once the NAT64 runs).
	var out string
	waitFor(t, 30*time.Second, "the node's DNS64 to synthesize with the gateway's prefix", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		o, _ := host.Command(ctx, dig, "+time=1", "+tries=2", "@10.98.1.1", "v4only.example", "AAAA").CombinedOutput()
		out = string(o)
		return slices.Contains(digAnswers(out), n64Synth), out
	})
	t.Logf("dig AAAA v4only.example @10.98.1.1: %v", digAnswers(out))

	wiring := tun64.Wiring{Device: "sipmesh-nat64", Prefix: netip.MustParsePrefix("2001:db8:64::/96"),
		Pool: netip.MustParsePrefix("198.18.64.0/30"), Uplink: "up0"}
	clat := tun64.CLATWiring{Device: "sipmesh-clat", CLAT: netip.MustParsePrefix(n64CLAT), LAN: "lan0"}
	checkRules(t, gw, append(wiring.Rules(), clat.Rules()...), 1)

	// IPv6 host → NAT64 → IPv4 server.
	body := fetch(t, host, "http://["+n64Synth+"]/", "tcp6")
	if body != "hello from the IPv4 Internet" {
		t.Fatalf("HTTP over NAT64: %q", body)
	}
	if src := <-seen; src != "10.98.53.1" {
		t.Errorf("the server saw %s; want the uplink address 10.98.53.1 (the pool masqueraded)", src)
	}
	// An ICMPv4 port unreachable, translated to ICMPv6.
	if err := udpRoundTrip(host, "udp6", netip.MustParseAddrPort("["+n64Synth+"]:9"), "closed?"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("UDP to a closed port over NAT64: %v; want ECONNREFUSED (ICMPv6 port unreachable)", err)
	}
	// IPv4 host → CLAT → NAT64 → IPv4 server.
	body = fetch(t, host, "http://"+n64Server+"/", "tcp4")
	if body != "hello from the IPv4 Internet" {
		t.Fatalf("HTTP over CLAT + NAT64: %q", body)
	}
	if src := <-seen; src != "10.98.53.1" {
		t.Errorf("the server saw %s over the CLAT; want 10.98.53.1", src)
	}
	if err := udpRoundTrip(host, "udp4", netip.MustParseAddrPort(n64Server+":7"), "echo over 464XLAT"); err != nil {
		t.Errorf("UDP echo over CLAT + NAT64: %v", err)
	}
	if err := udpRoundTrip(host, "udp4", netip.MustParseAddrPort(n64Server+":9"), "closed?"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("UDP to a closed port over CLAT + NAT64: %v; want ECONNREFUSED", err)
	}
	st, err := m.nodes[0].status(m.bin)
	if err != nil || st.Gateway == nil || st.Gateway.NAT64 == nil || !st.Gateway.NAT64.Running || st.Gateway.NAT64.Out4 == 0 {
		t.Errorf("status: %+v, %v", st.Gateway, err)
	}
	statusOut, _ := gw.Try(m.bin, "status", "--control", m.nodes[0].sock)
	t.Logf("sipmesh status:\n%s", statusOut)

	// A clean stop takes every rule away.
	m.nodes[0].stop(t)
	checkRules(t, gw, append(wiring.Rules(), clat.Rules()...), 0)
	if out := gw.Run(t, "ip", "-4", "rule"); strings.Contains(out, "lan0") {
		t.Errorf("policy rule left after stop:\n%s", out)
	}

	// kill -9 leaves them; the next start finds them and its stop removes
	// them.
	m.nodes[0].start(t, m.bin, m.tmp, m.ifaces[0])
	waitFor(t, 30*time.Second, "the restarted NAT64 and CLAT", func() (bool, string) {
		s, _ := gw.Try("iptables-save")
		return strings.Contains(s, tun64.ChainNAT) && strings.Contains(s, tun64.ChainCLAT), s
	})
	m.nodes[0].cmd.Process.Signal(syscall.SIGKILL)
	m.nodes[0].cmd.Wait()
	m.nodes[0].start(t, m.bin, m.tmp, m.ifaces[0])
	waitFor(t, 30*time.Second, "the NAT64 again after kill -9", func() (bool, string) {
		st, err := m.nodes[0].status(m.bin)
		return err == nil && st.Gateway != nil && st.Gateway.NAT64 != nil && st.Gateway.NAT64.Running, fmt.Sprint(err)
	})
	waitFor(t, 10*time.Second, "the CLAT again after kill -9", func() (bool, string) {
		s, _ := gw.Try("ip", "-4", "rule")
		return strings.Contains(s, "lan0"), s
	})
	checkRules(t, gw, append(wiring.Rules(), clat.Rules()...), 1)
	if out := gw.Run(t, "ip", "-4", "rule"); strings.Count(out, "lan0") != 1 {
		t.Errorf("policy rules after kill -9 and restart:\n%s", out)
	}
	if body := fetch(t, host, "http://["+n64Synth+"]/", "tcp6"); body != "hello from the IPv4 Internet" {
		t.Errorf("HTTP over NAT64 after the restart: %q", body)
	}
	<-seen
	m.nodes[0].stop(t)
	checkRules(t, gw, append(wiring.Rules(), clat.Rules()...), 0)
}

// checkRules fails unless every rule is in ns times times (iptables-save
// form), or, for times 0, nothing of sipmesh's chains is left.
func checkRules(t *testing.T, ns *netns.NS, rules []tun64.Rule, times int) {
	t.Helper()
	v4, v6 := ns.Run(t, "iptables-save"), ns.Run(t, "ip6tables-save")
	if times == 0 {
		if strings.Contains(v4, "SIPMESH") || strings.Contains(v6, "SIPMESH") {
			t.Errorf("rules left after stop:\n%s\n%s", v4, v6)
		}
		return
	}
	for _, r := range rules {
		save := v4
		if r.IPv6 {
			save = v6
		}
		if n := strings.Count(save, saveLine(r)+"\n"); n != times {
			t.Errorf("%v: %d times, want %d, in\n%s", r, n, times, save)
		}
	}
}

// saveLine is r as iptables-save prints it.
func saveLine(r tun64.Rule) string {
	get := func(flag string) string {
		for i := 0; i+1 < len(r.Spec); i++ {
			if r.Spec[i] == flag {
				return r.Spec[i+1]
			}
		}
		return ""
	}
	var parts []string
	for _, f := range []string{"-s", "-d", "-i", "-o"} {
		if v := get(f); v != "" {
			parts = append(parts, f, v)
		}
	}
	if st := get("--ctstate"); st != "" {
		parts = append(parts, "-m", "conntrack", "--ctstate", st)
	}
	return "-A " + r.Chain + " " + strings.Join(append(parts, "-j", get("-j")), " ")
}

// startUnbound runs unbound in ns at 10.98.53.2 with v4only.example.
func startUnbound(t *testing.T, ns *netns.NS, unbound, dig string) {
	t.Helper()
	dir := t.TempDir()
	conf := filepath.Join(dir, "unbound.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`server:
	interface: 10.98.53.2
	port: 53
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
	local-zone: "example." static
	local-data: "example. 3600 IN SOA ns.example. host.example. 1 3600 600 86400 60"
	local-data: "v4only.example. 300 IN A %s"
remote-control:
	control-enable: no
`, dir, n64Server)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := ns.Command(context.Background(), unbound, "-d", "-c", conf)
	var ulog strings.Builder
	cmd.Stdout, cmd.Stderr = &ulog, &ulog
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting unbound: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("unbound:\n%s", ulog.String())
		}
	})
	waitFor(t, 10*time.Second, "unbound to answer", func() (bool, string) {
		out := digIn(t, ns, dig, "10.98.53.2", "v4only.example", "A")
		return slices.Contains(digAnswers(out), n64Server), out
	})
}

// bigBody is what the Internet's HTTP server sends for /big: 4 MiB of a
// repeating pattern.
var bigBody = func() []byte {
	b := make([]byte, 4<<20)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}()

// startInternetServers runs an HTTP server on n64Server:80 (/big: bigBody)
// and a UDP echo
// on n64Server:7 in ns; the HTTP clients' addresses arrive on the channel.
func startInternetServers(t *testing.T, ns *netns.NS) <-chan string {
	t.Helper()
	ctx := context.Background()
	ln, err := ns.Network().Listen(ctx, "tcp4", n64Server+":80")
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan string, 16)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		select {
		case seen <- host:
		default:
		}
		if r.URL.Path == "/big" { // full-sized packets: path MTU discovery through the translators
			w.Write(bigBody)
			return
		}
		io.WriteString(w, "hello from the IPv4 Internet")
	}), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	echo, err := ns.Network().ListenPacket(ctx, "udp4", n64Server+":7")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2000)
		for {
			n, from, err := echo.ReadFrom(buf)
			if err != nil {
				return
			}
			echo.WriteTo(buf[:n], from)
		}
	}()
	t.Cleanup(func() {
		srv.Close()
		echo.Close()
		<-done
	})
	return seen
}

// fetch GETs url from inside ns over network (tcp4 or tcp6).
func fetch(t *testing.T, ns *netns.NS, url, network string) string {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return ns.Network().Dial(ctx, network, addr)
		},
		DisableKeepAlives: true,
	}}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s from %s: %v", url, ns.Name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return string(b)
}

// udpRoundTrip sends msg from a connected UDP socket in ns to dst and
// waits for the same bytes back; a refused port is ECONNREFUSED.
func udpRoundTrip(ns *netns.NS, network string, dst netip.AddrPort, msg string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := ns.Network().Dial(ctx, network, dst.String())
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2000)
	for range 3 { // the first packet may wait for neighbour discovery
		if _, err := c.Write([]byte(msg)); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := c.Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if err != nil {
			return err
		}
		if string(buf[:n]) != msg {
			return fmt.Errorf("echo %q", buf[:n])
		}
		return nil
	}
	return os.ErrDeadlineExceeded
}
