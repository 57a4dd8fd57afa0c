package dns64

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/sipmesh/sipmesh/internal/ratelog"
	"github.com/sipmesh/sipmesh/internal/ttlmap"
)

// Server is the DNS server of one node. Create it with New, run it with
// Run.
type Server struct {
	cfg   Config
	log   *slog.Logger
	cache *cache
	lim   *limiter
	sem   chan struct{} // bounds upstream look-ups in flight (Config.MaxInflight)
	fwd   *forwardCap   // the node's cap on upstream look-ups (Config.ForwardRate)
	// peerLog logs what peers cause (names they asked for), rate-limited
	// and truncated.
	peerLog *slog.Logger

	flightMu sync.Mutex
	flights  map[cacheKey]*flight           // upstream look-ups in progress; ≤ MaxInflight, each holds a sem slot
	zsem     chan struct{}                  // bounds zone look-ups in flight, apart: a slow upstream must not starve .mesh
	zcache   *ttlmap.Map[string, zoneEntry] // recent zone answers (zone.go)
	stats    counters

	running atomic.Bool
	ready   chan struct{}
	addrs   []netip.AddrPort // set before ready is closed
	replays []*replayCache   // per UDP socket, in Listen order; set before ready
	runCtx  context.Context  // cancelled when Run ends; set before ready

	// exchangeHook replaces the upstream exchange in the fuzz test.
	exchangeHook func(context.Context, *dns.Msg) (*dns.Msg, error)
}

type counters struct {
	queries, mesh, forwarded, synthesized, cacheHits, tcpRetries,
	rateLimited, malformed, busy, capped, coalesced, replayed atomic.Uint64
}

// Stats are the server's counters since New.
type Stats struct {
	Queries     uint64 // queries answered
	Mesh        uint64 // of which in the .mesh zone
	Forwarded   uint64 // of which outside it
	Synthesized uint64 // answers with DNS64-synthesized AAAA records
	CacheHits   uint64 // upstream look-ups answered from the cache
	TCPRetries  uint64 // truncated upstream answers retried over TCP
	RateLimited uint64 // queries and TCP connections dropped by the rate limit
	Malformed   uint64 // messages that did not parse (answered FORMERR if they had a header)
	Busy        uint64 // look-ups refused because MaxInflight were running
	Capped      uint64 // look-ups refused by the node's ForwardRate cap
	Coalesced   uint64 // look-ups that joined an identical one in progress
	Replayed    uint64 // .mesh queries answered with the packed reply to the same query bytes (replay.go)
}

// New validates cfg and returns a Server.
func New(cfg Config) (*Server, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.Listen = append([]Listen(nil), cfg.Listen...)
	for i := range cfg.Listen {
		if len(cfg.Listen[i].Self) == 0 {
			cfg.Listen[i].Self = []netip.Addr{cfg.Listen[i].Addr}
		}
	}
	s := &Server{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "dns64"),
		lim:     newLimiter(cfg.Rate, cfg.Burst, cfg.MaxSources, cfg.Now),
		sem:     make(chan struct{}, cfg.MaxInflight),
		zsem:    make(chan struct{}, cfg.MaxInflight),
		fwd:     newForwardCap(cfg.ForwardRate, cfg.ForwardBurst, cfg.Now),
		flights: make(map[cacheKey]*flight),
		zcache:  ttlmap.New[string, zoneEntry](zoneCacheSize),
		ready:   make(chan struct{}),
	}
	s.peerLog = slog.New(ratelog.New(s.log.Handler(), ratelog.Options{Now: cfg.Now}))
	if cfg.CacheSize > 0 {
		s.cache = newCache(cfg.CacheSize, cfg.CacheMaxTTL)
	}
	return s, nil
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	c := &s.stats
	return Stats{Queries: c.queries.Load(), Mesh: c.mesh.Load(), Forwarded: c.forwarded.Load(),
		Synthesized: c.synthesized.Load(), CacheHits: c.cacheHits.Load(), TCPRetries: c.tcpRetries.Load(),
		RateLimited: c.rateLimited.Load(), Malformed: c.malformed.Load(), Busy: c.busy.Load(),
		Capped: c.capped.Load(), Coalesced: c.coalesced.Load(), Replayed: c.replayed.Load()}
}

