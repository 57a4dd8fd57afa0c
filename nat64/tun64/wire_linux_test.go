//go:build linux

package tun64

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/internal/netns"
)

var testWiring = Wiring{
	Device: "nat64",
	Prefix: netip.MustParsePrefix("64:ff9b::/96"),
	Pool:   netip.MustParsePrefix("198.18.64.1/32"),
	Uplink: "up0",
}

// firewall returns iptables-save and ip6tables-save of ns, the rules as
// the kernel has them.
func firewall(t *testing.T, ns *netns.NS) (v4, v6 string) {
	t.Helper()
	return ns.Run(t, "iptables-save"), ns.Run(t, "ip6tables-save")
}

// checkWired fails unless every rule of w is in ns exactly once (jumps
// included) and the forwarding sysctls are on.
func checkWired(t *testing.T, ns *netns.NS, w Wiring) {
	t.Helper()
	v4, v6 := firewall(t, ns)
	for _, r := range w.Rules() {
		save := v4
		if r.IPv6 {
			save = v6
		}
		line := saveForm(r)
		if n := strings.Count(save, line+"\n"); n != 1 {
			t.Errorf("rule %v: %d times in\n%s", r, n, save)
		}
	}
	for _, f := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"} {
		if v := strings.TrimSpace(ns.Run(t, "sysctl", "-n", f)); v != "1" {
			t.Errorf("%s = %s while wired", f, v)
		}
	}
	if routes := ns.Run(t, "ip", "-6", "route", "show", "dev", w.Device); !strings.Contains(routes, "64:ff9b::/96") {
		t.Errorf("no route of the prefix into %s: %s", w.Device, routes)
	}
}

// saveForm is how iptables-save prints r: the spec in its canonical
// order (addresses with their mask, the match before the target).
func saveForm(r Rule) string {
	var parts []string
	spec := r.Spec
	get := func(flag string) string {
		for i := 0; i+1 < len(spec); i++ {
			if spec[i] == flag {
				return spec[i+1]
			}
		}
		return ""
	}
	for _, f := range []string{"-s", "-d", "-i", "-o"} {
		if v := get(f); v != "" {
			parts = append(parts, f, v)
		}
	}
	if st := get("--ctstate"); st != "" {
		parts = append(parts, "-m", "conntrack", "--ctstate", st)
	}
	parts = append(parts, "-j", get("-j"))
	return "-A " + r.Chain + " " + strings.Join(parts, " ")
}

// checkUnwired fails if anything of the wiring is left in ns.
func checkUnwired(t *testing.T, ns *netns.NS) {
	t.Helper()
	v4, v6 := firewall(t, ns)
	if strings.Contains(v4, "SIPMESH") || strings.Contains(v6, "SIPMESH") {
		t.Errorf("rules left:\n%s\n%s", v4, v6)
	}
}

func newWiringNS(t *testing.T) *netns.NS {
	netns.RequireRoot(t)
	gw := netns.New(t, "gw64")
	inet := netns.New(t, "inet")
	netns.Veth(t, gw, "up0", inet, "eth0")
	// The firewall of a careful router: nothing forwarded unless allowed.
	gw.Run(t, "iptables", "-P", "FORWARD", "DROP")
	gw.Run(t, "ip6tables", "-P", "FORWARD", "DROP")
	return gw
}

// TestNetnsWiringRules: Up puts exactly the rules of Rules in place (each
// once, also when Up runs twice), Down takes all of them away and puts
// forwarding back as it was once the last holder is down.
func TestNetnsWiringRules(t *testing.T) {
	gw := newWiringNS(t)
	dev := openIn(t, gw, "nat64", 1500)
	defer dev.Close()
	var wd, again *Wired
	if err := gw.Do(func() (err error) { wd, err = testWiring.Up(); return err }); err != nil {
		t.Fatal(err)
	}
	if err := gw.Do(func() (err error) { again, err = testWiring.Up(); return err }); err != nil || again == nil {
		t.Fatal(err)
	}
	checkWired(t, gw, testWiring)
	if err := gw.Do(wd.Down); err != nil {
		t.Fatal(err)
	}
	checkUnwired(t, gw)
	// The second Up holds forwarding too (netx.HoldSysctl): it stays on
	// until that one is down as well.
	if v := strings.TrimSpace(gw.Run(t, "sysctl", "-n", "net.ipv4.ip_forward")); v != "1" {
		t.Errorf("ip_forward %s after one of two Downs; want 1 (still held)", v)
	}
	if err := gw.Do(again.Down); err != nil {
		t.Fatal(err)
	}
	if v := strings.TrimSpace(gw.Run(t, "sysctl", "-n", "net.ipv4.ip_forward")); v != "0" {
		t.Errorf("ip_forward %s after Down; was 0", v)
	}
	if err := gw.Do(wd.Down); err != nil {
		t.Errorf("second Down: %v", err)
	}
}

