package sipnet

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"
)

// What a sipmesh package that runs sipgo needs around it: a bigger UDP
// message limit, a guard in front of sipgo's reads, a resolver that never
// asks the host's DNS, and a logger kept quiet.

// MaxMessage is the largest SIP message sipmesh sends: over UDP on the
// LAN (IPv4 fragments it) and over the mesh socket, whose datagrams are
// SSR frames of up to 16 KiB (ssr.MaxFrame), not radio-MTU datagrams.
// RFC 3261 §18.1.1 would move a request near the path MTU to TCP; the
// mesh has no TCP, and phones on the LAN receive fragmented UDP. A
// request that cannot be sent within it is answered 513 Message Too Large
// (RFC 3261 §21.5.14), never 500.
const MaxMessage = 12 * 1024

// sipgo refuses UDP messages over UDPMTUSize-200 bytes (1300 by default)
// and has no fallback to TCP; an INVITE with video codecs and ICE
// candidates passes 4 KiB. Set once here, before any sipgo traffic,
// since it is a package variable of sipgo: every package that runs sipgo
// (proxy, phones) imports this one.
func init() {
	if sip.UDPMTUSize < MaxMessage+200 {
		sip.UDPMTUSize = MaxMessage + 200
	}
}

// NoDNS is a resolver for sipgo that fails every query: sipmesh sends only
// to IP literals, and a name reaching sipgo's resolver is a bug, not a
// reason to query the host's DNS. who names the caller in the error.
func NoDNS(who string) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(context.Context, string, string) (net.Conn, error) {
		return nil, errors.New(who + ": no DNS")
	}}
}

// MinLevel wraps h to drop records below min. sipgo logs every
// unparsable datagram at error level with its content; Guard answers
// those, so a sipgo logger is kept quiet below warnings.
func MinLevel(h slog.Handler, min slog.Level) slog.Handler { return levelHandler{min: min, h: h} }

// levelHandler drops records below min.
type levelHandler struct {
	min slog.Level
	h   slog.Handler
}

func (l levelHandler) Enabled(ctx context.Context, lv slog.Level) bool {
	return lv >= l.min && l.h.Enabled(ctx, lv)
}
func (l levelHandler) Handle(ctx context.Context, r slog.Record) error { return l.h.Handle(ctx, r) }
func (l levelHandler) WithAttrs(a []slog.Attr) slog.Handler {
	return levelHandler{min: l.min, h: l.h.WithAttrs(a)}
}
func (l levelHandler) WithGroup(g string) slog.Handler {
	return levelHandler{min: l.min, h: l.h.WithGroup(g)}
}

// Guard screens the datagrams a sipgo server reads, before sipgo parses
// them (so before sipgo allocates a transaction and a goroutine), and
// keeps the small records that answer retransmissions of answered
// non-INVITE requests (answered.go). Set its fields before the first Conn
// is read; the counters are read at any time.
//
// The limits bite on abusers when the node is busy, not on a busy LAN
// when it is idle (issue 12):
//
//   - Responses pass unlimited: they match client transactions this node
//     created (RFC 3261 §17.1.3), and one that matches none costs a parse
//     and is dropped by sipgo without state. A busy callee or a PBX on
//     one LAN address answers as fast as it is called.
//   - Requests (and keep-alives) pass a per-source token bucket
//     (Limiter), a ceiling high enough for a PBX or a load generator on
//     one address (thousands per second by default): it bounds what one
//     address can make the node parse, not what it may do when nobody
//     else is competing.
//   - New requests pass the fair share of live transactions (admit): while
//     fewer than a quarter of MaxLive are live, everyone is admitted; past
//     it no source holds more than a quarter; at MaxLive a source is
//     admitted only while it holds less than an equal share among the
//     sources holding transactions, and at twice MaxLive nobody is. So a
//     flood fills the table only with its own transactions and is dropped
//     there, while a phone holding one or two is still served (Kamailio's
//     pike does the same per source). ACK, CANCEL and BYE always pass:
//     load sheds new work only.
//   - A transaction is live only while it is being worked on: a
//     non-INVITE one ends when its final response is sent and leaves a
//     record of about 0.6 KB for Timer J's retransmissions (Answered), an
//     unauthenticated one ends at once (the proxy's unauthenticated).
type Guard struct {
	Limiter    *RateLimiter // per-source rate of requests; nil: none
	MaxLive    int64        // live server transactions: the table a flood must not fill; 0: no bound
	ServerName string       // Server header of the 400s
	// MaxAnswered bounds the records of answered requests (default
	// 4·MaxLive, at least 16384); AnswerLife is how long one is kept
	// (default DefaultAnswerLife, Timer J over UDP).
	MaxAnswered int
	AnswerLife  time.Duration

	// Live is the server transactions alive: the server's request
	// handler holds one per transaction (Hold) until it ends.
	Live atomic.Int64

	mu     sync.Mutex
	perSrc map[netip.Addr]int64 // live transactions per source (RateKey); no zero entries
	// RateLimited, Overloaded and Malformed count the datagrams dropped
	// over their source's rate, the requests dropped over their source's
	// share of live transactions, and those answered 400 here.
	// Retransmissions counts requests answered from a record.
	RateLimited, Overloaded, Malformed, Retransmissions atomic.Uint64

	ans answers
}

