package gateway

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/sipmesh/sipmesh/dns64"
	"github.com/sipmesh/sipmesh/nat64"
	"github.com/sipmesh/sipmesh/provisioning"
	"github.com/sipmesh/sipmesh/proxy"
	"github.com/sipmesh/sipmesh/registrar"
	"github.com/sipmesh/sipmesh/sipalg"
	"github.com/sipmesh/sipmesh/ssr"
	"github.com/sipmesh/sipmesh/ssr/dht"
	"github.com/sipmesh/sipmesh/uplink"
)

// The services of a node beyond routing: the DHT, the registrar and proxy
// with the media relay, and on a node with a phone LAN the DNS server and
// the DHCP server. Run starts them once the router runs; they share its
// lifetime.

// sinceFile keeps when this node first claimed its name and subnet, so a
// restarted node keeps them (first come, first served).
const sinceFile = "claims-since"

// claimRenew is how often the node renews its name and subnet claims.
const claimRenew = claimLifetime / 4

// claimTimeout bounds one claim (a DHT write and read).
const claimTimeout = 10 * time.Second

// claimRecheck is how long after a change of ring neighbours the node
// claims its name and subnet again: claims made while alone (or on a
// half-formed ring) could not see other nodes' claims, and by then the
// DHT has moved the records to their owners.
const claimRecheck = 2 * time.Second

// hostPublishQueue bounds DHCP host names waiting to be published.
const hostPublishQueue = 64

// services are the parts a node runs besides the router.
type services struct {
	dht      *dht.Driver
	claims   *Claims
	locs     *registrar.DHTLocation
	accounts *registrar.DHTAccounts

	// Set by startLAN once the phone LAN is up; read by status and by
	// renewClaims (lanClaimed: the derived subnet claimed in the DHT, zero
	// with a configured lan-address).
	mu         sync.Mutex
	lanAddr    netip.Prefix
	lanClaimed netip.Prefix
	sip        *proxy.SIPService
	prov       *provisioning.HTTPServer // phone files, under the web UI (phones.go)

	// lanOwned are the addresses this node put on the LAN interface,
	// taken off when it stops. Used by the goroutine of runServices only.
	lanOwned []netip.Prefix

	reg   *registrar.Registrar
	relay *sipalg.Relay
	dns   *dns64.Server
	dhcp  *provisioning.DHCPServer
	hosts chan provisioning.Lease

	// gws is the node's view of the mesh's gateways (gwchoice.go); role
	// is this node's own gateway side (nil: not a gateway; gwrole.go).
	gws  *gatewayDir
	role *gatewayRole
	// uplinkSIP is a gateway's Internet side (uplinksip.go), set under mu
	// once the uplink has an address.
	uplinkSIP *proxy.SIPService
	trunk     *uplink.Trunk // the gateway's trunk (nil: none)
	// clat is the running CLAT's translator (clat.go; nil: none).
	clat *nat64.Translator
}

// newServices prepares the DHT and the stores on it; nothing runs yet.
func (n *Node) newServices(key ed25519.PrivateKey, adminPub ed25519.PublicKey) error {
	p := n.opts.dhtParams
	if adminPub != nil {
		// Every holder refuses subscriber records not written by the
		// administrator, so a node cannot plant accounts.
		p.Validate = registrar.AccountValidator(adminPub)
	}
	// The records this node holds live in the state directory too, so a
	// restart — of this node or of the whole mesh — keeps them.
	d, err := dht.NewDriver(dht.DriverConfig{Router: n.router, Key: key, Params: p, Logger: n.base, StateDir: n.opts.StateDir})
	if err != nil {
		return err
	}
	since, err := loadSince(n.opts.StateDir)
	if err != nil {
		return err
	}
	n.svc = &services{
		dht:      d,
		claims:   &Claims{DHT: d, Self: n.router.ID(), Since: since},
		locs:     &registrar.DHTLocation{DHT: d, Self: n.router.ID()},
		accounts: &registrar.DHTAccounts{DHT: d, Admin: adminPub, Key: n.admin},
		hosts:    make(chan provisioning.Lease, hostPublishQueue),
	}
	n.svc.gws = newGatewayDir(d, n.router.ID(), func(ctx context.Context, id ssr.NodeID) (time.Duration, int, error) {
		reply, rtt, err := n.router.Ping(ctx, id)
		return rtt, reply.Hops, err
	})
	if n.opts.Gateway() {
		n.svc.role = &gatewayRole{n: n}
	}
	return nil
}

