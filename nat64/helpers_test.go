package nat64

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// Test packets are built by hand here, independently of the translator's
// own writers, and every translated packet is checked by verify4/verify6.

func a16(s string) [16]byte { return netip.MustParseAddr(s).As16() }
func a4(s string) [4]byte   { return netip.MustParseAddr(s).As4() }

func csum(b []byte, acc uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		acc += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		acc += uint32(b[len(b)-1]) << 8
	}
	for acc > 0xffff {
		acc = acc>>16 + acc&0xffff
	}
	return ^uint16(acc)
}

func ph6(src, dst [16]byte, n int, nh uint8) uint32 {
	var b [40]byte
	copy(b[:16], src[:])
	copy(b[16:32], dst[:])
	binary.BigEndian.PutUint32(b[32:], uint32(n))
	b[39] = nh
	var acc uint32
	for i := 0; i < 40; i += 2 {
		acc += uint32(b[i])<<8 | uint32(b[i+1])
	}
	return acc
}

func ph4(src, dst [4]byte, n int, proto uint8) uint32 {
	var b [12]byte
	copy(b[:4], src[:])
	copy(b[4:8], dst[:])
	b[9] = proto
	binary.BigEndian.PutUint16(b[10:], uint16(n))
	var acc uint32
	for i := 0; i < 12; i += 2 {
		acc += uint32(b[i])<<8 | uint32(b[i+1])
	}
	return acc
}

func udpSeg(sp, dp uint16, payload []byte) []byte {
	b := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(b, sp)
	binary.BigEndian.PutUint16(b[2:], dp)
	binary.BigEndian.PutUint16(b[4:], uint16(len(b)))
	copy(b[8:], payload)
	return b
}

func tcpSeg(sp, dp uint16, flags uint8, payload []byte) []byte {
	b := make([]byte, 20+len(payload))
	binary.BigEndian.PutUint16(b, sp)
	binary.BigEndian.PutUint16(b[2:], dp)
	binary.BigEndian.PutUint32(b[4:], 1000)
	b[12] = 5 << 4
	b[13] = flags
	binary.BigEndian.PutUint16(b[14:], 65535)
	copy(b[20:], payload)
	return b
}

func echoMsg(typ uint8, id, seq uint16, payload []byte) []byte {
	b := make([]byte, 8+len(payload))
	b[0] = typ
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	copy(b[8:], payload)
	return b
}

// setL4Sum fills in the checksum of an upper-layer message given the
// pseudo-header sum (0 for ICMPv4).
func setL4Sum(proto uint8, l4 []byte, ph uint32) {
	off := map[uint8]int{protoTCP: 16, protoUDP: 6, protoICMP: 2, protoICMPv6: 2}[proto]
	l4[off], l4[off+1] = 0, 0
	c := csum(l4, ph)
	if proto == protoUDP && c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(l4[off:], c)
}

// pkt6 builds an IPv6 packet with checksummed upper layer; fragHdr, when
// not nil, is inserted as a Fragment Header (next header filled in).
func pkt6(src, dst [16]byte, hlim uint8, proto uint8, l4 []byte, fragHdr []byte) []byte {
	l4 = append([]byte(nil), l4...)
	setL4Sum(proto, l4, ph6(src, dst, len(l4), proto))
	ext := len(fragHdr)
	b := make([]byte, 40+ext+len(l4))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(ext+len(l4)))
	b[6] = proto
	if fragHdr != nil {
		b[6] = nhFragment
		copy(b[40:], fragHdr)
		b[40] = proto
	}
	b[7] = hlim
	copy(b[8:], src[:])
	copy(b[24:], dst[:])
	copy(b[40+ext:], l4)
	return b
}

// pkt4 builds an IPv4 packet; flags holds DF/MF and the fragment offset.
func pkt4(src, dst [4]byte, ttl, proto uint8, id, flags uint16, l4 []byte, sumL4 bool) []byte {
	l4 = append([]byte(nil), l4...)
	if sumL4 {
		ph := uint32(0)
		if proto != protoICMP {
			ph = ph4(src, dst, len(l4), proto)
		}
		setL4Sum(proto, l4, ph)
	}
	b := make([]byte, 20+len(l4))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], flags)
	b[8] = ttl
	b[9] = proto
	copy(b[12:], src[:])
	copy(b[16:], dst[:])
	binary.BigEndian.PutUint16(b[10:], csum(b[:20], 0))
	copy(b[20:], l4)
	return b
}

