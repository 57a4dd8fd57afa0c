package memnet

import (
	"fmt"
	"net/netip"
	"syscall"
	"time"
)

// headerLen is the IPv6 + UDP header a datagram spends of the MTU. IPv4
// needs only 28 bytes; using one figure keeps payload limits the same for
// both families, which is what a dual-stack service has to plan for anyway.
const headerLen = 48

// limitedBroadcast is 255.255.255.255 (RFC 919): every host on the segment.
var limitedBroadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// PacketHandler receives a datagram in the handler face. pkt is a fresh
// copy that nobody else holds: the handler may keep or modify it. from has
// the receiving interface as zone when it is link-local.
type PacketHandler func(pkt []byte, from netip.AddrPort, ifc *Interface)

// HandlePacket registers fn for UDP datagrams arriving on ifc for port:
// unicast to ifc's addresses, and multicast and broadcast received on ifc.
// A handler takes precedence over sockets bound to the same port. A nil fn
// removes the registration. Handlers run on the clock's goroutine (the
// simulator's, or a timer goroutine with RealClock), one at a time per link
// and in arrival order, never under the network's lock.
func (h *Host) HandlePacket(ifc *Interface, port uint16, fn PacketHandler) {
	h.net.mu.Lock()
	defer h.net.mu.Unlock()
	h.mustOwn(ifc)
	for i := range ifc.handlers {
		if ifc.handlers[i].port == port {
			if fn == nil {
				ifc.handlers = append(ifc.handlers[:i:i], ifc.handlers[i+1:]...)
			} else {
				ifc.handlers[i].fn = fn
			}
			return
		}
	}
	if fn != nil {
		ifc.handlers = append(ifc.handlers, portHandler{port, fn})
	}
}

// Send sends a UDP datagram from ifc, source port fromPort, without a
// socket: the handler face for code that runs inside clock events. to must
// be on-link (a neighbour's address, link-local, multicast or broadcast) or
// one of the host's own addresses; its zone is ignored. pkt is copied.
// Like a kernel sending UDP, Send reports local errors (no link, too big,
// not on-link) but not losses on the way.
func (ifc *Interface) Send(fromPort uint16, to netip.AddrPort, pkt []byte) error {
	h := ifc.host
	h.net.mu.Lock()
	defer h.net.mu.Unlock()
	dst := to.Addr().Unmap().WithZone("")
	src := netip.AddrPortFrom(ifc.sourceFor(dst), fromPort)
	out, rcv := ifc, (*Interface)(nil)
	if dst.IsLoopback() {
		out, rcv, src = h.lo, h.lo, netip.AddrPortFrom(dst, fromPort)
	}
	if err := h.net.sendLocked(out, rcv, src, netip.AddrPortFrom(dst, to.Port()), pkt); err != nil {
		return fmt.Errorf("memnet: send from %s/%s to %v: %w", h.name, ifc.name, to, err)
	}
	return nil
}

type kind uint8

const (
	unicast kind = iota
	multicast
	broadcast
)

// packet is a datagram in flight. Addresses are zone-less: the zone is the
// receiving interface, added on delivery.
type packet struct {
	due      int64 // Network.nanos
	buf      []byte
	src, dst netip.AddrPort
	from     *Interface // sender: never a receiver of its own flood
	to       *Interface // receiver of a unicast; nil for a flood
	kind     kind
}

type call struct {
	fn   PacketHandler
	pkt  []byte
	from netip.AddrPort
	ifc  *Interface
}

// routeLocked picks the interface a socket's datagram to dst leaves
// through, the way a host whose routing table holds only on-link routes
// would. For local delivery it returns (h.lo, receiving interface). bound is
// the socket's interface, if it is bound to one: it wins for link-scoped
// destinations, which are ambiguous on a host with several interfaces.
func (h *Host) routeLocked(dst netip.Addr, zone string, bound *Interface) (out, to *Interface, err error) {
	if dst.IsLoopback() {
		return h.lo, h.lo, nil
	}
	if zone != "" {
		ifc := h.interfaceLocked(zone)
		if ifc == nil {
			return nil, nil, fmt.Errorf("no interface %q on host %s: %w", zone, h.name, syscall.ENODEV)
		}
		if h.addrs[dst] == ifc {
			return h.lo, ifc, nil
		}
		return ifc, nil, nil
	}
	if own := h.addrs[dst]; own != nil {
		return h.lo, own, nil
	}
	if dst.IsMulticast() || dst == limitedBroadcast || dst.IsLinkLocalUnicast() {
		if bound != nil && bound != h.lo {
			return bound, nil, nil
		}
		var cand *Interface
		count := 0
		for _, ifc := range h.ifcs {
			if ifc.hasFamily(dst.Is4()) {
				cand, count = ifc, count+1
			}
		}
		if count == 0 && dst.Is4() && len(h.ifcs) == 1 {
			// A DHCP client broadcasts before it has an address.
			cand, count = h.ifcs[0], 1
		}
		if count != 1 {
			return nil, nil, fmt.Errorf("%v is link-scoped and host %s has %d candidate interfaces; add a zone or bind to an interface: %w",
				dst, h.name, count, syscall.ENETUNREACH)
		}
		return cand, nil, nil
	}
	if bound != nil && bound.onLink(dst) {
		return bound, nil, nil
	}
	for _, ifc := range h.ifcs {
		if ifc.onLink(dst) {
			return ifc, nil, nil
		}
	}
	return nil, nil, syscall.ENETUNREACH
}

