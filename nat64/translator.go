package nat64

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Config configures a Translator. Zero fields take the defaults New
// documents.
type Config struct {
	// Prefix is the RFC 6052 prefix IPv4 hosts appear under; default
	// WellKnownPrefix.
	Prefix netip.Prefix
	// Pool holds the IPv4 addresses IPv6 hosts are translated to; at least
	// one.
	Pool []netip.Addr
	// PortMin and PortMax bound the pool ports (and ICMP identifiers);
	// default 1024-65535.
	PortMin, PortMax uint16
	// MaxSessions bounds the session table (default 16384); MaxPerSource
	// bounds the sessions of one IPv6 /64 (default MaxSessions/8), so one
	// host, even one rotating privacy addresses, cannot take all ports.
	MaxSessions, MaxPerSource int
	// MTU4 and MTU6 are the MTUs of the IPv4 and IPv6 sides (default 1500
	// and 1280).
	MTU4, MTU6 int
	// Addr6 and Addr4 are the translator's own addresses, the sources of
	// the ICMP errors it sends (default: Pool[0], and Pool[0] under
	// Prefix).
	Addr6, Addr4 netip.Addr
	// Session lifetimes; defaults per RFC 6146 §4.
	UDPTimeout, TCPEstTimeout, TCPTransTimeout, ICMPTimeout time.Duration
	// ICMPErrorsPerSecond bounds the ICMP errors the translator itself
	// originates (RFC 4443 §2.4(f), RFC 1812 §4.3.2.8); default 100.
	ICMPErrorsPerSecond int
	// MaxFragments bounds the datagrams whose first fragment's translation
	// is remembered for the fragments after it (default 1024).
	MaxFragments int
	// Now is the clock; default time.Now. Tests inject virtual time.
	Now func() time.Time
}

// Translator is a stateful NAT64 (RFC 6146) translating IP/ICMP per RFC
// 7915 with RFC 6052 addresses. It is safe for concurrent use.
type Translator struct {
	cfg Config
	// pfx is the NAT64 prefix; in a CLAT (clat set: the stateless mode,
	// clat.go) it changes under mu (SetPrefix).
	pfx   prefix
	clat  *prefix
	pool  [][4]byte
	addr6 [16]byte
	addr4 [4]byte

	mu       sync.Mutex
	tab      table
	frags    frags
	ipID     uint16
	rnd      rng
	tokens   float64
	tokensAt time.Time
	// counters; atomic so drops before the lock need not take it.
	out4, out6, dropped, replies, limited atomic.Uint64
}

// Stats counts what the translator did.
type Stats struct {
	Out4, Out6     uint64 // packets translated to IPv4 and to IPv6
	Dropped        uint64
	Replies        uint64 // ICMP errors originated
	RepliesLimited uint64 // ICMP errors suppressed by the rate limit
	BIBs, Sessions int
}

