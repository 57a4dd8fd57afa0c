package provisioning

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
	"github.com/insomniacslk/dhcp/rfc1035label"

	"github.com/sipmesh/sipmesh/netx"
)

// DHCP ports (RFC 2131 §4.1).
const (
	ServerPort = 67
	ClientPort = 68
)

// Defaults of DHCPConfig.
const (
	DefaultLeaseTime   = 12 * time.Hour
	DefaultOfferHold   = 60 * time.Second
	DefaultDeclineHold = 10 * time.Minute
	DefaultDomain      = "mesh"
	DefaultSIPServer   = "sipserver.mesh"
)

// DHCPConfig configures the DHCP server of one phone LAN. Zero fields take
// the defaults named on them; NewDHCPServer reports a bad field by name.
type DHCPConfig struct {
	// Network opens the server's socket (required).
	Network netx.Network
	// Interface is the phone LAN's interface name (required). On kernel
	// sockets the socket is bound to it (SO_BINDTODEVICE), so several LANs
	// can each have a server and broadcasts leave through the right one.
	Interface string
	// Subnet is the LAN's IPv4 prefix and ServerIP the node's address in
	// it (required): server identifier, and the default router, DNS server
	// and provisioning host.
	Subnet   netip.Prefix
	ServerIP netip.Addr
	// PoolStart and PoolEnd bound the dynamic pool (inclusive); default:
	// every host address of Subnet. ServerIP is never handed out.
	PoolStart, PoolEnd netip.Addr
	// Router (option 3) defaults to ServerIP; DNS (option 6) to [ServerIP].
	Router netip.Addr
	DNS    []netip.Addr
	// Domain (option 15, and 119 if asked) defaults to "mesh".
	Domain string
	// NTP servers (option 42); none by default.
	NTP []netip.Addr
	// LeaseTime (option 51) defaults to 12 h; T1 (58) to half of it and
	// T2 (59) to 7/8 (RFC 2131 §4.4.5).
	LeaseTime, T1, T2 time.Duration
	// OfferHold is how long an offered address stays reserved for the
	// client (default 60 s); DeclineHold how long a declined address is
	// quarantined (default 10 min).
	OfferHold, DeclineHold time.Duration
	// SIPServers are the names sent in option 120 with encoding 0 (RFC 3361
	// §3.1); default ["sipserver.mesh"]. SIPServerAddrs, if set, sends
	// encoding 1 (§3.2) with these IPv4 addresses instead; setting both is
	// an error (the RFC allows one encoding per message).
	SIPServers     []string
	SIPServerAddrs []netip.Addr
	// ProvisioningURL is sent as option 66 (TFTP server name, which
	// Yealink, Grandstream and Polycom all accept as a URL) and option 160
	// (the provisioning URL option Polycom UC, Grandstream and AudioCodes
	// read first); default "http://<ServerIP>/". "-" sends neither.
	ProvisioningURL string
	// TFTPServers are sent as option 150 (Cisco, Grandstream); none by
	// default since the node serves configuration over HTTP.
	TFTPServers []netip.Addr
	// Reservations tie MACs to fixed addresses and extensions.
	Reservations []Reservation
	// LeaseFile persists the leases, written atomically (temporary file,
	// fsync, rename, directory fsync): new bindings, releases and declines
	// before the reply, renewals within a second and when Run stops. ""
	// keeps them in memory only, which loses them on restart.
	LeaseFile string
	// OnLease is called, outside any lock, after every DHCPACK that grants
	// or renews a lease (the DNS publishes <hostname>.<node>.mesh from it).
	OnLease func(Lease)
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Logger; default discards.
	Logger *slog.Logger
}

// DHCPStats counts what the server saw and did.
type DHCPStats struct {
	Discover, Request, Decline, Release, Inform uint64
	Offer, Ack, Nak                             uint64
	// Malformed counts datagrams that are not DHCP client messages we
	// serve; Ignored counts valid ones we stay silent on (another server
	// chosen, INIT-REBOOT without a record, pool exhausted...).
	Malformed, Ignored uint64
	// PersistErrors counts lease file writes that failed; the DHCPACK of
	// a new binding is withheld then, since it would not survive a
	// restart.
	PersistErrors uint64
}

