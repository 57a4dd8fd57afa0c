package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/internal/netns"
)

// TestDNS64ThroughNode: a `sipmesh node`, a gateway whose NAT64 serves
// the prefix 2001:db8:64::/96 (DNS64 synthesises with the prefix of the
// gateway it would use, here itself), with a real upstream resolver
// (unbound, in its own namespace behind the uplink) synthesises AAAA
// records for an IPv4-only name: dig from a
// phone on the node's LAN gets 2001:db8:64::c633:640a for
// v4only.example (A 198.51.100.10), RFC 6147 §5.1 with RFC 6052 §2.2
// addressing. (With the well-known prefix the same special-use address is
// not synthesised; package dns64's unit and namespace tests cover that.)
func TestDNS64ThroughNode(t *testing.T) {
	netns.RequireRoot(t)
	dig := needTool(t, "dig", "dnsutils")
	unbound := needTool(t, "unbound", "unbound")

	m := newLineMesh(t, "d", 2, 60, func(i int) string {
		if i == 0 {
			return "lan-interface lan0\nlan-address 10.97.1.1/24\ndhcp off\ndns-upstream 10.97.53.2\nnat64-prefix 2001:db8:64::/96\nuplink-interface up0\npublic-address 203.0.113.1\n"
		}
		return ""
	})
	// The upstream resolver sits in its own namespace, reachable from n1
	// over IPv4 (as an uplink would be).
	up := netns.New(t, "dup")
	netns.Veth(t, m.nodes[0].ns, "up0", up, "eth0")
	m.nodes[0].ns.Run(t, "ip", "addr", "add", "10.97.53.1/24", "dev", "up0")
	up.Run(t, "ip", "addr", "add", "10.97.53.2/24", "dev", "eth0")
	dir := t.TempDir()
	conf := filepath.Join(dir, "unbound.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`server:
	interface: 10.97.53.2
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
	local-data: "v4only.example. 300 IN A 198.51.100.10"
remote-control:
	control-enable: no
`, dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := up.Command(context.Background(), unbound, "-d", "-c", conf)
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
		out := digIn(t, up, dig, "10.97.53.2", "v4only.example", "A")
		return slices.Contains(digAnswers(out), "198.51.100.10"), out
	})

	m.startAll()
	phone := m.plugPhone(0, "dph")
	phone.Run(t, "ip", "addr", "add", "10.97.1.2/24", "dev", "eth0")
	var out string
	waitFor(t, 20*time.Second, "the node's DNS64 answer", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		o, _ := phone.Command(ctx, dig, "+time=1", "+tries=2", "@10.97.1.1", "v4only.example", "AAAA").CombinedOutput()
		out = string(o)
		return slices.Contains(digAnswers(out), "2001:db8:64::c633:640a"), out
	})
	t.Logf("dig AAAA v4only.example @10.97.1.1 (the node):\n%s", lastLines(out, 8))
	// The A record passes through unchanged.
	if a := digAnswers(digIn(t, phone, dig, "10.97.1.1", "v4only.example", "A")); !slices.Contains(a, "198.51.100.10") {
		t.Errorf("A v4only.example through the node: %v", a)
	}
}
