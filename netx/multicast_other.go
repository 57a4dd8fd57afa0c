//go:build !linux

package netx

import (
	"net"
	"net/netip"
)

// ListenGroup6 joins the IPv6 group on the interface with index idx. Off
// Linux it falls back to net.ListenMulticastUDP, which also receives the port's
// datagrams from other interfaces.
func ListenGroup6(idx int, group netip.AddrPort) (net.PacketConn, error) {
	ifi, err := net.InterfaceByIndex(idx)
	if err != nil {
		return nil, err
	}
	return net.ListenMulticastUDP("udp6", ifi, net.UDPAddrFromAddrPort(group))
}