// DHCPServer is the DHCP server of one phone LAN.
type DHCPServer struct {
	cfg    DHCPConfig
	log    *slog.Logger
	now    func() time.Time
	params map[uint8][]byte // static option values, by code

	mu      sync.Mutex // guards the fields below
	store   *leaseStore
	stats   DHCPStats
	lastLog time.Time // rate limit of peer-caused warnings
	muted   int
	dirty   bool      // the store has renewals the lease file lacks
	flushed time.Time // last lease file write

	// persistMu serialises lease file writes and is taken before mu, so
	// snapshots reach the file in the order they were taken.
	persistMu sync.Mutex
}

// flushEvery bounds how long a renewal waits to reach the lease file.
const flushEvery = time.Second

// NewDHCPServer validates cfg, fills in defaults and loads the lease file.
func NewDHCPServer(cfg DHCPConfig) (*DHCPServer, error) {
	bad := func(field, format string, args ...any) (*DHCPServer, error) {
		return nil, fmt.Errorf("provisioning: DHCP config %s: %s", field, fmt.Sprintf(format, args...))
	}
	if cfg.Network == nil {
		return bad("Network", "required")
	}
	if cfg.Interface == "" {
		return bad("Interface", "required")
	}
	if !cfg.Subnet.IsValid() || !cfg.Subnet.Addr().Is4() || cfg.Subnet.Bits() > 30 {
		return bad("Subnet", "%v is not an IPv4 prefix of /30 or shorter", cfg.Subnet)
	}
	cfg.Subnet = cfg.Subnet.Masked()
	network, bcast := cfg.Subnet.Addr(), broadcastOf(cfg.Subnet)
	host := func(a netip.Addr) bool { return a.Is4() && cfg.Subnet.Contains(a) && a != network && a != bcast }
	if !host(cfg.ServerIP) {
		return bad("ServerIP", "%v is not a host address of %v", cfg.ServerIP, cfg.Subnet)
	}
	if !cfg.PoolStart.IsValid() {
		cfg.PoolStart = network.Next()
	}
	if !cfg.PoolEnd.IsValid() {
		cfg.PoolEnd = bcast.Prev()
	}
	if !host(cfg.PoolStart) || !host(cfg.PoolEnd) || cfg.PoolEnd.Less(cfg.PoolStart) {
		return bad("PoolStart/PoolEnd", "%v-%v is not a range of host addresses of %v", cfg.PoolStart, cfg.PoolEnd, cfg.Subnet)
	}
	if !cfg.Router.IsValid() {
		cfg.Router = cfg.ServerIP
	}
	if !cfg.Router.Is4() {
		return bad("Router", "%v is not IPv4", cfg.Router)
	}
	if len(cfg.DNS) == 0 {
		cfg.DNS = []netip.Addr{cfg.ServerIP}
	}
	for _, list := range []struct {
		field string
		addrs []netip.Addr
	}{{"DNS", cfg.DNS}, {"NTP", cfg.NTP}, {"TFTPServers", cfg.TFTPServers}} {
		for _, a := range list.addrs {
			if !a.Is4() {
				return bad(list.field, "%v is not IPv4", a)
			}
		}
	}
	if cfg.Domain == "" {
		cfg.Domain = DefaultDomain
	}
	if err := checkDomainName(cfg.Domain); err != nil {
		return bad("Domain", "%v", err)
	}
	if cfg.LeaseTime == 0 {
		cfg.LeaseTime = DefaultLeaseTime
	}
	if cfg.LeaseTime < 10*time.Second || cfg.LeaseTime > 0xffffffff*time.Second {
		return bad("LeaseTime", "%v is not between 10 s and 2^32-1 s", cfg.LeaseTime)
	}
	if cfg.T1 == 0 {
		cfg.T1 = cfg.LeaseTime / 2
	}
	if cfg.T2 == 0 {
		cfg.T2 = cfg.LeaseTime * 7 / 8
	}
	if cfg.T1 <= 0 || cfg.T1 >= cfg.T2 || cfg.T2 >= cfg.LeaseTime {
		return bad("T1/T2", "want 0 < T1 (%v) < T2 (%v) < LeaseTime (%v)", cfg.T1, cfg.T2, cfg.LeaseTime)
	}
	if cfg.OfferHold == 0 {
		cfg.OfferHold = DefaultOfferHold
	}
	if cfg.DeclineHold == 0 {
		cfg.DeclineHold = DefaultDeclineHold
	}
	if cfg.OfferHold < 0 || cfg.DeclineHold < 0 {
		return bad("OfferHold/DeclineHold", "negative")
	}
	if cfg.ProvisioningURL == "" {
		cfg.ProvisioningURL = "http://" + cfg.ServerIP.String() + "/"
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &DHCPServer{cfg: cfg, now: cfg.Now, log: cfg.Logger, params: make(map[uint8][]byte)}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.log = s.log.With("component", "dhcp", "interface", cfg.Interface)

	// Option values that do not depend on the client (RFC 2132 sections).
	mask := net.CIDRMask(cfg.Subnet.Bits(), 32)
	s.params[dhcpv4.OptionSubnetMask.Code()] = []byte(mask)                    // §3.3
	s.params[dhcpv4.OptionRouter.Code()] = ipv4Bytes([]netip.Addr{cfg.Router}) // §3.5
	s.params[dhcpv4.OptionDomainNameServer.Code()] = ipv4Bytes(cfg.DNS)        // §3.8
	s.params[dhcpv4.OptionDomainName.Code()] = []byte(cfg.Domain)              // §3.17
	b4 := bcast.As4()
	s.params[dhcpv4.OptionBroadcastAddress.Code()] = b4[:] // §5.3
	s.params[dhcpv4.OptionDNSDomainSearchList.Code()] = (&rfc1035label.Labels{Labels: []string{cfg.Domain}}).ToBytes()
	if len(cfg.NTP) > 0 {
		s.params[dhcpv4.OptionNTPServers.Code()] = ipv4Bytes(cfg.NTP) // §8.3
	}
	var sip []byte
	var err error
	switch {
	case len(cfg.SIPServerAddrs) > 0 && len(cfg.SIPServers) > 0:
		return bad("SIPServers/SIPServerAddrs", "set one: option 120 carries one encoding (RFC 3361 §3)")
	case len(cfg.SIPServerAddrs) > 0:
		sip, err = EncodeSIPServerAddrs(cfg.SIPServerAddrs...)
	default:
		if len(cfg.SIPServers) == 0 {
			cfg.SIPServers = []string{DefaultSIPServer}
		}
		sip, err = EncodeSIPServerNames(cfg.SIPServers...)
	}
	if err != nil {
		return bad("SIPServers", "%v", err)
	}
	s.params[optSIPServers] = sip
	if cfg.ProvisioningURL != "-" {
		if len(cfg.ProvisioningURL) > 255 {
			return bad("ProvisioningURL", "longer than 255 bytes")
		}
		s.params[dhcpv4.OptionTFTPServerName.Code()] = []byte(cfg.ProvisioningURL)
		s.params[optProvisioningURL] = []byte(cfg.ProvisioningURL)
	}
	if len(cfg.TFTPServers) > 0 {
		s.params[optTFTPServerAddrs] = ipv4Bytes(cfg.TFTPServers)
	}

	s.store = newLeaseStore(cfg.Subnet, cfg.ServerIP, cfg.PoolStart, cfg.PoolEnd,
		leaseTimes{lease: cfg.LeaseTime, offer: cfg.OfferHold, decline: cfg.DeclineHold})
	if err := s.store.setReservations(cfg.Reservations); err != nil {
		return bad("Reservations", "%v", err)
	}
	if cfg.LeaseFile != "" {
		recs, err := loadLeaseFile(cfg.LeaseFile)
		if err != nil {
			return nil, err
		}
		for _, err := range s.store.restore(recs) {
			s.log.Warn("lease file: record skipped", "file", cfg.LeaseFile, "err", err)
		}
	}
	return s, nil
}

// Config returns the configuration with defaults filled in.
func (s *DHCPServer) Config() DHCPConfig { return s.cfg }

// Stats returns the counters.
func (s *DHCPServer) Stats() DHCPStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Leases lists the unexpired leases in address order.
func (s *DHCPServer) Leases() []Lease {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.store.leases(s.now())
}

// LeaseByMAC returns the unexpired lease of a MAC address.
func (s *DHCPServer) LeaseByMAC(mac net.HardwareAddr) (Lease, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for _, e := range s.store.byKey {
		if e.state == stateBound && now.Before(e.expiry) && string(e.mac) == string(mac) {
			return s.store.leaseOf(e), true
		}
	}
	return Lease{}, false
}

// SetReservations replaces the static reservations (the admin API edits
// them). A phone whose lease contradicts its new reservation is NAKed at
// its next renewal and then gets the reserved address.
func (s *DHCPServer) SetReservations(rs []Reservation) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.store.setReservations(rs)
}

