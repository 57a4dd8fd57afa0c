package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/sipmesh/sipmesh/nat64"
	"github.com/sipmesh/sipmesh/ssr"
	"github.com/sipmesh/sipmesh/uplink"
)

// The gateway role (issue 14): a node whose config names an uplink
// measures its uplink and announces itself in the DHT (announce.go);
// every node with phones keeps a view of the gateways and measures its
// mesh path to them (gwchoice.go).

// stunProbeTimeout is how long one uplink probe waits for its answer: a
// probe not answered by then counts as lost. One second is far above any
// terrestrial uplink's round trip and below the announcement period.
const stunProbeTimeout = time.Second

// maxSecretFile bounds the trunk password file read.
const maxSecretFile = 4096

// GatewayRoleStatus is this node's own gateway role in NodeStatus.
type GatewayRoleStatus struct {
	Interface string `json:"interface"`
	// Address is the uplink interface's IPv4 address; Public the address
	// the Internet reaches the gateway at (configured, or learned by STUN).
	Address string   `json:"address,omitempty"`
	Public  string   `json:"public,omitempty"`
	Up      bool     `json:"up"`
	RTTMs   float64  `json:"rtt_ms"`
	LossPct float64  `json:"loss_pct"`
	Probes  int      `json:"probes"`
	Offers  []string `json:"offers"`
	Domain  string   `json:"domain,omitempty"`
	// Trunk is the trunk's registration (trunk-* keys; no password).
	Trunk *uplink.TrunkStatus `json:"trunk,omitempty"`
	// Refused counts the requests from the Internet the gateway answered
	// 403 (proxy's uplink.go: foreign domains, REGISTER, scans).
	Refused uint64 `json:"refused"`
	// TCPOpen and TCPRefused are the Internet side's SIP connections
	// (accepted and opened, proxy's uplinktcp.go) open now and refused
	// over a limit.
	TCPOpen    int    `json:"tcp_open"`
	TCPRefused uint64 `json:"tcp_refused"`
	// Announced is when the announcement was last written to the DHT.
	Announced time.Time `json:"announced,omitzero"`
	LastError string    `json:"last_error,omitempty"`
	// NAT64 is the gateway's NAT64 (nil: nat64 off).
	NAT64 *NAT64Status `json:"nat64,omitempty"`
}

// gatewayRole is the running gateway side of a node.
type gatewayRole struct {
	n *Node

	mu        sync.Mutex
	addr      netip.Addr     // the uplink's IPv4 address (zero: none yet)
	public    netip.AddrPort // learned by STUN
	probes    []probe        // the last probeWindow STUN probes
	announced time.Time
	lastErr   string
	// nat64 is the running NAT64's translator (nil: not running);
	// nat64Err why it does not run (gwnat64.go).
	nat64    *nat64.Translator
	nat64Err string
}

// uplinkAddr returns the first IPv4 address of the uplink interface and
// whether the interface is up.
func (n *Node) uplinkAddr() (netip.Addr, bool, error) {
	ifs, err := n.network.Interfaces()
	if err != nil {
		return netip.Addr{}, false, err
	}
	for _, i := range ifs {
		if i.Name != n.opts.UplinkInterface {
			continue
		}
		for _, p := range i.Addrs {
			if a := p.Addr(); a.Is4() {
				return a, i.Up, nil
			}
		}
		return netip.Addr{}, i.Up, fmt.Errorf("uplink %s has no IPv4 address", i.Name)
	}
	return netip.Addr{}, false, fmt.Errorf("uplink interface %s not found", n.opts.UplinkInterface)
}

