package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

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

// runIPNetwork opens the TUN and carries IPv6 between it and the mesh
// until ctx ends; then the TUN, the LAN prefix and forwarding (if it
// turned it on) are gone again.
func (n *Node) runIPNetwork(ctx context.Context) error {
	mtu := meship.MTUFor(n.meshLinkMTU())
	k, err := meship.Open(IPNetworkTUN, mtu, n.router.ID(), n.opts.LANInterface)
	if err != nil {
		return fmt.Errorf("ip-network: %w", err)
	}
	n.ip.mu.Lock()
	p, err := meship.New(meship.Config{Mesh: n.router, TUN: k.Dev, MTU: mtu,
		Exit: n.ip.exit, ExitFor: n.ip.exitFor, Logger: n.base.With("component", "meship")})
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
	runErr := p.Run(ctx)
	n.ip.mu.Lock()
	n.ip.plane = nil
	n.ip.mu.Unlock()
	if err := k.Close(); err != nil {
		runErr = errors.Join(runErr, fmt.Errorf("ip-network: cleaning up: %w", err))
	}
	return runErr
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
	return &IPNetworkStatus{TUN: k.Name, MTU: k.MTU,
		LANPrefix: meship.LANPrefix(id).String(), LANAddress: meship.LANAddr(id).String(),
		CLATPrefix: meship.CLATPrefix(id).String(), Stats: p.Stats()}
}
