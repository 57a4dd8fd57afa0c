package uplink

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// STUN (RFC 8489) Binding, for a gateway behind a NAT router to learn the
// public address and port its uplink socket is mapped to (so that Via,
// Contact and SDP name an address the Internet can reach) and to keep
// that mapping alive.
const (
	stunMagic          = 0x2112A442 // RFC 8489 §5
	stunHeader         = 20
	stunBindingRequest = 0x0001
	stunBindingSuccess = 0x0101
	stunBindingError   = 0x0111
	attrMappedAddress  = 0x0001
	attrXORMapped      = 0x0020
	attrErrorCode      = 0x0009
	// RFC 8489 §6.2.1: RTO starts at 500 ms and doubles; Rc = 7 sends,
	// the last waited for Rm = 16 RTOs.
	stunRTO       = 500 * time.Millisecond
	stunSends     = 7
	stunLastWaits = 16
	stunMaxMsg    = 1500 // a response larger than one datagram is not one
)

// ErrSTUN is returned for an error response or an answer that cannot be
// used.
var ErrSTUN = errors.New("uplink: STUN")

// Binding sends STUN Binding requests from conn to server, retransmitting
// as RFC 8489 §6.2.1 says (bounded by ctx), and returns the reflexive
// transport address the server saw: XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS
// from an RFC 3489 server. Datagrams on conn that are not the answer are
// dropped, so conn must not be read by anyone else meanwhile.
func Binding(ctx context.Context, conn net.PacketConn, server netip.AddrPort) (netip.AddrPort, error) {
	return binding(ctx, conn, server, stunSends, stunLastWaits*stunRTO)
}

// Probe sends one Binding request from conn to server, without
// retransmission, and waits up to timeout for the answer: it measures the
// uplink (the round trip, and, over many probes, the share lost) where
// Binding's retransmissions would hide a loss in a longer round trip.
// It also refreshes the NAT mapping of conn, as a keep-alive (RFC 8489
// §13, RFC 5626 §4.4.1) and returns the reflexive address.
func Probe(ctx context.Context, conn net.PacketConn, server netip.AddrPort, timeout time.Duration) (netip.AddrPort, time.Duration, error) {
	start := time.Now()
	addr, err := binding(ctx, conn, server, 1, timeout)
	return addr, time.Since(start), err
}

// binding sends up to sends requests, the RTO apart and doubling (RFC 8489
// §6.2.1), waiting last after the final one.
func binding(ctx context.Context, conn net.PacketConn, server netip.AddrPort, sends int, last time.Duration) (netip.AddrPort, error) {
	var txid [12]byte
	if _, err := rand.Read(txid[:]); err != nil {
		return netip.AddrPort{}, err
	}
	req := make([]byte, stunHeader)
	binary.BigEndian.PutUint16(req[0:], stunBindingRequest)
	binary.BigEndian.PutUint32(req[4:], stunMagic)
	copy(req[8:], txid[:])
	dst := net.UDPAddrFromAddrPort(server)
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Now()) })
	defer stop()
	buf := make([]byte, stunMaxMsg)
	rto := stunRTO
	for send := 1; send <= sends; send++ {
		if _, err := conn.WriteTo(req, dst); err != nil {
			return netip.AddrPort{}, err
		}
		wait := rto
		if send == sends {
			wait = last
		}
		conn.SetReadDeadline(time.Now().Add(wait))
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				if ctx.Err() != nil {
					return netip.AddrPort{}, ctx.Err()
				}
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break // retransmit
				}
				return netip.AddrPort{}, err
			}
			if ua, ok := from.(*net.UDPAddr); !ok || ua.AddrPort().Addr().Unmap() != server.Addr().Unmap() {
				continue
			}
			addr, err, mine := parseBindingResponse(buf[:n], txid)
			if !mine {
				continue
			}
			conn.SetReadDeadline(time.Time{})
			return addr, err
		}
		rto *= 2
	}
	return netip.AddrPort{}, fmt.Errorf("%w: no answer from %v", ErrSTUN, server)
}

// parseBindingResponse reads a Binding response to txid; mine is false
// for anything else (another transaction, not STUN), which the caller
// ignores.
func parseBindingResponse(b []byte, txid [12]byte) (addr netip.AddrPort, err error, mine bool) {
	if len(b) < stunHeader || b[0]&0xc0 != 0 || binary.BigEndian.Uint32(b[4:]) != stunMagic || [12]byte(b[8:20]) != txid {
		return addr, nil, false
	}
	typ, length := binary.BigEndian.Uint16(b[0:]), int(binary.BigEndian.Uint16(b[2:]))
	if length%4 != 0 || stunHeader+length > len(b) {
		return addr, fmt.Errorf("%w: bad message length", ErrSTUN), true
	}
	if typ != stunBindingSuccess && typ != stunBindingError {
		return addr, nil, false
	}
	var xor, plain netip.AddrPort
	code := 0
	reason := ""
	for a := b[stunHeader : stunHeader+length]; len(a) >= 4; {
		at, al := binary.BigEndian.Uint16(a[0:]), int(binary.BigEndian.Uint16(a[2:]))
		if 4+al > len(a) {
			return addr, fmt.Errorf("%w: attribute 0x%04x overruns the message", ErrSTUN, at), true
		}
		v := a[4 : 4+al]
		switch at {
		case attrXORMapped:
			xor = decodeAddress(v, true, b[4:20])
		case attrMappedAddress:
			plain = decodeAddress(v, false, nil)
		case attrErrorCode:
			if al >= 4 {
				code = int(v[2]&0x7)*100 + int(v[3])
				reason = string(v[4:min(al, 4+128)])
			}
		}
		a = a[min(len(a), 4+(al+3)&^3):] // attributes are padded to 4 bytes
	}
	if typ == stunBindingError {
		return addr, fmt.Errorf("%w: error %d %q", ErrSTUN, code, reason), true
	}
	switch {
	case xor.IsValid():
		return xor, nil, true
	case plain.IsValid():
		return plain, nil, true
	}
	return addr, fmt.Errorf("%w: success without a mapped address", ErrSTUN), true
}

// decodeAddress reads a (XOR-)MAPPED-ADDRESS value (RFC 8489 §14.1,
// §14.2); key is the magic cookie and transaction ID the XOR form uses.
// An invalid value gives the zero AddrPort.
func decodeAddress(v []byte, xored bool, key []byte) netip.AddrPort {
	if len(v) < 4 {
		return netip.AddrPort{}
	}
	family, port := v[1], binary.BigEndian.Uint16(v[2:])
	var ip []byte
	switch {
	case family == 0x01 && len(v) == 8:
		ip = append([]byte(nil), v[4:8]...)
	case family == 0x02 && len(v) == 20:
		ip = append([]byte(nil), v[4:20]...)
	default:
		return netip.AddrPort{}
	}
	if xored {
		port ^= stunMagic >> 16
		for i := range ip {
			ip[i] ^= key[i]
		}
	}
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a, port)
}
