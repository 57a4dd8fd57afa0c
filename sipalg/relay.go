package sipalg

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sipmesh/sipmesh/netx"
)

// Relay errors.
var (
	ErrRelayClosed = errors.New("sipalg: relay closed")
	ErrRelayFull   = errors.New("sipalg: relay session limit reached")
	ErrNoPorts     = errors.New("sipalg: no free relay port pair")
)

// Relay defaults.
const (
	// DefaultIdleTimeout reclaims a session that relayed nothing for this
	// long: a call whose BYE was lost, or a crashed phone. Phones on hold
	// still send RTCP (RFC 3550 §6.2: at least every 5 s on average), and a
	// c=0.0.0.0 hold without RTCP is rare, so a minute is safe (rtpproxy
	// and rtpengine use 60 s as well).
	DefaultIdleTimeout = 60 * time.Second
	// RelatchAfter is how long a latched source must be silent before
	// another source from an allowed address may take its place.
	RelatchAfter = 2 * time.Second
	// maxDatagram is the largest datagram relayed; one read buffer of
	// maxDatagram+1 bytes per socket detects (and drops) longer ones,
	// which a short buffer would otherwise truncate silently.
	maxDatagram = 2048
)

// Side names one of the relay's two sides.
type Side uint8

// The two sides of the relay: in a node, A is the phone LAN (IPv4) and B
// the mesh (IPv6), but the relay does not care.
const (
	SideA Side = 0
	SideB Side = 1
)

func (s Side) other() Side { return 1 - s }

// ListenFunc opens a datagram socket on one side's address at port.
type ListenFunc func(ctx context.Context, port uint16) (net.PacketConn, error)

// NetworkListener opens sockets on addr through n (netx.Kernel or a
// memnet host). The mesh side in a node uses the SSR router's ListenPacket
// instead, whose sockets speak the same net.PacketConn.
func NetworkListener(n netx.Network, addr netip.Addr) ListenFunc {
	network := "udp6"
	if addr.Is4() {
		network = "udp4"
	}
	return func(ctx context.Context, port uint16) (net.PacketConn, error) {
		return n.ListenPacket(ctx, network, netip.AddrPortFrom(addr, port).String())
	}
}

// SideConfig is one side of the relay.
type SideConfig struct {
	Name string // for logs and stats: "lan", "mesh"
	// Addr is the relay's address on this side, the one Plan.Addr puts
	// into the SDP sent to this side.
	Addr   netip.Addr
	Listen ListenFunc
	// PortMin and PortMax bound the ports used (inclusive); RTP gets the
	// even port of each pair, RTCP the odd one after it (RFC 3550 §11).
	PortMin, PortMax uint16
	// LatchAny lets the first datagram from any source latch this side
	// (and another take over after RelatchAfter of silence), not only
	// from the SDP's or the signalling's address: for a gateway's
	// Internet side, where a far end behind NAT sends its RTP from a
	// public address that neither its SDP (its private address) nor the
	// signalling (from its SIP proxy) names. The price is the usual one
	// of NAT latching: a third party that guesses the port before the
	// far end's first packet arrives can take the stream.
	LatchAny bool
	// Punch: this side is behind a NAT router (a gateway's uplink behind
	// NAT). Most routers, Linux's MASQUERADE among them, let a datagram
	// in only through a mapping a datagram out to the same address and
	// port made (address- and port-dependent filtering, RFC 4787 §5); a
	// peer's packet that comes first is dropped, and the router then
	// maps the relay's own packets to that peer from another port than
	// the SDP names (the tuple is taken), so the peer's media never gets
	// in. With Punch, the session sends one empty datagram (RFC 6263
	// §4.1's 0-byte keep-alive, which RTP and RTCP receivers discard)
	// from the side's RTP and RTCP sockets as soon as SetPeer names the
	// peer, before the SDP that names the relay reaches that peer or has
	// been answered through the signalling path.
	Punch bool
}

// Config configures a Relay.
type Config struct {
	A, B SideConfig
	// MaxSessions bounds concurrent sessions (default: as many as the
	// smaller port range holds).
	MaxSessions int
	// IdleTimeout reclaims silent sessions (default DefaultIdleTimeout).
	IdleTimeout time.Duration
	// PathDelay is the one-way network delay the MOS estimate assumes on
	// top of what the relay measures (jitter buffer and packetisation);
	// across a mesh, a few ms per radio hop.
	PathDelay time.Duration
	Logger    *slog.Logger
}

// Relay anchors RTP and RTCP between two sides: each Session owns an
// RTP+RTCP socket pair on each side and forwards what one side's peer sends
// to the other side's peer, unchanged. Sockets come from the sides'
// ListenFuncs, so the relay runs on kernel sockets, SSR mesh sockets and
// memnet alike.
type Relay struct {
	cfg  Config
	log  *slog.Logger
	wg   sync.WaitGroup // session readers
	next atomic.Uint64  // session ids

	mu       sync.Mutex
	closed   bool
	sessions map[*Session]struct{}
	ports    [2]portPool
}

// portPool hands out even/odd port pairs round robin, so a freed pair is
// reused as late as possible (late packets of the old call then find no
// socket rather than the next call).
type portPool struct {
	lo, hi uint16 // even RTP ports lo..hi
	next   uint16
	used   map[uint16]bool
}

func newPool(min, max uint16) (portPool, error) {
	lo := min + min&1
	if max < 1 || lo > max-1 || lo == 0 {
		return portPool{}, fmt.Errorf("port range %d-%d holds no even/odd pair", min, max)
	}
	hi := max - 1
	hi -= hi & 1
	return portPool{lo: lo, hi: hi, next: lo, used: make(map[uint16]bool)}, nil
}

func (p *portPool) pairs() int { return int(p.hi-p.lo)/2 + 1 }

