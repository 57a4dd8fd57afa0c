package netx

import (
	"context"
	"fmt"
	"net"
	"net/netip"
)

// Kernel is the Network of the operating system.
type Kernel struct{}

var _ Network = Kernel{}

// ListenPacket implements Network.
func (Kernel) ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	var lc net.ListenConfig
	return lc.ListenPacket(ctx, network, address)
}

// ListenMulticast implements Network.
func (Kernel) ListenMulticast(_ context.Context, ifname string, group netip.AddrPort) (net.PacketConn, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("netx: multicast on %q: %w", ifname, err)
	}
	if group.Addr().Is6() {
		return ListenGroup6(ifi.Index, group)
	}
	return net.ListenMulticastUDP("udp4", ifi, net.UDPAddrFromAddrPort(group))
}

// Listen implements Network.
func (Kernel) Listen(ctx context.Context, network, address string) (net.Listener, error) {
	var lc net.ListenConfig
	return lc.Listen(ctx, network, address)
}

// Dial implements Network.
func (Kernel) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, address)
}

// Interfaces implements Network.
func (Kernel) Interfaces() ([]Interface, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	out := make([]Interface, 0, len(ifs))
	for _, ifi := range ifs {
		x := Interface{Index: ifi.Index, Name: ifi.Name, MTU: ifi.MTU,
			Up: ifi.Flags&net.FlagUp != 0, Multicast: ifi.Flags&net.FlagMulticast != 0}
		addrs, err := ifi.Addrs()
		if err != nil {
			return nil, fmt.Errorf("netx: addresses of %s: %w", ifi.Name, err)
		}
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				ip, _ := netip.AddrFromSlice(ipn.IP)
				ones, _ := ipn.Mask.Size()
				x.Addrs = append(x.Addrs, netip.PrefixFrom(ip.Unmap(), ones))
			}
		}
		out = append(out, x)
	}
	return out, nil
}
