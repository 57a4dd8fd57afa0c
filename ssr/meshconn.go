package ssr

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sipmesh/sipmesh/netx"
)

// Mesh socket bounds.
const (
	// meshQueue bounds the datagrams a mesh socket holds unread; more are
	// dropped and counted, as a kernel UDP socket does when its receive
	// buffer is full.
	meshQueue = 256
	// Ephemeral ports for ListenPacket(0): the IANA dynamic range (RFC 6335 §6).
	ephemeralLo = 49152
	ephemeralHi = 65535
)

// ListenPacket opens a mesh socket bound to [mesh address]:port; port 0
// picks a free port from the dynamic range. Datagrams sent to it with
// WriteTo travel over the mesh with exact delivery; its addresses are
// *net.UDPAddr, so code written for UDP sockets (SIP, RTP, DNS) runs on it
// unchanged. It is closed when Run returns.
func (r *Router) ListenPacket(port uint16) (net.PacketConn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closing {
		return nil, fmt.Errorf("ssr: listen on mesh port %d: %w", port, ErrRouterClosed)
	}
	if port == 0 {
		for range ephemeralHi - ephemeralLo + 1 {
			p := r.nextEph
			r.nextEph++
			if r.nextEph < ephemeralLo {
				r.nextEph = ephemeralLo
			}
			if r.conns[p] == nil {
				port = p
				break
			}
		}
		if port == 0 {
			return nil, fmt.Errorf("ssr: listen on mesh port 0: no free ephemeral port: %w", ErrPortInUse)
		}
	}
	if r.conns[port] != nil {
		return nil, fmt.Errorf("ssr: listen on [%s]:%d: %w", r.addr, port, ErrPortInUse)
	}
	c := &meshConn{
		r:      r,
		port:   port,
		laddr:  &net.UDPAddr{IP: r.addr.AsSlice(), Port: int(port)},
		q:      make(chan meshPacket, meshQueue),
		closed: make(chan struct{}),
	}
	r.conns[port] = c
	return c, nil
}

// closeMeshConns closes every mesh socket when the router stops, so that
// their readers see net.ErrClosed instead of waiting forever.
func (r *Router) closeMeshConns() {
	r.mu.Lock()
	cs := make([]*meshConn, 0, len(r.conns))
	for _, c := range r.conns {
		cs = append(cs, c)
	}
	r.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
}

// meshPacket is a datagram queued at a mesh socket.
type meshPacket struct {
	src     NodeID
	srcPort uint16
	payload []byte // owned by the socket (the Node hands over a copy)
	hops    int
}

// meshConn is a mesh socket: a net.PacketConn on the node's mesh address.
type meshConn struct {
	r      *Router
	port   uint16
	laddr  *net.UDPAddr
	q      chan meshPacket
	closed chan struct{}
	once   sync.Once
	rd, wd deadline
	drops  atomic.Uint64
	// unreach, when set, hears the unreachable reports of datagrams sent
	// to this socket's port number (NotifyUnreachable).
	unreach atomic.Pointer[func(Unreachable)]
}

// NotifyUnreachable has fn called with every report that a datagram sent
// to a node's port c.port (this socket's own number: a protocol that
// talks port to port, like meship's IP packets) could not be delivered.
// Without it such reports are only counted (unreachable_reports). fn runs
// with the router's core mutex held, on whichever goroutine made the Node
// call (a link reader, a writer, the timer goroutine): it must not block
// nor call the router. A mesh socket returned by ListenPacket implements
// it; nil stops the calls.
func (c *meshConn) NotifyUnreachable(fn func(Unreachable)) {
	if fn == nil {
		c.unreach.Store(nil)
		return
	}
	c.unreach.Store(&fn)
}

var _ net.PacketConn = (*meshConn)(nil)

// enqueue is called with the router's core mutex held and must not block:
// a full queue drops the datagram and counts it.
func (c *meshConn) enqueue(p meshPacket) {
	select {
	case <-c.closed:
		return
	default:
	}
	select {
	case c.q <- p:
	default:
		c.drops.Add(1)
		c.r.stats.queueFull.Add(1)
	}
}

func (c *meshConn) opError(op string, addr net.Addr, err error) error {
	return &net.OpError{Op: op, Net: "udp", Source: c.laddr, Addr: addr, Err: err}
}

// ReadFromUDPAddrPort reads one datagram without allocating an address.
func (c *meshConn) ReadFromUDPAddrPort(b []byte) (int, netip.AddrPort, error) {
	// A closed socket or a passed deadline wins over queued data, as in
	// package net.
	select {
	case <-c.closed:
		return 0, netip.AddrPort{}, c.opError("read", nil, net.ErrClosed)
	case <-c.rd.wait():
		return 0, netip.AddrPort{}, c.opError("read", nil, os.ErrDeadlineExceeded)
	default:
	}
	select {
	case p := <-c.q:
		return copy(b, p.payload), netip.AddrPortFrom(p.src.Addr(), p.srcPort), nil
	case <-c.closed:
		return 0, netip.AddrPort{}, c.opError("read", nil, net.ErrClosed)
	case <-c.rd.wait():
		return 0, netip.AddrPort{}, c.opError("read", nil, os.ErrDeadlineExceeded)
	}
}

