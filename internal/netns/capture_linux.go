//go:build linux

package netns

import (
	"errors"
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// Capture is a raw packet socket (packet(7), AF_PACKET) on one interface
// of a namespace: it sees every Ethernet frame the interface sends and
// receives, as a radio neighbour overhears the channel, and can put a
// frame on the wire again as it was (a replay). Closed when t ends.
type Capture struct {
	fd      int
	ifindex int
}

// OpenCapture opens a Capture on ifname in ns.
func (ns *NS) OpenCapture(t testing.TB, ifname string) *Capture {
	t.Helper()
	c := &Capture{fd: -1}
	// The protocol in network byte order (packet(7)).
	proto := uint16(unix.ETH_P_ALL)<<8 | uint16(unix.ETH_P_ALL)>>8
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto))
		if err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return err
		}
		c.fd, c.ifindex = fd, ifi.Index
		return nil
	})
	if err != nil {
		t.Fatalf("netns: capture on %s in %s: %v", ifname, ns.Name, err)
	}
	t.Cleanup(func() { unix.Close(c.fd) })
	return c
}

// Drain returns the frames captured so far (copies), without waiting.
func (c *Capture) Drain(t testing.TB) [][]byte {
	t.Helper()
	var out [][]byte
	buf := make([]byte, 65536)
	for {
		n, _, err := unix.Recvfrom(c.fd, buf, unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.EAGAIN) {
			return out
		}
		if err != nil {
			t.Fatalf("netns: capture: %v", err)
		}
		out = append(out, append([]byte(nil), buf[:n]...))
	}
}

// Send puts an Ethernet frame, as captured, on the interface.
func (c *Capture) Send(frame []byte) error {
	return unix.Sendto(c.fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: c.ifindex})
}
