package proxy

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/sipmesh/sipmesh/internal/ratelog"
	"github.com/sipmesh/sipmesh/phones"
	"github.com/sipmesh/sipmesh/registrar"
	"github.com/sipmesh/sipmesh/sipalg"
	"github.com/sipmesh/sipmesh/sipnet"
	"github.com/sipmesh/sipmesh/ssr"
)

// The SIP service of a node: it owns the node's SIP sockets (UDP and
// optionally TCP on the phone LAN, UDP on the mesh), runs them on sipgo's
// transport and transaction layers, answers REGISTER through the Registrar
// and proxies everything else (proxy.go, RFC 3261 §16) with the SIP ALG of
// callleg.go where a call crosses between the IPv4 LAN and the IPv6 mesh.
//
// Why sipgo's transaction layer here and not the registrar's own loops:
// a proxy needs client and server INVITE transactions, CANCEL matching and
// retransmission handling, which sipgo has. Its costs are bounded around
// it: every datagram passes a guard (sipnet.Guard) that limits requests
// per source (a high ceiling; responses pass) and, while many server
// transactions are alive, sheds new requests other than ACK, CANCEL and
// BYE from sources over their fair share; it also answers what sipgo
// cannot parse with a 400, which sipgo would drop silently (libraries.md
// §1 pitfall 10). A non-INVITE transaction over UDP ends when its final
// response is sent (answeringTx): the guard keeps a record of about
// 0.6 KB that answers the retransmissions Timer J is for (RFC 3261
// §17.2.2) instead of sipgo's whole transaction, so the table counts the
// work in progress, not the last 32 s of it.
// SIP timers stay at RFC 3261's defaults: T1 = 500 ms is the RTT estimate
// retransmissions over lossy multi-hop radio links depend on.

// SIP service defaults.
const (
	DefaultTimerC          = 3 * time.Minute // RFC 3261 §16.6 step 11: > 3 min
	DefaultMaxTransactions = 4096
	DefaultMaxCalls        = 1024
	DefaultSIPRate         = sipnet.DefaultSourceRate // requests per second per source (responses are not limited)
	DefaultSIPBurst        = sipnet.DefaultSourceBurst
	maxForks               = 16
)

