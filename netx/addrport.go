package netx

import (
	"net"
	"net/netip"
)

// AddrPortConn is a datagram socket addressed by netip.AddrPort, which
// *net.UDPConn, memnet and SSR mesh sockets offer without allocating per
// packet: what packet-forwarding code (SSR links, the RTP relay) needs.
type AddrPortConn interface {
	ReadFromUDPAddrPort(b []byte) (int, netip.AddrPort, error)
	WriteToUDPAddrPort(b []byte, addr netip.AddrPort) (int, error)
	Close() error
}

// AsAddrPortConn returns c's allocation-free methods when it has them, and
// otherwise adapts its net.Addr methods (which allocate).
func AsAddrPortConn(c net.PacketConn) AddrPortConn {
	if pc, ok := c.(AddrPortConn); ok {
		return pc
	}
	return addrConn{c}
}

type addrConn struct{ net.PacketConn }

func (c addrConn) ReadFromUDPAddrPort(b []byte) (int, netip.AddrPort, error) {
	n, a, err := c.ReadFrom(b)
	if err != nil {
		return n, netip.AddrPort{}, err
	}
	return n, AddrPortOf(a), nil
}

func (c addrConn) WriteToUDPAddrPort(b []byte, to netip.AddrPort) (int, error) {
	return c.WriteTo(b, net.UDPAddrFromAddrPort(to))
}

// AddrPortOf converts a datagram address (IPv4-mapped IPv6 unmapped); one
// that is neither UDP nor parsable becomes the zero AddrPort.
func AddrPortOf(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.UDPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	case interface{ AddrPort() netip.AddrPort }:
		return a.AddrPort()
	}
	if a == nil {
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