// loadSince returns the time this node first claimed names, creating the
// file on first start.
func loadSince(dir string) (time.Time, error) {
	path := filepath.Join(dir, sinceFile)
	if b, err := os.ReadFile(path); err == nil {
		us, err := strconv.ParseInt(string(b), 10, 64)
		if err != nil {
			return time.Time{}, fmt.Errorf("%s: %w", path, err)
		}
		return time.UnixMicro(us), nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return time.Time{}, err
	}
	now := time.Now()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return time.Time{}, err
	}
	if err := os.WriteFile(path, []byte(strconv.FormatInt(now.UnixMicro(), 10)), 0o600); err != nil {
		return time.Time{}, err
	}
	return now, nil
}

// runServices runs the DHT and everything on top of it until ctx ends; it
// returns after every part has stopped and the LAN addresses it added are
// gone. Nothing waits for other nodes: a node alone is a mesh of one, whose
// DHT keeps every record itself until neighbours come (and the DHT's
// hand-off moves records to their owners).
func (n *Node) runServices(ctx context.Context) error {
	s := n.svc
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	run := func(name string, f func(context.Context) error) {
		wg.Go(func() {
			if err := f(ctx); err != nil && ctx.Err() == nil {
				errs <- fmt.Errorf("%s: %w", name, err)
			}
		})
	}
	run("dht", s.dht.Run)
	run("claims", n.renewClaims)
	if s.role != nil {
		run("gateway", s.role.run)
		run("uplink sip", n.runUplinkSIP)
		if n.opts.NAT64 && n.openTUN != nil {
			run("nat64", s.role.runNAT64)
		}
	}
	if n.opts.LANInterface != "" || s.role != nil || n.opts.IPNetwork {
		// The IP network needs the view too: its NAT64 exits and routes
		// (ipnet.go), and the check of the exits' answers.
		run("gateways", n.runGatewayDir)
	}
	var err error
	if n.opts.LANInterface != "" {
		err = n.startLAN(ctx, run)
	}
	if err == nil && n.opts.LANInterface != "" && n.opts.CLATPrefix.IsValid() && n.openTUN != nil {
		run("clat", n.runCLAT)
	}
	if addrs := n.webAddrs(n.LANAddress()); err == nil && len(addrs) > 0 {
		run("web", func(ctx context.Context) error { return n.runWeb(ctx, addrs) })
	}
	if err == nil {
		select {
		case <-ctx.Done():
		case err = <-errs:
		}
	}
	n.cancel() // one part failing stops the node
	wg.Wait()
	return errors.Join(err, n.removeLANAddresses())
}

