package nat64

import "encoding/binary"

// Protocol numbers and IPv6 extension headers the translator knows.
const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58

	nhHopByHop = 0
	nhRouting  = 43
	nhFragment = 44
	nhDstOpts  = 60

	ipv4HeaderLen = 20
	ipv6HeaderLen = 40
	fragHeaderLen = 8
)

// hdr6 is a parsed IPv6 packet. l4 aliases the input.
type hdr6 struct {
	src, dst [16]byte
	tc       uint8
	hlim     uint8
	proto    uint8  // upper-layer protocol after the extension headers
	l4       []byte // upper-layer bytes present (fewer than l4len when quoted in an ICMP error)
	l4len    int    // upper-layer length according to Payload Length
	frag     bool   // a Fragment Header was present
	fragOff  uint16 // fragment offset in 8-byte units
	more     bool
	fragID   uint32
	segLeft  int // offset of a non-zero Segments Left field, 0 if none
}

// first reports whether h holds the upper-layer header (it is not a
// fragment, or it is the first one).
func (h *hdr6) first() bool { return !h.frag || h.fragOff == 0 }

// parse6 parses an IPv6 packet. An inner packet (quoted in an ICMP error)
// may be shorter than its Payload Length says.
func parse6(b []byte, inner bool) (h hdr6, err error) {
	if len(b) < ipv6HeaderLen {
		return h, ErrTruncated
	}
	if b[0]>>4 != 6 {
		return h, ErrVersion
	}
	plen := int(binary.BigEndian.Uint16(b[4:]))
	end := ipv6HeaderLen + plen
	if end > len(b) {
		if !inner {
			return h, ErrTruncated
		}
		end = len(b)
	}
	h.tc = b[0]<<4 | b[1]>>4
	h.hlim = b[7]
	copy(h.src[:], b[8:24])
	copy(h.dst[:], b[24:40])
	nh := b[6]
	off := ipv6HeaderLen
	// A bounded walk: eight extension headers is more than any real
	// packet carries (RFC 8200 §4.1 names six kinds, most once).
	for i := 0; ; i++ {
		if i == 8 {
			return h, ErrMalformed
		}
		switch nh {
		case nhHopByHop, nhDstOpts, nhRouting:
			if nh == nhHopByHop && off != ipv6HeaderLen {
				return h, ErrMalformed // RFC 8200 §4.1: only right after the header
			}
			if off+8 > end {
				return h, ErrTruncated
			}
			if nh == nhRouting && b[off+3] != 0 && h.segLeft == 0 {
				h.segLeft = off + 3
			}
			nh = b[off]
			off += (int(b[off+1]) + 1) * 8
			if off > end {
				return h, ErrTruncated
			}
			continue
		case nhFragment:
			if h.frag {
				return h, ErrMalformed
			}
			if off+fragHeaderLen > end {
				return h, ErrTruncated
			}
			h.frag = true
			fo := binary.BigEndian.Uint16(b[off+2:])
			h.fragOff = fo >> 3
			h.more = fo&1 != 0
			h.fragID = binary.BigEndian.Uint32(b[off+4:])
			nh = b[off]
			off += fragHeaderLen
			continue
		}
		break
	}
	h.proto = nh
	h.l4 = b[off:end]
	h.l4len = ipv6HeaderLen + plen - off
	return h, nil
}

// hdr4 is a parsed IPv4 packet. l4 aliases the input.
type hdr4 struct {
	src, dst  [4]byte
	tos, ttl  uint8
	proto     uint8
	id        uint16
	df, mf    bool
	fragOff   uint16 // in 8-byte units
	l4        []byte
	l4len     int
	srcRoute  bool // an unexpired loose or strict source route option
	totalLen  int
	headerLen int
}

func (h *hdr4) fragment() bool { return h.mf || h.fragOff != 0 }
func (h *hdr4) first() bool    { return h.fragOff == 0 }

// parse4 parses an IPv4 packet, checking the header checksum of an outer
// one (RFC 1812 §5.2.2: a router drops packets whose checksum fails).
func parse4(b []byte, inner bool) (h hdr4, err error) {
	if len(b) < ipv4HeaderLen {
		return h, ErrTruncated
	}
	if b[0]>>4 != 4 {
		return h, ErrVersion
	}
	ihl := int(b[0]&0xf) * 4
	if ihl < ipv4HeaderLen {
		return h, ErrMalformed
	}
	if len(b) < ihl {
		return h, ErrTruncated
	}
	tot := int(binary.BigEndian.Uint16(b[2:]))
	if tot < ihl {
		return h, ErrMalformed
	}
	end := tot
	if end > len(b) {
		if !inner {
			return h, ErrTruncated
		}
		end = len(b)
	}
	if !inner && checksum(sum(0, b[:ihl])) != 0 {
		return h, ErrChecksum
	}
	h.tos, h.ttl, h.proto = b[1], b[8], b[9]
	h.id = binary.BigEndian.Uint16(b[4:])
	ff := binary.BigEndian.Uint16(b[6:])
	h.df = ff&0x4000 != 0
	h.mf = ff&0x2000 != 0
	h.fragOff = ff & 0x1fff
	copy(h.src[:], b[12:16])
	copy(h.dst[:], b[16:20])
	// Options are ignored (RFC 7915 §4.1) except an unexpired source
	// route, which the translator cannot honour.
	for o := b[ipv4HeaderLen:ihl]; len(o) > 0; {
		t := o[0]
		if t == 0 {
			break
		}
		if t == 1 {
			o = o[1:]
			continue
		}
		if len(o) < 2 || int(o[1]) < 2 || int(o[1]) > len(o) {
			return h, ErrMalformed
		}
		if (t == 131 || t == 137) && len(o) >= 3 && int(o[2]) <= int(o[1]) {
			h.srcRoute = true
		}
		o = o[o[1]:]
	}
	h.headerLen = ihl
	h.totalLen = tot
	h.l4 = b[ihl:end]
	h.l4len = tot - ihl
	return h, nil
}

// put4 writes a 20-byte IPv4 header with its checksum.
func put4(o []byte, tos uint8, tot int, id uint16, flags uint16, ttl, proto uint8, src, dst *[4]byte) {
	o[0] = 0x45
	o[1] = tos
	binary.BigEndian.PutUint16(o[2:], uint16(tot))
	binary.BigEndian.PutUint16(o[4:], id)
	binary.BigEndian.PutUint16(o[6:], flags)
	o[8] = ttl
	o[9] = proto
	o[10], o[11] = 0, 0
	copy(o[12:16], src[:])
	copy(o[16:20], dst[:])
	binary.BigEndian.PutUint16(o[10:], checksum(sum(0, o[:ipv4HeaderLen])))
}

// put6 writes a 40-byte IPv6 header with a zero flow label (RFC 7915
// §4.1).
func put6(o []byte, tc uint8, plen int, nh, hlim uint8, src, dst *[16]byte) {
	o[0] = 0x60 | tc>>4
	o[1] = tc << 4
	o[2], o[3] = 0, 0
	binary.BigEndian.PutUint16(o[4:], uint16(plen))
	o[6] = nh
	o[7] = hlim
	copy(o[8:24], src[:])
	copy(o[24:40], dst[:])
}