// TestNetnsWiringAfterKill: a process wired and killed with SIGKILL
// leaves its rules; the next start (Up) finds them, keeps each once, and
// its Down leaves nothing.
func TestNetnsWiringAfterKill(t *testing.T) {
	gw := newWiringNS(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := gw.Command(ctx, exe)
	cmd.Env = append(os.Environ(), "SIPMESH_TUN64_WIRE_HELPER=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "wired\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("helper: %q, %v", line, err)
	}
	checkWired(t, gw, testWiring)
	// ip netns exec execs the helper in place: cmd.Process is the helper.
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if v4, _ := firewall(t, gw); !strings.Contains(v4, ChainNAT) {
		t.Fatalf("the killed process left no rules; the test tests nothing:\n%s", v4)
	}
	// The restart.
	dev := openIn(t, gw, "nat64", 1500)
	defer dev.Close()
	var wd *Wired
	if err := gw.Do(func() (err error) { wd, err = testWiring.Up(); return err }); err != nil {
		t.Fatal(err)
	}
	checkWired(t, gw, testWiring)
	if err := gw.Do(wd.Down); err != nil {
		t.Fatal(err)
	}
	checkUnwired(t, gw)
}

// TestMain runs the helper processes when the test binary is started as
// one: the NAT64 of BenchmarkNetnsGatewayNAT64, or the process
// TestNetnsWiringAfterKill kills (it opens the device, wires it, says so
// and waits for its SIGKILL).
func TestMain(m *testing.M) {
	if os.Getenv(nat64HelperEnv) == "1" {
		runNAT64Helper() // the benchmark's NAT64 process
	}
	if os.Getenv("SIPMESH_TUN64_WIRE_HELPER") == "1" {
		dev, err := OpenTUN(testWiring.Device, 1500)
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		defer dev.Close()
		if _, err := testWiring.Up(); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		fmt.Println("wired")
		time.Sleep(time.Hour)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// TestNetnsCLATRPFilter: with conf/all/rp_filter strict (1), the CLAT
// device's own 0 would change nothing (the kernel takes the larger), so
// Up sets all to 0 and raises every other interface and default to 1,
// leaving their filtering as it was; Down puts every value back.
func TestNetnsCLATRPFilter(t *testing.T) {
	gw := newWiringNS(t)
	lan := netns.New(t, "lan")
	netns.Veth(t, gw, "lan0", lan, "eth0")
	dev := openIn(t, gw, "clat", 1500)
	defer dev.Close()
	get := func(iface string) string {
		return strings.TrimSpace(gw.Run(t, "cat", "/proc/sys/net/ipv4/conf/"+iface+"/rp_filter"))
	}
	set := func(iface, v string) {
		gw.Run(t, "sh", "-c", "echo "+v+" > /proc/sys/net/ipv4/conf/"+iface+"/rp_filter")
	}
	set("all", "1")
	set("default", "0")
	set("lan0", "0")
	set("up0", "2")
	w := CLATWiring{Device: "clat", CLAT: netip.MustParsePrefix("fd00:64:c1a7::/96"), LAN: "lan0", Table: 6464, Priority: 6464}
	var wd *Wired
	if err := gw.Do(func() (err error) { wd, err = w.Up(); return err }); err != nil {
		t.Fatal(err)
	}
	for iface, want := range map[string]string{"all": "0", "clat": "0", "lan0": "1", "default": "1", "up0": "2"} {
		if got := get(iface); got != want {
			t.Errorf("wired: %s rp_filter %s, want %s", iface, got, want)
		}
	}
	if err := gw.Do(wd.Down); err != nil {
		t.Fatal(err)
	}
	for iface, want := range map[string]string{"all": "1", "lan0": "0", "default": "0", "up0": "2"} {
		if got := get(iface); got != want {
			t.Errorf("after Down: %s rp_filter %s, want %s", iface, got, want)
		}
	}
}