// ReadFrom implements net.PacketConn; the address is a *net.UDPAddr. A
// datagram longer than b is truncated, as with UDP.
func (c *meshConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, ap, err := c.ReadFromUDPAddrPort(b)
	if err != nil {
		return n, nil, err
	}
	return n, net.UDPAddrFromAddrPort(ap), nil
}

// WriteToUDPAddrPort sends b to a mesh address without allocating one.
func (c *meshConn) WriteToUDPAddrPort(b []byte, to netip.AddrPort) (int, error) {
	id, ok := IDFromAddr(to.Addr().Unmap())
	if !ok {
		return 0, c.opError("write", net.UDPAddrFromAddrPort(to), fmt.Errorf("%w: %s (mesh prefix %s)", ErrNotMesh, to.Addr(), MeshPrefix))
	}
	if to.Port() == 0 {
		return 0, c.opError("write", net.UDPAddrFromAddrPort(to), errors.New("destination port 0"))
	}
	select {
	case <-c.closed:
		return 0, c.opError("write", net.UDPAddrFromAddrPort(to), net.ErrClosed)
	case <-c.wd.wait():
		return 0, c.opError("write", net.UDPAddrFromAddrPort(to), os.ErrDeadlineExceeded)
	default:
	}
	if err := c.r.send(id, Exact, c.port, to.Port(), b, c.closed, c.wd.wait()); err != nil {
		if err == errGaveUp {
			err = os.ErrDeadlineExceeded
			if c.isClosed() {
				err = net.ErrClosed
			}
		}
		return 0, c.opError("write", net.UDPAddrFromAddrPort(to), err)
	}
	return len(b), nil
}

func (c *meshConn) isClosed() bool { return isClosed(c.closed) }

// WriteTo implements net.PacketConn. addr must be a *net.UDPAddr (or any
// address whose String is host:port) inside MeshPrefix.
func (c *meshConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	ap := netx.AddrPortOf(addr)
	if !ap.IsValid() {
		return 0, c.opError("write", addr, fmt.Errorf("%w: %v", ErrNotMesh, addr))
	}
	return c.WriteToUDPAddrPort(b, ap)
}

// Close unbinds the port; blocked reads and writes return net.ErrClosed.
func (c *meshConn) Close() error {
	first := false
	c.once.Do(func() {
		first = true
		close(c.closed)
		c.r.mu.Lock()
		if c.r.conns[c.port] == c {
			delete(c.r.conns, c.port)
		}
		c.r.mu.Unlock()
	})
	if !first {
		return c.opError("close", nil, net.ErrClosed)
	}
	return nil
}

// LocalAddr returns [mesh address]:port as a *net.UDPAddr.
func (c *meshConn) LocalAddr() net.Addr { return c.laddr }

// SetDeadline implements net.PacketConn.
func (c *meshConn) SetDeadline(t time.Time) error {
	c.rd.set(t)
	c.wd.set(t)
	return nil
}

// SetReadDeadline implements net.PacketConn.
func (c *meshConn) SetReadDeadline(t time.Time) error { c.rd.set(t); return nil }

// SetWriteDeadline implements net.PacketConn.
func (c *meshConn) SetWriteDeadline(t time.Time) error { c.wd.set(t); return nil }

// Dropped reports the datagrams dropped at this socket's full queue.
func (c *meshConn) Dropped() uint64 { return c.drops.Load() }

// deadline is a settable point in time that closes a channel when it
// passes, as in package net's pipe: readers blocked on the channel see a
// deadline set after they started waiting, as net.Conn requires. One timer
// serves every deadline a socket is given, so that a reader that sets one
// before each read (as SIP and RTP loops do) allocates nothing; a channel
// is made anew only after a deadline passed.
type deadline struct {
	mu     sync.Mutex
	timer  *time.Timer   // fires expire; nil until a deadline in the future is set
	at     time.Time     // the deadline; zero: none
	cancel chan struct{} // closed when the deadline passes; nil until first needed
}

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cancel == nil || isClosed(d.cancel) {
		d.cancel = make(chan struct{})
	}
	d.at = t
	if t.IsZero() {
		if d.timer != nil {
			d.timer.Stop()
		}
		return
	}
	dur := time.Until(t)
	if dur <= 0 {
		close(d.cancel)
		return
	}
	if d.timer == nil {
		d.timer = time.AfterFunc(dur, d.expire)
	} else {
		d.timer.Reset(dur)
	}
}

// expire runs when the timer fires. The timer may have fired for a
// deadline that set has replaced since (it was running when set reset it):
// only a deadline that has passed closes the channel, and one still ahead
// (a wall clock stepped back) re-arms the timer.
func (d *deadline) expire() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.at.IsZero() || isClosed(d.cancel) {
		return
	}
	if dur := time.Until(d.at); dur > 0 {
		d.timer.Reset(dur)
		return
	}
	close(d.cancel)
}

// wait returns the channel closed at the deadline. Before any deadline was
// set it is a fresh channel that stays open; the mutex orders it with set.
func (d *deadline) wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cancel == nil {
		d.cancel = make(chan struct{})
	}
	return d.cancel
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