// answers returns the record table, made on first use.
func (g *Guard) answers() *answers {
	g.ans.init(cmp.Or(g.MaxAnswered, max(4*int(g.MaxLive), 16384)))
	return &g.ans
}

// Answered records res, the final response sent to to for req (a
// request received over UDP from src), for the retransmissions of req
// within AnswerLife; the caller then ends the server transaction. For a
// non-INVITE request the record is the Completed state (RFC 3261
// §17.2.2): a retransmission gets res again. For an INVITE answered 2xx
// it is the Accepted state (RFC 6026 §7.1): a retransmission is absorbed,
// and res is not kept.
func (g *Guard) Answered(req *sip.Request, src netip.AddrPort, res *sip.Response, to netip.AddrPort) {
	g.answers().put(req, src, res, to, time.Now(), cmp.Or(g.AnswerLife, DefaultAnswerLife))
}

// Relayed records data, a 2xx this node relayed upstream to to for its
// INVITE client transaction of branch, for AnswerLife; the caller then
// ends that transaction instead of keeping it for Timer M (RFC 6026
// §7.2), and relays the callee's retransmissions of the 2xx (RFC 3261
// §16.7 step 5: they go upstream until the ACK) with RelayedAgain.
func (g *Guard) Relayed(branch string, res *sip.Response, to netip.AddrPort) {
	a := g.answers()
	a.putKey(a.relayKey(branch), encode(res), to, time.Now(), cmp.Or(g.AnswerLife, DefaultAnswerLife))
}

// RelayedAgain returns the 2xx recorded by Relayed for branch and where
// it went, if the record is still live, and counts a retransmission.
func (g *Guard) RelayedAgain(branch string) (data []byte, to netip.AddrPort, ok bool) {
	a := g.answers()
	rec, ok := a.getKey(a.relayKey(branch), time.Now())
	if !ok || rec.data == nil {
		return nil, netip.AddrPort{}, false
	}
	g.Retransmissions.Add(1)
	return rec.data, rec.to, true
}

// Answers is how many records of answered requests are kept.
func (g *Guard) Answers() int {
	a := g.answers()
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.n
}

// Sweep drops the records expired at now, so that their memory is freed
// when load ends (records are otherwise dropped as new ones come).
func (g *Guard) Sweep(now time.Time) {
	a := g.answers()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sweepLocked(now, -1)
}

// Hold counts a live server transaction of src until release is called
// (once; later calls do nothing).
func (g *Guard) Hold(src netip.Addr) (release func()) {
	k := RateKey(src)
	g.Live.Add(1)
	g.mu.Lock()
	if g.perSrc == nil {
		g.perSrc = make(map[netip.Addr]int64)
	}
	g.perSrc[k]++
	g.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			g.Live.Add(-1)
			g.mu.Lock()
			if g.perSrc[k]--; g.perSrc[k] <= 0 {
				delete(g.perSrc, k)
			}
			g.mu.Unlock()
		})
	}
}

// admit reports whether a new request of src may start a transaction
// (the share of the Guard's doc comment).
func (g *Guard) admit(src netip.Addr) bool {
	live := g.Live.Load()
	if g.MaxLive <= 0 || live < g.MaxLive/4 {
		return true // no source can hold a quarter yet
	}
	if live >= 2*g.MaxLive {
		return false
	}
	g.mu.Lock()
	held, active := g.perSrc[RateKey(src)], int64(len(g.perSrc))
	g.mu.Unlock()
	share := max(g.MaxLive/4, 1)
	if live >= g.MaxLive {
		share = max(g.MaxLive/max(active, 1), 1)
	}
	return held < share
}