// SIPServiceConfig configures a node's SIP service. The node provides the
// sockets and the components; zero values take defaults.
type SIPServiceConfig struct {
	Node ssr.NodeID // this node: compared with Binding.Node

	// LANAddr and MeshAddr are the addresses of the two sockets as peers
	// reach them (the LAN IPv4 address and the node's mesh IPv6 address,
	// each with the SIP port, normally 5060). They go into Via and
	// Record-Route and decide which socket a destination is sent from.
	LANAddr, MeshAddr netip.AddrPort
	// LANUDP and MeshUDP are the sockets bound to those addresses (in
	// production: netx.Network.ListenPacket on the LAN, the SSR router's
	// mesh PacketConn on the mesh). The service closes them when Run ends.
	LANUDP, MeshUDP net.PacketConn
	// LANTCP optionally serves SIP over TCP on the LAN address, within
	// TCPLimits (sipnet.LimitListener: connections in total and per
	// source, idle ones closed, accept errors retried).
	LANTCP    net.Listener
	TCPLimits sipnet.ListenerLimits

	Registrar *registrar.Registrar    // answers REGISTER (required)
	Locations registrar.LocationStore // the bindings (required)
	Accounts  registrar.Accounts      // which extensions exist (required)
	// Relay anchors media of calls that cross between the LAN (its side A)
	// and the mesh (its side B). Nil passes SDP untouched.
	Relay *sipalg.Relay
	// NodeSIPAddr gives another node's SIP address on the mesh
	// (production: netip.AddrPortFrom(id.Addr(), 5060)). Required.
	NodeSIPAddr func(ssr.NodeID) netip.AddrPort

	// Domains are accepted as the mesh domain besides "mesh",
	// "sipserver.mesh" and the node's own addresses.
	Domains []string
	// LANPrefix, if set, limits the phone flows a request from another
	// node may direct this node to (the flow token of proxy.go) to this
	// prefix.
	LANPrefix netip.Prefix

	// Outbound, on a node with phones, is where a LAN phone's request
	// outside a dialog for a domain other than the mesh's goes: the mesh
	// SIP address of the Internet gateway chosen for it (gateway's
	// gwchoice.go). Nil, or an error: 404 as before, or 503 without a
	// live gateway. The phone is authenticated first (407) as for every
	// request; the mesh realm's credentials end here.
	Outbound func(ctx context.Context, r *sip.Request) (netip.AddrPort, error)
	// TrunkOutbound, on a node with phones, recognises a number dialled
	// with a gateway's dial prefix (sip:0<digits>@mesh) and returns the
	// mesh SIP address of the gateway whose trunk takes it; ok false: not
	// such a number. The phone is authenticated first, as for any call.
	TrunkOutbound func(ctx context.Context, user string) (gw netip.AddrPort, ok bool, err error)
	// GatewayFailed reports a gateway that did not answer a call in
	// time: the choice skips it until it proves alive again (gateway's
	// gwchoice.go), and the call goes to the next one.
	GatewayFailed func(gw netip.AddrPort)
	// Uplink makes this service a gateway's Internet side (uplink.go):
	// its "LAN" socket is on the uplink, its mesh socket on the gateway
	// port. Nil: an ordinary node service.
	Uplink *UplinkConfig
	// LANPublic, if set, returns the address the other side of a NAT
	// router reaches the LAN socket's address at (a gateway behind NAT:
	// its configured public-address, else the STUN-learned mapping, RFC
	// 8489 §5); invalid: not known (yet), LANAddr is used. It goes,
	// with LANAddr's port, into what the service sends out of the LAN
	// socket where a peer must reach it back: Via (RFC 3261 §18.2.2:
	// responses), Record-Route (§16.6 step 4: in-dialog requests) and
	// the SDP's c= line (RFC 4566 §5.7: media). The port is the local
	// one: a NAT router that keeps source ports (Linux's MASQUERADE
	// does while the port is free) maps it unchanged, and Via's rport
	// (RFC 3581) lets responses follow the mapping anyway.
	LANPublic func() netip.Addr
	// LAN6Addr, LAN6UDP and LAN6TCP are a gateway's Internet side on
	// its uplink's global IPv6 address (uplink.go): a located server with
	// only IPv6 addresses (AAAA, RFC 3263 §4.2) is reached from there,
	// and callers on the IPv6 Internet reach the gateway there. Media of
	// those calls goes through Relay6, whose side A is on that address
	// (SDP c=IN IP6, RFC 4566 §5.7). Zero: IPv4 only.
	LAN6Addr netip.AddrPort
	LAN6UDP  net.PacketConn
	LAN6TCP  net.Listener
	Relay6   *sipalg.Relay
	// LocalPeer is the node's other SIP service on its mesh address (on a
	// gateway with phones: the Internet side for the node's service, the
	// node's service for the Internet side), the one destination on the
	// node's own address that routes may lead to.
	LocalPeer netip.AddrPort

	// EchoListen, if set, opens a media socket on the LAN address for
	// the echo test (3246, phones.EchoService), which phones on the LAN reach;
	// nil: no echo test. MaxEchoSessions bounds its calls.
	EchoListen      func(context.Context) (net.PacketConn, error)
	MaxEchoSessions int
	// Rooms, if set, runs the party line (features.go); nil: none.
	Rooms *RoomsConfig
	// Forwards, if set, enables call forwarding and its feature codes
	// (forward.go); nil: none.
	Forwards registrar.ForwardStore
	// RingGroups maps a group extension to its members' extensions
	// (groups.go); the same on every node.
	RingGroups map[string][]string
	// HuntGroups maps a group extension to members rung one after the
	// other, each for the group's timeout (groups.go).
	HuntGroups map[string]HuntGroup
	// Aliases, if set, resolves a Request-URI user that is no extension
	// (alias.go); nil: 404 as before.
	Aliases registrar.AliasStore
	// Messages, if set, keeps MESSAGEs for offline extensions and
	// delivers them on register (messages.go); nil: 480 as for calls.
	Messages registrar.MessageStore

	TimerC          time.Duration // INVITE branch timeout after the last provisional (default 3 min)
	MaxTransactions int           // live server transactions before new requests are dropped
	MaxCalls        int           // calls with ALG state
	Rate            float64       // requests/s per source (responses pass); < 0 disables
	Burst           int
	RateSources     int

	ServerName string
	Logger     *slog.Logger
}