// Run serves DHCP on the LAN until ctx is done; it returns nil then, or
// the error that stopped it. It starts no goroutines besides the one that
// closes the socket when ctx ends, and waits for it.
func (s *DHCPServer) Run(ctx context.Context) error {
	pc, bcast, err := listenDHCP(ctx, s.cfg.Network, s.cfg.Interface, s.cfg.Subnet)
	if err != nil {
		return fmt.Errorf("provisioning: DHCP on %s: %w", s.cfg.Interface, err)
	}
	stop := context.AfterFunc(ctx, func() { pc.Close() })
	defer func() {
		if stop() {
			pc.Close()
		}
		if err := s.Flush(); err != nil {
			s.log.Error("lease file not written at stop", "err", err)
		}
	}()
	s.log.Info("DHCP server running", "subnet", s.cfg.Subnet, "server", s.cfg.ServerIP, "broadcast", bcast)
	// RFC 2131 §2: a client must accept 576-byte messages; larger ones
	// (option 57) still fit one Ethernet frame.
	buf := make([]byte, 1500)
	for {
		if s.flushDue() {
			if err := s.Flush(); err != nil {
				s.log.Error("lease file not written", "err", err)
			}
		}
		// Wake at least every flushEvery to write pending renewals.
		pc.SetReadDeadline(time.Now().Add(flushEvery))
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("provisioning: DHCP read on %s: %w", s.cfg.Interface, err)
		}
		var from netip.AddrPort
		if ua, ok := addr.(*net.UDPAddr); ok {
			from = ua.AddrPort()
		}
		r, ok := s.Handle(buf[:n], from)
		if !ok {
			continue
		}
		to := r.To
		if to.Addr() == limitedBroadcast {
			to = netip.AddrPortFrom(bcast, to.Port())
		}
		if _, err := pc.WriteTo(r.Packet, net.UDPAddrFromAddrPort(to)); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.warn("DHCP send failed", "to", to, "err", err)
			continue
		}
		s.log.Debug("DHCP reply sent", "type", r.Type, "to", to, "from", from)
		if r.Granted != nil && s.cfg.OnLease != nil {
			s.cfg.OnLease(*r.Granted)
		}
	}
}