// startLAN brings up the phone LAN's services: its address (derived and
// claimed if not configured; put on the interface either way), SIP,
// relay, DNS and DHCP.
func (n *Node) startLAN(ctx context.Context, run func(string, func(context.Context) error)) error {
	s := n.svc
	lan := n.opts.LANAddress
	if !lan.IsValid() {
		var err error
		if lan, err = n.claimLAN(ctx); err != nil {
			return err
		}
	}
	if err := n.putLANAddress(lan); err != nil {
		return err
	}
	nw := n.network
	meshAddr := n.router.Addr()
	sipLAN := netip.AddrPortFrom(lan.Addr(), n.opts.SIPPort)
	sipMesh := netip.AddrPortFrom(meshAddr, n.opts.SIPPort)
	log := n.base

	var err error
	s.reg, err = registrar.NewRegistrar(registrar.RegistrarConfig{
		Node: n.router.ID(), Locations: s.locs, Accounts: s.accounts,
		Addrs: []netip.Addr{lan.Addr(), meshAddr}, Algorithms: n.opts.DigestAlgorithms,
		// A DHT record holds one node's bindings of an AOR (dht.MaxValue).
		MaxContacts: maxContactsPerNode,
		Logger:      log,
	})
	if err != nil {
		return err
	}
	s.relay, err = sipalg.NewRelay(sipalg.Config{
		A: sipalg.SideConfig{Name: "lan", Addr: lan.Addr(), Listen: sipalg.NetworkListener(nw, lan.Addr()),
			PortMin: n.opts.RelayPortMin, PortMax: n.opts.RelayPortMax},
		B:      n.meshRelaySide(meshAddr),
		Logger: log,
	})
	if err != nil {
		return err
	}
	lanUDP, err := nw.ListenPacket(ctx, "udp4", sipLAN.String())
	if err != nil {
		return fmt.Errorf("SIP on %s: %w", sipLAN, err)
	}
	lanTCP, err := nw.Listen(ctx, "tcp4", sipLAN.String())
	if err != nil {
		lanUDP.Close()
		return fmt.Errorf("SIP on %s/tcp: %w", sipLAN, err)
	}
	meshUDP, err := n.router.ListenPacket(n.opts.SIPPort)
	if err != nil {
		lanUDP.Close()
		lanTCP.Close()
		return fmt.Errorf("SIP on the mesh: %w", err)
	}
	sip, err := proxy.NewSIPService(proxy.SIPServiceConfig{
		Node: n.router.ID(), LANAddr: sipLAN, MeshAddr: sipMesh,
		LANUDP: lanUDP, MeshUDP: meshUDP, LANTCP: lanTCP,
		Registrar: s.reg, Locations: s.locs, Accounts: s.accounts, Relay: s.relay,
		NodeSIPAddr: func(id ssr.NodeID) netip.AddrPort { return netip.AddrPortFrom(id.Addr(), n.opts.SIPPort) },
		LANPrefix:   lan.Masked(),
		ServerName:  "sipmesh " + n.opts.Name,
		Logger:      log,
		// Limits (config keys sip-rate, sip-burst, sip-max-transactions).
		Rate: n.opts.SIPRate, Burst: n.opts.SIPBurst, MaxTransactions: n.opts.SIPMaxTransactions,
		// The echo test's media, on the LAN address (phones/echo.go).
		EchoListen: func(ctx context.Context) (net.PacketConn, error) {
			return nw.ListenPacket(ctx, "udp4", netip.AddrPortFrom(lan.Addr(), 0).String())
		},
		// The party line (426, 4260–4269; phones/conference.go): each
		// room runs on the node its key belongs to on the ring, members'
		// media on the LAN or the mesh side as their call came in.
		Rooms: &proxy.RoomsConfig{
			Listen: func(ctx context.Context, mesh bool) (net.PacketConn, error) {
				if mesh {
					return n.router.ListenPacket(0)
				}
				return nw.ListenPacket(ctx, "udp4", netip.AddrPortFrom(lan.Addr(), 0).String())
			},
			Owner: func(room string) ssr.NodeID { return n.roomOwner(ctx, room) },
			// Members' dialogs, so a room moves when its node dies.
			Store: &registrar.DHTRooms{DHT: n.svc.dht},
		},
		// Call forwarding and *72/*73 (proxy/forward.go), in the DHT.
		Forwards:   &registrar.DHTForwards{DHT: n.svc.dht},
		RingGroups: n.opts.RingGroups,
		HuntGroups: n.opts.HuntGroups,
		// The dial plan's aliases, in the DHT (proxy/alias.go).
		Aliases: n.aliases(),
		// MESSAGEs for offline phones, kept in the DHT (proxy/messages.go).
		Messages: &registrar.DHTMessages{DHT: n.svc.dht, Node: n.router.ID()},
		// A gateway node's own Internet side (uplinksip.go).
		LocalPeer: n.localGatewayPeer(meshAddr),
		// Numbers by a gateway's dial prefix go to its trunk.
		TrunkOutbound: n.TrunkGateway,
		// A gateway silent to a call is skipped by the next choice.
		GatewayFailed: func(gw netip.AddrPort) { n.svc.gws.failed(gw.Addr()) },
		// Calls to other domains leave through a gateway (gwchoice.go).
		Outbound: func(ctx context.Context, _ *sip.Request) (netip.AddrPort, error) {
			id, err := n.ChooseGateway(ctx, KindURI)
			if err != nil {
				return netip.AddrPort{}, err
			}
			return netip.AddrPortFrom(id.Addr(), GatewaySIPPort), nil
		},
	})
	if err != nil {
		lanUDP.Close()
		lanTCP.Close()
		meshUDP.Close()
		return err
	}
	run("relay", s.relay.Run)
	run("sip", sip.Run)

	s.dns, err = dns64.New(dns64.Config{
		Network:   nw,
		Listen:    []dns64.Listen{{Addr: lan.Addr()}},
		Zone:      s.claims,
		Upstreams: n.opts.DNSUpstreams,
		// The prefix of the NAT64 gateway this node would send the
		// packets to (nat64exit.go; RFC 6147 §5.2), none when no
		// gateway offers NAT64.
		PrefixFunc: n.NAT64Prefix,
		Port:       n.dnsPort,
		Rate:       n.opts.DNSRate, // config keys dns-rate, dns-burst
		Burst:      n.opts.DNSBurst,
		Logger:     log,
	})
	if err != nil {
		return err
	}
	run("dns", s.dns.Run)
	dns := s.dns
	run("memory", func(ctx context.Context) error { // memory.go
		return releaseAfterLoad(ctx, func() uint64 { return sip.Stats().Requests + dns.Stats().Queries })
	})

	var prov *provisioning.HTTPServer
	if n.opts.DHCP {
		s.dhcp, err = provisioning.NewDHCPServer(provisioning.DHCPConfig{
			Network:   nw,
			Interface: n.opts.LANInterface,
			Subnet:    lan.Masked(),
			ServerIP:  lan.Addr(),
			LeaseFile: filepath.Join(n.opts.StateDir, "leases-"+n.opts.LANInterface+".json"),
			// Option 66 (and 160): phones find their files with no typing.
			ProvisioningURL: n.provisioningURL(lan),
			OnLease: func(l provisioning.Lease) {
				select {
				case s.hosts <- l:
				default: // published on the lease's renewal
				}
			},
			Logger: log,
		})
		if err != nil {
			return err
		}
		run("dhcp", s.dhcp.Run)
		run("hosts", n.publishHosts)
		// Only the holder of a MAC's lease gets that MAC's file: without
		// a lease table (dhcp off) no file is served.
		if prov, err = n.newProvisioner(lan, s.dhcp); err != nil {
			return err
		}
	}
	// Published last: a reader that sees sip set under the lock also
	// sees reg, relay, dns and dhcp (WriteMetrics).
	s.mu.Lock()
	s.lanAddr, s.sip, s.prov = lan, sip, prov
	s.mu.Unlock()
	n.log.Info("phone LAN up", "interface", n.opts.LANInterface, "address", lan, "sip", sipLAN, "dhcp", n.opts.DHCP)
	return nil
}