// SIPStats are counters of the SIP service.
type SIPStats struct {
	Requests     uint64 `json:"requests"` // requests received (after the rate limit)
	RateLimited  uint64 `json:"rate_limited"`
	Overloaded   uint64 `json:"overloaded"`   // requests dropped: too many live transactions
	Malformed    uint64 `json:"malformed"`    // answered 400 before sipgo
	Proxied      uint64 `json:"proxied"`      // requests forwarded (per branch)
	Transactions int64  `json:"transactions"` // live server transactions (work in progress)
	// Answered is the records kept for retransmissions of answered
	// requests (Timer J), Retransmissions the requests answered from one.
	Answered        int    `json:"answered"`
	Retransmissions uint64 `json:"retransmissions"`
	Calls           int    `json:"calls"` // calls with ALG state
	// TCP connections open now, refused over a limit, accept errors retried.
	TCPOpen         int    `json:"tcp_open"`
	TCPRefused      uint64 `json:"tcp_refused"`
	TCPAcceptErrors uint64 `json:"tcp_accept_errors"`
	// Refused are requests from the Internet a gateway answered 403
	// (uplink.go).
	Refused uint64 `json:"refused,omitempty"`
}

// sock is one of the service's sockets.
type sock struct {
	name  string
	addr  netip.AddrPort
	side  sipalg.Side
	laddr sip.Addr
	// public is SIPServiceConfig.LANPublic on the LAN socket (nil
	// elsewhere).
	public func() netip.Addr
}

// advertised is the address peers reach sk at: behind NAT the public
// address with sk's port, else sk's own.
func (sk *sock) advertised() netip.AddrPort {
	if sk.public != nil {
		if a := sk.public(); a.IsValid() {
			return netip.AddrPortFrom(a.Unmap(), sk.addr.Port())
		}
	}
	return sk.addr
}

// names reports whether host (canonical, no zone) and port (0: none)
// name sk: its own address or the one it is advertised at.
func (sk *sock) names(host string, port int) bool {
	if port != 0 && port != int(sk.addr.Port()) {
		return false
	}
	if host == sk.addr.Addr().WithZone("").String() {
		return true
	}
	adv := sk.advertised().Addr()
	return adv != sk.addr.Addr() && host == adv.String()
}

// SIPService is a node's SIP endpoint: registrar, proxy and ALG.
type SIPService struct {
	cfg     SIPServiceConfig
	log     *slog.Logger
	ua      *sipgo.UserAgent
	srv     *sipgo.Server
	client  *sipgo.Client
	guard   sipnet.Guard // screens every datagram sipgo reads; counts
	domains map[string]bool
	lan     *sock
	lan6    *sock // the Internet side's IPv6 socket; nil without one
	mesh    *sock
	echo    *phones.EchoService // nil without EchoListen
	conf    *phones.ConfService // nil without Rooms
	blf     *phones.BLFService

	malformed, proxied atomic.Uint64    // malformed: requests sipgo parsed that we answered 400
	uplinkRefused      atomic.Uint64    // requests from the Internet refused 403 (uplink.go)
	rrKey              [32]byte         // keys the Record-Route tags (routecheck.go)
	tcp                *sipnet.Listener // LANTCP within TCPLimits; nil without TCP
	dialer             *uplinkDialer    // TCP to Internet servers (uplinktcp.go); nil: none
	tcp6               *sipnet.Listener // LAN6TCP within TCPLimits; nil without
	// peerLog logs what peers caused (a request not forwarded, a TCP
	// connection refused, sipgo's parse errors through sipLog): rate
	// limited per source and in total, values truncated (ratelog).
	peerLog  *slog.Logger
	peerLogs []*ratelog.Handler // flushed by the janitor
	requests atomic.Uint64      // every request handed to handle

	mu       sync.Mutex
	closing  bool
	handlers sync.WaitGroup // request handlers and the goroutines they start
	calls    map[string]*callLeg
	mail     mailChecks // mailbox checks after REGISTER (messages.go)

	ctx    context.Context // ends when Run ends
	cancel context.CancelFunc
}