// limitedBroadcast is 255.255.255.255 (RFC 919).
var limitedBroadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// Reply is the server's answer to one client message.
type Reply struct {
	Packet []byte
	// To is where RFC 2131 §4.1 says to send it; 255.255.255.255 means
	// the LAN's broadcast.
	To netip.AddrPort
	// Type is the DHCP message type of Packet.
	Type dhcpv4.MessageType
	// Granted is the lease a DHCPACK grants or renews, for the OnLease hook.
	Granted *Lease
}

// warn logs a peer-caused problem, at most one line per second (docs/DESIGN.md:
// bad input gets a rate-limited log line).
func (s *DHCPServer) warn(msg string, args ...any) {
	s.mu.Lock()
	now := s.now()
	if now.Sub(s.lastLog) < time.Second {
		s.muted++
		s.mu.Unlock()
		return
	}
	muted := s.muted
	s.lastLog, s.muted = now, 0
	s.mu.Unlock()
	if muted > 0 {
		args = append(args, "suppressed", muted)
	}
	s.log.Warn(msg, args...)
}

// minMessage is the BOOTP header plus the magic cookie (RFC 2131 §2).
const minMessage = 240

// Handle processes one datagram that arrived on the server port from
// `from` and returns the reply, if any. It is the server's protocol core:
// it does no network I/O and is safe for concurrent use. It writes the
// lease file when a binding is created, released or declined, before the
// reply that announces it (so a restart never forgets an address a client
// holds); a renewal is left for Flush.
func (s *DHCPServer) Handle(pkt []byte, from netip.AddrPort) (Reply, bool) {
	fail := func(why string, args ...any) (Reply, bool) {
		s.mu.Lock()
		s.stats.Malformed++
		s.mu.Unlock()
		s.warn("DHCP: dropped "+why, append([]any{"from", from}, args...)...)
		return Reply{}, false
	}
	if len(pkt) < minMessage {
		return fail("short datagram", "len", len(pkt))
	}
	m, err := dhcpv4.FromBytes(pkt)
	if err != nil {
		return fail("undecodable message", "err", err)
	}
	if m.OpCode != dhcpv4.OpcodeBootRequest {
		return fail("non-request", "op", m.OpCode)
	}
	if m.HWType != iana.HWTypeEthernet || len(m.ClientHWAddr) != 6 {
		return fail("non-Ethernet client", "htype", m.HWType, "hlen", len(m.ClientHWAddr))
	}
	giaddr := ip4(m.GatewayIPAddr)
	if giaddr.IsValid() && !giaddr.IsUnspecified() && !s.cfg.Subnet.Contains(giaddr) {
		// Relayed from another subnet: not a LAN this server serves.
		return fail("relayed message for another subnet", "giaddr", giaddr)
	}
	mt := m.MessageType()
	key := keyFromMAC(m.ClientHWAddr)
	if id := m.Options.Get(dhcpv4.OptionClientIdentifier); len(id) > 0 {
		key = keyFromID(id)
	}
	sid := ip4(m.ServerIdentifier())
	ours := !sid.IsValid() || sid == s.cfg.ServerIP

	s.mu.Lock()
	now := s.now()
	st := s.store
	var r Reply
	var ok, persist bool
	durable := true // write the lease file now; false for a pure renewal
	switch mt {
	case dhcpv4.MessageTypeDiscover:
		s.stats.Discover++
		e, err := st.offer(key, m.ClientHWAddr, ip4(m.RequestedIPAddress()), now)
		if err != nil {
			s.stats.Ignored++
			s.mu.Unlock()
			s.warn("DHCPDISCOVER not answered", "mac", net.HardwareAddr(m.ClientHWAddr), "err", err)
			return Reply{}, false
		}
		s.note(e, m)
		r, ok = s.replyLocked(m, dhcpv4.MessageTypeOffer, e, ""), true
	case dhcpv4.MessageTypeRequest:
		s.stats.Request++
		r, ok, persist, durable = s.requestLocked(m, key, sid, now)
	case dhcpv4.MessageTypeDecline:
		s.stats.Decline++
		// RFC 2131 §4.3.3: the address is in option 50.
		if ours && sid.IsValid() {
			persist = st.decline(key, ip4(m.RequestedIPAddress()), now)
		}
		if !persist {
			s.stats.Ignored++
		}
	case dhcpv4.MessageTypeRelease:
		s.stats.Release++
		// RFC 2131 §4.3.4: the address is ciaddr.
		if ours {
			persist = st.release(key, ip4(m.ClientIPAddr), now)
		}
		if !persist {
			s.stats.Ignored++
		}
	case dhcpv4.MessageTypeInform:
		s.stats.Inform++
		// RFC 2131 §4.3.5: configuration only, no lease, to ciaddr.
		ci := ip4(m.ClientIPAddr)
		if ci.IsValid() && s.cfg.Subnet.Contains(ci) {
			r, ok = s.replyLocked(m, dhcpv4.MessageTypeAck, nil, ""), true
		} else {
			s.stats.Ignored++
		}
	default:
		s.stats.Malformed++
		s.mu.Unlock()
		return Reply{}, false
	}
	if persist && s.cfg.LeaseFile != "" {
		s.dirty = true
	}
	s.mu.Unlock()

	// A new binding, a release or a decline reaches the disk (fsynced)
	// before the reply; a renewal only marks the store dirty, and Run
	// writes it within flushEvery and when it stops.
	if persist && durable && s.cfg.LeaseFile != "" {
		if err := s.flush(); err != nil {
			s.log.Error("lease file not written; reply withheld", "err", err)
			return Reply{}, false
		}
	}
	if ok {
		s.mu.Lock()
		switch r.Type {
		case dhcpv4.MessageTypeOffer:
			s.stats.Offer++
		case dhcpv4.MessageTypeAck:
			s.stats.Ack++
		case dhcpv4.MessageTypeNak:
			s.stats.Nak++
		}
		s.mu.Unlock()
	}
	return r, ok
}