// maxContactsPerNode bounds the contacts of one AOR registered through one
// node: their binding list must fit one DHT value.
const maxContactsPerNode = 3

// claimLAN derives this node's LAN subnet from its ID and claims it in
// the DHT, moving on when another node holds it. It does not wait for a
// ring: alone, the node's own DHT store holds the claim, and renewClaims
// checks it again once ring neighbours come. A DHT failure (a ring in
// flux) is retried; phones wait for the LAN until a claim succeeds.
func (n *Node) claimLAN(ctx context.Context) (netip.Prefix, error) {
	retry := time.Second
	for {
		cctx, cancel := context.WithTimeout(ctx, claimTimeout)
		c, err := provisioning.ClaimSubnet(cctx, n.svc.claims, n.opts.LANSupernet, provisioning.DefaultLANBits, uint64(n.router.ID()), 0)
		cancel()
		if err == nil {
			for _, col := range c.Collisions {
				n.log.Warn("LAN subnet taken by another node, using the next one", "subnet", col.Subnet, "owner", ssr.NodeID(col.Owner))
			}
			n.svc.mu.Lock()
			n.svc.lanClaimed = c.Subnet
			n.svc.mu.Unlock()
			addr := netip.PrefixFrom(provisioning.NodeLANAddress(c.Subnet), c.Subnet.Bits())
			n.log.Info("LAN subnet claimed", "subnet", c.Subnet, "address", addr, "ring_neighbours", len(n.router.Status().Successors) > 0)
			return addr, nil
		}
		if ctx.Err() != nil || errors.Is(err, provisioning.ErrSubnetsExhausted) {
			return netip.Prefix{}, fmt.Errorf("LAN subnet: %w", err)
		}
		n.log.Warn("claiming a LAN subnet failed; the phone LAN waits for it", "err", err, "retry_in", retry)
		select {
		case <-ctx.Done():
			return netip.Prefix{}, fmt.Errorf("LAN subnet: %w", ctx.Err())
		case <-time.After(retry):
		}
		retry = min(2*retry, 30*time.Second)
	}
}