// NewSIPService checks cfg and prepares the service; Run serves.
func NewSIPService(cfg SIPServiceConfig) (*SIPService, error) {
	switch {
	case cfg.Registrar == nil || cfg.Locations == nil || cfg.Accounts == nil:
		return nil, errors.New("sip service: Registrar, Locations and Accounts are required")
	case cfg.NodeSIPAddr == nil:
		return nil, errors.New("sip service: NodeSIPAddr is required")
	case cfg.LANUDP == nil || cfg.MeshUDP == nil:
		return nil, errors.New("sip service: LANUDP and MeshUDP are required")
	case !cfg.LANAddr.IsValid() || !cfg.LANAddr.Addr().Is4():
		return nil, fmt.Errorf("sip service: LANAddr %v: want an IPv4 address and port", cfg.LANAddr)
	case !cfg.MeshAddr.IsValid() || !cfg.MeshAddr.Addr().Is6() || cfg.MeshAddr.Addr().Is4In6():
		return nil, fmt.Errorf("sip service: MeshAddr %v: want an IPv6 address and port", cfg.MeshAddr)
	case cfg.LAN6UDP != nil && (cfg.Uplink == nil || !cfg.LAN6Addr.Addr().Is6() || cfg.LAN6Addr.Addr().Is4In6() ||
		sameNet64(cfg.LAN6Addr.Addr(), cfg.MeshAddr.Addr()) || cfg.Relay6 == nil):
		return nil, fmt.Errorf("sip service: LAN6Addr %v: want a gateway's IPv6 uplink address outside the mesh, with Relay6", cfg.LAN6Addr)
	}
	if cfg.TimerC <= 0 {
		cfg.TimerC = DefaultTimerC
	}
	if cfg.MaxTransactions <= 0 {
		cfg.MaxTransactions = DefaultMaxTransactions
	}
	if cfg.MaxCalls <= 0 {
		cfg.MaxCalls = DefaultMaxCalls
	}
	if cfg.Rate == 0 {
		cfg.Rate = DefaultSIPRate
	}
	if cfg.Burst <= 0 {
		cfg.Burst = DefaultSIPBurst
	}
	if cfg.RateSources <= 0 {
		cfg.RateSources = registrar.DefaultRateSources
	}
	if cfg.ServerName == "" {
		cfg.ServerName = "sipmesh"
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &SIPService{
		cfg:     cfg,
		log:     log.With("component", "gateway.sip"),
		domains: map[string]bool{"mesh": true, "sipserver.mesh": true},
		calls:   make(map[string]*callLeg),
	}
	rand.Read(s.rrKey[:])
	for _, d := range cfg.Domains {
		s.domains[registrar.CanonHost(d)] = true
	}
	s.domains[cfg.LANAddr.Addr().String()] = true
	s.domains[cfg.MeshAddr.Addr().WithZone("").String()] = true
	s.guard.MaxLive, s.guard.ServerName = int64(cfg.MaxTransactions), cfg.ServerName
	if cfg.Rate > 0 {
		s.guard.Limiter = sipnet.NewRateLimiter(cfg.Rate, cfg.Burst, cfg.RateSources)
	}
	mk := func(name string, ap netip.AddrPort, side sipalg.Side) *sock {
		return &sock{name: name, addr: ap, side: side,
			laddr: sip.Addr{IP: net.IP(ap.Addr().WithZone("").AsSlice()), Port: int(ap.Port())}}
	}
	if cfg.LANTCP != nil {
		lim := cfg.TCPLimits
		if lim.OnDrop == nil {
			lim.OnDrop = s.tcpDropped
		}
		if lim.ServerName == "" {
			lim.ServerName = cfg.ServerName
		}
		s.tcp = sipnet.LimitListener(cfg.LANTCP, lim)
	}
	if cfg.Uplink != nil && cfg.Uplink.Dial != nil {
		lim := cfg.TCPLimits
		lim.OnDrop = func(src netip.AddrPort, err error) {
			s.peerLog.Info("sip tcp connection to the Internet over limit", "dst", src, "err", err)
		}
		if lim.ServerName == "" {
			lim.ServerName = cfg.ServerName
		}
		s.dialer = newUplinkDialer(cfg.Uplink.Dial, lim)
	}
	s.lan = mk("lan", cfg.LANAddr, sipalg.SideA)
	if cfg.LAN6UDP != nil {
		s.lan6 = mk("lan6", cfg.LAN6Addr, sipalg.SideA)
		s.domains[cfg.LAN6Addr.Addr().WithZone("").String()] = true
		if cfg.LAN6TCP != nil {
			lim := cfg.TCPLimits
			if lim.OnDrop == nil {
				lim.OnDrop = s.tcpDropped
			}
			if lim.ServerName == "" {
				lim.ServerName = cfg.ServerName
			}
			s.tcp6 = sipnet.LimitListener(cfg.LAN6TCP, lim)
		}
	}
	s.mesh = mk("mesh", cfg.MeshAddr, sipalg.SideB)
	s.lan.public = cfg.LANPublic

	// sipgo logs every unparsable message at error level with its
	// content (responses and TCP streams pass the guard unparsed): keep
	// its log quiet below warnings, and rate-limited and truncated like
	// every line a peer causes.
	peerH := ratelog.New(s.log.Handler(), ratelog.Options{})
	sipgoH := ratelog.New(sipnet.MinLevel(log.Handler(), slog.LevelWarn), ratelog.Options{})
	s.peerLog, s.peerLogs = slog.New(peerH), []*ratelog.Handler{peerH, sipgoH}
	sipLog := slog.New(sipgoH).With("component", "gateway.sipgo")
	// Destinations are always IP literals (proxy.go); a name reaching
	// sipgo's resolver is a bug, not a reason to query the OS.
	noDNS := sipnet.NoDNS("sip service")
	ua, err := sipgo.NewUA(sipgo.WithUserAgent(cfg.ServerName),
		sipgo.WithUserAgentHostname(cfg.LANAddr.Addr().String()),
		sipgo.WithUserAgentDNSResolver(noDNS),
		sipgo.WithUserAgentTransactionLayerOptions(sip.WithTransactionLayerLogger(sipLog),
			sip.WithTransactionLayerUnhandledResponseHandler(s.strayResponse)),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(sipLog)))
	if err != nil {
		return nil, err
	}
	s.ua = ua
	if s.srv, err = sipgo.NewServer(ua, sipgo.WithServerLogger(sipLog)); err != nil {
		return nil, err
	}
	if s.client, err = sipgo.NewClient(ua, sipgo.WithClientLogger(sipLog),
		sipgo.WithClientHostname(cfg.LANAddr.Addr().String()), sipgo.WithClientPort(int(cfg.LANAddr.Port()))); err != nil {
		return nil, err
	}
	if cfg.EchoListen != nil {
		if s.echo, err = phones.NewEchoService(phones.EchoConfig{Host: echoHost{s}, Listen: cfg.EchoListen,
			Max: cfg.MaxEchoSessions, Logger: s.log}); err != nil {
			return nil, err
		}
	}
	if err := s.initBLF(); err != nil {
		return nil, err
	}
	if err := s.initFeatures(); err != nil {
		return nil, err
	}
	s.srv.OnNoRoute(s.handle)
	return s, nil
}