// Flush writes pending renewals to the lease file (fsynced). Run calls it
// within a second of a renewal and when it stops; a caller driving Handle
// itself calls it.
func (s *DHCPServer) Flush() error {
	if s.cfg.LeaseFile == "" {
		return nil
	}
	return s.flush()
}

// flush writes the store if it is dirty.
func (s *DHCPServer) flush() error {
	s.persistMu.Lock()
	defer s.persistMu.Unlock()
	s.mu.Lock()
	if !s.dirty {
		s.mu.Unlock()
		return nil
	}
	snap := s.store.snapshot()
	s.dirty = false
	s.mu.Unlock()
	err := writeLeaseFile(s.cfg.LeaseFile, s.cfg.Subnet.String(), snap)
	s.mu.Lock()
	if err != nil {
		s.dirty = true
		s.stats.PersistErrors++
	} else {
		s.flushed = time.Now()
	}
	s.mu.Unlock()
	return err
}

// flushDue reports whether pending renewals have waited flushEvery.
func (s *DHCPServer) flushDue() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dirty && time.Since(s.flushed) >= flushEvery
}

// note records the client's host name and FQDN on its entry.
func (s *DHCPServer) note(e *entry, m *dhcpv4.DHCPv4) {
	if h := hostLabel(m.HostName()); h != "" {
		e.hostname = h
	}
	if f := decodeFQDN(m.Options.Get(optionCode(optClientFQDN))); f != "" {
		e.fqdn = f
	}
}