// putLANAddress puts addr on the LAN interface unless it is there already
// (put there by the system's network configuration, as OpenWrt's netifd
// does: then it stays when the node stops).
func (n *Node) putLANAddress(addr netip.Prefix) error {
	if n.addAddress == nil {
		return nil
	}
	added, err := n.addAddress(n.opts.LANInterface, addr)
	if err != nil {
		return fmt.Errorf("LAN address: %w", err)
	}
	if added {
		n.svc.lanOwned = append(n.svc.lanOwned, addr)
		n.log.Info("LAN address added", "interface", n.opts.LANInterface, "address", addr)
	}
	return nil
}

// removeLANAddresses takes the addresses putLANAddress added off the LAN
// interface.
func (n *Node) removeLANAddresses() error {
	var errs []error
	for _, a := range n.svc.lanOwned {
		if err := n.removeAddress(n.opts.LANInterface, a); err != nil {
			errs = append(errs, fmt.Errorf("LAN address: %w", err))
			continue
		}
		n.log.Info("LAN address removed", "interface", n.opts.LANInterface, "address", a)
	}
	n.svc.lanOwned = nil
	return errors.Join(errs...)
}

// renewClaims claims the node's name (name.mesh → its mesh address) at
// once and renews it, and the LAN subnet claim, while the node runs. A
// change of ring neighbours brings the next renewal forward (claimRecheck)
// and is logged: a node without ring neighbours says it is alone.
func (n *Node) renewClaims(ctx context.Context) error {
	poll := time.NewTicker(time.Second)
	defer poll.Stop()
	var (
		succ  string
		first = true
		next  time.Time // zero: claim now
		retry = time.Second
	)
	for {
		cur := ""
		if st := n.router.Status(); len(st.Successors) > 0 {
			cur = st.Successors[0].ID
		}
		if first || cur != succ {
			switch {
			case cur == "" && (first || succ != ""):
				n.log.Info("no ring neighbour: this node serves as a mesh of one, its DHT keeps every record until neighbours come")
			case cur != "" && succ == "" && !first:
				n.log.Info("ring neighbour found: DHT records move to their owners; claims are checked again", "successor", cur)
			}
			if soon := time.Now().Add(claimRecheck); !first && soon.Before(next) {
				next = soon
			}
			if sip := n.SIP(); sip != nil && !first {
				sip.RingChanged() // take over the rooms of a dead successor
			}
			succ, first = cur, false
		}
		if !time.Now().Before(next) {
			next = time.Now().Add(n.claimOnce(ctx, &retry))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-poll.C:
		}
	}
}

