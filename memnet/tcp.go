package memnet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
)

// backlog is the listen queue length; a full queue refuses connections
// instead of making Dial wait, since nothing would retry the SYN.
const backlog = 128

// listener is a stream listener. Accept waits on channels; it starts no
// goroutines.
type listener struct {
	h    *Host
	netw string
	binding
	conns chan net.Conn // the accept queue
	done  chan struct{} // closed by Close

	closed bool // guarded by h.net.mu
}

// Listen implements netx.Network for "tcp", "tcp4" and "tcp6".
func (h *Host) Listen(ctx context.Context, network, address string) (net.Listener, error) {
	fail := func(err error) (net.Listener, error) {
		return nil, opErr("listen", network, nil, strAddr(address), err)
	}
	fam, ip, zone, port, err := resolve(ctx, network, "tcp", address)
	if err != nil {
		return fail(err)
	}
	h.net.mu.Lock()
	defer h.net.mu.Unlock()
	b, err := h.bindLocked(fam, ip, zone, port)
	if err != nil {
		return fail(err)
	}
	l := &listener{h: h, netw: network, binding: b,
		conns: make(chan net.Conn, backlog), done: make(chan struct{})}
	if err := h.tcp.add(&l.binding, l, &h.nextTCP); err != nil {
		return fail(err)
	}
	return l, nil
}

// Accept waits for a connection; after Close it returns net.ErrClosed.
func (l *listener) Accept() (net.Conn, error) {
	select {
	case <-l.done:
	default:
		select {
		case c := <-l.conns:
			return c, nil
		case <-l.done:
		}
	}
	return nil, opErr("accept", l.netw, nil, l.Addr(), net.ErrClosed)
}

// Close stops listening and resets connections not yet accepted.
func (l *listener) Close() error {
	n := l.h.net
	n.mu.Lock()
	if l.closed {
		n.mu.Unlock()
		return opErr("close", l.netw, nil, l.Addr(), net.ErrClosed)
	}
	l.closed = true
	l.h.tcp.remove(l.port, l)
	close(l.done)
	n.mu.Unlock()
	// Dial queues under the lock and sees closed, so the queue only shrinks.
	for {
		select {
		case c := <-l.conns:
			c.Close()
		default:
			return nil
		}
	}
}

// Addr returns the bound address as a *net.TCPAddr.
func (l *listener) Addr() net.Addr {
	a := l.addr
	if !a.IsValid() {
		a = netip.IPv6Unspecified()
		if l.fam == fam4 {
			a = netip.IPv4Unspecified()
		}
	}
	ip, zone := addrOf(a, l.ifc)
	return &net.TCPAddr{IP: ip, Port: int(l.port), Zone: zone}
}

// Dial implements netx.Network: "tcp*" returns an in-memory stream, "udp*"
// a connected datagram socket.
func (h *Host) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	if len(network) >= 3 && network[:3] == "udp" {
		return h.dialUDP(ctx, network, address)
	}
	fail := func(err error) (net.Conn, error) {
		return nil, opErr("dial", network, nil, strAddr(address), err)
	}
	fam, ip, zone, port, err := resolve(ctx, network, "tcp", address)
	if err != nil {
		return fail(err)
	}
	if !ip.IsValid() || ip.IsUnspecified() {
		ip = loopback(fam) // Go dials the local system for an empty host
	}
	n := h.net
	n.mu.Lock()
	defer n.mu.Unlock()
	out, to, err := h.routeLocked(ip, zone, nil)
	if err != nil {
		return fail(err)
	}
	src := ip
	if out != h.lo {
		// The handshake needs the link up and a neighbour with the address;
		// a kernel would retry and time out, we fail at once.
		l := out.link
		if l == nil || l.cfg.Down || out.classify(ip) != unicast {
			return fail(syscall.EHOSTUNREACH)
		}
		if to = l.addrs[ip]; to == nil {
			return fail(syscall.EHOSTUNREACH)
		}
		src = out.sourceFor(ip)
	}
	ln := to.host.tcp.lookup(port, ip, to)
	if ln == nil {
		return fail(syscall.ECONNREFUSED)
	}
	// A port number for the connection; only listeners occupy the table.
	sb := binding{fam: famAny}
	if err := h.tcp.pick(&sb, &h.nextTCP); err != nil {
		return fail(err)
	}
	sport := sb.port
	c1, c2 := net.Pipe()
	tcpAddr := func(a netip.Addr, port uint16, ifc *Interface) *net.TCPAddr {
		ip, zone := addrOf(a, ifc)
		return &net.TCPAddr{IP: ip, Port: int(port), Zone: zone}
	}
	client := &tcpConn{Conn: c1, netw: network,
		laddr: tcpAddr(src, sport, out), raddr: tcpAddr(ip, port, out)}
	server := &tcpConn{Conn: c2, netw: ln.netw,
		laddr: tcpAddr(ip, port, to), raddr: tcpAddr(src, sport, to)}
	select {
	case ln.conns <- server:
		return client, nil
	default:
		c1.Close()
		c2.Close()
		return fail(fmt.Errorf("accept queue of %v full: %w", ln.Addr(), syscall.ECONNREFUSED))
	}
}

// tcpConn is one end of a net.Pipe with TCP addresses and the kernel's
// errors: net.ErrClosed after a local Close, EPIPE writing to a closed peer.
// net.Pipe is synchronous (Write returns once the peer has read the data),
// reliable and ordered, and its deadlines run on package time.
type tcpConn struct {
	net.Conn
	netw         string
	laddr, raddr *net.TCPAddr
	closed       atomic.Bool
}

func (c *tcpConn) LocalAddr() net.Addr  { return c.laddr }
func (c *tcpConn) RemoteAddr() net.Addr { return c.raddr }

func (c *tcpConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	return n, c.mapErr("read", err)
}

func (c *tcpConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	return n, c.mapErr("write", err)
}

func (c *tcpConn) Close() error {
	if c.closed.Swap(true) {
		return c.mapErr("close", io.ErrClosedPipe)
	}
	return c.Conn.Close()
}

func (c *tcpConn) mapErr(op string, err error) error {
	switch {
	case err == nil || err == io.EOF:
		return err
	case errors.Is(err, io.ErrClosedPipe) && c.closed.Load():
		err = net.ErrClosed
	case errors.Is(err, io.ErrClosedPipe):
		err = syscall.EPIPE
	}
	if _, ok := err.(*net.OpError); ok {
		return err
	}
	return opErr(op, c.netw, c.laddr, c.raddr, err)
}