// tcpDropped logs a TCP connection refused over a limit or an accept
// error retried (sipnet.Listener counts them all), rate-limited.
func (s *SIPService) tcpDropped(src netip.AddrPort, err error) {
	if err != nil {
		s.peerLog.Warn("sip tcp accept failed, retrying", "err", err, "errors_total", s.tcp.AcceptErrors.Load())
		return
	}
	s.peerLog.Info("sip tcp connection refused over limit", "src", src.Addr(), "refused_total", s.tcp.Refused.Load(), "open", s.tcp.Open())
}

// EchoSessions returns how many echo test calls are up.
func (s *SIPService) EchoSessions() int {
	if s.echo == nil {
		return 0
	}
	return s.echo.Sessions()
}

// Stats returns the service's counters.
func (s *SIPService) Stats() SIPStats {
	s.mu.Lock()
	calls := len(s.calls)
	s.mu.Unlock()
	g := &s.guard
	st := SIPStats{Requests: s.requests.Load(), RateLimited: g.RateLimited.Load(), Overloaded: g.Overloaded.Load(),
		Malformed: g.Malformed.Load() + s.malformed.Load(), Proxied: s.proxied.Load(), Transactions: g.Live.Load(), Calls: calls,
		Answered: g.Answers(), Retransmissions: g.Retransmissions.Load(), Refused: s.uplinkRefused.Load()}
	if s.tcp != nil {
		st.TCPOpen, st.TCPRefused, st.TCPAcceptErrors = s.tcp.Open(), s.tcp.Refused.Load(), s.tcp.AcceptErrors.Load()
	}
	if s.tcp6 != nil {
		st.TCPOpen += s.tcp6.Open()
		st.TCPRefused += s.tcp6.Refused.Load()
	}
	if s.dialer != nil {
		st.TCPOpen += s.dialer.ln.Open()
		st.TCPRefused += s.dialer.ln.Refused.Load()
	}
	return st
}