// claimOnce claims the node's name and its LAN subnet (if derived) again
// and returns when to do it next: claimRenew, or sooner (backing off
// from a second) after a failure.
func (n *Node) claimOnce(ctx context.Context, retry *time.Duration) time.Duration {
	cctx, cancel := context.WithTimeout(ctx, claimTimeout)
	defer cancel()
	owner, err := n.svc.claims.ClaimName(cctx, n.opts.Name, n.router.Addr())
	if errors.Is(err, ErrNameTaken) {
		n.log.Warn("node name taken by another node; "+n.opts.Name+".mesh does not resolve to this node", "owner", owner)
		err = nil
	}
	n.svc.mu.Lock()
	subnet := n.svc.lanClaimed
	n.svc.mu.Unlock()
	if subnet.IsValid() && err == nil {
		var o uint64
		if o, err = n.svc.claims.Claim(cctx, subnet, uint64(n.router.ID())); err == nil && ssr.NodeID(o) != n.router.ID() {
			// Two nodes that claimed the subnet apart (alone, or on
			// separate rings) and met: the first claimant keeps it. The
			// other LAN keeps its phones; on restart this node derives
			// the next subnet.
			n.log.Warn("LAN subnet claimed first by another node; restart this node to move to another subnet", "subnet", subnet, "owner", ssr.NodeID(o))
		}
	}
	if err != nil && ctx.Err() == nil {
		n.log.Debug("claiming node name or LAN subnet failed, retrying", "err", err, "retry_in", *retry)
		d := *retry
		*retry = min(2**retry, time.Minute)
		return d
	}
	*retry = time.Second
	return claimRenew
}

// publishHosts publishes the host names of DHCP clients as
// host.node.mesh.
func (n *Node) publishHosts(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case l := <-n.svc.hosts:
			if l.Hostname == "" {
				continue
			}
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if err := n.svc.claims.PublishHost(cctx, l.Hostname, n.opts.Name, l.IP); err != nil {
				n.log.Debug("publishing host name", "host", l.Hostname, "err", err)
			}
			cancel()
		}
	}
}

// Services' state for status and tests.

// LANAddress is the node's address on its phone LAN (zero before it is up
// or without one).
func (n *Node) LANAddress() netip.Prefix {
	n.svc.mu.Lock()
	defer n.svc.mu.Unlock()
	return n.svc.lanAddr
}

// SIP returns the node's SIP service (nil before the LAN is up).
func (n *Node) SIP() *proxy.SIPService {
	n.svc.mu.Lock()
	defer n.svc.mu.Unlock()
	return n.svc.sip
}

// DHT returns the node's DHT driver.
func (n *Node) DHT() *dht.Driver { return n.svc.dht }

// Locations returns the node's view of the location service.
func (n *Node) Locations() registrar.LocationStore { return n.svc.locs }

// Status is the node's state for the control socket.
func (n *Node) Status() NodeStatus {
	st := NodeStatus{Name: n.opts.Name, RouterStatus: n.router.Status()}
	m := n.svc.dht.Metrics()
	st.DHT = &m
	if sip := n.SIP(); sip != nil {
		ss := sip.Stats()
		st.SIP = &ss
		st.LAN = n.LANAddress().String()
	}
	if n.svc.role != nil {
		st.Gateway = n.svc.role.status()
	}
	st.Gateways = n.svc.gws.list()
	st.IPNetwork = n.ipStatus()
	return st
}

// roomOwner returns the node that runs a party-line room: the node that
// answers a DHT lookup of the room's key, which the ring routes to the
// key's owner (the same node whoever asks, once the ring is consistent);
// zero when the lookup fails.
func (n *Node) roomOwner(ctx context.Context, room string) ssr.NodeID {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	res, err := n.svc.dht.GetResult(ctx, proxy.RoomKeyName(room))
	if err != nil {
		n.log.Info("party line: room owner lookup failed", "room", room, "err", err)
		return 0
	}
	return res.Owner
}

// meshRelaySide is the mesh side of an RTP relay: ports on mesh sockets
// (the LAN relay's and the uplink relay's alike).
func (n *Node) meshRelaySide(meshAddr netip.Addr) sipalg.SideConfig {
	return sipalg.SideConfig{Name: "mesh", Addr: meshAddr, Listen: func(_ context.Context, p uint16) (net.PacketConn, error) {
		return n.router.ListenPacket(p)
	}, PortMin: n.opts.RelayPortMin, PortMax: n.opts.RelayPortMax}
}
