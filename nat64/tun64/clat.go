package tun64

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// CLATWiring is the kernel side of a node's CLAT (RFC 6877 464XLAT, the
// stateless nat64.NewCLAT on a TUN device run by Run like the NAT64):
//
//   - The device up and the node's CLAT prefix (IPv6) routed into it:
//     answers from the NAT64 reach the translator.
//   - IPv4 packets arriving on the LAN interface go by a policy rule
//     (ip rule iif LAN lookup Table, priority Priority) to table Table,
//     whose default route is the device. The kernel consults its local
//     table first (rule 0), so packets for the node's own addresses are
//     delivered to the node as before: SIP and RTP to the node stay on
//     the ALG and relay. Keep (the mesh's LAN supernet) is thrown back
//     to the main table. Only the LAN interface's packets are caught:
//     a gateway's uplink traffic and the node's own never go there.
//   - The translated IPv6 packets leave the device for the NAT64 prefix
//     by the kernel's routes (into the mesh's TUN, or on a gateway into
//     its NAT64 device).
//   - Forwarding on (restored by Down), rp_filter off on the device (the
//     IPv4 answers come out of it from Internet addresses the main table
//     may not route there; with conf/all/rp_filter set, see rpFilterOff),
//     and the rules of Rules in chain ChainCLAT,
//     jumped to from FORWARD, accepting the LAN ↔ device traffic.
//
// Up is idempotent and starts clean (the rule is deleted before it is
// added, the table's routes replaced, the chain flushed), so a crash
// leaves nothing that breaks the next start.
type CLATWiring struct {
	Device   string
	CLAT     netip.Prefix
	LAN      string
	Table    int
	Priority int
	Keep     []netip.Prefix
}

// ChainCLAT is the CLAT's own chain in the filter tables of iptables and
// ip6tables, jumped to from FORWARD.
const ChainCLAT = "SIPMESH-CLAT"

func (w CLATWiring) jumps() []Rule {
	return []Rule{
		{false, "filter", "FORWARD", []string{"-j", ChainCLAT}},
		{true, "filter", "FORWARD", []string{"-j", ChainCLAT}},
	}
}

// Rules lists every firewall rule Up adds, jumps first.
func (w CLATWiring) Rules() []Rule {
	clat := w.CLAT.Masked().String()
	return append(w.jumps(),
		Rule{false, "filter", ChainCLAT, []string{"-i", w.LAN, "-o", w.Device, "-j", "ACCEPT"}},
		Rule{false, "filter", ChainCLAT, []string{"-i", w.Device, "-o", w.LAN, "-j", "ACCEPT"}},
		Rule{true, "filter", ChainCLAT, []string{"-i", w.Device, "-s", clat, "-j", "ACCEPT"}},
		Rule{true, "filter", ChainCLAT, []string{"-o", w.Device, "-d", clat, "-j", "ACCEPT"}},
	)
}

// ipRule is the policy rule's selector, for ip rule add and del.
func (w CLATWiring) ipRule() []string {
	return []string{"-4", "rule", "%s", "iif", w.LAN, "lookup", strconv.Itoa(w.Table), "priority", strconv.Itoa(w.Priority)}
}

func (w CLATWiring) ruleCmd(verb string) []string {
	r := w.ipRule()
	r[2] = verb
	return r
}

// Up puts the CLAT wiring in place; on failure it undoes what it did.
func (w CLATWiring) Up() (*Wired, error) {
	if !w.CLAT.Addr().Is6() || w.Device == "" || w.LAN == "" || w.Table <= 0 || w.Priority <= 0 {
		return nil, fmt.Errorf("tun64: CLAT wiring %+v: need an IPv6 prefix, a device, a LAN interface, a table and a priority", w)
	}
	wd := &Wired{undo: w.down}
	fail := func(err error) (*Wired, error) {
		return nil, errors.Join(err, wd.Down())
	}
	w.delRules()
	w.flushTable()
	cmds := [][]string{
		{"link", "set", w.Device, "up"},
		{"-6", "route", "replace", w.CLAT.Masked().String(), "dev", w.Device},
		{"-4", "route", "replace", "default", "dev", w.Device, "table", strconv.Itoa(w.Table)},
	}
	for _, k := range w.Keep {
		cmds = append(cmds, []string{"-4", "route", "replace", "throw", k.Masked().String(), "table", strconv.Itoa(w.Table)})
	}
	cmds = append(cmds, w.ruleCmd("add"))
	for _, args := range cmds {
		if err := runIP(args...); err != nil {
			return fail(err)
		}
	}
	if err := wd.sysctls(forwardingSysctls, "1"); err != nil {
		return fail(err)
	}
	if err := wd.rpFilterOff(w.Device); err != nil {
		return fail(err)
	}
	if err := addRules(w.Rules(), len(w.jumps())); err != nil {
		return fail(err)
	}
	return wd, nil
}

// rpFilterOff turns reverse path filtering off on the CLAT device: its
// IPv4 answers come from Internet addresses that the main table may not
// route there (a node without an IPv4 default route: loose mode drops
// them as well). The kernel filters with the larger of
// conf/all/rp_filter and the device's own value (ip-sysctl.rst), so with
// all at 1 (strict) or 2 (loose) the device's 0 alone changes nothing.
// Then every other interface's value, and default's for interfaces to
// come, is raised to the old all value where it is lower, and all is
// set to 0: the filtering of every other interface stays exactly what it
// was. All of it is held (netx.HoldSysctl) and put back by Down.
func (wd *Wired) rpFilterOff(dev string) error {
	const conf = "/proc/sys/net/ipv4/conf/"
	all, err := os.ReadFile(conf + "all/rp_filter")
	if err != nil {
		return fmt.Errorf("tun64: %w", err)
	}
	a, _ := strconv.Atoi(strings.TrimSpace(string(all)))
	if a != 0 {
		entries, err := os.ReadDir(conf)
		if err != nil {
			return fmt.Errorf("tun64: %w", err)
		}
		for _, e := range entries {
			if e.Name() == "all" || e.Name() == dev {
				continue
			}
			f := conf + e.Name() + "/rp_filter"
			b, err := os.ReadFile(f)
			if err != nil {
				continue // an interface gone meanwhile
			}
			if v, _ := strconv.Atoi(strings.TrimSpace(string(b))); v < a {
				if err := wd.sysctls([]string{f}, strconv.Itoa(a)); err != nil {
					return err
				}
			}
		}
		if err := wd.sysctls([]string{conf + "all/rp_filter"}, "0"); err != nil {
			return err
		}
	}
	return wd.sysctls([]string{conf + dev + "/rp_filter"}, "0")
}

// delRules deletes every copy of the policy rule (a crash may have left
// one; a failed delete means none is left).
func (w CLATWiring) delRules() {
	for range 16 {
		if runIP(w.ruleCmd("del")...) != nil {
			return
		}
	}
}

// down removes the policy rule, the table's routes and the chain.
func (w CLATWiring) down() error {
	w.delRules()
	w.flushTable()
	return removeChains(w.jumps())
}

// flushTable empties the CLAT's routing table. Its routes go with the
// device; the flush covers a device that stays (one opened again), and
// the throw routes. A table that does not exist is already empty.
func (w CLATWiring) flushTable() {
	runIP("-4", "route", "flush", "table", strconv.Itoa(w.Table))
}