// requestLocked answers a DHCPREQUEST according to the client state it
// comes from (RFC 2131 §4.3.2). persist reports a changed binding;
// durable is false when the change is only a later expiry of the client's
// existing binding (a renewal).
func (s *DHCPServer) requestLocked(m *dhcpv4.DHCPv4, key clientKey, sid netip.Addr, now time.Time) (r Reply, ok, persist, durable bool) {
	st := s.store
	ci := ip4(m.ClientIPAddr)
	hasCI := ci.IsValid() && !ci.IsUnspecified()
	req := ip4(m.RequestedIPAddress())
	var kind requestKind
	var ip netip.Addr
	switch {
	case sid.IsValid() && sid != s.cfg.ServerIP:
		// SELECTING, and the client chose another server's offer.
		st.cancelOffer(key, now)
		s.stats.Ignored++
		return Reply{}, false, false, false
	case sid.IsValid():
		// SELECTING: ciaddr MUST be zero, requested IP MUST be filled in.
		if !req.IsValid() || hasCI {
			s.stats.Malformed++
			return Reply{}, false, false, false
		}
		kind, ip = reqSelecting, req
	case req.IsValid():
		// INIT-REBOOT: verify a remembered address. A wrong subnet (the
		// phone moved LANs) gets a NAK so it starts over.
		kind, ip = reqInitReboot, req
	case hasCI:
		// RENEWING (unicast) or REBINDING (broadcast): same answer.
		kind, ip = reqRenewing, ci
	default:
		s.stats.Malformed++
		return Reply{}, false, false, false
	}
	if !s.cfg.Subnet.Contains(ip) {
		return s.replyLocked(m, dhcpv4.MessageTypeNak, nil, fmt.Sprintf("%v is not on subnet %v", ip, s.cfg.Subnet)), true, false, false
	}
	prev := st.byIP[ip]
	renewal := prev != nil && prev.key == key && prev.state == stateBound
	e, err := st.request(kind, key, m.ClientHWAddr, ip, now)
	switch {
	case errors.Is(err, ErrNoRecord):
		s.stats.Ignored++
		return Reply{}, false, false, false
	case err != nil:
		return s.replyLocked(m, dhcpv4.MessageTypeNak, nil, fmt.Sprintf("%v is not available to this client", ip)), true, false, false
	}
	s.note(e, m)
	r = s.replyLocked(m, dhcpv4.MessageTypeAck, e, "")
	l := st.leaseOf(e)
	r.Granted = &l
	// Only a new binding must be on disk before the ACK: if a crash loses
	// a renewal, the restarted server still has the client's binding
	// (with its earlier end), gives that address to nobody else while
	// fresh ones remain, and grants the client's next renewal.
	return r, true, true, !renewal
}

