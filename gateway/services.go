package gateway

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/sipmesh/sipmesh/dns64"
	"github.com/sipmesh/sipmesh/provisioning"
	"github.com/sipmesh/sipmesh/proxy"
	"github.com/sipmesh/sipmesh/registrar"
	"github.com/sipmesh/sipmesh/sipalg"
	"github.com/sipmesh/sipmesh/ssr"
	"github.com/sipmesh/sipmesh/ssr/dht"
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

// hostPublishQueue bounds DHCP host names waiting to be published.
const hostPublishQueue = 64

// services are the parts a node runs besides the router.
type services struct {
	dht      *dht.Driver
	claims   *Claims
	locs     *registrar.DHTLocation
	accounts *registrar.DHTAccounts

	// Set by startLAN once the phone LAN is up; read by status.
	mu      sync.Mutex
	lanAddr netip.Prefix
	sip     *proxy.SIPService

	reg   *registrar.Registrar
	relay *sipalg.Relay
	dns   *dns64.Server
	dhcp  *provisioning.DHCPServer
	hosts chan provisioning.Lease
}

// newServices prepares the DHT and the stores on it; nothing runs yet.
func (n *Node) newServices(key ed25519.PrivateKey, adminPub ed25519.PublicKey) error {
	p := n.opts.dhtParams
	if adminPub != nil {
		// Every holder refuses subscriber records not written by the
		// administrator, so a node cannot plant accounts.
		p.Validate = registrar.AccountValidator(adminPub)
	}
	d, err := dht.NewDriver(dht.DriverConfig{Router: n.router, Key: key, Params: p, Logger: n.base})
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
		locs:     &registrar.DHTLocation{DHT: d},
		accounts: &registrar.DHTAccounts{DHT: d, Admin: adminPub, Key: n.admin},
		hosts:    make(chan provisioning.Lease, hostPublishQueue),
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

// runServices runs the DHT and, once it can, everything on top of it, until
// ctx ends; it returns after every part has stopped.
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
	var err error
	if n.opts.LANInterface != "" {
		err = n.startLAN(ctx, run)
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
	return err
}

// startLAN brings up the phone LAN's services: its address (derived and
// claimed if not configured), SIP, relay, DNS and DHCP.
func (n *Node) startLAN(ctx context.Context, run func(string, func(context.Context) error)) error {
	s := n.svc
	lan := n.opts.LANAddress
	if !lan.IsValid() {
		var err error
		if lan, err = n.claimLAN(ctx); err != nil {
			return err
		}
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
		B: sipalg.SideConfig{Name: "mesh", Addr: meshAddr, Listen: func(_ context.Context, p uint16) (net.PacketConn, error) {
			return n.router.ListenPacket(p)
		}, PortMin: n.opts.RelayPortMin, PortMax: n.opts.RelayPortMax},
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
		// The echo test's media, on the LAN address (phones/echo.go).
		EchoListen: func(ctx context.Context) (net.PacketConn, error) {
			return nw.ListenPacket(ctx, "udp4", netip.AddrPortFrom(lan.Addr(), 0).String())
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
		Prefix:    n.opts.NAT64Prefix,
		Port:      n.dnsPort,
		Logger:    log,
	})
	if err != nil {
		return err
	}
	run("dns", s.dns.Run)

	if n.opts.DHCP {
		s.dhcp, err = provisioning.NewDHCPServer(provisioning.DHCPConfig{
			Network:   nw,
			Interface: n.opts.LANInterface,
			Subnet:    lan.Masked(),
			ServerIP:  lan.Addr(),
			LeaseFile: filepath.Join(n.opts.StateDir, "leases-"+n.opts.LANInterface+".json"),
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
	}
	// Published last: a reader that sees sip set under the lock also
	// sees reg, relay, dns and dhcp (WriteMetrics).
	s.mu.Lock()
	s.lanAddr, s.sip = lan, sip
	s.mu.Unlock()
	n.log.Info("phone LAN up", "interface", n.opts.LANInterface, "address", lan, "sip", sipLAN, "dhcp", n.opts.DHCP)
	return nil
}

// maxContactsPerNode bounds the contacts of one AOR registered through one
// node: their binding list must fit one DHT value.
const maxContactsPerNode = 3

// claimLAN derives this node's LAN subnet from its ID, claims it in the
// DHT (moving on when another node holds it) and puts the node's address
// (the subnet's first host) on the LAN interface.
func (n *Node) claimLAN(ctx context.Context) (netip.Prefix, error) {
	// The ring must be up for a claim to mean anything.
	if err := n.waitRing(ctx); err != nil {
		return netip.Prefix{}, err
	}
	c, err := provisioning.ClaimSubnet(ctx, n.svc.claims, n.opts.LANSupernet, provisioning.DefaultLANBits, uint64(n.router.ID()), 0)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("LAN subnet: %w", err)
	}
	for _, col := range c.Collisions {
		n.log.Warn("LAN subnet taken by another node, using the next one", "subnet", col.Subnet, "owner", ssr.NodeID(col.Owner))
	}
	addr := netip.PrefixFrom(provisioning.NodeLANAddress(c.Subnet), c.Subnet.Bits())
	if n.addLANAddress != nil {
		if err := n.addLANAddress(n.opts.LANInterface, addr); err != nil {
			return netip.Prefix{}, err
		}
	}
	n.log.Info("LAN subnet claimed", "subnet", c.Subnet, "address", addr)
	return addr, nil
}

// addAddressIP puts addr on ifname with iproute2 (or busybox ip), as a
// router's init scripts would.
func addAddressIP(ifname string, addr netip.Prefix) error {
	out, err := exec.Command("ip", "-4", "addr", "replace", addr.String(), "dev", ifname).CombinedOutput()
	if err != nil {
		return fmt.Errorf("adding %s to %s: %v: %s", addr, ifname, err, out)
	}
	return nil
}

// waitRing returns once the router has a ring successor.
func (n *Node) waitRing(ctx context.Context) error {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		if len(n.router.Status().Successors) > 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// renewClaims claims the node's name (name.mesh → its mesh address) and
// renews it while the node runs.
func (n *Node) renewClaims(ctx context.Context) error {
	if err := n.waitRing(ctx); err != nil {
		return nil
	}
	retry := time.Second
	for {
		next := claimRenew
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		owner, err := n.svc.claims.ClaimName(cctx, n.opts.Name, n.router.Addr())
		cancel()
		switch {
		case errors.Is(err, ErrNameTaken):
			n.log.Warn("node name taken by another node; "+n.opts.Name+".mesh does not resolve to this node", "owner", owner)
		case err != nil:
			n.log.Debug("claiming node name failed, retrying", "err", err)
			next, retry = retry, min(2*retry, time.Minute)
		default:
			retry = time.Second
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(next):
		}
	}
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
	return st
}
