package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/miekg/dns"
	"github.com/sipmesh/sipmesh/dns64"
	"github.com/sipmesh/sipmesh/proxy"
	"github.com/sipmesh/sipmesh/registrar"
	"github.com/sipmesh/sipmesh/sipalg"
	"github.com/sipmesh/sipmesh/ssr"
	"github.com/sipmesh/sipmesh/uplink"
)

// GatewaySIPPort is the mesh port of a gateway's Internet side: nodes send
// the calls they route out of the mesh to the chosen gateway's mesh
// address on this port (proxy/uplink.go). The node's own SIP service
// keeps sip-port; both are on the mesh address, so only mesh nodes reach
// either.
const GatewaySIPPort = 5062

// dnsUDPSize is the EDNS0 buffer size of the gateway's queries (RFC 6891
// §6.2.5; 1232 avoids fragmentation, the DNS flag day 2020 value).
const dnsUDPSize = 1232

// locator is the gateway's RFC 3263 server location against its
// configured resolvers, tried in order.
func (n *Node) locator() *uplink.Locator {
	return &uplink.Locator{Exchange: func(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
		var errs []error
		for _, up := range n.opts.DNSUpstreams {
			qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			res, err := dns64.Exchange(qctx, n.network, "udp", up.String(), dnsUDPSize, q)
			cancel()
			if err == nil {
				return res, nil
			}
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
		}
		return nil, errors.Join(errs...)
	}}
}