// Run serves the sockets until ctx ends, then closes them, terminates
// every transaction, ends the calls' relay sessions and returns after
// every goroutine it started (and sipgo's handlers) has ended.
func (s *SIPService) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.ctx != nil {
		s.mu.Unlock()
		return errors.New("sip service: Run called twice")
	}
	s.ctx, s.cancel = context.WithCancel(ctx)
	s.mu.Unlock()
	defer s.cancel()

	var wg sync.WaitGroup
	errs := make([]error, 6)
	lan := s.guard.Conn(s.cfg.LANUDP)
	mesh := s.guard.Conn(s.cfg.MeshUDP)
	wg.Go(func() { errs[0] = s.srv.ServeUDP(lan); s.cancel() })
	wg.Go(func() { errs[1] = s.srv.ServeUDP(mesh); s.cancel() })
	if s.cfg.LANTCP != nil {
		wg.Go(func() { errs[2] = s.srv.ServeTCP(s.tcp); s.cancel() })
	}
	if s.dialer != nil {
		wg.Go(func() { errs[3] = s.srv.ServeTCP(s.dialer.ln); s.cancel() })
	}
	if s.cfg.LAN6UDP != nil {
		lan6 := s.guard.Conn(s.cfg.LAN6UDP)
		wg.Go(func() { errs[4] = s.srv.ServeUDP(lan6); s.cancel() })
	}
	if s.tcp6 != nil {
		wg.Go(func() { errs[5] = s.srv.ServeTCP(s.tcp6); s.cancel() })
	}
	wg.Go(func() { s.janitor(s.ctx) })
	s.log.Info("sip service started", "lan", s.cfg.LANAddr, "mesh", s.cfg.MeshAddr, "tcp", s.cfg.LANTCP != nil)

	<-s.ctx.Done()
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	s.cfg.LANUDP.Close()
	s.cfg.MeshUDP.Close()
	if s.tcp != nil {
		s.tcp.Close()
	}
	if s.dialer != nil {
		s.dialer.ln.Close()
	}
	if s.cfg.LAN6UDP != nil {
		s.cfg.LAN6UDP.Close()
	}
	if s.tcp6 != nil {
		s.tcp6.Close()
	}
	wg.Wait()
	// Terminating every transaction wakes the handlers blocked on them.
	s.ua.Close()
	s.handlers.Wait()
	s.mu.Lock()
	legs := make([]*callLeg, 0, len(s.calls))
	for _, l := range s.calls {
		legs = append(legs, l)
	}
	clear(s.calls)
	s.mu.Unlock()
	for _, l := range legs {
		l.close()
	}
	s.log.Info("sip service stopped")
	for _, err := range errs {
		if err != nil && !errors.Is(err, net.ErrClosed) && ctx.Err() == nil {
			return fmt.Errorf("sip service: %w", err)
		}
	}
	return nil
}

// enter registers a handler goroutine; false while shutting down.
func (s *SIPService) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing || s.ctx == nil {
		return false
	}
	s.handlers.Add(1)
	return true
}

// goTracked runs f in a goroutine Run waits for.
func (s *SIPService) goTracked(f func()) bool {
	if !s.enter() {
		return false
	}
	go func() {
		defer s.handlers.Done()
		f()
	}()
	return true
}