func (ifc *Interface) hasFamily(v4 bool) bool {
	for _, p := range ifc.addrs {
		if p.Addr().Is4() == v4 {
			return true
		}
	}
	return false
}

func (ifc *Interface) onLink(dst netip.Addr) bool {
	for _, p := range ifc.addrs {
		if p.Contains(dst) {
			return true
		}
	}
	return false
}

// sourceFor picks the source address for dst (RFC 6724 reduced to what
// matters here): link-local for link-scoped IPv6 destinations, else an
// address whose prefix contains dst, else the first of the family, global
// before link-local; the unspecified address if there is none (a DHCP
// client).
func (ifc *Interface) sourceFor(dst netip.Addr) netip.Addr {
	linkScope := dst.Is6() && (dst.IsLinkLocalUnicast() || dst.IsLinkLocalMulticast() || dst.IsInterfaceLocalMulticast())
	var first netip.Addr
	for _, p := range ifc.addrs {
		a := p.Addr()
		if a.Is4() != dst.Is4() {
			continue
		}
		if p.Contains(dst) || linkScope && a.IsLinkLocalUnicast() {
			return a
		}
		if !first.IsValid() || first.IsLinkLocalUnicast() && !a.IsLinkLocalUnicast() {
			first = a
		}
	}
	if first.IsValid() {
		return first
	}
	if dst.Is4() {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}

func (ifc *Interface) classify(dst netip.Addr) kind {
	if dst.IsMulticast() {
		return multicast
	}
	if dst.Is4() {
		if dst == limitedBroadcast {
			return broadcast
		}
		for _, b := range ifc.bcast {
			if b == dst {
				return broadcast
			}
		}
	}
	return unicast
}

// sendLocked puts a datagram on out's link; to is the receiver when the
// caller already knows it (local delivery). Errors are bare errnos; callers
// add context. This is the hot path of the simulator: one map lookup keyed
// by address, one copy of the payload, no allocation for the clock event.
func (n *Network) sendLocked(out, to *Interface, src, dst netip.AddrPort, b []byte) error {
	l := out.link
	if l == nil {
		return syscall.ENETDOWN
	}
	if len(b) > out.mtu-headerLen {
		l.stats.TooBig++
		l.stats.Dropped++
		return syscall.EMSGSIZE
	}
	k := unicast
	if to == nil {
		k = out.classify(dst.Addr())
		if k == unicast {
			to = l.addrs[dst.Addr()]
			if to == nil || to.host == out.host {
				h := out.host
				if own := h.addrs[dst.Addr()]; own != nil {
					return n.sendLocked(h.lo, own, src, dst, b)
				}
				if !out.onLink(dst.Addr()) {
					return syscall.ENETUNREACH
				}
				l.stats.Sent++
				l.stats.NoNeighbor++
				l.stats.Dropped++
				return nil
			}
		}
	}
	l.stats.Sent++
	cfg := &l.cfg
	switch {
	case cfg.Down:
		l.stats.Down++
	case cfg.Loss > 0 && n.rng.Float64() < cfg.Loss:
		l.stats.Loss++
	case l.q.n >= n.linkQ:
		l.stats.QueueFull++
	default:
		now := n.nanos()
		due := now + int64(cfg.Delay)
		if cfg.Jitter > 0 {
			due += n.rng.Int64N(int64(cfg.Jitter))
		}
		// A transmit queue is FIFO: jitter may stretch a packet's delay
		// but never lets it overtake the one before.
		due = max(due, l.lastDue)
		l.lastDue = due
		l.q.push(packet{due: due, buf: append([]byte(nil), b...), src: src, dst: dst, from: out, to: to, kind: k})
		if !l.armed && !l.firing {
			l.armLocked(now)
		}
		return nil
	}
	l.stats.Dropped++
	return nil
}

// armLocked schedules deliver for the head of the queue. One pending event
// per link, not per packet: with RealClock, per-packet timers would race
// each other on separate goroutines and reorder the link.
func (l *Link) armLocked(now int64) {
	l.armed = true
	d := time.Duration(l.q.front().due - now)
	if vc := l.net.vc; vc != nil {
		vc.schedule(d, l.fire)
	} else {
		l.net.clock.AfterFunc(d, l.fire)
	}
}

// deliver hands every due packet to its receivers: sockets directly, under
// the lock; handlers after releasing it, in order. Only one deliver per link
// runs at a time (firing), so handlers see the link's order even when the
// real clock fires a new timer while handlers of the last batch still run.
func (l *Link) deliver() {
	n := l.net
	n.mu.Lock()
	l.armed = false
	if l.firing {
		n.mu.Unlock()
		return
	}
	l.firing = true
	for {
		now := n.nanos()
		calls := l.calls[:0]
		for l.q.n > 0 && l.q.front().due <= now {
			p := l.q.pop()
			calls = l.deliverLocked(&p, calls)
		}
		l.calls = calls
		if len(calls) == 0 {
			l.firing = false
			if l.q.n > 0 && !l.armed {
				l.armLocked(now)
			}
			n.mu.Unlock()
			return
		}
		n.mu.Unlock()
		for i := range calls {
			c := &calls[i]
			c.fn(c.pkt, c.from, c.ifc)
			*c = call{} // let the GC have the payload
		}
		n.mu.Lock()
	}
}

func (l *Link) deliverLocked(p *packet, calls []call) []call {
	if l.cfg.Down {
		l.stats.Down++
		l.stats.Dropped++
		return calls
	}
	used := false
	if p.to != nil {
		return l.receiveLocked(p.to, p, &used, calls)
	}
	for _, ifc := range l.members {
		if ifc != p.from {
			calls = l.receiveLocked(ifc, p, &used, calls)
		}
	}
	return calls
}

// take returns the payload for one receiver: the packet's own copy for the
// first, a fresh one for each further receiver of a flood, so every handler
// owns what it gets.
func take(p *packet, used *bool) []byte {
	if !*used {
		*used = true
		return p.buf
	}
	return append([]byte(nil), p.buf...)
}

func (l *Link) receiveLocked(ifc *Interface, p *packet, used *bool, calls []call) []call {
	port := p.dst.Port()
	for i := range ifc.handlers {
		if ifc.handlers[i].port == port {
			l.stats.Delivered++
			return append(calls, call{ifc.handlers[i].fn, take(p, used), ifc.zoned(p.src), ifc})
		}
	}
	h := ifc.host
	switch p.kind {
	case unicast:
		if c := h.udp.lookup(port, p.dst.Addr(), ifc); c != nil && c.acceptsLocked(p.src) {
			c.enqueueLocked(l, take(p, used), p.src, ifc)
			return calls
		}
	case broadcast:
		// Sockets bound to a unicast address do not see broadcasts (Linux).
		if c := h.udp.lookup(port, limitedBroadcast, ifc); c != nil && c.acceptsLocked(p.src) {
			c.enqueueLocked(l, take(p, used), p.src, ifc)
			return calls
		}
	case multicast:
		got := false
		for _, c := range ifc.mcast {
			if c.group == p.dst.Addr() && c.port == port {
				c.enqueueLocked(l, take(p, used), p.src, ifc)
				got = true
			}
		}
		if got {
			return calls
		}
	}
	l.stats.NoReceiver++
	return calls
}

// zoned adds ifc as zone to a link-local source. WithZone interns the zone
// string on every call; the per-interface cache keeps that hashing off the
// delivery path. It is bounded by the neighbours a segment can have.
func (ifc *Interface) zoned(ap netip.AddrPort) netip.AddrPort {
	a := ap.Addr()
	if !a.Is6() || !a.IsLinkLocalUnicast() {
		return ap
	}
	if a == ifc.lastSrc {
		return netip.AddrPortFrom(ifc.lastZoned, ap.Port()) // a point-to-point link has one peer
	}
	z, ok := ifc.zones[a]
	if !ok {
		if ifc.zones == nil || len(ifc.zones) >= 1024 {
			ifc.zones = make(map[netip.Addr]netip.Addr)
		}
		z = a.WithZone(ifc.name)
		ifc.zones[a] = z
	}
	ifc.lastSrc, ifc.lastZoned = a, z
	return netip.AddrPortFrom(z, ap.Port())
}

// fifo is a growable ring buffer; callers bound its length.
type fifo[T any] struct {
	buf  []T // len is 0 or a power of two
	head int
	n    int
}

func (q *fifo[T]) push(v T) {
	if q.n == len(q.buf) {
		nb := make([]T, max(8, 2*len(q.buf)))
		k := copy(nb, q.buf[q.head:])
		copy(nb[k:], q.buf[:q.head])
		q.buf, q.head = nb, 0
	}
	q.buf[(q.head+q.n)&(len(q.buf)-1)] = v
	q.n++
}

func (q *fifo[T]) front() *T { return &q.buf[q.head] }

func (q *fifo[T]) pop() T {
	var zero T
	v := q.buf[q.head]
	q.buf[q.head] = zero
	q.head = (q.head + 1) & (len(q.buf) - 1)
	q.n--
	return v
}
