package sipalg

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sipmesh/sipmesh/netx"
)

// Session relays one media stream of one call leg: an RTP and an RTCP
// socket on each side. Datagrams from side A's peer go out of the side B
// socket of the same kind to side B's peer, and back; payloads are never
// looked at beyond the RTP fixed header for statistics, so SRTP, ZRTP,
// STUN and DTLS pass unchanged.
//
// Latching (symmetric RTP, RFC 4961; the anti-hijack rule of common
// relays): until it hears from its peer, a side sends to the address the
// SDP gave (SetPeer). The first datagram from an allowed source address –
// the SDP address's IP, or an IP added with AllowSource (the signalling
// source, for a phone behind NAT whose SDP names a private address) –
// latches that exact address:port, and the side then sends there and
// accepts only it. Another allowed source can take over only after the
// latched one has been silent for RelatchAfter; datagrams from any other
// IP are dropped and counted, so a third party that guesses a relay port
// can neither inject media nor steal the stream. RTP and RTCP latch
// separately.
type Session struct {
	r    *Relay
	id   uint64
	last atomic.Int64 // unix nanoseconds of the last datagram, for idle reclaim
	wg   sync.WaitGroup

	mu     sync.Mutex // guards ends' peer state and stats
	ends   [2]end
	reason string

	once sync.Once
	done chan struct{}
}

// end is one side of a session.
type end struct {
	side  Side
	conn  [2]netx.AddrPortConn // [0] RTP, [1] RTCP
	local [2]netip.AddrPort    // their addresses as advertised
	peer  [2]peer              // where this side's peer is
	allow []netip.Addr         // extra latch-allowed source IPs
	any   bool                 // any source may latch (SideConfig.LatchAny)
	hold  bool                 // peer asked for no media (c=0.0.0.0)

	rx    Receiver
	stats StreamStats
}

// peer is the remote address of one socket.
type peer struct {
	sdp     netip.AddrPort // from SetPeer
	latched netip.AddrPort
	heard   time.Time // last datagram from latched
}

// StreamStats counts what one side's peer sent into the relay.
type StreamStats struct {
	Side string
	// Peer is the latched RTP source, else the SDP address.
	Peer    netip.AddrPort
	Latched bool
	// Packets and Bytes count datagrams relayed from the RTP socket,
	// RTCPPackets and RTCPBytes those from the RTCP socket.
	Packets, Bytes         uint64
	RTCPPackets, RTCPBytes uint64
	// Dropped counts datagrams not relayed: from a source that is not
	// allowed or not latched, oversized, with no destination known yet, or
	// failing to send.
	Dropped uint64
	// RTP is the RFC 3550 receiver view of the RTP stream from the peer.
	RTP ReceiverReport
	// R and MOS are the G.107 E-model estimate for the stream (G.711 with
	// PLC; see ReceiverReport.Estimate), 0 before any RTP arrived.
	R, MOS float64
}

// SessionStats is a snapshot of a session.
type SessionStats struct {
	A, B StreamStats
	// Idle is the time since the last datagram.
	Idle time.Duration
}

// ID identifies the session in logs.
func (s *Session) ID() uint64 { return s.id }

// Local returns the relay's RTP and RTCP addresses on side, for the Plan
// of the SDP sent to that side.
func (s *Session) Local(side Side) (rtp, rtcp netip.AddrPort) {
	return s.ends[side].local[0], s.ends[side].local[1]
}

// StreamPlan returns the plan entry of this session for the SDP sent to
// side.
func (s *Session) StreamPlan(side Side) StreamPlan {
	rtp, rtcp := s.Local(side)
	return StreamPlan{Addr: rtp.Addr(), Port: rtp.Port(), RTCPPort: rtcp.Port()}
}