// runUplinkSIP runs the gateway's Internet side (proxy/uplink.go): a
// SIP service with its "LAN" socket on the uplink address and its mesh
// socket on GatewaySIPPort, with a relay between the two, until ctx
// ends. It waits for the uplink's address (DHCP may be late) and for the
// public address (behind NAT: the first STUN answer), which goes into
// Via, Record-Route, the trunk's Contact and the SDP of what the gateway
// sends to the Internet: a private address there is one no peer can
// reach back.
func (n *Node) runUplinkSIP(ctx context.Context) error {
	var addr, public netip.Addr
	for {
		a, up, err := n.uplinkAddr()
		public = n.svc.role.publicAddr()
		if err == nil && up && public.IsValid() {
			addr = a
			break
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
	s := n.svc
	nw := n.network
	meshAddr := n.router.Addr()
	sipUp := netip.AddrPortFrom(addr, n.opts.SIPPort)
	sipMesh := netip.AddrPortFrom(meshAddr, GatewaySIPPort)
	log := n.base.With("side", "uplink")
	// The registrar only words the service's own responses here: the
	// Internet side refuses REGISTER (proxy/uplink.go).
	reg, err := registrar.NewRegistrar(registrar.RegistrarConfig{
		Node: n.router.ID(), Locations: s.locs, Accounts: s.accounts,
		Addrs: []netip.Addr{addr, meshAddr}, Algorithms: n.opts.DigestAlgorithms, Logger: log,
	})
	if err != nil {
		return err
	}
	relay, err := sipalg.NewRelay(sipalg.Config{
		// Far ends behind NAT send from addresses nothing in SIP names
		// (sipalg.SideConfig.LatchAny): symmetric RTP, RFC 4961.
		A: sipalg.SideConfig{Name: "uplink", Addr: addr, Listen: sipalg.NetworkListener(nw, addr),
			PortMin: n.opts.RelayPortMin, PortMax: n.opts.RelayPortMax, LatchAny: true,
			// Behind NAT the router must see our datagram to a far end
			// before it lets the far end's in (sipalg.SideConfig.Punch).
			Punch: public != addr},
		B:      n.meshRelaySide(meshAddr),
		Logger: log,
	})
	if err != nil {
		return err
	}
	// The uplink's global IPv6 address, if it has one now: the gateway
	// listens there too, locates AAAA records and reaches IPv6-only
	// servers from there, with media through a relay of its own (the
	// far end's family, RFC 4566 §5.7: c=IN IP6).
	var v6 *uplink6
	if a6, ok := n.uplinkAddr6(); ok {
		if v6, err = n.listenUplink6(ctx, a6, meshAddr, log); err != nil {
			log.Warn("no SIP on the uplink's IPv6 address", "addr", a6, "err", err)
			v6 = nil
		}
	}
	upUDP, err := nw.ListenPacket(ctx, "udp4", sipUp.String())
	if err != nil {
		v6.close()
		return fmt.Errorf("SIP on the uplink %s: %w", sipUp, err)
	}
	// TCP on the same port (RFC 3261 §18: a server listens on both):
	// providers and callers whose DNS says TCP reach the gateway over it.
	upTCP, err := nw.Listen(ctx, "tcp4", sipUp.String())
	if err != nil {
		upUDP.Close()
		v6.close()
		return fmt.Errorf("SIP over TCP on the uplink %s: %w", sipUp, err)
	}
	meshUDP, err := n.router.ListenPacket(GatewaySIPPort)
	if err != nil {
		upUDP.Close()
		upTCP.Close()
		v6.close()
		return fmt.Errorf("gateway SIP on the mesh: %w", err)
	}
	loc := n.locator()
	loc.IPv6 = v6 != nil
	// The trunk (trunk-* keys), registered from the uplink socket once the
	// service runs; the provider's calls come back to it.
	var trunk *uplink.Trunk
	up := &proxy.UplinkConfig{Locate: func(ctx context.Context, u *sip.Uri) ([]uplink.Target, error) {
		return loc.Locate(ctx, u)
	}, Domain: n.opts.SIPDomain,
		// Servers that speak TCP are reached over it (RFC 3263 §4.1).
		Dial: nw.Dial}
	if n.opts.TrunkRegistrar != "" {
		var reg sip.Uri
		if err := sip.ParseUri(n.opts.TrunkRegistrar, &reg); err != nil {
			return fmt.Errorf("trunk-registrar: %w", err) // checked by the config already
		}
		// The provider's server the trunk registered with.
		target := func() (netip.AddrPort, bool) { return trunkTarget(trunk) }
		up.TrunkUser, up.TrunkPassword, up.TrunkHost = n.opts.TrunkUser, n.trunkPassword, reg.Host
		up.TrunkSource = func(a netip.Addr) bool {
			t, ok := target()
			return ok && t.Addr() == a
		}
		up.TrunkPrefix, up.TrunkTarget = n.opts.DialPrefix, target
	}
	cfg := proxy.SIPServiceConfig{
		Node: n.router.ID(), LANAddr: sipUp, MeshAddr: sipMesh,
		LANUDP: upUDP, MeshUDP: meshUDP, LANTCP: upTCP,
		Registrar: reg, Locations: s.locs, Accounts: s.accounts, Relay: relay,
		NodeSIPAddr: func(id ssr.NodeID) netip.AddrPort { return netip.AddrPortFrom(id.Addr(), n.opts.SIPPort) },
		ServerName:  "sipmesh " + n.opts.Name,
		Logger:      log,
		Rate:        n.opts.SIPRate, Burst: n.opts.SIPBurst, MaxTransactions: n.opts.SIPMaxTransactions,
		// Calls of the node's own phones come from its own service.
		LocalPeer: netip.AddrPortFrom(meshAddr, n.opts.SIPPort),
		Uplink:    up,
		// Behind NAT, the public address (followed as STUN learns it).
		LANPublic: n.svc.role.publicAddr,
		// A DID is a dial-plan alias of an extension (`sipmesh did`).
		Aliases: n.aliases(),
		// Internet calls for sip:EXT@sip-domain are looked up.
		Domains: domains(n.opts.SIPDomain),
	}
	if v6 != nil {
		cfg.LAN6Addr, cfg.LAN6UDP, cfg.LAN6TCP, cfg.Relay6 = v6.addr, v6.udp, v6.tcp, v6.relay
	}
	svc, err := proxy.NewSIPService(cfg)
	if err != nil {
		upUDP.Close()
		upTCP.Close()
		meshUDP.Close()
		v6.close()
		return err
	}
	if n.opts.TrunkRegistrar != "" {
		var reg sip.Uri
		if err := sip.ParseUri(n.opts.TrunkRegistrar, &reg); err != nil {
			return fmt.Errorf("trunk-registrar: %w", err) // checked by the config already
		}
		trunk, err = uplink.NewTrunk(uplink.TrunkConfig{
			Name:      reg.Host,
			Registrar: reg,
			AOR:       sip.Uri{Scheme: "sip", User: n.opts.TrunkUser, Host: reg.Host},
			Username:  n.opts.TrunkUser, Password: n.trunkPassword,
			// Where the provider delivers calls: behind NAT, the public
			// address and the uplink socket's port, which the router
			// keeps (SIPServiceConfig.LANPublic); the keep-alives hold
			// the mapping open between REGISTER refreshes and follow a
			// changed public address (keepMapped).
			Contact: sip.Uri{Scheme: "sip", User: n.opts.TrunkUser, Host: public.String(), Port: int(n.opts.SIPPort)},
			Client:  svc.TrunkClient(),
			Locator: loc,
			Logger:  log,
		})
		if err != nil {
			return err
		}
	}
	n.svc.mu.Lock()
	n.svc.uplinkSIP = svc
	n.svc.trunk = trunk
	n.svc.mu.Unlock()
	n.log.Info("gateway's Internet side up", "uplink", n.opts.UplinkInterface, "sip", sipUp, "mesh", sipMesh)
	runs := 2
	if v6 != nil {
		runs++
	}
	errc := make(chan error, runs)
	rctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { errc <- relay.Run(rctx) }()
	if v6 != nil {
		go func() { errc <- v6.relay.Run(rctx) }()
	}
	go func() { errc <- svc.Run(rctx) }()
	trunkDone := make(chan struct{})
	// The trunk stops first and removes its binding (RFC 3261 §10.2.2)
	// while the service still carries the REGISTER and its answer.
	tctx, tcancel := context.WithCancel(context.Background())
	defer tcancel()
	if trunk != nil {
		go func() { trunk.Run(tctx); close(trunkDone) }()
		if public != addr {
			// Behind NAT: the mapping the provider's calls come back
			// through must outlive the gaps between REGISTER refreshes.
			go keepMapped(tctx, svc, func() (netip.AddrPort, bool) { return trunkTarget(trunk) }, func() {
				// A new STUN mapping (the router's address changed): the
				// provider must call the new one.
				if a := n.svc.role.publicAddr(); a.IsValid() {
					trunk.SetContactHost(a.String())
				}
			})
		}
	} else {
		close(trunkDone)
	}
	var errs []error
	select {
	case <-ctx.Done():
	case err := <-errc: // the relay or the service failed
		errs = append(errs, err)
	}
	tcancel()
	<-trunkDone
	cancel()
	for len(errs) < cap(errc) {
		errs = append(errs, <-errc)
	}
	if ctx.Err() != nil {
		return nil
	}
	return errors.Join(errs...)
}

// trunkTarget is the provider's server the trunk registered with, and
// whether it is registered.
func trunkTarget(t *uplink.Trunk) (netip.AddrPort, bool) {
	st := t.Status()
	_, ap, _ := strings.Cut(st.Target, " ")
	a, err := netip.ParseAddrPort(ap)
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()), err == nil && st.Registered
}

// natKeepAlive is the period of the keep-alives to the provider from a
// gateway behind NAT: below the 30 s many routers keep an idle UDP
// mapping (Linux conntrack's unreplied timeout), where RFC 5626 §4.4.1
// would allow 95 to 120 s for routers that follow RFC 4787.
const natKeepAlive = 20 * time.Second

// keepMapped sends a keep-alive (proxy's KeepAlive) to the trunk's
// registered server every natKeepAlive until ctx ends, and calls follow
// first, to follow a changed public address.
func keepMapped(ctx context.Context, svc *proxy.SIPService, target func() (netip.AddrPort, bool), follow func()) {
	tick := time.NewTicker(natKeepAlive)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		follow()
		if dst, ok := target(); ok {
			svc.KeepAlive(dst)
		}
	}
}

