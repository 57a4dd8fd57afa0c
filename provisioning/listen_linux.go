//go:build linux

package provisioning

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/sipmesh/sipmesh/netx"
)

// listenDHCP opens the server socket on port 67 of every address, bound to
// the LAN interface with SO_BINDTODEVICE where the socket is a kernel one:
// then only that LAN's broadcasts arrive, and replies to 255.255.255.255
// leave through it (a socket not bound to a device has no route for the
// limited broadcast on a host without a default route). It returns the
// address that stands for "broadcast on this LAN": 255.255.255.255 on a
// bound socket, else the subnet-directed broadcast, which every host
// routes out of the interface that has the subnet (the in-memory network
// treats both alike).
//
// netx.Kernel gets SO_BINDTODEVICE before bind, so servers on several LANs
// of one host can all bind port 67 (Linux lets sockets bound to different
// devices share a port). Other networks' kernel sockets (a namespace's)
// are bound to the device right after they open.
func listenDHCP(ctx context.Context, nw netx.Network, ifname string, subnet netip.Prefix) (net.PacketConn, netip.Addr, error) {
	addr := fmt.Sprintf("0.0.0.0:%d", ServerPort)
	if _, ok := nw.(netx.Kernel); ok {
		lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
			return bindToDevice(rc, ifname)
		}}
		pc, err := lc.ListenPacket(ctx, "udp4", addr)
		if err != nil {
			return nil, netip.Addr{}, err
		}
		return pc, limitedBroadcast, nil
	}
	pc, err := nw.ListenPacket(ctx, "udp4", addr)
	if err != nil {
		return nil, netip.Addr{}, err
	}
	sc, ok := pc.(syscall.Conn)
	if !ok {
		return pc, broadcastOf(subnet), nil
	}
	rc, err := sc.SyscallConn()
	if err == nil {
		err = bindToDevice(rc, ifname)
	}
	if err != nil {
		pc.Close()
		return nil, netip.Addr{}, err
	}
	return pc, limitedBroadcast, nil
}

func bindToDevice(rc syscall.RawConn, ifname string) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, ifname)
	})
	if err = errors.Join(err, serr); err != nil {
		return fmt.Errorf("bind to device %s: %w", ifname, err)
	}
	return nil
}
