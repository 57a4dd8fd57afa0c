package meship

import (
	"encoding/binary"
	"time"
)

// IPv6 and ICMPv6 constants (RFC 8200, RFC 4443).
const (
	ipv6Len     = 40
	protoICMPv6 = 58
	// MinMTU is IPv6's minimum link MTU (RFC 8200 §5): no TUN is smaller,
	// and no ICMPv6 error is longer (RFC 4443 §2.4(c)).
	MinMTU = 1280

	icmpDestUnreach = 1 // RFC 4443 §3.1
	icmpTooBig      = 2 // RFC 4443 §3.2
	// Destination Unreachable codes (RFC 4443 §3.1).
	codeNoRoute     = 0
	codeAddrUnreach = 3

	// errHopLimit is the hop limit of the ICMPv6 errors this node sends.
	errHopLimit = 64
)

// packetLen checks that p starts with a whole IPv6 packet and returns its
// length (bytes after it, which a TUN never has but a peer may send, are
// not part of it); 0 if p is not one. Jumbograms (payload length 0 with
// a hop-by-hop header, RFC 2675) are not carried: no mesh MTU reaches 64
// KiB.
func packetLen(p []byte) int {
	if len(p) < ipv6Len || p[0]>>4 != 6 {
		return 0
	}
	n := ipv6Len + int(binary.BigEndian.Uint16(p[4:6]))
	if (n == ipv6Len && p[6] == 0) || n > len(p) {
		return 0
	}
	return n
}

// mayAnswer reports whether an ICMPv6 error may be sent about packet p
// (RFC 4443 §2.4(e)): not about an ICMPv6 error message, nor one from the
// unspecified or a multicast source, nor (except Packet Too Big, whose
// §2.4(e.3) exception covers multicast) one sent to a multicast address.
// The extension header chain is followed (at most 8 headers) to find
// whether the packet is ICMPv6; a non-first fragment, or a chain that runs
// past the packet, is answered only if it is a Packet Too Big.
func mayAnswer(p []byte, tooBig bool) bool {
	src, dst := p[8:24], p[24:40]
	if src[0] == 0xff || isZero(src) {
		return false
	}
	if dst[0] == 0xff && !tooBig {
		return false
	}
	nh, off := p[6], ipv6Len
	for range 8 {
		switch nh {
		case 0, 43, 60: // hop-by-hop, routing, destination options (RFC 8200 §4)
			if off+8 > len(p) {
				return tooBig
			}
			nh, off = p[off], off+(int(p[off+1])+1)*8
		case 44: // fragment (RFC 8200 §4.5)
			if off+8 > len(p) {
				return tooBig
			}
			if binary.BigEndian.Uint16(p[off+2:])&^7 != 0 {
				return tooBig // not the first: its upper layer is unknown
			}
			nh, off = p[off], off+8
		case protoICMPv6:
			if off >= len(p) {
				return tooBig
			}
			return p[off] >= 128 // informational messages only
		default:
			return true
		}
	}
	return tooBig
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// icmpError writes into out an ICMPv6 error of type typ and code from src
// (this node's address, 16 bytes) about the invoking packet p, carrying as
// much of p as keeps the error within MinMTU (RFC 4443 §2.4(c)), and
// returns its length. out must hold MinMTU bytes. param is the 32-bit
// field after the checksum: the MTU of a Packet Too Big, else 0.
func icmpError(out, src, p []byte, typ, code uint8, param uint32) int {
	body := min(len(p), MinMTU-ipv6Len-8)
	plen := 8 + body
	out[0], out[1], out[2], out[3] = 0x60, 0, 0, 0
	binary.BigEndian.PutUint16(out[4:], uint16(plen))
	out[6], out[7] = protoICMPv6, errHopLimit
	copy(out[8:24], src)
	copy(out[24:40], p[8:24]) // to the invoking packet's source
	m := out[ipv6Len:]
	m[0], m[1], m[2], m[3] = typ, code, 0, 0
	binary.BigEndian.PutUint32(m[4:], param)
	copy(m[8:], p[:body])
	binary.BigEndian.PutUint16(m[2:], icmpChecksum(out[8:40], m[:plen]))
	return ipv6Len + plen
}

// icmpChecksum is the ICMPv6 checksum of msg (its checksum field zero)
// with the pseudo-header of RFC 8200 §8.1: the two addresses (addrs, 32
// bytes), the upper-layer length and next header 58.
func icmpChecksum(addrs, msg []byte) uint16 {
	s := sum16(0, addrs)
	s += uint32(len(msg)>>16) + uint32(len(msg)&0xffff) + protoICMPv6
	s = sum16(s, msg)
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// sum16 adds b as big-endian 16-bit words (odd length padded with zero,
// RFC 1071) to s.
func sum16(s uint32, b []byte) uint32 {
	for len(b) >= 2 {
		s += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
		if s >= 1<<31 {
			s = s&0xffff + s>>16
		}
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	return s
}

// limiter is a token bucket for ICMPv6 errors (RFC 4443 §2.4(f)): a
// flood of packets to a dead node or of oversized ones costs at most
// rate errors per second.
type limiter struct {
	tokens float64
	last   time.Time
}

const (
	errRate  = 100 // errors per second
	errBurst = 50
)

func (l *limiter) allow(now time.Time) bool {
	if l.last.IsZero() {
		l.tokens = errBurst
	} else {
		l.tokens = min(errBurst, l.tokens+now.Sub(l.last).Seconds()*errRate)
	}
	l.last = now
	if l.tokens < 1 {
		return false
	}
	l.tokens--
	return true
}