// run measures the uplink and announces the gateway every announceEvery
// until ctx ends.
func (g *gatewayRole) run(ctx context.Context) error {
	n := g.n
	var conn net.PacketConn
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	tick := time.NewTicker(announceEvery)
	defer tick.Stop()
	for {
		addr, ifUp, err := n.uplinkAddr()
		g.mu.Lock()
		if addr != g.addr && conn != nil {
			conn.Close() // the uplink's address changed (DHCP): a new socket
			conn = nil
		}
		g.addr = addr
		g.mu.Unlock()
		up := err == nil && ifUp
		if up && n.opts.STUNServer.IsValid() {
			if conn == nil {
				// The probes' own socket: reading it is the probe's business
				// alone (uplink.Probe drops what is not its answer).
				conn, err = n.network.ListenPacket(ctx, "udp4", netip.AddrPortFrom(addr, 0).String())
			}
			if err == nil {
				mapped, rtt, perr := uplink.Probe(ctx, conn, n.opts.STUNServer, stunProbeTimeout)
				if ctx.Err() != nil {
					return nil
				}
				g.record(probe{ok: perr == nil, rtt: rtt}, mapped)
				err = perr
			}
			// One lost probe is no outage: up while one of the last
			// unreachableAfter was answered.
			up = g.upByProbes()
		}
		if err != nil {
			g.setErr(err)
		}
		a := g.announcement(up)
		actx, cancel := context.WithTimeout(ctx, claimTimeout)
		perr := n.svc.dht.Put(actx, gatewaysKey, encodeAnnouncement(a), announceLifetime)
		cancel()
		g.mu.Lock()
		if perr == nil {
			g.announced = time.Now()
		} else if ctx.Err() == nil {
			g.lastErr = "announcing: " + perr.Error()
		}
		g.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func (g *gatewayRole) setErr(err error) {
	g.mu.Lock()
	g.lastErr = err.Error()
	g.mu.Unlock()
}

// record keeps one STUN probe's result.
func (g *gatewayRole) record(p probe, mapped netip.AddrPort) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.probes = append(g.probes, p)
	if len(g.probes) > probeWindow {
		g.probes = g.probes[len(g.probes)-probeWindow:]
	}
	if p.ok {
		g.public, g.lastErr = mapped, ""
	}
}

// publicAddr is the address the Internet reaches the gateway at: the
// configured public-address, else the address of the last STUN mapping
// (RFC 8489 §14.2, XOR-MAPPED-ADDRESS; the probes keep it alive), else
// invalid (not learned yet). Without either config key the uplink's own
// address is public (config.go requires one of them for a gateway).
func (g *gatewayRole) publicAddr() netip.Addr {
	if a := g.n.opts.PublicAddress; a.IsValid() {
		return a
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.public.IsValid() {
		return g.public.Addr().Unmap()
	}
	return netip.Addr{}
}

// upByProbes reports an uplink whose STUN server answered at least one of
// the last unreachableAfter probes (one lost probe is no outage).
func (g *gatewayRole) upByProbes() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	e := gwEntry{probes: g.probes}
	_, _, _, dead := e.meshPath()
	return len(g.probes) > 0 && !dead
}

// announcement is what the gateway announces now; up is the uplink's
// state.
func (g *gatewayRole) announcement(up bool) Announcement {
	o := g.n.opts
	g.mu.Lock()
	e := gwEntry{probes: g.probes}
	g.mu.Unlock()
	a := Announcement{Name: o.Name, Up: up, URIs: true, Domain: o.SIPDomain, Inbound: o.SIPDomain != "", NAT64: g.nat64Prefix()}
	// Numbers by the dial prefix are offered while the trunk is
	// registered with the provider.
	g.n.svc.mu.Lock()
	t := g.n.svc.trunk
	g.n.svc.mu.Unlock()
	if o.DialPrefix != "" && t != nil && t.Status().Registered {
		a.Trunk, a.DialPrefix = true, o.DialPrefix
	}
	if len(a.Name) > maxAnnounceName || !printable(a.Name) {
		a.Name = ""
	}
	if o.STUNServer.IsValid() && len(e.probes) > 0 {
		rtt, _, loss, _ := e.meshPath() // the same sums over the STUN probes
		if loss < 1 {
			a.RTT = rtt
		}
		a.Loss, a.Probes = loss, len(e.probes)
	}
	return a
}

// status is the role's part of NodeStatus.
func (g *gatewayRole) status() *GatewayRoleStatus {
	o := g.n.opts
	up := false
	if _, ifUp, err := g.n.uplinkAddr(); err == nil && ifUp {
		up = !o.STUNServer.IsValid() || g.upByProbes()
	}
	a := g.announcement(up)
	nat := g.nat64Status()
	g.mu.Lock()
	defer g.mu.Unlock()
	st := &GatewayRoleStatus{Interface: o.UplinkInterface, Up: up, RTTMs: ms(a.RTT), LossPct: 100 * a.Loss, Probes: a.Probes,
		Domain: o.SIPDomain, Announced: g.announced, LastError: g.lastErr, NAT64: nat}
	if g.addr.IsValid() {
		st.Address = g.addr.String()
	}
	switch {
	case o.PublicAddress.IsValid():
		st.Public = o.PublicAddress.String()
	case g.public.IsValid():
		st.Public = g.public.Addr().String()
	}
	g.n.svc.mu.Lock()
	if t := g.n.svc.trunk; t != nil {
		ts := t.Status()
		st.Trunk = &ts
	}
	if u := g.n.svc.uplinkSIP; u != nil {
		us := u.Stats()
		st.Refused, st.TCPOpen, st.TCPRefused = us.Refused, us.TCPOpen, us.TCPRefused
	}
	g.n.svc.mu.Unlock()
	st.Offers = []string{"uris"}
	if a.Trunk {
		st.Offers = append(st.Offers, "trunk")
	}
	if a.Inbound {
		st.Offers = append(st.Offers, "inbound")
	}
	if a.NAT64.IsValid() {
		st.Offers = append(st.Offers, "nat64")
	}
	return st
}

// readSecretFile reads a secret (the trunk password) from a file that
// only its owner may read, as ssh does for keys: a password others can
// read is refused. The content's first line is the secret. The value is
// never logged; errors name the file, not its content.
func readSecretFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("%s: mode %04o lets others read it; chmod 600 it", path, fi.Mode().Perm())
	}
	if !fi.Mode().IsRegular() || fi.Size() > maxSecretFile {
		return "", fmt.Errorf("%s: not a regular file of at most %d bytes", path, maxSecretFile)
	}
	b := make([]byte, fi.Size())
	if _, err := f.ReadAt(b, 0); err != nil && fi.Size() > 0 {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	line = strings.TrimSuffix(line, "\r")
	if line == "" {
		return "", fmt.Errorf("%s: empty", path)
	}
	return line, nil
}

