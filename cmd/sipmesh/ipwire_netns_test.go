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
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/gateway"
	"github.com/sipmesh/sipmesh/internal/netns"
	"github.com/sipmesh/sipmesh/meship"
)

// TestIPNetworkThroughNAT64 (issue 15, end to end): the mesh's IP data
// plane, the gateways' NAT64 and the nodes' CLAT together. Four `sipmesh
// node` processes in a line n1–n2–n3–n4, all with ip-network on; n1 is a
// gateway whose uplink leads to an IPv4-only "Internet" namespace
// (unbound with v4only.example, an HTTP server and a UDP echo at
// 198.51.100.10); n3 and n4 have LANs. A fifth node n5 beyond n4, a
// second gateway into the same Internet, starts later.
//
// The gateways' FORWARD policy is DROP; n4 filters reverse paths strictly
// (conf/all/rp_filter 1).
//
//   - An IPv4-only phone on n4's LAN, 3 mesh hops from the gateway, gets
//     its address by DHCP (busybox udhcpc) and fetches
//     http://198.51.100.10/ and gets UDP echoes (its CLAT, the mesh, n1's
//     NAT64); UDP to a closed port comes back as port unreachable (the
//     Internet's ICMPv4 error translated to ICMPv6 by the NAT64 and back
//     by the CLAT, RFC 7915 §4.2, §5.2).
//   - An IPv6 host on n3's LAN resolves v4only.example through n3's DNS64
//     (whose upstream is itself reached through the NAT64) to an address
//     under n1's prefix and fetches it over HTTP; its UDP to a closed
//     port gets ICMPv6 port unreachable.
//   - ping6 between the IPv6 hosts of n3 and n4.
//   - n5 starts; n1 is killed (SIGKILL); the seconds until a new flow of
//     the phone and of the IPv6 host work again, through n5, are logged.
func TestIPNetworkThroughNAT64(t *testing.T) {
	netns.RequireRoot(t)
	dig := needTool(t, "dig", "dnsutils")
	unbound := needTool(t, "unbound", "unbound")
	busybox := needTool(t, "busybox", "busybox")
	ping := needTool(t, "ping", "iputils-ping")
	needTool(t, "iptables", "iptables")

	const (
		prefix = "2001:db8:64::/96"
		// The Internet's resolver, 10.98.53.2, under the NAT64 prefix: the
		// DNS64 of nodes without an uplink reaches it through the mesh.
		upstream6 = "[2001:db8:64::a62:3502]:53"
	)
	gw := func(addr string) string {
		return "ip-network on\nuplink-interface up0\npublic-address " + addr + "\ndns-upstream 10.98.53.2\nnat64-prefix " + prefix + "\n"
	}
	m := newLineMesh(t, "w", 5, 120, func(i int) string {
		switch i {
		case 0:
			return gw("203.0.113.1")
		case 2:
			return "ip-network on\nlan-interface lan0\nlan-address 10.98.3.1/24\ndhcp off\ndns-upstream " + upstream6 + "\n"
		case 3:
			return "ip-network on\nlan-interface lan0\nlan-address 10.98.4.1/24\ndhcp on\ndns-upstream " + upstream6 + "\n"
		case 4:
			return gw("203.0.113.5")
		}
		return "ip-network on\n"
	})
	n1, n3, n4, n5 := m.nodes[0], m.nodes[2], m.nodes[3], m.nodes[4]

	// The Internet: n1's uplink on 10.98.53.0/24, n5's on 10.98.55.0/24.
	inet := netns.New(t, "winet")
	netns.Veth(t, n1.ns, "up0", inet, "eth0")
	netns.Veth(t, n5.ns, "up0", inet, "eth1")
	for _, c := range []struct {
		ns         *netns.NS
		addr, peer string
		dev        string
	}{{n1.ns, "10.98.53.1/24", "10.98.53.2", "eth0"}, {n5.ns, "10.98.55.1/24", "10.98.55.2", "eth1"}} {
		c.ns.Run(t, "ip", "addr", "add", c.addr, "dev", "up0")
		c.ns.Run(t, "ip", "route", "add", "default", "via", c.peer)
		inet.Run(t, "ip", "addr", "add", c.peer+"/24", "dev", c.dev)
	}
	inet.Run(t, "ip", "addr", "add", n64Server+"/32", "dev", "lo")
	// Gateways that forward nothing they were not told to, and a node
	// with strict reverse path filtering (its CLAT's answers come from
	// Internet addresses it has no route for).
	for _, nd := range []*nsNode{n1, n5} {
		nd.ns.Run(t, "iptables", "-P", "FORWARD", "DROP")
		nd.ns.Run(t, "ip6tables", "-P", "FORWARD", "DROP")
	}
	n4.ns.Run(t, "sysctl", "-w", "net.ipv4.conf.all.rp_filter=1")
	startUnbound(t, inet, unbound, dig)
	seen := startInternetServers(t, inet)

	// Hosts: an IPv4-only phone (DHCP) and an IPv6 host on n4's LAN, a
	// dual-stack host on n3's (IPv4 only to ask the node's DNS, which
	// listens on the LAN's IPv4 address).
	phone := m.plugPhone(3, "wp4")
	h4 := m.plugPhone(3, "wh4")
	h3 := m.plugPhone(2, "wh3")
	addr3, addr4 := meship.LANAddr(n3.id).Next(), meship.LANAddr(n4.id).Next()
	for _, h := range []struct {
		ns   *netns.NS
		addr netip.Addr
		node *nsNode
	}{{h3, addr3, n3}, {h4, addr4, n4}} {
		h.ns.Run(t, "ip", "addr", "add", netip.PrefixFrom(h.addr, meship.LANPrefix(h.node.id).Bits()).String(), "dev", "eth0", "nodad")
		h.ns.Run(t, "ip", "link", "set", "eth0", "up")
		for _, p := range []string{meship.MeshNet.String(), meship.CLATNet.String(), prefix} {
			h.ns.Run(t, "ip", "-6", "route", "add", p, "via", meship.LANAddr(h.node.id).String())
		}
	}
	h3.Run(t, "ip", "addr", "add", "10.98.3.2/24", "dev", "eth0")

	start := time.Now()
	for i, nd := range m.nodes[:4] {
		nd.start(t, m.bin, m.tmp, m.ifaces[i])
	}
	(&lineMesh{t: t, bin: m.bin, nodes: m.nodes[:4]}).waitRing()
	waitFor(t, 60*time.Second, "n3 and n4 to use n1's NAT64", func() (bool, string) {
		for _, nd := range []*nsNode{n3, n4} {
			st, err := nd.status(m.bin)
			if err != nil {
				return false, err.Error()
			}
			if st.IPNetwork == nil || st.IPNetwork.NAT64Exit != n1.id.String() || st.IPNetwork.NAT64Prefix != prefix {
				return false, fmt.Sprintf("%s: %+v", nd.name, st.IPNetwork)
			}
		}
		return true, ""
	})
	t.Logf("the mesh uses n1's NAT64 %v after start", time.Since(start).Round(time.Millisecond))
	for _, nd := range []*nsNode{n3, n4} {
		// The routes follow the exits within a second (exitRouteEvery).
		waitFor(t, 10*time.Second, nd.name+"'s route of the NAT64 prefix into the mesh", func() (bool, string) {
			o, _ := nd.ns.Try("ip", "-6", "route", "show", prefix)
			return strings.Contains(o, "dev "+gateway.IPNetworkTUN), o
		})
	}
	if o := n1.ns.Run(t, "ip", "-6", "route", "get", "2001:db8:64::1"); !strings.Contains(o, "dev sipmesh-nat64") {
		t.Errorf("n1: its own prefix must route into its NAT64 device: %q", o)
	}

	// The phone: DHCP from n4, then the IPv4 Internet through its CLAT.
	c := startUdhcpc(t, phone, busybox, writeScript(t, t.TempDir()), "phone4", nil)
	ev := c.wait(t, 30*time.Second, "bound")
	phone.Run(t, "ip", "route", "add", "default", "via", ev.vars["router"])
	t.Logf("phone bound %s (router %s)", ev.vars["ip"], ev.vars["router"])
	var body string
	waitFor(t, 30*time.Second, "HTTP from the IPv4 phone through CLAT, mesh and NAT64", func() (bool, string) {
		var err error
		body, err = tryFetch(phone, "http://"+n64Server+"/", "tcp4", 3*time.Second)
		return err == nil, fmt.Sprint(err)
	})
	if body != "hello from the IPv4 Internet" {
		t.Fatalf("HTTP over 464XLAT: %q", body)
	}
	if src := <-seen; src != "10.98.53.1" {
		t.Errorf("the server saw %s; want n1's uplink address 10.98.53.1", src)
	}
	// 4 MiB down to the phone: the server's full-sized IPv4 packets (DF)
	// do not fit the mesh once translated, so n1's NAT64 answers with
	// Fragmentation Needed for the mesh MTU (RFC 7915 §4.1) and the
	// server's path MTU discovery adapts.
	dl := time.Now()
	big, err := tryFetch(phone, "http://"+n64Server+"/big", "tcp4", 60*time.Second)
	if err != nil || big != string(bigBody) {
		for _, nd := range []*nsNode{n1, n4} {
			o, _ := nd.ns.Try(m.bin, "status", "--json", "--control", nd.sock)
			t.Logf("%s status: %s", nd.name, o)
		}
		o, _ := inet.Try("ip", "route", "get", "10.98.53.1")
		t.Logf("inet: %s", o)
		o, _ = inet.Try("nstat", "-az")
		t.Logf("inet nstat: %s", o)
		t.Fatalf("4 MiB over 464XLAT: %v (%d bytes)", err, len(big))
	}
	<-seen
	el := time.Since(dl)
	t.Logf("HTTP 4 MiB to the IPv4 phone (CLAT, 3 mesh hops, NAT64): %v, %.1f Mbit/s", el.Round(time.Millisecond), float64(len(big)*8)/el.Seconds()/1e6)
	if err := udpRoundTrip(phone, "udp4", netip.MustParseAddrPort(n64Server+":7"), "time?"); err != nil {
		t.Errorf("UDP echo from the IPv4 phone: %v", err)
	}
	if err := udpRoundTrip(phone, "udp4", netip.MustParseAddrPort(n64Server+":9"), "closed?"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("UDP to a closed port from the IPv4 phone: %v; want ECONNREFUSED (the ICMP error translated twice)", err)
	}

	// The IPv6 host on n3: DNS64, then HTTP through the NAT64.
	var out string
	waitFor(t, 30*time.Second, "n3's DNS64 to synthesize with n1's prefix", func() (bool, string) {
		out = digIn(t, h3, dig, "10.98.3.1", "v4only.example", "AAAA")
		return slices.Contains(digAnswers(out), n64Synth), out
	})
	t.Logf("h3: dig AAAA v4only.example @10.98.3.1: %v", digAnswers(out))
	waitFor(t, 30*time.Second, "HTTP from the IPv6 host through the mesh and NAT64", func() (bool, string) {
		var err error
		body, err = tryFetch(h3, "http://["+n64Synth+"]/", "tcp6", 3*time.Second)
		return err == nil, fmt.Sprint(err)
	})
	if body != "hello from the IPv4 Internet" {
		t.Fatalf("HTTP over NAT64 from n3's LAN: %q", body)
	}
	<-seen
	if err := udpRoundTrip(h3, "udp6", netip.MustParseAddrPort("["+n64Synth+"]:9"), "closed?"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("UDP to a closed port from the IPv6 host: %v; want ECONNREFUSED (ICMPv6 port unreachable)", err)
	}

	// ping6 between the LAN hosts of n3 and n4.
	for _, c := range []struct {
		from *netns.NS
		to   netip.Addr
	}{{h3, addr4}, {h4, addr3}} {
		waitFor(t, 20*time.Second, fmt.Sprintf("ping6 %v", c.to), func() (bool, string) {
			o, err := c.from.Try(ping, "-6", "-c", "1", "-W", "1", c.to.String())
			return err == nil, o
		})
	}
	for _, nd := range []*nsNode{n1, n4} {
		if st, err := nd.status(m.bin); err == nil && st.IPNetwork != nil {
			t.Logf("%s ip network: %+v", nd.name, *st.IPNetwork)
		}
	}

	// The second gateway: n5 starts and is known; then n1 dies.
	n5.start(t, m.bin, m.tmp, m.ifaces[4])
	waitFor(t, 60*time.Second, "n4 to know n5's NAT64", func() (bool, string) {
		st, err := n4.status(m.bin)
		if err != nil {
			return false, err.Error()
		}
		for _, g := range st.Gateways {
			if g.ID == n5.id.String() && g.NAT64 == prefix && g.MeshProbes > 0 {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%+v", st.Gateways)
	})
	// Sticky (nat64exit.go): the exits stay with n1 while it is usable and
	// within 3 R of the best. (On a starved machine lost probes may have
	// moved one already; then its time below is only the other's.)
	for _, nd := range []*nsNode{n3, n4} {
		if st, err := nd.status(m.bin); err == nil && st.IPNetwork != nil && st.IPNetwork.NAT64Exit != n1.id.String() {
			t.Logf("%s moved its NAT64 exit to %s before n1 died", nd.name, st.IPNetwork.NAT64Exit)
		}
	}
	// Answers of attempts that timed out but arrived are not new flows.
	for drained := false; !drained; {
		select {
		case <-seen:
		default:
			drained = true
		}
	}
	n1.cmd.Process.Signal(syscall.SIGKILL)
	n1.cmd.Wait()
	killed := time.Now()
	waitFor(t, 60*time.Second, "a new flow of the phone through n5", func() (bool, string) {
		body, err := tryFetch(phone, "http://"+n64Server+"/", "tcp4", 300*time.Millisecond)
		return err == nil && body == "hello from the IPv4 Internet", fmt.Sprint(err)
	})
	phoneBack := time.Since(killed)
	if src := <-seen; src != "10.98.55.1" {
		t.Errorf("after the failover the server saw %s; want n5's uplink address 10.98.55.1", src)
	}
	waitFor(t, 60*time.Second, "a new flow of the IPv6 host through n5", func() (bool, string) {
		body, err := tryFetch(h3, "http://["+n64Synth+"]/", "tcp6", 300*time.Millisecond)
		return err == nil && body == "hello from the IPv4 Internet", fmt.Sprint(err)
	})
	hostBack := time.Since(killed)
	<-seen
	t.Logf("gateway failover: n1 killed; new flows through n5 after %.1f s (IPv4 phone on n4, 464XLAT), %.1f s (IPv6 host on n3)",
		phoneBack.Seconds(), hostBack.Seconds())
	if st, err := n4.status(m.bin); err != nil || st.IPNetwork == nil || st.IPNetwork.NAT64Exit != n5.id.String() {
		t.Errorf("n4 after the failover: %+v, %v; want exit n5", st.IPNetwork, err)
	}
}

// tryFetch GETs url from inside ns over network (tcp4 or tcp6) within
// limit.
func tryFetch(ns *netns.NS, url, network string, limit time.Duration) (string, error) {
	client := &http.Client{Timeout: limit, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return ns.Network().Dial(ctx, network, addr)
		},
		DisableKeepAlives: true,
	}}
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	return string(b), err
}
