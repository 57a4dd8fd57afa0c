package tun64

import (
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"

	"github.com/coreos/go-iptables/iptables"

	"github.com/sipmesh/sipmesh/netx"
)

// Wiring is the kernel side of a gateway's NAT64: what joins the TUN
// device the translator runs on to the mesh and the uplink.
//
//   - The device up, the NAT64 prefix (IPv6) and the translator's IPv4
//     pool routed into it (ip route replace: idempotent; the routes go
//     with the device when it closes).
//   - IPv4 and IPv6 forwarding on (net.ipv4.ip_forward,
//     net.ipv6.conf.all.forwarding), held by netx.HoldSysctl and put back
//     as they were once the last holder (Down, the IP network) lets go.
//   - The firewall rules of Rules: the pool masqueraded out of the uplink
//     (the translator is the RFC 6146 NAT from IPv6 to its pool; the
//     kernel's NAT44 then maps the pool to the uplink's address, which
//     may change with DHCP), and forwarding accepted between the device
//     and the uplink (IPv4) and to and from the device (IPv6), in chains
//     of their own so that a firewall with a DROP policy does not eat the
//     traffic and nothing else is touched.
//
// Up is idempotent and starts clean: it creates or flushes its own
// chains and adds each jump to them only if missing, so a gateway killed
// with its rules in place (kill -9, a power cut on a router whose
// firewall survives in RAM only until the reboot) starts again as if
// stopped cleanly. Down removes the jumps and the chains, whatever Up
// left of them.
type Wiring struct {
	Device string       // the TUN device
	Prefix netip.Prefix // the NAT64 prefix (RFC 6052)
	Pool   netip.Prefix // the translator's IPv4 pool
	Uplink string       // the interface towards the IPv4 Internet
}

// Chains of the wiring's own rules: ChainNAT in the nat table, jumped to
// from POSTROUTING; ChainForward in the filter table of iptables and of
// ip6tables, jumped to from FORWARD (first rule).
const (
	ChainNAT     = "SIPMESH-NAT64"
	ChainForward = "SIPMESH-NAT64-FWD"
)

// Rule is one firewall rule: for iptables (IPv6 false) or ip6tables, in
// table and chain.
type Rule struct {
	IPv6         bool
	Table, Chain string
	Spec         []string
}

func (r Rule) String() string {
	cmd := "iptables"
	if r.IPv6 {
		cmd = "ip6tables"
	}
	return fmt.Sprintf("%s -t %s -A %s %s", cmd, r.Table, r.Chain, strings.Join(r.Spec, " "))
}

// jumps are the rules in the built-in chains that lead to the own chains.
func (w Wiring) jumps() []Rule {
	return []Rule{
		{false, "nat", "POSTROUTING", []string{"-j", ChainNAT}},
		{false, "filter", "FORWARD", []string{"-j", ChainForward}},
		{true, "filter", "FORWARD", []string{"-j", ChainForward}},
	}
}