// SetPeer tells the session where side's peer wants media, from the SDP
// that peer sent (Stream.RTP() and Stream.RTCP). An unspecified address
// (c=0.0.0.0, RFC 3264 §8.4) puts the side on hold: nothing is sent to it,
// while what it sends is still relayed and the latch is kept for when it
// resumes. A changed address drops the latch; the same one (a refresh or
// re-INVITE) keeps it.
func (s *Session) SetPeer(side Side, rtp, rtcp netip.AddrPort) {
	rtp = norm(rtp)
	rtcp = norm(rtcp)
	var punch [2]netip.AddrPort
	s.mu.Lock()
	e := &s.ends[side]
	if rtp.Addr().IsUnspecified() {
		e.hold = true
		s.mu.Unlock()
		return
	}
	e.hold = false
	for i, a := range [2]netip.AddrPort{rtp, rtcp} {
		if p := &e.peer[i]; p.sdp != a {
			*p = peer{sdp: a}
			punch[i] = a
		}
	}
	conns := e.conn
	s.mu.Unlock()
	if !s.r.side(side).Punch {
		return
	}
	// SideConfig.Punch: open the NAT router's mapping towards the new
	// peer before its first packet arrives.
	for i, a := range punch {
		if a.IsValid() && a.Port() != 0 && conns[i] != nil {
			conns[i].WriteToUDPAddrPort(nil, a)
		}
	}
}

// SetPeerStream is SetPeer with the addresses of a parsed SDP stream; it
// also times the side's jitter with the stream's a=rtpmap clock rates
// (dynamic payload types such as Opus at 48 kHz), not only the static ones.
func (s *Session) SetPeerStream(side Side, st Stream) {
	s.mu.Lock()
	s.ends[side].rx.ClockRate = st.ClockRate
	s.mu.Unlock()
	s.SetPeer(side, st.RTP(), st.RTCP)
}

// AllowSource lets datagrams from ip latch side's sockets as well as those
// from the SDP address: the source address of the peer's SIP messages
// when a NAT between it and the relay rewrites its address. Up to four
// addresses are kept.
func (s *Session) AllowSource(side Side, ip netip.Addr) {
	ip = ip.WithZone("").Unmap()
	s.mu.Lock()
	defer s.mu.Unlock()
	e := &s.ends[side]
	for _, a := range e.allow {
		if a == ip {
			return
		}
	}
	if len(e.allow) == 4 {
		copy(e.allow, e.allow[1:])
		e.allow = e.allow[:3]
	}
	e.allow = append(e.allow, ip)
}

func norm(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().WithZone("").Unmap(), ap.Port())
}

// Stats returns a snapshot of the session's counters.
func (s *Session) Stats() SessionStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	var st SessionStats
	for i := range s.ends {
		e := &s.ends[i]
		x := e.stats
		x.Side = s.r.side(Side(i)).Name
		x.Peer = e.peer[0].sdp
		if x.Latched = e.peer[0].latched.IsValid(); x.Latched {
			x.Peer = e.peer[0].latched
		}
		x.RTP = e.rx.Report()
		x.R, x.MOS = x.RTP.Estimate(s.r.cfg.PathDelay)
		if i == 0 {
			st.A = x
		} else {
			st.B = x
		}
	}
	st.Idle = time.Since(time.Unix(0, s.last.Load()))
	return st
}

func (r *Relay) side(sd Side) *SideConfig {
	if sd == SideA {
		return &r.cfg.A
	}
	return &r.cfg.B
}

// Done is closed when the session has ended: Close, idle reclaim or the
// relay stopping. Reason then says which.
func (s *Session) Done() <-chan struct{} { return s.done }

// Reason returns why the session ended, "" while it runs.
func (s *Session) Reason() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reason
}

// Close ends the session: its sockets close, its goroutines stop and its
// ports return to the pool before Close returns.
func (s *Session) Close() { s.close("closed") }

func (s *Session) close(reason string) {
	first := false
	s.once.Do(func() {
		first = true
		s.mu.Lock()
		s.reason = reason
		s.mu.Unlock()
		s.closeSockets()
		s.wg.Wait()
		s.r.release(s)
		s.r.mu.Lock()
		delete(s.r.sessions, s)
		s.r.mu.Unlock()
		if s.r.log.Enabled(context.Background(), slog.LevelDebug) {
			// What each side relayed and dropped: the first thing to read
			// when a call had one-way audio.
			st := s.Stats()
			s.r.log.Debug("session closed", "id", s.id, "reason", reason,
				"a_peer", st.A.Peer, "a_latched", st.A.Latched, "a_packets", st.A.Packets, "a_dropped", st.A.Dropped,
				"b_peer", st.B.Peer, "b_latched", st.B.Latched, "b_packets", st.B.Packets, "b_dropped", st.B.Dropped)
		}
		close(s.done)
	})
	if !first {
		<-s.done
	}
}

