package gateway

import (
	"cmp"
	"net/netip"
	"slices"
	"time"

	"github.com/sipmesh/sipmesh/ssr"
)

// Choosing the NAT64 exit (issue 15). Every gateway running a NAT64
// announces its prefix (announce.go). A packet for an address under a
// NAT64 prefix leaves the mesh through a gateway announcing that prefix,
// the best one by the rule of gwchoice.go (the same G.107 rating of mesh
// path and uplink: NAT64 carries NTP, provisioning and firmware for the
// phones, but the rating of the path is as good a measure for them).
//
// Unlike calls, packets are not spread over equally good gateways: the
// NAT64 is stateful (RFC 6146), so a flow switched to another gateway
// gets another IPv4 address and port and dies. The exit for a prefix is
// sticky: it stays while it is usable and rates within rSpread of the
// best, and changes when it dies (record expired, uplink down, its last
// unreachableAfter probes lost, or marked failed) or falls behind by more.
// New flows then go to the new exit within announceLifetime of a death.
//
// The choice is made on the packet path, so it never waits for the DHT:
// it works on the view runGatewayDir keeps fresh, recomputed at most
// every exitRecheck.
//
// DNS64 (RFC 6147 §5.2) synthesizes with the prefix of the exit a node
// would use now: the prefix of the best exit, itself sticky, so the
// addresses handed to hosts do not flap. With every gateway on the
// Well-Known Prefix (the default) a gateway's death changes nothing a
// host has cached; with network-specific prefixes the synthesized TTL is
// capped (dns64.Config.PrefixFunc) so hosts ask again soon.
const exitRecheck = time.Second

// exitChoice is the sticky NAT64 exit for one prefix.
type exitChoice struct {
	id ssr.NodeID
	r  float64
}

// recheckExitsLocked recomputes the exit of every announced NAT64 prefix
// when the last computation is exitRecheck old. g.mu is held.
func (g *gatewayDir) recheckExitsLocked(now time.Time) {
	if !g.exitsAt.IsZero() && now.Sub(g.exitsAt) < exitRecheck && !now.Before(g.exitsAt) {
		return
	}
	g.exitsAt = now
	g.expireLocked(now)
	best := make(map[netip.Prefix][]exitChoice)
	for id, e := range g.gws {
		p := e.ann.NAT64
		if !p.IsValid() || e.suspect.After(now) {
			continue
		}
		if r, ok := e.rate(g.self); ok {
			best[p] = append(best[p], exitChoice{id, r})
		}
	}
	exits := make(map[netip.Prefix]exitChoice, len(best))
	for p, cs := range best {
		slices.SortFunc(cs, func(a, b exitChoice) int {
			if c := cmp.Compare(b.r, a.r); c != 0 {
				return c
			}
			return cmp.Compare(a.id, b.id)
		})
		choice := cs[0]
		if cur, ok := g.exits[p]; ok {
			if i := slices.IndexFunc(cs, func(c exitChoice) bool { return c.id == cur.id }); i >= 0 && cs[0].r-cs[i].r <= rSpread {
				choice = cs[i] // the flows through it keep their NAT64 state
			}
		}
		exits[p] = choice
	}
	g.exits = exits
	// The DNS64 prefix: the current one while it has an exit that rates
	// within rSpread of the best, else the best exit's.
	var top netip.Prefix
	for p, c := range exits {
		if !top.IsValid() || c.r > exits[top].r || c.r == exits[top].r && p.String() < top.String() {
			top = p
		}
	}
	if c, ok := exits[g.dnsPrefix]; !ok || !top.IsValid() || exits[top].r-c.r > rSpread {
		g.dnsPrefix = top
	}
}

// nat64Exit returns the gateway that packets to dst leave the mesh
// through: the exit of a NAT64 prefix holding dst. ok is false when no
// usable gateway announces such a prefix.
func (g *gatewayDir) nat64Exit(dst netip.Addr) (ssr.NodeID, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.recheckExitsLocked(g.now())
	var id ssr.NodeID
	bits := -1
	for p, c := range g.exits {
		if p.Bits() > bits && p.Contains(dst) { // the most specific prefix
			id, bits = c.id, p.Bits()
		}
	}
	return id, bits >= 0
}

// nat64Prefixes returns the NAT64 prefixes that have an exit now, at
// most max of them (the routes into the mesh, ipnet.go).
func (g *gatewayDir) nat64Prefixes(max int) []netip.Prefix {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.recheckExitsLocked(g.now())
	ps := make([]netip.Prefix, 0, min(len(g.exits), max))
	for p := range g.exits {
		if len(ps) == max {
			break
		}
		ps = append(ps, p)
	}
	return ps
}

// nat64Prefix is the prefix DNS64 synthesizes with now (see above); ok
// is false when no gateway offers NAT64.
func (g *gatewayDir) nat64Prefix() (netip.Prefix, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.recheckExitsLocked(g.now())
	return g.dnsPrefix, g.dnsPrefix.IsValid()
}

// failedExit marks gateway id suspect for announceLifetime (the data
// plane found it unreachable) and drops it as an exit at once.
func (g *gatewayDir) failedExit(id ssr.NodeID) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if e := g.gws[id]; e != nil {
		e.suspect = g.now().Add(announceLifetime)
		g.exitsAt = time.Time{}
	}
}

// NAT64Exit returns the gateway that IPv6 packets to dst, an address
// under a gateway's NAT64 prefix, leave the mesh through (the IP data
// plane's exit hook). It never blocks on the network.
func (n *Node) NAT64Exit(dst netip.Addr) (ssr.NodeID, bool) {
	return n.svc.gws.nat64Exit(dst)
}

// NAT64ExitFailed tells the choice that gateway id did not take packets
// (the mesh found no route to it): new flows go to another exit.
func (n *Node) NAT64ExitFailed(id ssr.NodeID) { n.svc.gws.failedExit(id) }

// NAT64Prefix returns the prefix this node's DNS64 synthesizes with now:
// the NAT64 prefix of the gateway it would send the packets to.
func (n *Node) NAT64Prefix() (netip.Prefix, bool) { return n.svc.gws.nat64Prefix() }