// errNoGateway is returned when no live gateway offers what a call needs.
var errNoGateway = errors.New("no gateway")

// Gateways reads the gateways' announcements now and returns them as
// this node sees them, best first.
func (n *Node) Gateways(ctx context.Context) ([]GatewayInfo, error) {
	err := n.svc.gws.refresh(ctx)
	return n.svc.gws.list(), err
}

// TrunkGateway returns the mesh SIP address of the gateway whose trunk
// takes a number dialled as user (its dial prefix and digits); isNumber
// is false when no known gateway's prefix makes user such a number.
func (n *Node) TrunkGateway(ctx context.Context, user string) (gw netip.AddrPort, isNumber bool, err error) {
	d := n.svc.gws
	if !d.trunkPrefix(user) {
		return netip.AddrPort{}, false, nil
	}
	id, ok := d.chooseWhere(ctx, KindTrunk, func(a Announcement) bool { return dialled(a, user) })
	if !ok {
		return netip.AddrPort{}, true, fmt.Errorf("%w for %s", errNoGateway, user)
	}
	return netip.AddrPortFrom(id.Addr(), GatewaySIPPort), true, nil
}

// ChooseGateway returns the gateway a call of kind (KindURI, KindTrunk)
// goes through now, by the rule of gwchoice.go.
func (n *Node) ChooseGateway(ctx context.Context, kind string) (ssr.NodeID, error) {
	id, ok := n.svc.gws.choose(ctx, kind)
	if !ok {
		return 0, fmt.Errorf("%w for %s calls", errNoGateway, kind)
	}
	return id, nil
}

// runGatewayDir keeps this node's view of the gateways fresh and their
// mesh paths measured, every announceEvery; on a node with phones only
// (others read on demand, for `sipmesh gateways`).
func (n *Node) runGatewayDir(ctx context.Context) error {
	tick := time.NewTicker(announceEvery)
	defer tick.Stop()
	for {
		rctx, cancel := context.WithTimeout(ctx, claimTimeout)
		n.svc.gws.refresh(rctx)
		cancel()
		n.svc.gws.probeAll(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}