// NewRelay checks cfg and returns a relay; Run drives its idle reclaim.
func NewRelay(cfg Config) (*Relay, error) {
	r := &Relay{cfg: cfg, sessions: make(map[*Session]struct{})}
	for i, sc := range []SideConfig{cfg.A, cfg.B} {
		if sc.Listen == nil || !sc.Addr.IsValid() {
			return nil, fmt.Errorf("sipalg: relay side %d (%q): Listen and Addr are required", i, sc.Name)
		}
		p, err := newPool(sc.PortMin, sc.PortMax)
		if err != nil {
			return nil, fmt.Errorf("sipalg: relay side %q: %w", sc.Name, err)
		}
		r.ports[i] = p
	}
	if n := min(r.ports[0].pairs(), r.ports[1].pairs()); r.cfg.MaxSessions <= 0 || r.cfg.MaxSessions > n {
		r.cfg.MaxSessions = n
	}
	if r.cfg.IdleTimeout <= 0 {
		r.cfg.IdleTimeout = DefaultIdleTimeout
	}
	r.log = cfg.Logger
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	r.log = r.log.With("component", "rtprelay")
	return r, nil
}

// Run reclaims idle sessions until ctx ends, then closes every session and
// returns once all their goroutines have stopped. Allocate fails after.
func (r *Relay) Run(ctx context.Context) error {
	tick := time.NewTicker(max(r.cfg.IdleTimeout/4, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			r.mu.Lock()
			r.closed = true
			ss := make([]*Session, 0, len(r.sessions))
			for s := range r.sessions {
				ss = append(ss, s)
			}
			r.mu.Unlock()
			for _, s := range ss {
				s.close("relay stopped")
			}
			r.wg.Wait()
			return nil
		case now := <-tick.C:
			r.reap(now)
		}
	}
}

// reap closes the sessions idle for longer than IdleTimeout.
func (r *Relay) reap(now time.Time) {
	var idle []*Session
	r.mu.Lock()
	for s := range r.sessions {
		if now.Sub(time.Unix(0, s.last.Load())) > r.cfg.IdleTimeout {
			idle = append(idle, s)
		}
	}
	r.mu.Unlock()
	for _, s := range idle {
		s.close("idle")
	}
}

// Sessions returns the number of live sessions.
func (r *Relay) Sessions() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.sessions)
}

// Allocate opens a session: an RTP+RTCP socket pair on each side. The
// caller puts Local's ports into the SDP (Plan) and the peers' addresses
// from the SDP into SetPeer, and closes the session when the call ends.
func (r *Relay) Allocate(ctx context.Context) (*Session, error) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, ErrRelayClosed
	}
	if len(r.sessions) >= r.cfg.MaxSessions {
		r.mu.Unlock()
		return nil, ErrRelayFull
	}
	s := &Session{r: r, id: r.next.Add(1), done: make(chan struct{})}
	s.touch(time.Now())        // not idle while binding
	r.sessions[s] = struct{}{} // reserve the slot while binding
	r.mu.Unlock()

	for i, sc := range []SideConfig{r.cfg.A, r.cfg.B} {
		if err := r.bind(ctx, Side(i), sc, &s.ends[i]); err != nil {
			r.mu.Lock()
			delete(r.sessions, s)
			r.mu.Unlock()
			s.closeSockets()
			r.release(s)
			return nil, err
		}
		s.ends[i].side = Side(i)
		s.ends[i].any = sc.LatchAny
	}
	s.touch(time.Now())
	// Start the readers under the lock, so Run cannot be past its
	// wg.Wait when they are added.
	r.mu.Lock()
	if _, live := r.sessions[s]; r.closed || !live {
		// Run stopped (and closed the half-built session) meanwhile.
		delete(r.sessions, s)
		r.mu.Unlock()
		s.closeSockets()
		r.release(s)
		return nil, ErrRelayClosed
	}
	for i := range s.ends {
		e := &s.ends[i]
		s.wg.Add(2)
		r.wg.Add(2)
		go s.pump(e, false)
		go s.pump(e, true)
	}
	r.mu.Unlock()
	r.log.Debug("session allocated", "id", s.id,
		"a", s.ends[0].local[0], "b", s.ends[1].local[0])
	return s, nil
}

// bind opens the socket pair of one side, trying free pairs round robin.
func (r *Relay) bind(ctx context.Context, side Side, sc SideConfig, e *end) error {
	p := &r.ports[side]
	var lastErr error
	for range p.pairs() {
		r.mu.Lock()
		port := p.next
		if p.next += 2; p.next > p.hi {
			p.next = p.lo
		}
		if p.used[port] {
			r.mu.Unlock()
			continue
		}
		p.used[port] = true
		r.mu.Unlock()
		rtp, err := sc.Listen(ctx, port)
		if err == nil {
			var rtcp net.PacketConn
			if rtcp, err = sc.Listen(ctx, port+1); err == nil {
				e.conn = [2]netx.AddrPortConn{netx.AsAddrPortConn(rtp), netx.AsAddrPortConn(rtcp)}
				e.local = [2]netip.AddrPort{netip.AddrPortFrom(sc.Addr, port), netip.AddrPortFrom(sc.Addr, port+1)}
				return nil
			}
			rtp.Close()
		}
		lastErr = err // in use by another program: try the next pair
		r.mu.Lock()
		delete(p.used, port)
		r.mu.Unlock()
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return fmt.Errorf("%w on side %q (%d-%d): %v", ErrNoPorts, sc.Name, sc.PortMin, sc.PortMax, lastErr)
}

func (r *Relay) release(s *Session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range s.ends {
		if lp := s.ends[i].local[0]; lp.IsValid() {
			delete(r.ports[i].used, lp.Port())
		}
	}
}