// New checks cfg and returns a Translator.
func New(cfg Config) (*Translator, error) {
	if cfg.Prefix == (netip.Prefix{}) {
		cfg.Prefix = WellKnownPrefix
	}
	pfx, err := newPrefix(cfg.Prefix)
	if err != nil {
		return nil, fmt.Errorf("nat64: config: Prefix: %w", err)
	}
	if len(cfg.Pool) == 0 {
		return nil, errors.New("nat64: config: Pool: no IPv4 address")
	}
	t := &Translator{pfx: pfx}
	for _, a := range cfg.Pool {
		if a = a.Unmap(); !a.Is4() {
			return nil, fmt.Errorf("nat64: config: Pool: %v is not an IPv4 address", a)
		}
		t.pool = append(t.pool, a.Unmap().As4())
	}
	if cfg.PortMin == 0 && cfg.PortMax == 0 {
		cfg.PortMin, cfg.PortMax = 1024, 65535
	}
	if cfg.PortMin == 0 || cfg.PortMax < cfg.PortMin {
		return nil, fmt.Errorf("nat64: config: ports %d-%d: need 1 <= PortMin <= PortMax", cfg.PortMin, cfg.PortMax)
	}
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&cfg.MaxSessions, 16384)
	def(&cfg.MaxPerSource, max(cfg.MaxSessions/8, 1))
	def(&cfg.MTU4, 1500)
	def(&cfg.MTU6, 1280)
	def(&cfg.ICMPErrorsPerSecond, 100)
	def(&cfg.MaxFragments, 1024)
	if cfg.MTU4 < 576 || cfg.MTU6 < 1280 {
		return nil, fmt.Errorf("nat64: config: MTU4 %d, MTU6 %d: below the IPv4 576 / IPv6 1280 minimum", cfg.MTU4, cfg.MTU6)
	}
	dur := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	dur(&cfg.UDPTimeout, DefaultUDPTimeout)
	dur(&cfg.TCPEstTimeout, DefaultTCPEstTimeout)
	dur(&cfg.TCPTransTimeout, DefaultTCPTransTimeout)
	dur(&cfg.ICMPTimeout, DefaultICMPTimeout)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if !cfg.Addr4.IsValid() {
		cfg.Addr4 = netip.AddrFrom4(t.pool[0])
	}
	if !cfg.Addr6.IsValid() {
		cfg.Addr6 = netip.AddrFrom16(pfx.embed(t.pool[0]))
	}
	if !cfg.Addr4.Unmap().Is4() || !cfg.Addr6.Is6() || cfg.Addr6.Is4In6() {
		return nil, fmt.Errorf("nat64: config: Addr4 %v / Addr6 %v: wrong family", cfg.Addr4, cfg.Addr6)
	}
	t.addr4 = cfg.Addr4.Unmap().As4()
	t.addr6 = cfg.Addr6.As16()
	t.cfg = cfg
	t.tab = table{
		bib6:   make(map[bibKey6]*bib),
		bib4:   make(map[bibKey4]*bib),
		sess:   make(map[sessKey]*session),
		adf:    make(map[adfKey]int),
		perSrc: make(map[[8]byte]int),
	}
	t.frags = frags{m: make(map[fragKey]fragEntry), ring: make([]fragQItem, cfg.MaxFragments)}
	now := cfg.Now()
	t.rnd = rng(uint64(now.UnixNano()) | 1)
	t.tokens = float64(cfg.ICMPErrorsPerSecond)
	t.tokensAt = now
	return t, nil
}

// Stats returns the counters and table sizes.
func (t *Translator) Stats() Stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	return Stats{
		Out4: t.out4.Load(), Out6: t.out6.Load(), Dropped: t.dropped.Load(),
		Replies: t.replies.Load(), RepliesLimited: t.limited.Load(),
		BIBs: len(t.tab.bib6), Sessions: len(t.tab.sess),
	}
}

// Expire deletes the sessions whose lifetime is over and returns how many.
// The packet path expires as it goes; a caller with idle periods can call
// Expire from a ticker to free memory.
func (t *Translator) Expire() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.expireLocked(t.cfg.Now())
}

// nextID returns an IPv4 Identification for a packet without DF (RFC
// 6864 §4.1: unique per source, destination and protocol for its
// lifetime; a counter serves).
func (t *Translator) nextID() uint16 {
	t.ipID++
	if t.ipID == 0 {
		t.ipID = 1
	}
	return t.ipID
}

// rng is a xorshift generator: port choice needs unpredictability against
// off-path guessing (RFC 6056), not cryptographic strength, and no
// allocation or lock of its own.
type rng uint64

func (r *rng) next() uint64 {
	x := uint64(*r)
	x ^= x << 13
	x ^= x >> 7
	x ^= x << 17
	*r = rng(x)
	return x
}

