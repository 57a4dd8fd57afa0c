package provisioning

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/sipmesh/sipmesh/netx"
)

// Prober checks whether an address is in use on the LAN before the server
// offers it: RFC 2131 §2.2, "the allocating server SHOULD probe the reused
// address before allocating the address, e.g., with an ICMP echo request".
// Probe reports whether a host answered for addr; it returns within its own
// timeout or when ctx ends. An error means the probe could not be made; the
// server then offers the address (DHCP keeps working without probes, as it
// did before them) and logs the error.
type Prober interface {
	Probe(ctx context.Context, addr netip.Addr) (inUse bool, err error)
}

// ICMPProber probes with ICMP echo requests (RFC 792) on a raw socket
// ("ip4:icmp") from a netx.Network: the kernel's, or a network namespace's
// in tests. Raw sockets need CAP_NET_RAW, which the DHCP server has where
// it may bind port 67 with SO_BINDTODEVICE. A host that drops pings (a
// desktop firewall) looks unused; the client that gets its address then
// finds the conflict with its own ARP check and declines it (RFC 2131
// §4.4.1), and the server quarantines it.
type ICMPProber struct {
	Network netx.Network
	// Timeout is how long to wait for an echo reply; default 500 ms.
	// Tries echo requests are sent evenly within it; default 2.
	Timeout time.Duration
	Tries   int
}

// DefaultProbeTimeout is ICMPProber's default wait for an echo reply: on
// a LAN a host answers within milliseconds, and a DISCOVER's offer waits
// for the probe.
const DefaultProbeTimeout = 500 * time.Millisecond

// Probe implements Prober.
func (p *ICMPProber) Probe(ctx context.Context, addr netip.Addr) (bool, error) {
	if !addr.Is4() {
		return false, fmt.Errorf("provisioning: probe %v: not IPv4", addr)
	}
	timeout, tries := p.Timeout, p.Tries
	if timeout <= 0 {
		timeout = DefaultProbeTimeout
	}
	if tries <= 0 {
		tries = 2
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	pc, err := p.Network.ListenPacket(ctx, "ip4:icmp", "0.0.0.0")
	if err != nil {
		return false, fmt.Errorf("provisioning: probe %v: %w", addr, err)
	}
	defer pc.Close()
	stop := context.AfterFunc(ctx, func() { pc.SetReadDeadline(time.Now()) })
	defer stop()

	var idb [2]byte
	rand.Read(idb[:])
	id := binary.BigEndian.Uint16(idb[:])
	dst := &net.IPAddr{IP: addr.AsSlice()}
	send := func(seq uint16) error {
		_, err := pc.WriteTo(echoRequest(id, seq), dst)
		return err
	}
	if err := send(0); err != nil {
		return false, fmt.Errorf("provisioning: probe %v: %w", addr, err)
	}
	// Further echo requests are sent from a timer; the reads below see
	// their replies.
	interval := timeout / time.Duration(tries)
	for i := 1; i < tries; i++ {
		t := time.AfterFunc(time.Duration(i)*interval, func() { send(uint16(i)) })
		defer t.Stop()
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return false, nil // no answer within the timeout
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return false, nil
			}
			return false, fmt.Errorf("provisioning: probe %v: %w", addr, err)
		}
		if ia, ok := from.(*net.IPAddr); !ok || !ia.IP.Equal(dst.IP) {
			continue
		}
		if isEchoReply(buf[:n], id) {
			return true, nil
		}
	}
}

// echoRequest builds an ICMP echo request (RFC 792) with 8 bytes of data.
func echoRequest(id, seq uint16) []byte {
	b := make([]byte, 16)
	b[0] = 8 // echo request
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	copy(b[8:], "sipmesh!")
	binary.BigEndian.PutUint16(b[2:], checksum(b))
	return b
}

// isEchoReply reports whether b is an ICMP echo reply with identifier id.
// A raw IPv4 socket on Linux returns the ICMP message without the IP
// header; one with the header (IHL in the first byte) is also accepted.
func isEchoReply(b []byte, id uint16) bool {
	if len(b) >= 20 && b[0]>>4 == 4 {
		ihl := int(b[0]&0x0f) * 4
		if ihl >= 20 && len(b) >= ihl {
			b = b[ihl:]
		}
	}
	return len(b) >= 8 && b[0] == 0 && b[1] == 0 && binary.BigEndian.Uint16(b[4:]) == id
}

// checksum is the Internet checksum (RFC 1071).
func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