// Ready is closed once Run has opened every socket.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addrs returns the UDP (and TCP: the same ports) addresses served, in
// Config.Listen order, once Ready is closed; nil before.
func (s *Server) Addrs() []netip.AddrPort {
	select {
	case <-s.ready:
		return append([]netip.AddrPort(nil), s.addrs...)
	default:
		return nil
	}
}

// acquire takes a slot of sem without waiting: beyond the bound a query
// fails at once rather than queueing.
func acquire(sem chan struct{}) bool {
	select {
	case sem <- struct{}{}:
		return true
	default:
		return false
	}
}

// Run opens a UDP socket and a TCP listener on every Listen address and
// serves until ctx is cancelled or a socket fails; then it shuts every
// server down, waits for the queries in progress and returns. It returns
// nil after cancellation. Run may be called once.
func (s *Server) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("dns64: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.runCtx = ctx

	var servers []*dns.Server
	closeAll := func() {
		for _, srv := range servers {
			if srv.PacketConn != nil {
				srv.PacketConn.Close()
			}
			if srv.Listener != nil {
				srv.Listener.Close()
			}
		}
	}
	for _, l := range s.cfg.Listen {
		port := s.cfg.Port
		if port < 0 {
			port = 0
		}
		pc, err := s.cfg.Network.ListenPacket(ctx, "udp", net.JoinHostPort(l.Addr.String(), strconv.Itoa(port)))
		if err != nil {
			closeAll()
			return fmt.Errorf("dns64: listen udp on %v: %w", l.Addr, err)
		}
		bound, err := netip.ParseAddrPort(pc.LocalAddr().String())
		if err != nil {
			pc.Close()
			closeAll()
			return fmt.Errorf("dns64: udp socket on %v: local address %v: %w", l.Addr, pc.LocalAddr(), err)
		}
		// TCP on the port UDP got, so a client that falls back to TCP
		// after TC finds the same server (RFC 7766 §5).
		ln, err := s.cfg.Network.Listen(ctx, "tcp", net.JoinHostPort(l.Addr.String(), strconv.Itoa(int(bound.Port()))))
		if err != nil {
			pc.Close()
			closeAll()
			return fmt.Errorf("dns64: listen tcp on %v: %w", bound, err)
		}
		s.addrs = append(s.addrs, bound)
		replay := newReplayCache()
		s.replays = append(s.replays, replay)
		udp := &handler{s: s, self: l.Self, replay: replay}
		tcp := &handler{s: s, self: l.Self, tcp: true}
		servers = append(servers,
			&dns.Server{PacketConn: packetSocket{pc}, Handler: udp, UDPSize: int(s.cfg.UDPSize),
				DecorateReader: s.limitReader(replay), MsgInvalidFunc: s.invalid},
			&dns.Server{Listener: &limitListener{Listener: ln, s: s, slots: make(chan struct{}, s.cfg.MaxTCPConns)},
				Handler: tcp, DecorateReader: s.limitReader(nil), MsgInvalidFunc: s.invalid,
				ReadTimeout: 2 * time.Second, IdleTimeout: func() time.Duration { return 10 * time.Second }})
	}
	close(s.ready)
	prefix := s.cfg.Prefix.String()
	if s.cfg.PrefixFunc != nil {
		prefix = "the NAT64 gateway's"
	}
	s.log.Info("serving", "addrs", s.addrs, "upstreams", s.cfg.Upstreams, "prefix", prefix)

	var wg sync.WaitGroup
	errc := make(chan error, len(servers))
	started := make([]chan struct{}, len(servers))
	done := make([]chan struct{}, len(servers))
	for i, srv := range servers {
		started[i], done[i] = make(chan struct{}), make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started[i]) }
		wg.Go(func() {
			defer close(done[i])
			if err := srv.ActivateAndServe(); err != nil {
				errc <- err
			}
		})
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		err = fmt.Errorf("dns64: serve: %w", err)
	}
	cancel() // ends look-ups in progress
	// Shut all servers down at once, each waiting for its queries in
	// progress.
	var stop sync.WaitGroup
	for i, srv := range servers {
		stop.Go(func() {
			// ShutdownContext fails on a server that has not started yet
			// and would leave it running; wait for it to start or to end.
			select {
			case <-started[i]:
				sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer scancel()
				if serr := srv.ShutdownContext(sctx); serr != nil {
					s.log.Warn("shutdown", "err", serr)
					closeAll() // forces the stuck reader out
				}
			case <-done[i]:
			}
		})
	}
	stop.Wait()
	wg.Wait()
	// serveTCP closes its listener, serveUDP its socket; a server that
	// never started owns sockets nobody closed.
	closeAll()
	s.log.Info("stopped")
	return err
}