// In6 translates pkt, an IPv6 packet towards the NAT64 prefix, into out.
// out should hold len(pkt)+48 bytes: translation never grows an IPv6
// packet, but an ICMPv6 error quoting it is 48 bytes longer (and is
// truncated to fit). On success out[:n] is an IPv4 packet for the uplink and err is
// nil. Otherwise err says why pkt was dropped and, when reply is true,
// out[:n] is an ICMPv6 error to send back to pkt's source (RFC 7915 §5.1,
// RFC 6146 §3.5).
func (t *Translator) In6(pkt, out []byte) (n int, reply bool, err error) {
	h, err := parse6(pkt, false)
	if err != nil {
		return t.drop(err)
	}
	if t.clat != nil {
		return t.clat6(pkt, out, &h)
	}
	dst4, ok := t.pfx.extract(&h.dst)
	if !ok {
		return t.drop(ErrNotPrefix)
	}
	if !unicast6(&h.src) || !unicast4(dst4) {
		return t.drop(ErrBadAddr)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.cfg.Now()
	t.expireLocked(now)
	t.frags.expire(now)
	if h.segLeft != 0 { // RFC 7915 §5.1: Parameter Problem at Segments Left
		return t.reply6Locked(out, pkt, &h, icmp6ParamProblem, 0, uint32(h.segLeft), ErrRoutingHeader, now)
	}
	if h.hlim <= 1 { // RFC 7915 §5.1: decrement; Time Exceeded at zero
		return t.reply6Locked(out, pkt, &h, icmp6TimeExceeded, 0, 0, ErrHopLimit, now)
	}
	if h.proto != protoTCP && h.proto != protoUDP && h.proto != protoICMPv6 {
		return t.drop(ErrProto) // RFC 6146 §3.1: TCP, UDP and ICMP only
	}
	var tu, itu tuple4
	var ihp *hdr6
	var ih hdr6
	if !h.first() {
		e, ok := t.frags.m[frag6Key(&h)]
		if !ok {
			return t.drop(ErrFragment) // no ports, and no first fragment seen
		}
		tu = e.tu4
	} else if h.proto == protoICMPv6 && len(h.l4) >= 8 && isICMP6Error(h.l4[0]) {
		// RFC 6146 §3.5.3: the quoted packet went out to this IPv6 host
		// through the translator; its binding gives the addresses.
		if ih, err = parse6(h.l4[8:], true); err != nil {
			return t.drop(err)
		}
		if !ih.first() || (ih.proto != protoTCP && ih.proto != protoUDP && ih.proto != protoICMPv6) {
			return t.drop(ErrICMPType)
		}
		sp, dp, err := l4ports(ih.proto, ih.l4)
		if err != nil {
			return t.drop(err)
		}
		src4, ok := t.pfx.extract(&ih.src)
		if !ok {
			return t.drop(ErrNoMapping)
		}
		b := t.tab.bib6[bibKey6{ih.dst, dp, protoOf6(ih.proto)}]
		if b == nil || !t.quotedSessionLocked(b, src4, sp, ih.proto == protoICMPv6) {
			return t.drop(ErrNoMapping)
		}
		itu = tuple4{src: src4, dst: b.k4.addr, sport: sp, dport: b.k4.port}
		if ih.proto == protoICMPv6 {
			itu.sport = b.k4.port
		}
		tu = tuple4{src: b.k4.addr, dst: dst4}
		ihp = &ih
	} else {
		sp, dp, err := l4ports(h.proto, h.l4)
		if err != nil {
			return t.drop(err)
		}
		create := true
		var flags uint8
		switch h.proto {
		case protoTCP:
			if len(h.l4) < 20 {
				return t.drop(ErrTruncated)
			}
			flags = h.l4[13]
			create = flags&tcpSYN != 0 // RFC 6146 §3.5.2.2
		case protoICMPv6:
			if h.l4[0] != icmp6Echo && h.l4[0] != icmp6EchoReply {
				return t.drop(ErrICMPType)
			}
			create = h.l4[0] == icmp6Echo
			dp = 0
		}
		k6 := bibKey6{h.src, sp, protoOf6(h.proto)}
		s, err := t.session6Locked(k6, dst4, dp, create, now)
		if err != nil {
			if err == ErrPoolExhausted || err == ErrTableFull || err == ErrSourceLimit {
				// RFC 6146 §3.5.1.1: Destination Unreachable, address
				// unreachable, when no binding can be made.
				return t.reply6Locked(out, pkt, &h, icmp6DstUnreach, 3, 0, err, now)
			}
			return t.drop(err)
		}
		t.touchLocked(s, h.proto, flags, true, now)
		tu = tuple4{src: s.b.k4.addr, dst: dst4, sport: s.b.k4.port, dport: dp}
		if h.proto == protoICMPv6 {
			tu.dport = s.b.k4.port
		}
	}
	n, reply, err = t.finish6Locked(pkt, out, &h, &tu, ihp, &itu, now)
	if err == nil && h.frag && h.more && h.fragOff == 0 {
		t.frags.add(frag6Key(&h), fragEntry{tu4: tu, expires: now.Add(FragmentTimeout)})
	}
	return n, reply, err
}

// finish6Locked writes the IPv4 translation of h with the addresses and
// ports tu (and itu for the packet an ICMPv6 error quotes) into out, or
// the Packet Too Big for its source. Stateful and stateless alike.
func (t *Translator) finish6Locked(pkt, out []byte, h *hdr6, tu *tuple4, ihp *hdr6, itu *tuple4, now time.Time) (int, bool, error) {
	if ipv4HeaderLen+len(h.l4) > t.cfg.MTU4 && ihp == nil {
		// IPv6 routers do not fragment: tell the source (RFC 7915 §5.1).
		mtu := uint32(t.cfg.MTU4 + ipv6HeaderLen - ipv4HeaderLen)
		if h.frag {
			mtu += fragHeaderLen
		}
		return t.reply6Locked(out, pkt, h, icmp6PacketTooBig, 0, mtu, ErrTooBig, now)
	}
	n, err := t.to4(h, tu, ihp, itu, out, false)
	if err != nil {
		t.dropped.Add(1)
		return 0, false, err
	}
	t.out4.Add(1)
	return n, false, nil
}

// In4 translates pkt, an IPv4 packet to a pool address, into out. out
// should hold len(pkt)+48 bytes (the IPv6 and Fragment headers, and the
// growth of a quoted packet). Results as for In6; a reply is an ICMPv4
// error (RFC 7915 §4.1, RFC 6146 §3.5).
func (t *Translator) In4(pkt, out []byte) (n int, reply bool, err error) {
	return t.in4(pkt, out, nil)
}

// In4Split is In4 that also fragments: an IPv4 packet without DF whose
// translation outgrows MTU6 is translated and split into IPv6 fragments
// of at most MTU6 bytes (RFC 7915 §4.1), each passed to emit in turn, and
// In4Split returns n == 0 with a nil error. emit must be done with a
// fragment before it returns: the next one is written over its tail. out
// must hold len(pkt)+56 bytes.
func (t *Translator) In4Split(pkt, out []byte, emit func(frag []byte)) (n int, reply bool, err error) {
	return t.in4(pkt, out, emit)
}

func (t *Translator) in4(pkt, out []byte, emit func([]byte)) (n int, reply bool, err error) {
	h, err := parse4(pkt, false)
	if err != nil {
		return t.drop(err)
	}
	if t.clat != nil {
		return t.clat4(pkt, out, &h, emit)
	}
	if !t.isPool(h.dst) {
		return t.drop(ErrNotPool)
	}
	if !unicast4(h.src) {
		return t.drop(ErrBadAddr)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.cfg.Now()
	t.expireLocked(now)
	t.frags.expire(now)
	if h.ttl <= 1 { // RFC 7915 §4.1
		return t.reply4Locked(out, pkt, &h, icmp4TimeExceeded, 0, 0, ErrHopLimit, now)
	}
	if h.srcRoute { // RFC 7915 §4.1: source route failed
		return t.reply4Locked(out, pkt, &h, icmp4DstUnreach, 5, 0, ErrSourceRoute, now)
	}
	if h.proto != protoTCP && h.proto != protoUDP && h.proto != protoICMP {
		return t.drop(ErrProto)
	}
	var tu, itu tuple6
	var ihp *hdr4
	var ih hdr4
	if !h.first() {
		e, ok := t.frags.m[frag4Key(&h)]
		if !ok {
			return t.drop(ErrFragment)
		}
		tu = e.tu6
	} else if h.proto == protoICMP && len(h.l4) >= 8 && isICMP4Error(h.l4[0]) {
		if ih, err = parse4(h.l4[8:], true); err != nil {
			return t.drop(err)
		}
		if !ih.first() || (ih.proto != protoTCP && ih.proto != protoUDP && ih.proto != protoICMP) {
			return t.drop(ErrICMPType)
		}
		sp, dp, err := l4ports(ih.proto, ih.l4)
		if err != nil {
			return t.drop(err)
		}
		b := t.tab.bib4[bibKey4{ih.src, sp, protoOf4(ih.proto)}]
		if b == nil || !t.quotedSessionLocked(b, ih.dst, dp, ih.proto == protoICMP) {
			return t.drop(ErrNoMapping)
		}
		itu = tuple6{src: b.k6.addr, dst: t.pfx.embed(ih.dst), sport: b.k6.port, dport: dp}
		tu = tuple6{src: t.pfx.embed(h.src), dst: b.k6.addr}
		ihp = &ih
	} else {
		sp, dp, err := l4ports(h.proto, h.l4)
		if err != nil {
			return t.drop(err)
		}
		create := true
		var flags uint8
		switch h.proto {
		case protoTCP:
			if len(h.l4) < 20 {
				return t.drop(ErrTruncated)
			}
			flags = h.l4[13]
			create = flags&tcpSYN != 0
		case protoICMP:
			// Only replies to IPv6-originated queries get through: no
			// static bindings, so an IPv4 echo request has none.
			if h.l4[0] != icmp4EchoReply {
				return t.drop(ErrICMPType)
			}
			create = false
			sp = 0
		}
		s, err := t.session4Locked(bibKey4{h.dst, dp, protoOf4(h.proto)}, h.src, sp, create, now)
		if err != nil {
			return t.drop(err)
		}
		t.touchLocked(s, h.proto, flags, false, now)
		tu = tuple6{src: t.pfx.embed(h.src), dst: s.b.k6.addr, sport: sp, dport: s.b.k6.port}
		if h.proto == protoICMP {
			tu.sport = s.b.k6.port
		}
	}
	n, reply, err = t.finish4Locked(pkt, out, &h, &tu, ihp, &itu, emit, now)
	if err == nil && !reply && h.mf && h.fragOff == 0 {
		t.frags.add(frag4Key(&h), fragEntry{tu6: tu, expires: now.Add(FragmentTimeout)})
	}
	return n, reply, err
}

// finish4Locked writes the IPv6 translation of h with the addresses and
// ports tu (and itu for the packet an ICMPv4 error quotes) into out, or
// into fragments passed to emit, or the Fragmentation Needed for its
// source. Stateful and stateless alike.
func (t *Translator) finish4Locked(pkt, out []byte, h *hdr4, tu *tuple6, ihp *hdr4, itu *tuple6, emit func([]byte), now time.Time) (n int, reply bool, err error) {
	size := ipv6HeaderLen + len(h.l4)
	if h.fragment() {
		size += fragHeaderLen
	}
	if size > t.cfg.MTU6 && ihp == nil {
		if h.df { // RFC 7915 §4.1: Fragmentation Needed, MTU minus the growth
			mtu := t.cfg.MTU6 - (size - len(pkt))
			return t.reply4Locked(out, pkt, h, icmp4DstUnreach, 4, uint32(mtu), ErrTooBig, now)
		}
		if emit == nil {
			return t.drop(ErrNeedFragment)
		}
		if len(out) < size+fragHeaderLen {
			return t.drop(ErrShortBuffer)
		}
		// Translate 8 bytes in, leaving room for a Fragment Header.
		if n, err = t.to6(h, tu, nil, nil, out[fragHeaderLen:], false); err != nil {
			t.dropped.Add(1)
			return 0, false, err
		}
		t.fragment6(out, n, emit)
		n = 0
	} else if n, err = t.to6(h, tu, ihp, itu, out, false); err != nil {
		t.dropped.Add(1)
		return 0, false, err
	}
	t.out6.Add(1)
	return n, false, nil
}

// quotedSessionLocked reports whether the packet an ICMP error quotes
// belongs to a session of b with the remote raddr:rport: errors about
// flows the translator never carried are dropped, so an off-path host
// cannot reset or shrink the MTU of flows by guessing a pool port (the
// check stateful firewalls make for "related" ICMP).
func (t *Translator) quotedSessionLocked(b *bib, raddr [4]byte, rport uint16, icmp bool) bool {
	if icmp {
		rport = 0
	}
	_, ok := t.tab.sess[sessKey{b.k4, raddr, rport}]
	return ok
}

// touchLocked refreshes a session for a packet that passes.
func (t *Translator) touchLocked(s *session, proto, flags uint8, from6 bool, now time.Time) {
	switch proto {
	case protoTCP:
		t.tcpLocked(s, flags, from6, now)
	case protoUDP:
		t.refreshLocked(s, classUDP, now)
	default:
		t.refreshLocked(s, classICMP, now)
	}
}

func (t *Translator) drop(err error) (int, bool, error) {
	t.dropped.Add(1)
	return 0, false, err
}

func (t *Translator) isPool(a [4]byte) bool {
	for _, p := range t.pool {
		if p == a {
			return true
		}
	}
	return false
}

// protoOf6 and protoOf4 name a BIB's protocol the same on both sides.
func protoOf6(p uint8) uint8 {
	if p == protoICMPv6 {
		return protoICMP
	}
	return p
}

func protoOf4(p uint8) uint8 { return p }

// unicast4 rejects addresses no host can have: this network, loopback,
// multicast, reserved and broadcast (RFC 7915 §4.1 leaves their handling
// to the translator; RFC 1812 §5.3.7 drops them).
func unicast4(a [4]byte) bool {
	return a[0] != 0 && a[0] != 127 && a[0] < 224
}

// unicast6 rejects the unspecified, loopback and multicast sources.
func unicast6(a *[16]byte) bool {
	if a[0] == 0xff {
		return false
	}
	for i := 0; i < 15; i++ {
		if a[i] != 0 {
			return true
		}
	}
	return false // :: and ::1
}

// allowErrorLocked spends a token of the ICMP error rate limit.
func (t *Translator) allowErrorLocked(now time.Time) bool {
	r := float64(t.cfg.ICMPErrorsPerSecond)
	t.tokens = min(r, t.tokens+now.Sub(t.tokensAt).Seconds()*r)
	t.tokensAt = now
	if t.tokens < 1 {
		t.limited.Add(1)
		return false
	}
	t.tokens--
	return true
}

// reply6Locked writes an ICMPv6 error (RFC 4443) about pkt to its source
// into out, quoting as much of pkt as fits in the minimum MTU, unless pkt
// is itself an ICMP error or the rate limit is spent (RFC 4443 §2.4(e),
// (f)). It returns cause as the reason pkt was not translated.
func (t *Translator) reply6Locked(out, pkt []byte, h *hdr6, typ, code uint8, param uint32, cause error, now time.Time) (int, bool, error) {
	t.dropped.Add(1)
	if (h.proto == protoICMPv6 && (len(h.l4) == 0 || isICMP6Error(h.l4[0]))) || !h.first() || !t.allowErrorLocked(now) {
		return 0, false, cause
	}
	lim := min(len(out), icmpv6MinErrorLimit)
	if lim < ipv6HeaderLen+8 {
		return 0, false, cause
	}
	q := copy(out[ipv6HeaderLen+8:lim], pkt)
	plen := 8 + q
	put6(out, 0, plen, protoICMPv6, 64, &t.addr6, &h.src)
	m := out[ipv6HeaderLen:]
	m[0], m[1], m[2], m[3] = typ, code, 0, 0
	binary.BigEndian.PutUint32(m[4:], param)
	binary.BigEndian.PutUint16(m[2:], checksum(sum(pseudo6(&t.addr6, &h.src, plen, protoICMPv6), m[:plen])))
	t.replies.Add(1)
	return ipv6HeaderLen + plen, true, cause
}

// reply4Locked writes an ICMPv4 error (RFC 792) about pkt to its source,
// quoting what fits in 576 bytes (RFC 1812 §4.3.2.3). param is the MTU of
// a Fragmentation Needed (RFC 1191) message.
func (t *Translator) reply4Locked(out, pkt []byte, h *hdr4, typ, code uint8, param uint32, cause error, now time.Time) (int, bool, error) {
	t.dropped.Add(1)
	if (h.proto == protoICMP && (len(h.l4) == 0 || isICMP4Error(h.l4[0]))) || !h.first() || !t.allowErrorLocked(now) {
		return 0, false, cause
	}
	lim := min(len(out), icmpv4ErrorLimit)
	if lim < ipv4HeaderLen+8 {
		return 0, false, cause
	}
	q := copy(out[ipv4HeaderLen+8:lim], pkt)
	n := ipv4HeaderLen + 8 + q
	put4(out, 0, n, t.nextID(), 0, 64, protoICMP, &t.addr4, &h.src)
	m := out[ipv4HeaderLen:n]
	m[0], m[1], m[2], m[3] = typ, code, 0, 0
	binary.BigEndian.PutUint32(m[4:], param)
	binary.BigEndian.PutUint16(m[2:], checksum(sum(0, m)))
	t.replies.Add(1)
	return n, true, cause
}

// fragment6 splits the IPv6 packet at buf[8:8+n] into fragments of at
// most MTU6 bytes and passes each to emit (RFC 8200 §4.5). A packet that
// is already a fragment (it has a Fragment Header) is split further,
// keeping its Identification and offsetting its pieces. Each fragment's
// 48 header bytes are written over the tail of the fragment before it,
// which emit has finished with.
func (t *Translator) fragment6(buf []byte, n int, emit func([]byte)) {
	var hdr [ipv6HeaderLen]byte
	var base int // where the fragmentable part starts
	var proto uint8
	var id uint32
	var off0 int
	var more0 bool
	pk := buf[fragHeaderLen : fragHeaderLen+n]
	if pk[6] == nhFragment {
		f := pk[ipv6HeaderLen:]
		proto, id = f[0], binary.BigEndian.Uint32(f[4:])
		fo := binary.BigEndian.Uint16(f[2:])
		off0, more0 = int(fo>>3)*8, fo&1 != 0
		copy(hdr[:], pk[:ipv6HeaderLen])
		base = fragHeaderLen + ipv6HeaderLen + fragHeaderLen
	} else {
		proto = pk[6]
		copy(hdr[:], pk[:ipv6HeaderLen])
		id = uint32(t.nextID())
		base = fragHeaderLen + ipv6HeaderLen
	}
	hdr[6] = nhFragment
	end := fragHeaderLen + n
	chunk := (t.cfg.MTU6 - ipv6HeaderLen - fragHeaderLen) &^ 7
	for at := base; at < end; at += chunk {
		stop := min(at+chunk, end)
		last := stop == end
		h := buf[at-ipv6HeaderLen-fragHeaderLen : stop]
		copy(h, hdr[:])
		binary.BigEndian.PutUint16(h[4:], uint16(fragHeaderLen+stop-at))
		f := h[ipv6HeaderLen:]
		f[0], f[1] = proto, 0
		fo := uint16((off0+at-base)/8) << 3
		if !last || more0 {
			fo |= 1
		}
		binary.BigEndian.PutUint16(f[2:], fo)
		binary.BigEndian.PutUint32(f[4:], id)
		emit(h)
	}
}
