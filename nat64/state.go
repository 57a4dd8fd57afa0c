package nat64

import "time"

// Session lifetimes (RFC 6146 §4).
const (
	DefaultUDPTimeout      = 5 * time.Minute             // UDP_Min
	DefaultTCPEstTimeout   = 2*time.Hour + 4*time.Minute // TCP_Est
	DefaultTCPTransTimeout = 4 * time.Minute             // TCP_Trans
	DefaultICMPTimeout     = 60 * time.Second            // ICMP_Default
)

// Expiry classes: every session in a class has the same lifetime, so a
// FIFO list refreshed by moving to the tail stays sorted by expiry and
// expiring is popping the head (no scan, no heap).
const (
	classUDP = iota
	classICMP
	classTCPEst
	classTCPTrans
	nClasses
)

// TCP states of RFC 6146 §3.5.2.2 (CLOSED is "no session").
const (
	tcpV6Init = iota + 1
	tcpV4Init
	tcpEstablished
	tcpV4FinRcv
	tcpV6FinRcv
	tcpV4V6FinRcv
	tcpTrans
)

const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
)

// bibKey6 is an IPv6 transport address, bibKey4 an IPv4 one from the
// pool; for ICMP the port is the query identifier.
type bibKey6 struct {
	addr  [16]byte
	port  uint16
	proto uint8
}

type bibKey4 struct {
	addr  [4]byte
	port  uint16
	proto uint8
}

// bib is a Binding Information Base entry (RFC 6146 §3.1): one IPv6
// transport address bound to one pool transport address for as long as it
// has sessions (endpoint-independent mapping, RFC 6146 §3.5.1).
type bib struct {
	k6       bibKey6
	k4       bibKey4
	sessions int
}

// sessKey names a session by its IPv4 side: the BIB's pool transport
// address and the remote IPv4 transport address (port 0 for ICMP).
type sessKey struct {
	local bibKey4
	raddr [4]byte
	rport uint16
}

// adfKey counts the sessions a BIB entry has with one remote address:
// address-dependent filtering admits IPv4 packets from any port of it.
type adfKey struct {
	local bibKey4
	raddr [4]byte
}

type session struct {
	key        sessKey
	b          *bib
	src64      [8]byte // IPv6 /64 of the source, for per-source limits
	expires    time.Time
	class      int
	state      int
	prev, next *session
}

// list is an intrusive doubly linked FIFO of sessions.
type list struct{ head, tail *session }

func (l *list) push(s *session) {
	s.prev, s.next = l.tail, nil
	if l.tail != nil {
		l.tail.next = s
	} else {
		l.head = s
	}
	l.tail = s
}

func (l *list) remove(s *session) {
	if s.prev != nil {
		s.prev.next = s.next
	} else {
		l.head = s.next
	}
	if s.next != nil {
		s.next.prev = s.prev
	} else {
		l.tail = s.prev
	}
	s.prev, s.next = nil, nil
}

// table is the BIB and session table, guarded by Translator.mu.
type table struct {
	bib6   map[bibKey6]*bib
	bib4   map[bibKey4]*bib
	sess   map[sessKey]*session
	adf    map[adfKey]int
	perSrc map[[8]byte]int
	lists  [nClasses]list
}

func (t *Translator) lifetime(class int) time.Duration {
	switch class {
	case classUDP:
		return t.cfg.UDPTimeout
	case classICMP:
		return t.cfg.ICMPTimeout
	case classTCPEst:
		return t.cfg.TCPEstTimeout
	}
	return t.cfg.TCPTransTimeout
}

// refreshLocked restarts s's lifetime in class.
func (t *Translator) refreshLocked(s *session, class int, now time.Time) {
	t.tab.lists[s.class].remove(s)
	s.class = class
	s.expires = now.Add(t.lifetime(class))
	t.tab.lists[class].push(s)
}

// expireLocked deletes every session whose lifetime is over, and every BIB
// entry left without sessions (RFC 6146 §3.5.1, §3.5.2).
func (t *Translator) expireLocked(now time.Time) int {
	n := 0
	for c := range t.tab.lists {
		for s := t.tab.lists[c].head; s != nil && !now.Before(s.expires); s = t.tab.lists[c].head {
			t.deleteLocked(s)
			n++
		}
	}
	return n
}

func (t *Translator) deleteLocked(s *session) {
	tb := &t.tab
	tb.lists[s.class].remove(s)
	delete(tb.sess, s.key)
	ak := adfKey{s.key.local, s.key.raddr}
	if tb.adf[ak] <= 1 {
		delete(tb.adf, ak)
	} else {
		tb.adf[ak]--
	}
	if tb.perSrc[s.src64] <= 1 {
		delete(tb.perSrc, s.src64)
	} else {
		tb.perSrc[s.src64]--
	}
	b := s.b
	b.sessions--
	if b.sessions == 0 {
		delete(tb.bib6, b.k6)
		delete(tb.bib4, b.k4)
	}
}

