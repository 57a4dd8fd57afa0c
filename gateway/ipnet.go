package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/sipmesh/sipmesh/meship"
	"github.com/sipmesh/sipmesh/ssr"
)

// IPNetworkTUN is the name of the IP network's TUN (ip-network on).
const IPNetworkTUN = "sipmesh0"

// IPNetworkStatus is the IP network in `status --json`.
type IPNetworkStatus struct {
	TUN        string `json:"tun"`
	MTU        int    `json:"mtu"`
	LANPrefix  string `json:"lan_prefix"`  // the node's /116 for its LAN hosts
	LANAddress string `json:"lan_address"` // the node on the LAN (their router)
	CLATPrefix string `json:"clat_prefix"` // its CLAT's /96 (RFC 6877, RFC 6052)
	// NAT64Prefix is the NAT64 prefix in use (DNS64's) and NAT64Exit the
	// gateway its packets leave the mesh through now; empty: none known.
	NAT64Prefix string `json:"nat64_prefix,omitempty"`
	NAT64Exit   string `json:"nat64_exit,omitempty"`
	meship.Stats
}

// ipNet is the node's IP network, when on.
type ipNet struct {
	mu    sync.Mutex
	plane *meship.Plane
	k     *meship.Kernel
	// exit and exitFor are the hooks of meship.Config; nil: no exits.
	exit    func(netip.Addr) (ssr.NodeID, bool)
	exitFor func(netip.Addr) bool
}

// SetIPExits sets the IP network's exit hooks (meship.Config's Exit and
// ExitFor): which node carries packets to a destination outside the mesh
// (a NAT64 gateway for the NAT64 prefix), and whether this node is an exit
// for one. Call it before Run.
func (n *Node) SetIPExits(exit func(dst netip.Addr) (ssr.NodeID, bool), exitFor func(dst netip.Addr) bool) {
	n.ip.mu.Lock()
	defer n.ip.mu.Unlock()
	n.ip.exit, n.ip.exitFor = exit, exitFor
}

// How the IP network, the gateways' NAT64 and the CLAT fit together
// (issue 15):
//
//   - Exits. A packet for a NAT64 prefix goes to the gateway the NAT64
//     exit choice names (NAT64Exit, nat64exit.go: sticky, never blocks);
//     one the mesh cannot reach is reported back (NAT64ExitFailed) so new
//     flows go to another. A gateway is the exit for its own running
//     NAT64 prefix: what the mesh brings for it is written into the TUN
//     and the kernel routes it on into sipmesh-nat64.
//   - Routes. Every NAT64 prefix some gateway offers is routed into the
//     TUN (followExitRoutes) with meship.ExitMetric, above the kernel's
//     default metric: on a gateway the route of its own NAT64 device for
//     its prefix wins while the NAT64 runs, and the mesh takes over when
//     it stops. CLATNet is routed into the TUN by meship; a node's own
//     CLAT /96 has the more specific route into sipmesh-clat (tun64's
//     CLATWiring), so the answers meship writes into the TUN for it reach
//     the CLAT, and a gateway's NAT64 answers to other nodes' CLATs leave
//     by the TUN.
//   - CLAT prefix: with ip-network on, a node with a LAN defaults
//     clat-prefix to meship.CLATPrefix of its ID (NewNode), which the
//     whole mesh routes back to it with no state.
//   - MTU: the translators' IPv6 side is the mesh (ipv6MTU), so their
//     Packet Too Big and Fragmentation Needed name the MTU the packets
//     then really meet (RFC 7915 §4.1, §5.1).
//   - Forwarding is held through netx.HoldSysctl by meship and both
//     wirings: the last to stop puts the old value back.

// exitRouteEvery is how often the routes of the NAT64 prefixes follow
// the gateways' announcements (the exit choice itself changes at most
// every exitRecheck).
const exitRouteEvery = time.Second

// maxExitRoutes bounds the NAT64 prefixes routed into the TUN (one per
// gateway at most; maxGateways bounds those).
const maxExitRoutes = maxGateways

