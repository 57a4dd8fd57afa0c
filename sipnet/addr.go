package sipnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/emiago/sipgo/sip"
)

// AddrPortConn is the allocation-free read and write of *net.UDPConn
// (and of the netns wrapper): a datagram's source as a netip.AddrPort,
// without the *net.UDPAddr that ReadFrom allocates per packet.
type AddrPortConn interface {
	ReadFromUDPAddrPort(b []byte) (int, netip.AddrPort, error)
	WriteToUDPAddrPort(b []byte, addr netip.AddrPort) (int, error)
}

// AddrPortOf is the address and port of a; IPv4-mapped IPv6 addresses are
// unmapped, so a source compares equal whichever socket family saw it.
func AddrPortOf(a net.Addr) (netip.AddrPort, bool) {
	switch a := a.(type) {
	case *net.UDPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), ap.IsValid()
	case *net.TCPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), ap.IsValid()
	case nil:
		return netip.AddrPort{}, false
	}
	ap, err := netip.ParseAddrPort(a.String())
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), err == nil
}

// URIHost writes an address as a SIP URI host (RFC 3261 §25.1 hostport):
// IPv6 in brackets, without a zone, which a
// URI cannot carry, and IPv4-mapped addresses as IPv4.
func URIHost(a netip.Addr) string {
	a = a.WithZone("").Unmap()
	if a.Is6() {
		return "[" + a.String() + "]"
	}
	return a.String()
}

// ErrNotIPLiteral is returned by URIAddr for a URI whose host is a name:
// sipmesh sends only to IP literals and resolves no names here.
var ErrNotIPLiteral = errors.New("sip URI host is not an IP literal")

// URIAddr is where a SIP URI with an IP-literal host points, port 5060 by
// default (RFC 3263 §4.2). A name, a zone or a port out of range is an
// error: names are not resolved here.
func URIAddr(u *sip.Uri) (netip.AddrPort, error) {
	a, err := netip.ParseAddr(strings.Trim(u.Host, "[]"))
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%w: %q", ErrNotIPLiteral, u.Host)
	}
	if a.Zone() != "" {
		return netip.AddrPort{}, fmt.Errorf("sip URI host %q has a zone", u.Host)
	}
	port := u.Port
	if port == 0 {
		port = 5060
	}
	if port < 0 || port > 65535 {
		return netip.AddrPort{}, fmt.Errorf("sip URI port %d out of range", port)
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(port)), nil
}

// TagParams are the header parameters of a From or To with tag
// (RFC 3261 §19.3).
func TagParams(tag string) sip.HeaderParams {
	hp := sip.NewParams()
	hp.Add("tag", tag)
	return hp
}
