//go:build !linux

package provisioning

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/sipmesh/sipmesh/netx"
)

// listenDHCP opens the server socket on port 67; without SO_BINDTODEVICE
// replies are broadcast to the subnet-directed address, which routes out
// of the LAN interface.
func listenDHCP(ctx context.Context, nw netx.Network, _ string, subnet netip.Prefix) (net.PacketConn, netip.Addr, error) {
	pc, err := nw.ListenPacket(ctx, "udp4", fmt.Sprintf("0.0.0.0:%d", ServerPort))
	if err != nil {
		return nil, netip.Addr{}, err
	}
	return pc, broadcastOf(subnet), nil
}
