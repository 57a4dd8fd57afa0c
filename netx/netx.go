// Package netx is the one small socket interface every sipmesh service takes
// its sockets from. Kernel implements it with the operating system's sockets
// (a router, or a Linux network namespace in integration tests); package
// memnet implements it with an in-memory network emulator (unit tests, the
// demo and the simulator). Services never call package net's Listen/Dial
// directly, so the same code runs on both (docs/DESIGN.md, "Two transports, one
// code path"). On Linux it also speaks rtnetlink (Route): a node puts its
// LAN address on an interface and takes it off without an `ip` binary.
package netx

import (
	"context"
	"net"
	"net/netip"
)

// Network opens sockets. Addresses use the syntax of package net
// ("[fe80::1%eth0]:5060", "0.0.0.0:67", ":0").
type Network interface {
	// ListenPacket opens a datagram socket; network is "udp", "udp4" or "udp6".
	ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error)
	// ListenMulticast joins group (an IPv6 link-local or IPv4 multicast
	// address with a port) on the named interface and returns a socket that
	// receives the group's datagrams arriving on that interface. Writes on the
	// returned socket leave through that interface.
	ListenMulticast(ctx context.Context, ifname string, group netip.AddrPort) (net.PacketConn, error)
	// Listen opens a stream listener; network is "tcp", "tcp4" or "tcp6".
	Listen(ctx context.Context, network, address string) (net.Listener, error)
	// Dial opens a stream ("tcp*") or connected datagram ("udp*") socket.
	Dial(ctx context.Context, network, address string) (net.Conn, error)
	// Interfaces lists the host's interfaces with their addresses.
	Interfaces() ([]Interface, error)
}

// Interface is one network interface of a host.
type Interface struct {
	Index     int
	Name      string
	MTU       int
	Up        bool
	Multicast bool
	Addrs     []netip.Prefix
}

// LinkLocal returns the interface's first IPv6 link-local address (with the
// interface as zone), or the zero Addr.
func (i Interface) LinkLocal() netip.Addr {
	for _, p := range i.Addrs {
		if a := p.Addr(); a.Is6() && a.IsLinkLocalUnicast() {
			return a.WithZone(i.Name)
		}
	}
	return netip.Addr{}
}