func (s *Session) closeSockets() {
	for i := range s.ends {
		for _, c := range s.ends[i].conn {
			if c != nil {
				c.Close()
			}
		}
	}
}

func (s *Session) touch(now time.Time) { s.last.Store(now.UnixNano()) }

// maxReadErrors is how many consecutive read errors end a reader.
const maxReadErrors = 100

// pump relays what arrives on one socket of side e (RTP or RTCP) to the
// socket of the same kind on the other side. It allocates nothing per
// datagram: one buffer per socket, netip addresses by value, no
// interfaces boxed.
func (s *Session) pump(e *end, rtcp bool) {
	defer s.r.wg.Done()
	defer s.wg.Done()
	k := 0
	if rtcp {
		k = 1
	}
	in := e.conn[k]
	o := &s.ends[e.side.other()]
	out := o.conn[k]
	buf := make([]byte, maxDatagram+1)
	errs := 0
	for {
		n, src, err := in.ReadFromUDPAddrPort(buf)
		if err != nil {
			// Transient errors (ICMP-induced on some kernels) are not
			// worth stopping a call for, but a socket that only fails is
			// broken: stop, and let idle reclaim end the session.
			if errs++; errors.Is(err, net.ErrClosed) || errs > maxReadErrors {
				return
			}
			continue
		}
		errs = 0
		now := time.Now()
		s.touch(now)
		pkt := buf[:n]
		src = norm(src)
		s.mu.Lock()
		ok := n <= maxDatagram && e.accept(k, src, now)
		var dst netip.AddrPort
		if ok {
			dst = o.dest(k)
			if !rtcp {
				e.stats.Packets++
				e.stats.Bytes += uint64(n)
				e.rx.Observe(pkt, now)
			} else {
				e.stats.RTCPPackets++
				e.stats.RTCPBytes += uint64(n)
			}
		}
		if !ok || !dst.IsValid() {
			e.stats.Dropped++
			s.mu.Unlock()
			continue
		}
		s.mu.Unlock()
		if _, err := out.WriteToUDPAddrPort(pkt, dst); err != nil {
			s.mu.Lock()
			e.stats.Dropped++
			s.mu.Unlock()
		}
	}
}

// accept applies the latching rule to a datagram from src on socket k.
func (e *end) accept(k int, src netip.AddrPort, now time.Time) bool {
	p := &e.peer[k]
	if p.latched == src {
		p.heard = now
		return true
	}
	if !e.allowed(src.Addr(), k) {
		return false
	}
	if p.latched.IsValid() && now.Sub(p.heard) < RelatchAfter {
		return false // the latched source is alive; keep it
	}
	p.latched, p.heard = src, now
	return true
}

func (e *end) allowed(ip netip.Addr, k int) bool {
	if e.any {
		return true
	}
	if sdp := e.peer[k].sdp.Addr(); sdp.IsValid() && ip == sdp {
		return true
	}
	if k == 1 && ip == e.peer[0].sdp.Addr() {
		return true // RTCP from the RTP address (a=rtcp with another IP is rare)
	}
	for _, a := range e.allow {
		if a == ip {
			return true
		}
	}
	return false
}

// dest is where datagrams for this side's peer on socket k go: the
// latched source (symmetric RTP), else the SDP address, else nowhere.
func (e *end) dest(k int) netip.AddrPort {
	if e.hold {
		return netip.AddrPort{}
	}
	if p := &e.peer[k]; p.latched.IsValid() {
		return p.latched
	} else if p.sdp.Port() != 0 && !p.sdp.Addr().IsUnspecified() {
		return p.sdp
	}
	return netip.AddrPort{}
}