// handle is sipgo's handler for every request. It blocks until the
// request's fate is decided (libraries.md §1 pitfall 5: sipgo terminates
// the server transaction when the handler returns).
func (s *SIPService) handle(req *sip.Request, tx sip.ServerTransaction) {
	s.requests.Add(1)
	if !s.enter() {
		if !req.IsAck() {
			tx.Respond(s.respond(req, 503, "Service Unavailable (shutting down)"))
		}
		return
	}
	defer s.handlers.Done()
	in := s.arrival(tx)
	src, _ := netip.ParseAddrPort(req.Source())
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	release := s.guard.Hold(src.Addr())
	if !tx.OnTerminate(func(string, error) { release() }) {
		release()
	}
	var rec *answeringTx
	if req.Method != sip.ACK && strings.EqualFold(req.Transport(), "UDP") {
		rec = &answeringTx{ServerTransaction: tx}
		tx = rec
	}
	if s.cfg.Uplink != nil && s.isLAN(in) {
		if s.uplinkRefuses(req, tx, src) { // uplink.go: never an open relay
			return
		}
	} else if in == s.lan && s.needsAuth(req) {
		// Before the echo test, the route checks and any lookup: the
		// answer to an unauthenticated request names no extension.
		if _, res := s.cfg.Registrar.Authorize(s.ctx, req, src); res != nil {
			if strings.EqualFold(req.Transport(), "UDP") && src.IsValid() {
				res.SetDestination(src.String())
			}
			tx.Respond(res)
			tx.Terminate() // cheap: see unauthenticated
			return
		}
	}
	// Features (party line, *72/*73) answer after the LAN check above,
	// so a feature code is set only by an authenticated phone.
	if s.cfg.Uplink == nil && registrar.Answerable(req) && s.feature(req, tx, in, src) {
		return
	}
	if s.cfg.Uplink == nil && s.echo != nil && registrar.Answerable(req) && s.echo.Handle(req, tx, in == s.lan, src) {
		return
	}
	switch req.Method {
	case sip.REGISTER:
		res := s.cfg.Registrar.HandleRequest(s.ctx, req, src, strings.ToLower(req.Transport()))
		if res != nil {
			tx.Respond(res)
			if unauthenticated(res) {
				tx.Terminate()
			}
		}
		s.afterRegister(req, res, src) // messages.go
	case sip.ACK:
		s.forwardACK(req, in, src)
	case sip.CANCEL:
		// A CANCEL sipgo matched to an INVITE never gets here (OnCancel in
		// proxy.go); this one matches nothing (RFC 3261 §9.2).
		tx.Respond(s.respond(req, 481, "Call/Transaction Does Not Exist"))
	default:
		p := &proxyTx{s: s, req: req, tx: tx, in: in, src: src}
		p.run()
	}
	if rec != nil {
		if res, to := rec.final(); res != nil && (req.Method != sip.INVITE || res.IsSuccess()) {
			s.guard.Answered(req, src, res, to)
			tx.Terminate()
		}
	}
}

// answeringTx is the server transaction of a request over UDP as the
// handlers see it: it notes the final response sent, which the guard
// keeps as the transaction's small record once the handler returns,
// ending sipgo's transaction (sipnet's answered.go): for a non-INVITE
// request, Timer J's retransmissions get the response again (RFC 3261
// §17.2.2); for an INVITE answered 2xx, the Accepted state's
// retransmitted INVITEs are absorbed (RFC 6026 §7.1; the 2xx itself is
// retransmitted by the UAS, not by proxies). An INVITE answered 3xx–6xx
// stays with sipgo, which retransmits the answer until its ACK (Timers
// G and H).
type answeringTx struct {
	sip.ServerTransaction
	mu  sync.Mutex
	res *sip.Response
	to  netip.AddrPort
}

func (a *answeringTx) Respond(res *sip.Response) error {
	err := a.ServerTransaction.Respond(res)
	if err == nil && res.StatusCode >= 200 && !unauthenticated(res) {
		to, perr := netip.ParseAddrPort(res.Destination())
		a.mu.Lock()
		if a.res == nil && perr == nil {
			a.res, a.to = res, netip.AddrPortFrom(to.Addr().Unmap(), to.Port())
		}
		a.mu.Unlock()
	}
	return err
}

// final is the final response sent and where to, if any.
func (a *answeringTx) final() (*sip.Response, netip.AddrPort) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.res, a.to
}

// unauthenticated reports the answers to requests without valid
// credentials (challenge, refusal, back-off). Their server transactions
// end at once instead of living Timer J (32 s) or Timer H: a retransmitted
// request gets a fresh answer, which costs as little as the cached one,
// and a flood of wrong passwords does not fill the transaction table.
func unauthenticated(res *sip.Response) bool {
	switch res.StatusCode {
	case 401, 403, 407:
		return true
	case 503:
		return res.GetHeader("Retry-After") != nil
	}
	return false
}

// needsAuth reports the requests from the LAN the proxy authenticates
// (RFC 3261 §22.3), as a PBX does: every request outside a dialog
// (INVITE, MESSAGE, SUBSCRIBE, OPTIONS to an extension, …) except
// REGISTER (the registrar's own 401), ACK and CANCEL (never challenged,
// RFC 3261 §22.1) and an OPTIONS to the node itself (a keep-alive).
// In-dialog requests are bound to a route set this node recorded for an
// authenticated request instead (routecheck.go). Malformed requests are
// left to the proxy's 400.
func (s *SIPService) needsAuth(req *sip.Request) bool {
	switch req.Method {
	case sip.REGISTER, sip.ACK, sip.CANCEL:
		return false
	}
	if !registrar.Answerable(req) {
		return false
	}
	if code, _ := registrar.CheckRequest(req); code != 0 {
		return false
	}
	if tag, _ := req.To().Params.Get("tag"); tag != "" {
		return false
	}
	forNode := s.ourHost(req.Recipient.Host) && req.Recipient.User == "" && req.Route() == nil
	return !(forNode && req.Method == sip.OPTIONS)
}