// replyLocked builds an OFFER, ACK or NAK for m. e is the binding (nil for
// a NAK and for the ACK of an INFORM).
func (s *DHCPServer) replyLocked(m *dhcpv4.DHCPv4, mt dhcpv4.MessageType, e *entry, nakMsg string) Reply {
	zero := net.IPv4zero.To4()
	out := &dhcpv4.DHCPv4{
		OpCode:        dhcpv4.OpcodeBootReply,
		HWType:        m.HWType,
		TransactionID: m.TransactionID,
		Flags:         m.Flags,
		ClientIPAddr:  zero,
		YourIPAddr:    zero,
		ServerIPAddr:  zero,
		GatewayIPAddr: m.GatewayIPAddr,
		ClientHWAddr:  m.ClientHWAddr,
		Options:       make(dhcpv4.Options),
	}
	out.UpdateOption(dhcpv4.OptMessageType(mt))
	out.UpdateOption(dhcpv4.OptServerIdentifier(s.cfg.ServerIP.AsSlice()))
	// RFC 6842: echo the client identifier; RFC 3046 §2.2: echo the relay
	// agent information.
	for _, c := range []dhcpv4.OptionCode{dhcpv4.OptionClientIdentifier, dhcpv4.OptionRelayAgentInformation} {
		if v := m.Options.Get(c); v != nil {
			out.Options[c.Code()] = v
		}
	}
	if mt == dhcpv4.MessageTypeNak {
		// RFC 2131 Table 3: a NAK carries no address or parameters.
		out.UpdateOption(dhcpv4.OptMessage(nakMsg))
		if gi := ip4(m.GatewayIPAddr); gi.IsValid() && !gi.IsUnspecified() {
			out.SetBroadcast() // §4.3.2: the relay broadcasts it on
		}
		return Reply{Packet: out.ToBytes(), To: s.destination(m, mt), Type: mt}
	}
	if mt == dhcpv4.MessageTypeAck && e == nil {
		out.ClientIPAddr = m.ClientIPAddr // INFORM: §4.3.5
	} else {
		out.YourIPAddr = e.ip.AsSlice()
		out.ServerIPAddr = s.cfg.ServerIP.AsSlice()
		// The lease trio (RFC 2131 Table 3: 51 MUST, 58/59 MAY): sent with
		// every address so the client's timers follow our configuration.
		left := s.cfg.LeaseTime
		if e.state == stateBound {
			left = e.expiry.Sub(s.now()).Round(time.Second)
		}
		t1, t2 := s.cfg.T1, s.cfg.T2
		if left < s.cfg.LeaseTime { // a rebooted client keeps its lease end
			t1, t2 = left/2, left*7/8
		}
		out.UpdateOption(dhcpv4.OptIPAddressLeaseTime(left))
		out.UpdateOption(dhcpv4.OptRenewTimeValue(t1))
		out.UpdateOption(dhcpv4.OptRebindingTimeValue(t2))
	}
	s.addParams(out, m, e)
	return Reply{Packet: out.ToBytes(), To: s.destination(m, mt), Type: mt}
}