// Conn wraps pc for sipgo's ServeUDP: its reads pass the guard.
func (g *Guard) Conn(pc net.PacketConn) net.PacketConn {
	fast, _ := pc.(AddrPortConn)
	return &guardConn{PacketConn: pc, fast: fast, g: g}
}

// guardConn is the PacketConn sipgo reads.
type guardConn struct {
	net.PacketConn
	fast AddrPortConn // PacketConn's allocation-free read and write, if it has them
	g    *Guard
}

// readFrom reads a datagram and its source (unmapped), without a
// *net.UDPAddr per datagram where the conn allows; ok is false for a
// source that is no IP address.
func (g *guardConn) readFrom(b []byte) (n int, src netip.AddrPort, ok bool, err error) {
	if g.fast != nil {
		n, src, err = g.fast.ReadFromUDPAddrPort(b)
		return n, netip.AddrPortFrom(src.Addr().Unmap(), src.Port()), src.IsValid(), err
	}
	n, addr, err := g.PacketConn.ReadFrom(b)
	if err != nil {
		return n, src, false, err
	}
	src, ok = AddrPortOf(addr)
	return n, src, ok, nil
}

func (g *guardConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, addr, _, err := g.ReadMessageFrom(b)
	return n, addr, err
}

// ReadMessageFrom is ReadFrom that also returns the message the guard
// parsed from b[:n] (nil for responses and keep-alives, which it does not
// parse): sipgo's UDP transport takes it (sip.MessageReader) instead of
// parsing every request twice, which cost an eighth of the node's
// allocations under call load (issue 12).
func (g *guardConn) ReadMessageFrom(b []byte) (int, net.Addr, sip.Message, error) {
	s := g.g
	for {
		n, src, ok, err := g.readFrom(b)
		if err != nil {
			return n, nil, nil, err
		}
		if !ok {
			continue
		}
		data := b[:n]
		if strings.HasPrefix(string(data[:min(n, 8)]), "SIP/") {
			return n, net.UDPAddrFromAddrPort(src), nil, nil // a response: not limited
		}
		if s.Limiter != nil && !s.Limiter.Allow(src.Addr(), time.Now()) {
			s.RateLimited.Add(1)
			continue
		}
		if n <= 4 {
			return n, net.UDPAddrFromAddrPort(src), nil, nil // keep-alive
		}
		if !endsSomething(data) && !s.admit(src.Addr()) {
			s.Overloaded.Add(1)
			continue
		}
		msg, perr := sip.ParseMessage(data)
		if perr != nil {
			s.Malformed.Add(1)
			if out := BadRequest(data, DescribeParseError(perr), s.ServerName); out != nil {
				g.PacketConn.WriteTo(out, net.UDPAddrFromAddrPort(src))
			}
			continue
		}
		if req, ok := msg.(*sip.Request); ok && s.retransmission(g.PacketConn, req, src) {
			continue
		}
		return n, net.UDPAddrFromAddrPort(src), msg, nil
	}
}

// retransmission answers req from its record, if it retransmits an
// answered request, and reports whether it did.
func (g *Guard) retransmission(pc net.PacketConn, req *sip.Request, src netip.AddrPort) bool {
	a := g.answers()
	a.mu.Lock()
	empty := a.n == 0
	a.mu.Unlock()
	if empty || req.IsAck() {
		return false
	}
	rec, ok := a.get(req, src, time.Now())
	if !ok {
		return false
	}
	g.Retransmissions.Add(1)
	if rec.data != nil {
		pc.WriteTo(rec.data, net.UDPAddrFromAddrPort(rec.to))
	}
	return true
}

// WriteTo normalises sipgo's addresses (IPv4 as 16-byte IPs) so that
// every Network implementation sees the family it expects, and sends
// without a *net.UDPAddr per datagram where the conn allows.
func (g *guardConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	if ap, ok := AddrPortOf(addr); ok {
		if g.fast != nil {
			return g.fast.WriteToUDPAddrPort(b, ap)
		}
		return g.PacketConn.WriteTo(b, net.UDPAddrFromAddrPort(ap))
	}
	return g.PacketConn.WriteTo(b, addr)
}

// endsSomething reports requests that end calls or transactions: they
// pass even when the node is overloaded, so load sheds new work only.
func endsSomething(data []byte) bool {
	for _, m := range []string{"ACK ", "CANCEL ", "BYE "} {
		if len(data) >= len(m) && string(data[:len(m)]) == m {
			return true
		}
	}
	return false
}