// arrival is the socket a request came in on.
func (s *SIPService) arrival(tx sip.ServerTransaction) *sock {
	if st, ok := tx.(*sip.ServerTx); ok && st.Connection() != nil {
		if ap, ok := sipnet.AddrPortOf(st.Connection().LocalAddr()); ok {
			switch {
			case ap.Addr() == s.mesh.addr.Addr():
				return s.mesh
			case s.lan6 != nil && ap.Addr().Is6() && !ap.Addr().Is4In6():
				// The IPv6 socket, or a connection the service opened
				// from another of the uplink's IPv6 addresses.
				return s.lan6
			}
		}
	}
	return s.lan
}

// sockFor is the socket that reaches dst: the mesh for IPv6, else the LAN;
// on a gateway with an IPv6 uplink (lan6), IPv6 outside the mesh's /64
// is the Internet.
func (s *SIPService) sockFor(dst netip.Addr) *sock {
	dst = dst.Unmap()
	if dst.Is6() {
		if s.lan6 != nil && !sameNet64(dst, s.mesh.addr.Addr()) {
			return s.lan6
		}
		return s.mesh
	}
	return s.lan
}

// isLAN reports the service's LAN sockets (on a gateway: its Internet
// side, IPv4 and IPv6).
func (s *SIPService) isLAN(sk *sock) bool { return sk == s.lan || sk != nil && sk == s.lan6 }

// socks are the service's sockets.
func (s *SIPService) socks() []*sock {
	if s.lan6 != nil {
		return []*sock{s.lan, s.lan6, s.mesh}
	}
	return []*sock{s.lan, s.mesh}
}

// sameNet64 reports whether a and b share their first 64 bits (the mesh
// is one /64, ssr.MeshPrefix).
func sameNet64(a, b netip.Addr) bool {
	p, err := a.WithZone("").Prefix(64)
	return err == nil && b.Is6() && p.Contains(b.WithZone(""))
}

// respond builds a response of our own to req, with the registrar's Via
// fixes (received/rport) and Server header.
func (s *SIPService) respond(req *sip.Request, code int, reason string) *sip.Response {
	return s.cfg.Registrar.Response(req, code, reason)
}

// strayResponse handles responses that match no client transaction. A
// 2xx retransmitted by a callee whose INVITE transaction this node ended
// at the first 2xx (proxyTx.relayed) goes upstream again as it went the
// first time (RFC 3261 §16.7 step 5; the callee retransmits until the
// caller's ACK). Others are dropped.
func (s *SIPService) strayResponse(res *sip.Response) {
	if res.IsSuccess() && res.Via() != nil && res.CSeq() != nil && res.CSeq().MethodName == sip.INVITE {
		branch, _ := res.Via().Params.Get("branch")
		if data, to, ok := s.guard.RelayedAgain(branch); ok {
			pc := s.cfg.LANUDP
			switch s.sockFor(to.Addr()) {
			case s.mesh:
				pc = s.cfg.MeshUDP
			case s.lan6:
				pc = s.cfg.LAN6UDP
			}
			pc.WriteTo(data, net.UDPAddrFromAddrPort(to))
			return
		}
	}
	s.log.Debug("stray response", "status", res.StatusCode, "call_id", res.CallID())
}

// janitor drops the ALG state of calls whose media ended (the relay
// reclaimed idle sessions) or that never got an answer.
func (s *SIPService) janitor(ctx context.Context) {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.reapCalls(now)
			s.guard.Sweep(now) // expired records of answered requests, also when no new ones come
			s.cfg.Registrar.Sweep(now)
			for _, h := range s.peerLogs {
				h.Flush(ctx) // a flood that stopped is reported
			}
		}
	}
}

// ourHost reports whether a URI host names this node or the mesh domain.
func (s *SIPService) ourHost(host string) bool {
	h := registrar.CanonHost(host)
	return s.domains[h] || s.lan.public != nil && s.lan.names(h, 0)
}