// verify4 checks an IPv4 packet: header checksum, total length, and the
// upper-layer checksum when the packet is not a fragment.
func verify4(b []byte) error {
	if len(b) < 20 || b[0] != 0x45 {
		return fmt.Errorf("not a 20-byte-header IPv4 packet")
	}
	if csum(b[:20], 0) != 0 {
		return fmt.Errorf("IPv4 header checksum bad")
	}
	if int(binary.BigEndian.Uint16(b[2:])) != len(b) {
		return fmt.Errorf("total length %d, packet %d", binary.BigEndian.Uint16(b[2:]), len(b))
	}
	ff := binary.BigEndian.Uint16(b[6:])
	if ff&0x3fff != 0 { // fragment: the checksum covers the datagram
		return nil
	}
	l4 := b[20:]
	var src, dst [4]byte
	copy(src[:], b[12:16])
	copy(dst[:], b[16:20])
	switch b[9] {
	case protoUDP:
		if len(l4) < 8 || int(binary.BigEndian.Uint16(l4[4:])) != len(l4) {
			return fmt.Errorf("UDP length bad")
		}
		if binary.BigEndian.Uint16(l4[6:]) != 0 && csum(l4, ph4(src, dst, len(l4), protoUDP)) != 0 {
			return fmt.Errorf("UDP checksum bad")
		}
	case protoTCP:
		if csum(l4, ph4(src, dst, len(l4), protoTCP)) != 0 {
			return fmt.Errorf("TCP checksum bad")
		}
	case protoICMP:
		if csum(l4, 0) != 0 {
			return fmt.Errorf("ICMP checksum bad")
		}
		if ihl := 0; len(l4) >= 28 && l4[0] != 0 && l4[0] != 8 {
			if ihl = int(l4[8]&0xf) * 4; ihl < 20 || len(l4) < 8+ihl {
				return fmt.Errorf("quoted IPv4 header length %d", ihl)
			}
			if csum(l4[8:8+ihl], 0) != 0 {
				return fmt.Errorf("quoted IPv4 header checksum bad")
			}
		}
	default:
		return fmt.Errorf("protocol %d", b[9])
	}
	return nil
}

// verify6 checks an IPv6 packet: payload length and the upper-layer
// checksum when it is not a fragment.
func verify6(b []byte) error {
	if len(b) < 40 || b[0]>>4 != 6 {
		return fmt.Errorf("not IPv6")
	}
	if int(binary.BigEndian.Uint16(b[4:]))+40 != len(b) {
		return fmt.Errorf("payload length %d, packet %d", binary.BigEndian.Uint16(b[4:]), len(b))
	}
	nh, l4 := b[6], b[40:]
	if nh == nhFragment {
		if len(l4) < 8 {
			return fmt.Errorf("fragment header truncated")
		}
		if binary.BigEndian.Uint16(l4[2:])&0xfff9 != 0 {
			return nil
		}
		nh, l4 = l4[0], l4[8:]
		if b[46]&1 != 0 { // first of several: datagram checksum
			return nil
		}
	}
	var src, dst [16]byte
	copy(src[:], b[8:24])
	copy(dst[:], b[24:40])
	switch nh {
	case protoUDP:
		if len(l4) < 8 || int(binary.BigEndian.Uint16(l4[4:])) != len(l4) {
			return fmt.Errorf("UDP length bad")
		}
		if binary.BigEndian.Uint16(l4[6:]) == 0 {
			return fmt.Errorf("UDP zero checksum in IPv6")
		}
	case protoTCP, protoICMPv6:
	default:
		return fmt.Errorf("next header %d", nh)
	}
	if csum(l4, ph6(src, dst, len(l4), nh)) != 0 {
		return fmt.Errorf("next header %d: checksum bad", nh)
	}
	return nil
}

// clock is a virtual clock.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

var (
	host6   = a16("2001:db8:1::10")
	host6b  = a16("2001:db8:2::20")
	server4 = a4("198.51.100.7")
	router4 = a4("203.0.113.1")
	pool4   = a4("192.0.2.1")
)

func newTestTranslator(t testing.TB, mod func(*Config)) (*Translator, *clock) {
	t.Helper()
	c := &clock{t: time.Unix(1_800_000_000, 0)}
	cfg := Config{Pool: []netip.Addr{netip.AddrFrom4(pool4)}, Now: c.now}
	if mod != nil {
		mod(&cfg)
	}
	tr, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tr, c
}

func wkp(v4 [4]byte) [16]byte {
	p, _ := newPrefix(WellKnownPrefix)
	return p.embed(v4)
}