// handler serves the queries of one socket; self are the node's addresses
// that sipserver.mesh names for queries arriving there.
type handler struct {
	s      *Server
	self   []netip.Addr
	tcp    bool
	replay *replayCache // the UDP socket's packed replies (replay.go); nil on TCP
}

// ServeDNS implements dns.Handler.
func (h *handler) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	ctx, cancel := context.WithTimeout(h.s.runCtx, h.s.cfg.QueryTimeout)
	defer cancel()
	m := h.s.respond(ctx, req, h.self, h.tcp)
	var err error
	if b := h.remember(req, m); b != nil {
		_, err = w.Write(b)
	} else {
		err = w.WriteMsg(m)
	}
	if err != nil {
		h.s.peerLog.Debug("write reply", "to", w.RemoteAddr(), "err", err)
	}
}

// respond builds the complete reply to req (already parsed, with a header
// the miekg server accepted: one question, opcode QUERY).
func (s *Server) respond(ctx context.Context, req *dns.Msg, self []netip.Addr, tcp bool) *dns.Msg {
	s.stats.queries.Add(1)
	m := new(dns.Msg)
	m.SetReply(req)
	m.CheckingDisabled = req.CheckingDisabled

	size := dns.MinMsgSize // RFC 1035 §4.2.1 without EDNS(0)
	var reply *dns.OPT
	if opt := req.IsEdns0(); opt != nil {
		// RFC 6891 §6.2.5: a requestor's size below 512 counts as 512;
		// we never send more than our own limit.
		size = max(dns.MinMsgSize, min(int(opt.UDPSize()), int(s.cfg.UDPSize)))
		reply = &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
		reply.SetUDPSize(s.cfg.UDPSize)
		// RFC 3225 §3: the DO bit is copied into the response.
		reply.SetDo(opt.Do())
	}
	s.answer(ctx, m, req, self)
	if reply != nil {
		m.Extra = append(m.Extra, reply)
	}
	if !tcp {
		fit(m, size)
	}
	return m
}

// answer fills the sections and RCODE of m, the reply to req.
func (s *Server) answer(ctx context.Context, m, req *dns.Msg, self []netip.Addr) {
	nopt := 0
	for _, rr := range req.Extra {
		if rr.Header().Rrtype == dns.TypeOPT {
			nopt++
		}
	}
	switch {
	case req.Opcode != dns.OpcodeQuery:
		// The miekg server lets NOTIFY through; we only answer queries.
		m.Rcode = dns.RcodeNotImplemented
		return
	case nopt > 1:
		// RFC 6891 §6.1.1: more than one OPT record is a FORMERR.
		m.Rcode = dns.RcodeFormatError
		return
	case nopt == 1 && req.IsEdns0().Version() != 0:
		// RFC 6891 §6.1.3: an unknown EDNS version gets BADVERS.
		m.Rcode = dns.RcodeBadVers
		return
	case len(req.Question) != 1:
		m.Rcode = dns.RcodeFormatError
		return
	}
	q := req.Question[0]
	// RFC 4343: names match case-insensitively; the reply's question and
	// the records owned by it keep the query's case (0x20 resolvers).
	name := strings.ToLower(q.Name)
	if inMesh(name) {
		s.stats.mesh.Add(1)
		s.meshAnswer(ctx, m, q, name, self)
	} else {
		s.stats.forwarded.Add(1)
		s.forwardAnswer(ctx, m, q, name)
	}
}

// fit makes m no longer than size bytes. Additional-section records go
// first, without TC: they are optional (RFC 2181 §9). If that is not
// enough, Truncate cuts answer and authority records and sets TC so the
// client retries over TCP (RFC 1035 §4.2.1, RFC 7766 §5).
func fit(m *dns.Msg, size int) {
	m.Compress = true
	if m.Len() <= size {
		return
	}
	var opt []dns.RR
	for _, rr := range m.Extra {
		if rr.Header().Rrtype == dns.TypeOPT {
			opt = append(opt, rr)
		}
	}
	m.Extra = opt
	if m.Len() <= size {
		return
	}
	m.Truncate(size)
}