// defaultParams are sent to a client that sends no parameter request list
// (RFC 2131 §4.3.1 lets the server choose; these make a host usable).
var defaultParams = []uint8{1, 3, 6, 15}

// addParams adds the parameters the client asked for in option 55, in its
// order of preference, which the server has values for (RFC 2131 §4.3.1,
// RFC 2132 §9.8), and drops the least preferred ones if the reply would
// not fit the client's maximum message size (RFC 2132 §9.10).
func (s *DHCPServer) addParams(out, m *dhcpv4.DHCPv4, e *entry) {
	prl := m.Options.Get(dhcpv4.OptionParameterRequestList)
	if prl == nil {
		prl = defaultParams
	}
	var hostname []byte
	if e != nil {
		if r, ok := s.store.resMAC[string(e.mac)]; ok && r.Hostname != "" {
			hostname = []byte(r.Hostname)
		}
	}
	var added []uint8
	for _, c := range prl {
		if out.Options.Has(optionCode(c)) {
			continue // duplicate request, or a mandatory option already set
		}
		v, ok := s.params[c]
		if c == dhcpv4.OptionHostName.Code() {
			v, ok = hostname, hostname != nil
		}
		if ok {
			out.Options[c] = v
			added = append(added, c)
		}
	}
	limit := 576
	if v := m.Options.Get(dhcpv4.OptionMaximumDHCPMessageSize); len(v) == 2 {
		limit = max(limit, min(int(binary.BigEndian.Uint16(v)), 1500))
	}
	limit -= 28 // IPv4 and UDP headers
	for len(added) > 0 && len(out.ToBytes()) > limit {
		out.Options.Del(optionCode(added[len(added)-1]))
		added = added[:len(added)-1]
	}
}

// destination applies RFC 2131 §4.1 (paragraphs on giaddr, ciaddr and the
// BROADCAST bit). Unicast to yiaddr before the client has the address
// needs an ARP entry a portable socket cannot make; §4.1 allows the
// broadcast instead ("If unicasting is not possible, the message MAY be
// sent as an IP broadcast using ... 0xffffffff").
func (s *DHCPServer) destination(m *dhcpv4.DHCPv4, mt dhcpv4.MessageType) netip.AddrPort {
	if gi := ip4(m.GatewayIPAddr); gi.IsValid() && !gi.IsUnspecified() {
		return netip.AddrPortFrom(gi, ServerPort)
	}
	if mt == dhcpv4.MessageTypeNak {
		return netip.AddrPortFrom(limitedBroadcast, ClientPort)
	}
	if ci := ip4(m.ClientIPAddr); ci.IsValid() && !ci.IsUnspecified() {
		return netip.AddrPortFrom(ci, ClientPort)
	}
	return netip.AddrPortFrom(limitedBroadcast, ClientPort)
}

// ip4 converts a net.IP from the codec; invalid if absent or not IPv4.
func ip4(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}
	}
	a = a.Unmap()
	if !a.Is4() {
		return netip.Addr{}
	}
	return a
}

// optionCode turns a raw option number into the codec's OptionCode.
func optionCode(c uint8) dhcpv4.OptionCode { return dhcpv4.GenericOptionCode(c) }
