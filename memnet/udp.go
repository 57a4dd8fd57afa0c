package memnet

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"
)

// udpConn is a datagram socket. It serves as net.PacketConn (ListenPacket,
// ListenMulticast) and as a connected net.Conn (Dial "udp*"). It starts no
// goroutines: readers wait on channels, deliveries come from link events.
type udpConn struct {
	h    *Host
	netw string
	binding
	group    netip.Addr     // the joined group, for ListenMulticast sockets
	raddr    netip.AddrPort // the peer, for Dial sockets
	rifc     *Interface     // zone of raddr
	readable chan struct{}  // capacity 1: "the queue may be non-empty"
	done     chan struct{}  // closed by Close

	// Guarded by h.net.mu.
	q      fifo[datagram]
	closed bool
	rd, wd deadline
}

type datagram struct {
	buf  []byte // the payload; ReadFrom copies out of it
	from netip.AddrPort
	ifc  *Interface // receiving interface: the zone of a link-local from
}

var (
	_ net.PacketConn = (*udpConn)(nil)
	_ net.Conn       = (*udpConn)(nil)
)

func (h *Host) newUDPConn(network string, b binding) *udpConn {
	return &udpConn{h: h, netw: network, binding: b,
		readable: make(chan struct{}, 1), done: make(chan struct{})}
}

// ListenPacket implements netx.Network: a UDP socket bound to one of the
// host's addresses, or to the wildcard (all interfaces), port 0 meaning an
// ephemeral port. Binding an address and port in use fails with EADDRINUSE.
func (h *Host) ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	fail := func(err error) (net.PacketConn, error) {
		return nil, opErr("listen", network, nil, strAddr(address), err)
	}
	fam, ip, zone, port, err := resolve(ctx, network, "udp", address)
	if err != nil {
		return fail(err)
	}
	h.net.mu.Lock()
	defer h.net.mu.Unlock()
	b, err := h.bindLocked(fam, ip, zone, port)
	if err != nil {
		return fail(err)
	}
	c := h.newUDPConn(network, b)
	if err := h.udp.add(&c.binding, c, &h.nextUDP); err != nil {
		return fail(err)
	}
	return c, nil
}