func (s *Server) invalid(m []byte, err error) {
	s.stats.malformed.Add(1)
	s.peerLog.Debug("malformed query", "len", len(m), "err", err)
}

// limitReader wraps the miekg reader so that queries over the per-source
// rate are dropped before the server starts a goroutine for them, and
// repeated .mesh queries on a UDP socket with a replay cache are answered
// at once (replay.go), on the node's kernel sockets in batches
// (batch_linux.go).
func (s *Server) limitReader(replay *replayCache) func(dns.Reader) dns.Reader {
	return func(r dns.Reader) dns.Reader {
		return &limitedReader{Reader: r, s: s, replay: replay}
	}
}

// limitedReader is used by one server's read loop only: its buffers need
// no lock. The UDP server reads through ReadPacketConn only: Run hides
// its socket's type (packetSocket).
type limitedReader struct {
	dns.Reader
	s      *Server
	replay *replayCache // nil: no replaying (TCP)

	started  bool
	batch    *udpBatch // a kernel socket's batches; nil: one datagram at a time
	in, out  []byte    // without batch: the query read and the reply replayed
	now      time.Time // when the batch was read
	replayed int       // queries replayed, not yet counted
}

// packetSocket hides the type of a UDP socket from the miekg server: on a
// *net.UDPConn it would read through ReadUDP, which gives a SessionUDP
// only miekg can make, and ask for IP_PKTINFO on every datagram to send
// the reply from the query's destination address. The sockets here are
// bound to one address each (Config.Listen), so the reply leaves from
// the query's destination without it, and ReadPacketConn can read them
// in batches.
type packetSocket struct{ net.PacketConn }

func addrPortOf(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort().Addr()
	case *net.TCPAddr:
		return a.AddrPort().Addr()
	}
	if a == nil {
		return netip.Addr{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap.Addr()
}

// ReadPacketConn reads the next query the miekg server must answer, into
// a buffer of its own: dropped and replayed queries never reach it. It
// sets no read deadline: the server's shutdown sets one in the past, which
// ends the read.
func (r *limitedReader) ReadPacketConn(conn net.PacketConn, timeout time.Duration) ([]byte, net.Addr, error) {
	if !r.started {
		r.started = true
		r.batch = newUDPBatch(conn, int(r.s.cfg.UDPSize))
		if r.batch == nil {
			r.in = make([]byte, r.s.cfg.UDPSize)
			r.out = make([]byte, r.s.cfg.UDPSize)
		}
	}
	if r.batch != nil {
		return r.readBatch()
	}
	for {
		n, from, err := conn.ReadFrom(r.in)
		if err != nil {
			return nil, nil, err
		}
		if !r.s.lim.allow(addrPortOf(from)) {
			r.s.stats.rateLimited.Add(1)
			continue
		}
		q := r.in[:n]
		if b := copyReply(q, r.replay.get(q, r.s.cfg.Now()), r.out); b != nil {
			r.replayed++
			r.countReplayed()
			if _, err := conn.WriteTo(b, from); err != nil {
				r.writeFailed(from, err)
			}
			continue
		}
		return r.handOn(q), from, nil
	}
}

func (r *limitedReader) writeFailed(to net.Addr, err error) {
	r.s.peerLog.Debug("write replayed reply", "to", to, "err", err)
}

func (r *limitedReader) ReadTCP(conn net.Conn, timeout time.Duration) ([]byte, error) {
	m, err := r.Reader.ReadTCP(conn, timeout)
	if err == nil && !r.s.lim.allow(addrPortOf(conn.RemoteAddr())) {
		r.s.stats.rateLimited.Add(1)
		return nil, errors.New("dns64: rate limited") // closes the connection
	}
	return m, err
}

// limitListener bounds concurrent TCP connections and applies the rate
// limit to new ones: a connection over either limit is closed at once.
type limitListener struct {
	net.Listener
	s     *Server
	slots chan struct{}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if !l.s.lim.allow(addrPortOf(c.RemoteAddr())) {
			l.s.stats.rateLimited.Add(1)
			c.Close()
			continue
		}
		select {
		case l.slots <- struct{}{}:
			return &slotConn{Conn: c, release: func() { <-l.slots }}, nil
		default:
			l.s.stats.rateLimited.Add(1)
			c.Close()
		}
	}
}

type slotConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *slotConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