// allocLocked binds k6 to a free pool transport address. The pool address
// is chosen by a hash of the IPv6 source so one host keeps one IPv4
// address ("paired" pooling, RFC 4787 REQ-2, RFC 6146 §3.5.1.1); the port
// starts at a random point (RFC 6056) and probes a bounded number of
// slots.
func (t *Translator) allocLocked(k6 bibKey6) (bibKey4, bool) {
	span := int(t.cfg.PortMax) - int(t.cfg.PortMin) + 1
	h := uint32(2166136261)
	for _, c := range k6.addr {
		h = (h ^ uint32(c)) * 16777619
	}
	for i := range t.pool {
		a := t.pool[(int(h)%len(t.pool)+len(t.pool)+i)%len(t.pool)]
		start := int(t.rnd.next() % uint64(span))
		for j := 0; j < min(span, 4096); j++ {
			k4 := bibKey4{addr: a, port: t.cfg.PortMin + uint16((start+j)%span), proto: k6.proto}
			if _, used := t.tab.bib4[k4]; !used {
				return k4, true
			}
		}
	}
	return bibKey4{}, false
}

// session6Locked finds or creates the session for an IPv6 packet from k6
// to raddr:rport. create says whether this packet may open one.
func (t *Translator) session6Locked(k6 bibKey6, raddr [4]byte, rport uint16, create bool, now time.Time) (*session, error) {
	tb := &t.tab
	b := tb.bib6[k6]
	if b != nil {
		if s := tb.sess[sessKey{b.k4, raddr, rport}]; s != nil {
			return s, nil
		}
	}
	if !create {
		return nil, ErrNotSYN
	}
	if len(tb.sess) >= t.cfg.MaxSessions {
		return nil, ErrTableFull
	}
	var src64 [8]byte
	copy(src64[:], k6.addr[:8])
	if tb.perSrc[src64] >= t.cfg.MaxPerSource {
		return nil, ErrSourceLimit
	}
	if b == nil {
		k4, ok := t.allocLocked(k6)
		if !ok {
			return nil, ErrPoolExhausted
		}
		b = &bib{k6: k6, k4: k4}
		tb.bib6[k6] = b
		tb.bib4[k4] = b
	}
	return t.addSessionLocked(b, raddr, rport, src64, now), nil
}

func (t *Translator) addSessionLocked(b *bib, raddr [4]byte, rport uint16, src64 [8]byte, now time.Time) *session {
	tb := &t.tab
	s := &session{key: sessKey{b.k4, raddr, rport}, b: b, src64: src64}
	b.sessions++
	tb.sess[s.key] = s
	tb.adf[adfKey{b.k4, raddr}]++
	tb.perSrc[src64]++
	s.class = classUDP
	tb.lists[classUDP].push(s)
	return s
}

// session4Locked finds the session for an IPv4 packet from raddr:rport to
// the pool transport address k4. Endpoint-independent mapping with
// address-dependent filtering (RFC 4787 §5, RFC 6146 §3.5.1.1): a packet
// from a new port of a remote address the binding already talks to opens
// a session; anything else is dropped.
func (t *Translator) session4Locked(k4 bibKey4, raddr [4]byte, rport uint16, create bool, now time.Time) (*session, error) {
	tb := &t.tab
	b := tb.bib4[k4]
	if b == nil {
		return nil, ErrNoMapping
	}
	if s := tb.sess[sessKey{k4, raddr, rport}]; s != nil {
		return s, nil
	}
	if tb.adf[adfKey{k4, raddr}] == 0 {
		return nil, ErrFiltered
	}
	if !create {
		return nil, ErrNotSYN
	}
	if len(tb.sess) >= t.cfg.MaxSessions {
		return nil, ErrTableFull
	}
	var src64 [8]byte
	copy(src64[:], b.k6.addr[:8])
	if tb.perSrc[src64] >= t.cfg.MaxPerSource {
		return nil, ErrSourceLimit
	}
	return t.addSessionLocked(b, raddr, rport, src64, now), nil
}

// tcpLocked advances the TCP state machine of RFC 6146 §3.5.2.2 for a
// segment with the given flags, from the IPv6 side when from6, and sets
// the session's lifetime.
func (t *Translator) tcpLocked(s *session, flags uint8, from6 bool, now time.Time) {
	class := classTCPEst
	switch {
	case s.state == 0: // new session, opened by a SYN
		s.state = tcpV6Init
		if !from6 {
			s.state = tcpV4Init
		}
		class = classTCPTrans
	case flags&tcpRST != 0:
		s.state = tcpTrans
		class = classTCPTrans
	case s.state == tcpV6Init || s.state == tcpV4Init:
		if flags&tcpSYN != 0 && from6 == (s.state == tcpV4Init) {
			s.state = tcpEstablished
		} else {
			class = classTCPTrans
		}
	case s.state == tcpEstablished || s.state == tcpTrans:
		s.state = tcpEstablished
		if flags&tcpFIN != 0 {
			s.state = tcpV4FinRcv
			if from6 {
				s.state = tcpV6FinRcv
			}
		}
	case s.state == tcpV4FinRcv || s.state == tcpV6FinRcv:
		if flags&tcpFIN != 0 && from6 == (s.state == tcpV4FinRcv) {
			s.state = tcpV4V6FinRcv
			class = classTCPTrans
		}
	case s.state == tcpV4V6FinRcv:
		return // lifetime left as it is (RFC 6146 §3.5.2.2)
	}
	t.refreshLocked(s, class, now)
}