// Rules lists every rule Up adds, jumps first (README: "NAT64 at
// gateways").
func (w Wiring) Rules() []Rule {
	pool := w.Pool.Masked().String()
	return append(w.jumps(),
		Rule{false, "nat", ChainNAT, []string{"-s", pool, "-o", w.Uplink, "-j", "MASQUERADE"}},
		Rule{false, "filter", ChainForward, []string{"-i", w.Device, "-o", w.Uplink, "-s", pool, "-j", "ACCEPT"}},
		Rule{false, "filter", ChainForward, []string{"-i", w.Uplink, "-o", w.Device, "-d", pool, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"}},
		Rule{true, "filter", ChainForward, []string{"-o", w.Device, "-d", w.Prefix.Masked().String(), "-j", "ACCEPT"}},
		Rule{true, "filter", ChainForward, []string{"-i", w.Device, "-s", w.Prefix.Masked().String(), "-j", "ACCEPT"}},
	)
}

// Forwarding sysctls Up turns on.
var forwardingSysctls = []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"}

// Wired is a wiring in place; Down undoes it.
type Wired struct {
	held []func() error // releases the sysctls Up holds (netx.HoldSysctl)
	undo func() error   // removes the rules (and routes) Up added
}

// Up puts the wiring in place (see Wiring). On failure it undoes what it
// did. The device must exist (OpenTUN).
func (w Wiring) Up() (*Wired, error) {
	if !w.Prefix.Addr().Is6() || !w.Pool.Addr().Is4() || w.Device == "" || w.Uplink == "" {
		return nil, fmt.Errorf("tun64: wiring %+v: need an IPv6 prefix, an IPv4 pool, a device and an uplink", w)
	}
	wd := &Wired{undo: Unwire}
	fail := func(err error) (*Wired, error) {
		return nil, errors.Join(err, wd.Down())
	}
	for _, args := range [][]string{
		{"link", "set", w.Device, "up"},
		{"-6", "route", "replace", w.Prefix.Masked().String(), "dev", w.Device},
		{"-4", "route", "replace", w.Pool.Masked().String(), "dev", w.Device},
	} {
		if err := runIP(args...); err != nil {
			return fail(err)
		}
	}
	if err := wd.sysctls(forwardingSysctls, "1"); err != nil {
		return fail(err)
	}
	if err := addRules(w.Rules(), len(w.jumps())); err != nil {
		return fail(err)
	}
	return wd, nil
}

// sysctls holds each file at v (netx.HoldSysctl: the IP network wants
// forwarding too, and the last holder to stop puts the old value back).
func (wd *Wired) sysctls(files []string, v string) error {
	for _, f := range files {
		release, err := netx.HoldSysctl(f, v)
		if err != nil {
			return fmt.Errorf("tun64: %w", err)
		}
		wd.held = append(wd.held, release)
	}
	return nil
}

// Down removes the rules and chains and releases the sysctls (put back
// as they were once no one else holds them).
// Removing what is not there is no error, so Down after a partial Up,
// twice, or with no Up in this process at all (Unwire) works.
func (wd *Wired) Down() error {
	var errs []error
	for _, release := range wd.held {
		if err := release(); err != nil {
			errs = append(errs, err)
		}
	}
	wd.held = nil
	return errors.Join(append(errs, wd.undo())...)
}

// Unwire removes every jump to the NAT64's own chains and the chains
// themselves, whatever wiring (and uplink) put them there.
func Unwire() error { return removeChains(Wiring{}.jumps()) }

// addRules puts rules in place: the own chains (the targets of the
// first jumps rules, which lead to them from built-in chains) created
// or flushed (a crash may have left them full), then their rules, then
// the jumps, each added once; a jump from FORWARD goes first, ahead of
// any DROP the firewall has.
func addRules(rules []Rule, jumps int) error {
	ipt4, ipt6, err := tables()
	if err != nil {
		return err
	}
	for _, j := range rules[:jumps] {
		target := j.Spec[len(j.Spec)-1]
		if err := pick(j, ipt4, ipt6).ClearChain(j.Table, target); err != nil {
			return fmt.Errorf("tun64: chain %s: %w", target, err)
		}
	}
	for _, r := range rules[jumps:] {
		if err := pick(r, ipt4, ipt6).Append(r.Table, r.Chain, r.Spec...); err != nil {
			return fmt.Errorf("tun64: %v: %w", r, err)
		}
	}
	for _, r := range rules[:jumps] {
		ipt := pick(r, ipt4, ipt6)
		var err error
		if r.Chain == "FORWARD" {
			err = ipt.InsertUnique(r.Table, r.Chain, 1, r.Spec...)
		} else {
			err = ipt.AppendUnique(r.Table, r.Chain, r.Spec...)
		}
		if err != nil {
			return fmt.Errorf("tun64: %v: %w", r, err)
		}
	}
	return nil
}

// removeChains removes the jumps (every copy) and the chains they lead
// to. What is not there is no error.
func removeChains(jumps []Rule) error {
	ipt4, ipt6, err := tables()
	if err != nil {
		return err
	}
	var errs []error
	for _, j := range jumps {
		ipt := pick(j, ipt4, ipt6)
		// A jump added twice (by hand, or an old version) goes too.
		for range 16 {
			ok, err := ipt.Exists(j.Table, j.Chain, j.Spec...)
			if err != nil || !ok {
				break
			}
			if err := ipt.Delete(j.Table, j.Chain, j.Spec...); err != nil {
				errs = append(errs, err)
				break
			}
		}
		target := j.Spec[len(j.Spec)-1]
		if err := ipt.ClearAndDeleteChain(j.Table, target); err != nil {
			errs = append(errs, fmt.Errorf("tun64: removing chain %s: %w", target, err))
		}
	}
	return errors.Join(errs...)
}

// tables finds iptables and ip6tables; a missing one is an error naming
// the package (the node must not run a NAT64 whose firewall half is
// missing).
func tables() (ipt4, ipt6 *iptables.IPTables, err error) {
	if ipt4, err = iptables.New(iptables.IPFamily(iptables.ProtocolIPv4), iptables.Timeout(5)); err != nil {
		return nil, nil, fmt.Errorf("tun64: iptables (Debian/OpenWrt package iptables): %w", err)
	}
	if ipt6, err = iptables.New(iptables.IPFamily(iptables.ProtocolIPv6), iptables.Timeout(5)); err != nil {
		return nil, nil, fmt.Errorf("tun64: ip6tables (Debian package iptables, OpenWrt ip6tables): %w", err)
	}
	return ipt4, ipt6, nil
}

func pick(r Rule, ipt4, ipt6 *iptables.IPTables) *iptables.IPTables {
	if r.IPv6 {
		return ipt6
	}
	return ipt4
}

// runIP runs iproute2's (or busybox's) ip with args.
func runIP(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("tun64: ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
