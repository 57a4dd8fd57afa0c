package netx

import (
	"net"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"
)

// ListenGroup6 opens a UDP socket that receives the IPv6 group on the
// interface with index idx only, and sends to it through that interface.
// net.ListenMulticastUDP binds [::]:port instead, so a socket for one link
// also receives datagrams to that port from every other link (Go issue
// 34728) — wrong for a mesh router that must know the link a beacon came in on.
func ListenGroup6(idx int, group netip.AddrPort) (net.PacketConn, error) {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.IPPROTO_UDP)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	mreq := &unix.IPv6Mreq{Multiaddr: group.Addr().As16(), Interface: uint32(idx)}
	steps := []struct {
		what string
		err  func() error
	}{
		// Several listeners of one group on one interface may coexist, as
		// with package net's multicast sockets.
		{"SO_REUSEADDR", func() error { return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) }},
		{"SO_BINDTOIFINDEX", func() error { return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BINDTOIFINDEX, idx) }},
		{"IPV6_MULTICAST_IF", func() error { return unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_IF, idx) }},
		// Only the group joined here, not every group of the host.
		{"IPV6_MULTICAST_ALL", func() error { return unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_ALL, 0) }},
		{"IPV6_JOIN_GROUP", func() error { return unix.SetsockoptIPv6Mreq(fd, unix.IPPROTO_IPV6, unix.IPV6_JOIN_GROUP, mreq) }},
		{"bind", func() error {
			return unix.Bind(fd, &unix.SockaddrInet6{Port: int(group.Port()), Addr: group.Addr().As16(), ZoneId: uint32(idx)})
		}},
	}
	for _, s := range steps {
		if err := s.err(); err != nil {
			unix.Close(fd)
			return nil, os.NewSyscallError(s.what, err)
		}
	}
	f := os.NewFile(uintptr(fd), "multicast "+group.String())
	defer f.Close() // FilePacketConn holds a duplicate
	return net.FilePacketConn(f)
}