// runIPNetwork opens the TUN and carries IPv6 between it and the mesh
// until ctx ends; then the TUN, the LAN prefix and forwarding (if it
// turned it on) are gone again.
func (n *Node) runIPNetwork(ctx context.Context) error {
	mtu := n.ipv6MTU()
	k, err := meship.Open(IPNetworkTUN, mtu, n.router.ID(), n.opts.LANInterface)
	if err != nil {
		return fmt.Errorf("ip-network: %w", err)
	}
	n.ip.mu.Lock()
	exit, exitFor := n.ip.exit, n.ip.exitFor
	if exit == nil {
		exit = n.NAT64Exit
	}
	if exitFor == nil {
		exitFor = n.nat64ExitFor
	}
	p, err := meship.New(meship.Config{Mesh: n.router, TUN: k.Dev, MTU: mtu,
		Exit: exit, ExitFor: exitFor, ExitFailed: n.NAT64ExitFailed, Logger: n.base.With("component", "meship")})
	if err == nil {
		n.ip.plane, n.ip.k = p, k
	}
	n.ip.mu.Unlock()
	if err != nil {
		k.Close()
		return fmt.Errorf("ip-network: %w", err)
	}
	n.log.Info("IP network up", "tun", k.Name, "mtu", mtu, "addr", n.router.Addr(),
		"lan_prefix", meship.LANPrefix(n.router.ID()), "clat_prefix", meship.CLATPrefix(n.router.ID()))
	routesCtx, stopRoutes := context.WithCancel(ctx)
	routesDone := make(chan struct{})
	go func() {
		defer close(routesDone)
		n.followExitRoutes(routesCtx, k)
	}()
	runErr := p.Run(ctx)
	stopRoutes()
	<-routesDone
	n.ip.mu.Lock()
	n.ip.plane = nil
	n.ip.mu.Unlock()
	if err := k.Close(); err != nil {
		runErr = errors.Join(runErr, fmt.Errorf("ip-network: cleaning up: %w", err))
	}
	return runErr
}

// followExitRoutes keeps a route into the TUN for every NAT64 prefix a
// usable gateway offers (nat64Prefixes), adding new ones and removing
// those no gateway offers any more, until ctx ends (the TUN takes the
// rest along when it closes).
func (n *Node) followExitRoutes(ctx context.Context, k *meship.Kernel) {
	log := n.base.With("component", "gateway.ipnet")
	routed := make(map[netip.Prefix]bool)
	t := time.NewTicker(exitRouteEvery)
	defer t.Stop()
	for {
		want := n.svc.gws.nat64Prefixes(maxExitRoutes)
		for _, p := range want {
			if routed[p] {
				continue
			}
			if err := k.AddRoute(p); err != nil {
				log.Warn("routing a NAT64 prefix into the mesh", "prefix", p, "err", err)
				continue
			}
			routed[p] = true
			log.Info("NAT64 prefix routed into the mesh", "prefix", p, "tun", k.Name)
		}
		for p := range routed {
			if !slices.Contains(want, p) {
				if err := k.RemoveRoute(p); err != nil {
					log.Warn("removing the route of a NAT64 prefix", "prefix", p, "err", err)
					continue
				}
				delete(routed, p)
				log.Info("NAT64 prefix no longer routed into the mesh: no gateway offers it", "prefix", p)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// nat64ExitFor reports whether this node is the exit for dst: a gateway
// whose NAT64 runs for a prefix holding dst (meship.Config.ExitFor).
func (n *Node) nat64ExitFor(dst netip.Addr) bool {
	g := n.svc.role
	return g != nil && g.nat64Prefix().Contains(dst)
}

// ipv6MTU is the MTU of IPv6 packets through the mesh: the TUN's with
// ip-network on, else 1500 (the NAT64 and CLAT of a gateway without the
// IP network see only their own LAN and uplink).
func (n *Node) ipv6MTU() int {
	if !n.opts.IPNetwork {
		return 1500
	}
	return meship.MTUFor(n.meshLinkMTU())
}

// meshLinkMTU is the smallest MTU of the mesh interfaces (1500 for one
// that is not there yet).
func (n *Node) meshLinkMTU() int {
	mtu := 0
	for _, name := range n.opts.MeshInterfaces {
		m := 1500
		if ifi, err := net.InterfaceByName(name); err == nil && ifi.MTU > 0 {
			m = ifi.MTU
		}
		if mtu == 0 || m < mtu {
			mtu = m
		}
	}
	return max(mtu, meship.MinMTU)
}

// ipStatus is the IP network's status; nil when it is off.
func (n *Node) ipStatus() *IPNetworkStatus {
	n.ip.mu.Lock()
	p, k := n.ip.plane, n.ip.k
	n.ip.mu.Unlock()
	if p == nil {
		return nil
	}
	id := p.ID()
	st := &IPNetworkStatus{TUN: k.Name, MTU: k.MTU,
		LANPrefix: meship.LANPrefix(id).String(), LANAddress: meship.LANAddr(id).String(),
		CLATPrefix: meship.CLATPrefix(id).String(), Stats: p.Stats()}
	if pfx, ok := n.NAT64Prefix(); ok {
		st.NAT64Prefix = pfx.String()
		if exit, ok := n.NAT64Exit(pfx.Addr()); ok {
			st.NAT64Exit = exit.String()
		}
	}
	return st
}