// UplinkSIP returns the gateway's Internet side (nil: not a gateway, or
// its uplink has no address yet).
func (n *Node) UplinkSIP() *proxy.SIPService {
	n.svc.mu.Lock()
	defer n.svc.mu.Unlock()
	return n.svc.uplinkSIP
}

// localGatewayPeer is the node's own Internet side on the mesh, which its
// phones' service may route to (zero: not a gateway).
func (n *Node) localGatewayPeer(meshAddr netip.Addr) netip.AddrPort {
	if !n.opts.Gateway() {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(meshAddr, GatewaySIPPort)
}

func domains(d string) []string {
	if d == "" {
		return nil
	}
	return []string{d}
}

// uplink6 is the gateway's Internet side on its uplink's IPv6 address.
type uplink6 struct {
	addr  netip.AddrPort
	udp   net.PacketConn
	tcp   net.Listener
	relay *sipalg.Relay
}

func (u *uplink6) close() {
	if u != nil {
		u.udp.Close()
		u.tcp.Close()
	}
}

// uplinkAddr6 is the uplink interface's global IPv6 address, if it has
// one: not link-local, and not a ULA (RFC 4193 §4.1: not reachable from
// the Internet).
func (n *Node) uplinkAddr6() (netip.Addr, bool) {
	ifs, err := n.network.Interfaces()
	if err != nil {
		return netip.Addr{}, false
	}
	for _, i := range ifs {
		if i.Name != n.opts.UplinkInterface {
			continue
		}
		for _, p := range i.Addrs {
			if a := p.Addr(); a.Is6() && !a.Is4In6() && a.IsGlobalUnicast() && !a.IsPrivate() && !ssr.MeshPrefix.Contains(a) {
				return a.WithZone(""), true
			}
		}
	}
	return netip.Addr{}, false
}

// listenUplink6 opens the SIP sockets (UDP and TCP, the SIP port) and the
// media relay of the uplink's IPv6 address a.
func (n *Node) listenUplink6(ctx context.Context, a, meshAddr netip.Addr, log *slog.Logger) (*uplink6, error) {
	nw := n.network
	ap := netip.AddrPortFrom(a, n.opts.SIPPort)
	relay, err := sipalg.NewRelay(sipalg.Config{
		A: sipalg.SideConfig{Name: "uplink6", Addr: a, Listen: sipalg.NetworkListener(nw, a),
			PortMin: n.opts.RelayPortMin, PortMax: n.opts.RelayPortMax, LatchAny: true},
		B:      n.meshRelaySide(meshAddr),
		Logger: log,
	})
	if err != nil {
		return nil, err
	}
	udp, err := nw.ListenPacket(ctx, "udp6", ap.String())
	if err != nil {
		return nil, err
	}
	tcp, err := nw.Listen(ctx, "tcp6", ap.String())
	if err != nil {
		udp.Close()
		return nil, err
	}
	return &uplink6{addr: ap, udp: udp, tcp: tcp, relay: relay}, nil
}
