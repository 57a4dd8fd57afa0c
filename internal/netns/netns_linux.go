//go:build linux

package netns

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// RequireRoot skips t when the process is not root, with a message nobody
// can miss, and fails t when it runs as root without the ip or sysctl
// command or in CI without root: as root, `make test` installs what is
// missing (scripts/test-deps.sh), so a missing tool there is a broken set-up
// to fix, not a reason to skip.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		const why = "needs root (network namespaces and veth pairs)"
		if os.Getenv("CI") != "" {
			t.Fatalf("%s: this test %s, and CI must run it", t.Name(), why)
		}
		// No test name in the message: go test's "--- SKIP: name" line has
		// it, and the same text for every such test lets `make test` group
		// them in its summary.
		t.Skipf("\n*** SKIPPED: this test %s. Run `make test` as root (as CI does) to cover it. ***", why)
	}
	for _, tool := range []struct{ cmd, pkg string }{{"ip", "iproute2"}, {"sysctl", "procps"}} {
		if _, err := exec.LookPath(tool.cmd); err != nil {
			t.Fatalf("%s needs the %s command (Debian package %s; `make test` installs it as root): %v", t.Name(), tool.cmd, tool.pkg, err)
		}
	}
}

// seq numbers the namespaces this process creates.
var seq atomic.Uint32

// NS is a network namespace created by New.
type NS struct {
	Name string
}

// New creates a namespace named smt-<pid>-<n>-<label>, with loopback up and
// IPv6 duplicate address detection off (so link-local addresses are usable
// at once), and removes it when t ends.
func New(t testing.TB, label string) *NS {
	t.Helper()
	name := fmt.Sprintf("smt-%d-%d-%s", os.Getpid(), seq.Add(1), label)
	if out, err := run("ip", "netns", "add", name); err != nil {
		t.Fatalf("netns: create %s: %v\n%s", name, err, out)
	}
	ns := &NS{Name: name}
	t.Cleanup(func() {
		if out, err := run("ip", "netns", "del", name); err != nil {
			t.Errorf("netns: delete %s: %v\n%s", name, err, out)
		}
	})
	ns.Run(t, "ip", "link", "set", "lo", "up")
	ns.Run(t, "sysctl", "-q", "-w",
		"net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0",
		// No router solicitations: nothing answers them, they are noise.
		"net.ipv6.conf.all.router_solicitations=0", "net.ipv6.conf.default.router_solicitations=0")
	return ns
}

// Command returns an *exec.Cmd that runs args inside the namespace.
func (ns *NS) Command(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name}, args...)...)
}

// Try runs args inside the namespace and returns its combined output.
func (ns *NS) Try(args ...string) (string, error) {
	return run("ip", append([]string{"netns", "exec", ns.Name}, args...)...)
}

// Run runs args inside the namespace and fails t if it fails.
func (ns *NS) Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := ns.Try(args...)
	if err != nil {
		t.Fatalf("netns %s: %s: %v\n%s", ns.Name, strings.Join(args, " "), err, out)
	}
	return out
}

// Veth connects a and b with a veth pair (aIf in a, bIf in b; at most 15
// characters each), both up with IPv6 DAD off. The pair disappears with
// its namespaces.
func Veth(t testing.TB, a *NS, aIf string, b *NS, bIf string) {
	t.Helper()
	if out, err := run("ip", "link", "add", aIf, "netns", a.Name, "type", "veth", "peer", "name", bIf, "netns", b.Name); err != nil {
		t.Fatalf("netns: veth %s/%s - %s/%s: %v\n%s", a.Name, aIf, b.Name, bIf, err, out)
	}
	for _, end := range []struct {
		ns *NS
		If string
	}{{a, aIf}, {b, bIf}} {
		end.ns.Run(t, "sysctl", "-q", "-w", "net.ipv6.conf."+end.If+".accept_dad=0")
		end.ns.SetLink(t, end.If, true)
	}
}

// SetLink sets an interface up or down.
func (ns *NS) SetLink(t testing.TB, ifname string, up bool) {
	t.Helper()
	state := "down"
	if up {
		state = "up"
	}
	ns.Run(t, "ip", "link", "set", "dev", ifname, state)
}

// LinkLocal waits (up to 10 s) until ifname has a usable IPv6 link-local
// address, one that is no longer tentative, and returns it with the
// interface as zone.
func (ns *NS) LinkLocal(t testing.TB, ifname string) netip.Addr {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := ns.Try("ip", "-6", "-o", "addr", "show", "dev", ifname, "scope", "link")
		if err != nil {
			t.Fatalf("netns %s: addresses of %s: %v\n%s", ns.Name, ifname, err, out)
		}
		if a, ok := parseLinkLocal(out); ok {
			return a.WithZone(ifname)
		}
		if time.Now().After(deadline) {
			t.Fatalf("netns %s: %s has no usable link-local address after 10s:\n%s", ns.Name, ifname, out)
		}
		// The kernel announces no event we could wait for without netlink
		// plumbing; the address normally appears within milliseconds.
		time.Sleep(20 * time.Millisecond)
	}
}

// parseLinkLocal finds a non-tentative fe80:: address in `ip -o -6 addr`
// output.
func parseLinkLocal(out string) (netip.Addr, bool) {
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		for i := 0; i+1 < len(f); i++ {
			if f[i] != "inet6" {
				continue
			}
			p, err := netip.ParsePrefix(f[i+1])
			if err != nil || !p.Addr().IsLinkLocalUnicast() {
				continue
			}
			if strings.Contains(line, "tentative") || strings.Contains(line, "dadfailed") {
				continue
			}
			return p.Addr(), true
		}
	}
	return netip.Addr{}, false
}

// run runs a command outside any namespace and returns its combined output.
func run(name string, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}