// ListenMulticast implements netx.Network. Several sockets may join the same
// group and port on one interface; each receives its own copy.
func (h *Host) ListenMulticast(ctx context.Context, ifname string, group netip.AddrPort) (net.PacketConn, error) {
	network := "udp6"
	if group.Addr().Unmap().Is4() {
		network = "udp4"
	}
	fail := func(err error) (net.PacketConn, error) {
		return nil, opErr("listen", network, nil, net.UDPAddrFromAddrPort(group), err)
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	g := group.Addr().Unmap().WithZone("")
	if !g.IsMulticast() {
		return fail(fmt.Errorf("%v is not a multicast address: %w", g, syscall.EINVAL))
	}
	h.net.mu.Lock()
	defer h.net.mu.Unlock()
	ifc := h.interfaceLocked(ifname)
	if ifc == nil {
		return fail(fmt.Errorf("no interface %q on host %s: %w", ifname, h.name, syscall.ENODEV))
	}
	fam := fam6
	if g.Is4() {
		fam = fam4
	}
	c := h.newUDPConn(network, binding{ifc: ifc, fam: fam, port: group.Port()})
	c.group = g
	ifc.mcast = append(ifc.mcast, c)
	return c, nil
}

func (h *Host) dialUDP(ctx context.Context, network, address string) (net.Conn, error) {
	fail := func(err error) (net.Conn, error) {
		return nil, opErr("dial", network, nil, strAddr(address), err)
	}
	fam, ip, zone, port, err := resolve(ctx, network, "udp", address)
	if err != nil {
		return fail(err)
	}
	if !ip.IsValid() || ip.IsUnspecified() {
		ip = loopback(fam) // Go dials the local system for an empty host
	}
	h.net.mu.Lock()
	defer h.net.mu.Unlock()
	// connect(2) on UDP binds the source address the route would use.
	out, to, err := h.routeLocked(ip, zone, nil)
	if err != nil {
		return fail(err)
	}
	src, rifc := ip, to
	if out != h.lo {
		src, rifc = out.sourceFor(ip), out
	}
	var b binding
	if src.IsUnspecified() {
		b = binding{fam: fam}
	} else if b, err = h.bindLocked(fam, src, "", 0); err != nil {
		return fail(err)
	}
	c := h.newUDPConn(network, b)
	c.raddr, c.rifc = netip.AddrPortFrom(ip, port), rifc
	if err := h.udp.add(&c.binding, c, &h.nextUDP); err != nil {
		return fail(err)
	}
	return c, nil
}

// strAddr is a net.Addr for an address string that did not parse or bind.
type strAddr string

func (a strAddr) Network() string { return "" }
func (a strAddr) String() string  { return string(a) }

// acceptsLocked reports whether a connected socket takes a datagram from src
// (connect(2) filters on the peer).
func (c *udpConn) acceptsLocked(src netip.AddrPort) bool {
	return !c.raddr.IsValid() || c.raddr == src
}

func (c *udpConn) enqueueLocked(l *Link, buf []byte, from netip.AddrPort, ifc *Interface) {
	if c.closed {
		l.stats.NoReceiver++
		return
	}
	if c.q.n >= c.h.net.sockQ {
		l.stats.QueueFull++
		l.stats.Dropped++
		return
	}
	c.q.push(datagram{buf, from, ifc})
	l.stats.Delivered++
	select {
	case c.readable <- struct{}{}:
	default:
	}
}

func (c *udpConn) read() (datagram, error) {
	n := c.h.net
	n.mu.Lock()
	defer n.mu.Unlock()
	for {
		// A passed deadline wins over queued data, as in package net.
		switch {
		case c.closed:
			return datagram{}, c.opErr("read", net.ErrClosed)
		case c.rd.expired:
			return datagram{}, c.opErr("read", os.ErrDeadlineExceeded)
		case c.q.n > 0:
			d := c.q.pop()
			if c.q.n > 0 {
				select { // wake the next reader too
				case c.readable <- struct{}{}:
				default:
				}
			}
			return d, nil
		}
		rd := c.rd.waitLocked()
		n.mu.Unlock()
		select {
		case <-c.readable:
		case <-c.done:
		case <-rd:
		}
		n.mu.Lock()
	}
}

// ReadFrom implements net.PacketConn; the address is a *net.UDPAddr whose
// zone, for a link-local source, is the receiving interface.
func (c *udpConn) ReadFrom(b []byte) (int, net.Addr, error) {
	d, err := c.read()
	if err != nil {
		return 0, nil, err
	}
	ip, zone := addrOf(d.from.Addr(), d.ifc)
	return copy(b, d.buf), &net.UDPAddr{IP: ip, Port: int(d.from.Port()), Zone: zone}, nil
}

// ReadFromUDPAddrPort is ReadFrom without allocating the address, as in
// *net.UDPConn.
func (c *udpConn) ReadFromUDPAddrPort(b []byte) (int, netip.AddrPort, error) {
	d, err := c.read()
	if err != nil {
		return 0, netip.AddrPort{}, err
	}
	from := d.from
	if _, zone := addrOf(from.Addr(), d.ifc); zone != "" {
		from = netip.AddrPortFrom(from.Addr().WithZone(zone), from.Port())
	}
	return copy(b, d.buf), from, nil
}

// Read reads the next datagram; on a Dial socket only the peer's arrive.
func (c *udpConn) Read(b []byte) (int, error) {
	d, err := c.read()
	if err != nil {
		return 0, err
	}
	return copy(b, d.buf), nil
}

// WriteTo implements net.PacketConn. It copies b and never blocks: a full
// link queue drops the datagram, as a kernel would.
func (c *udpConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok || ua == nil {
		return 0, c.opErr("write", fmt.Errorf("address %v is not a *net.UDPAddr: %w", addr, syscall.EINVAL))
	}
	return c.WriteToUDPAddrPort(b, ua.AddrPort())
}

// WriteToUDPAddrPort is WriteTo with a netip.AddrPort, as in *net.UDPConn.
func (c *udpConn) WriteToUDPAddrPort(b []byte, addr netip.AddrPort) (int, error) {
	if c.raddr.IsValid() {
		return 0, c.opErr("write", syscall.EISCONN)
	}
	return c.write(b, addr)
}

// Write sends to the peer of a Dial socket.
func (c *udpConn) Write(b []byte) (int, error) {
	if !c.raddr.IsValid() {
		return 0, c.opErr("write", syscall.EDESTADDRREQ)
	}
	return c.write(b, c.raddr)
}

func (c *udpConn) write(b []byte, addr netip.AddrPort) (int, error) {
	n := c.h.net
	n.mu.Lock()
	defer n.mu.Unlock()
	fail := func(err error) (int, error) {
		return 0, opErr("write", c.netw, c.LocalAddr(), net.UDPAddrFromAddrPort(addr), err)
	}
	switch {
	case c.closed:
		return fail(net.ErrClosed)
	case c.wd.expired:
		return fail(os.ErrDeadlineExceeded)
	}
	zone := addr.Addr().Zone()
	dst := addr.Addr().WithZone("").Unmap()
	if zone == "" && c.raddr.IsValid() && dst.IsLinkLocalUnicast() {
		zone = c.rifc.name // the interface Dial resolved
	}
	if !dst.IsValid() || !c.fam.has(dst) {
		return fail(syscall.EAFNOSUPPORT)
	}
	out, to, err := c.h.routeLocked(dst, zone, c.ifc)
	if err != nil {
		return fail(err)
	}
	src := c.addr
	if !src.IsValid() {
		src = dst // local delivery: the kernel picks the destination itself
		if out != c.h.lo {
			src = out.sourceFor(dst)
		}
	}
	err = n.sendLocked(out, to, netip.AddrPortFrom(src, c.port), netip.AddrPortFrom(dst, addr.Port()), b)
	if err != nil {
		return fail(err)
	}
	return len(b), nil
}

// Close implements net.PacketConn; blocked readers return net.ErrClosed.
func (c *udpConn) Close() error {
	n := c.h.net
	n.mu.Lock()
	defer n.mu.Unlock()
	if c.closed {
		return c.opErr("close", net.ErrClosed)
	}
	c.closed = true
	if c.group.IsValid() {
		list := c.ifc.mcast
		for i, x := range list {
			if x == c {
				c.ifc.mcast = append(list[:i:i], list[i+1:]...)
				break
			}
		}
	} else {
		c.h.udp.remove(c.port, c)
	}
	c.rd.stopLocked()
	c.wd.stopLocked()
	c.q = fifo[datagram]{}
	close(c.done)
	return nil
}

// LocalAddr returns the bound address: "[::]:port" for a dual-stack
// wildcard, the group for a multicast socket.
func (c *udpConn) LocalAddr() net.Addr {
	a := c.addr
	switch {
	case c.group.IsValid():
		a = c.group
	case !a.IsValid() && c.fam == fam4:
		a = netip.IPv4Unspecified()
	case !a.IsValid():
		a = netip.IPv6Unspecified()
	}
	ip, zone := addrOf(a, c.ifc)
	return &net.UDPAddr{IP: ip, Port: int(c.port), Zone: zone}
}

// RemoteAddr returns the peer of a Dial socket, or nil.
func (c *udpConn) RemoteAddr() net.Addr {
	if !c.raddr.IsValid() {
		return nil
	}
	ip, zone := addrOf(c.raddr.Addr(), c.rifc)
	return &net.UDPAddr{IP: ip, Port: int(c.raddr.Port()), Zone: zone}
}

// SetDeadline sets both deadlines, on the network's clock.
func (c *udpConn) SetDeadline(t time.Time) error { return c.setDeadline(t, true, true) }

// SetReadDeadline sets the read deadline, on the network's clock.
func (c *udpConn) SetReadDeadline(t time.Time) error { return c.setDeadline(t, true, false) }

// SetWriteDeadline sets the write deadline, on the network's clock.
func (c *udpConn) SetWriteDeadline(t time.Time) error { return c.setDeadline(t, false, true) }

func (c *udpConn) setDeadline(t time.Time, read, write bool) error {
	n := c.h.net
	n.mu.Lock()
	defer n.mu.Unlock()
	if c.closed {
		return c.opErr("set", net.ErrClosed)
	}
	if read {
		c.rd.setLocked(n, t)
	}
	if write {
		c.wd.setLocked(n, t)
	}
	return nil
}

func (c *udpConn) opErr(op string, err error) error {
	return opErr(op, c.netw, c.LocalAddr(), c.RemoteAddr(), err)
}
