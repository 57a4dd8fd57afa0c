package nat64

import "encoding/binary"

// tuple4 and tuple6 are the addresses and ports a translated packet gets.
// For an ICMP query (echo) sport holds the new identifier.
type tuple4 struct {
	src, dst     [4]byte
	sport, dport uint16
}

type tuple6 struct {
	src, dst     [16]byte
	sport, dport uint16
}

// ICMP types (RFC 792, RFC 4443).
const (
	icmp4EchoReply      = 0
	icmp4DstUnreach     = 3
	icmp4Echo           = 8
	icmp4TimeExceeded   = 11
	icmp4ParamProblem   = 12
	icmp6DstUnreach     = 1
	icmp6PacketTooBig   = 2
	icmp6TimeExceeded   = 3
	icmp6ParamProblem   = 4
	icmp6Echo           = 128
	icmp6EchoReply      = 129
	icmpv6MinErrorLimit = 1280 // RFC 4443 §2.4(c): an ICMPv6 error fits the minimum MTU
	icmpv4ErrorLimit    = 576  // RFC 1812 §4.3.2.3
)

func isICMP6Error(t uint8) bool { return t < 128 }
func isICMP4Error(t uint8) bool {
	return t == icmp4DstUnreach || t == icmp4TimeExceeded || t == icmp4ParamProblem || t == 4 || t == 5
}

// l4ports reads the ports of a TCP or UDP header, or the identifier of an
// ICMP echo (twice), from the start of an upper-layer header.
func l4ports(proto uint8, l4 []byte) (sport, dport uint16, err error) {
	switch proto {
	case protoTCP, protoUDP:
		if len(l4) < 4 {
			return 0, 0, ErrTruncated
		}
		return binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:]), nil
	default: // ICMP echo: type, code, checksum, identifier
		if len(l4) < 8 {
			return 0, 0, ErrTruncated
		}
		id := binary.BigEndian.Uint16(l4[4:])
		return id, id, nil
	}
}

// rewriteL4 copies a TCP or UDP segment into o with new ports and adjusts
// its checksum incrementally (RFC 1624) for the ports and for the
// pseudo-header addresses, whose words summed to oldPseudo and now sum to
// newPseudo. Lengths and protocol number weigh the same in both
// pseudo-headers, so only addresses change. A quoted (inner) segment may be
// truncated; it keeps what fits.
func rewriteL4(o, l4 []byte, proto uint8, sport, dport uint16, oldPseudo, newPseudo uint64, inner, frag bool) (int, error) {
	hdr, csOff := 20, 16
	if proto == protoUDP {
		hdr, csOff = 8, 6
	}
	if !inner && len(l4) < hdr {
		return 0, ErrTruncated
	}
	if !inner && !frag && proto == protoUDP && int(binary.BigEndian.Uint16(l4[4:])) != len(l4) {
		return 0, ErrMalformed // the UDP length must match the IP payload (RFC 768)
	}
	n := copy(o, l4)
	if n < 4 || (!inner && n < len(l4)) {
		return 0, ErrShortBuffer
	}
	old := sum(oldPseudo, o[:4])
	binary.BigEndian.PutUint16(o, sport)
	binary.BigEndian.PutUint16(o[2:], dport)
	if n >= csOff+2 {
		cs := binary.BigEndian.Uint16(o[csOff:])
		if proto == protoUDP && cs == 0 {
			return n, nil // no checksum: the caller decides (RFC 7915 §4.5)
		}
		cs = adjust(cs, old, sum(newPseudo, o[:4]))
		if proto == protoUDP && cs == 0 {
			cs = 0xffff // RFC 768: a computed zero is sent as all ones
		}
		binary.BigEndian.PutUint16(o[csOff:], cs)
	}
	return n, nil
}

// to4 writes the IPv4 translation of the IPv6 packet h into o (RFC 7915
// §5.1). ih and itu are the quoted packet and its tuple when h is an ICMPv6
// error. An inner packet keeps its hop limit and original lengths.
func (t *Translator) to4(h *hdr6, tu *tuple4, ih *hdr6, itu *tuple4, o []byte, inner bool) (int, error) {
	proto := h.proto
	if proto == protoICMPv6 {
		proto = protoICMP
	}
	if len(o) < ipv4HeaderLen {
		return 0, ErrShortBuffer
	}
	body := o[ipv4HeaderLen:]
	var n int
	var err error
	switch {
	case !h.first():
		n = copy(body, h.l4)
		if n < len(h.l4) && !inner {
			return 0, ErrShortBuffer
		}
	case proto == protoICMP:
		n, err = t.icmp6to4(h, tu, ih, itu, body, inner)
	default:
		oldP := sum(sum(0, h.src[:]), h.dst[:])
		newP := sum(sum(0, tu.src[:]), tu.dst[:])
		n, err = rewriteL4(body, h.l4, proto, tu.sport, tu.dport, oldP, newP, inner, h.frag && (h.more || h.fragOff != 0))
		if err == nil && !inner && proto == protoUDP && binary.BigEndian.Uint16(body[6:]) == 0 {
			err = ErrChecksum // RFC 8200 §8.1: a zero UDP checksum is invalid in IPv6
		}
	}
	if err != nil {
		return 0, err
	}
	tot := ipv4HeaderLen + n
	if inner {
		tot = ipv4HeaderLen + h.l4len
	}
	var id, flags uint16
	switch {
	case h.frag: // RFC 7915 §5.1.1
		id = uint16(h.fragID)
		flags = h.fragOff
		if h.more {
			flags |= 0x2000
		}
	case inner:
	case tot > 1260: // RFC 7915 §5.1: DF set above 1260 bytes
		flags = 0x4000
	default:
		id = t.nextID()
	}
	ttl := h.hlim
	if !inner {
		ttl--
	}
	put4(o, h.tc, tot, id, flags, ttl, proto, &tu.src, &tu.dst)
	return ipv4HeaderLen + n, nil
}

// to6 writes the IPv6 translation of the IPv4 packet h into o (RFC 7915
// §4.1); a fragment gets a Fragment Header.
func (t *Translator) to6(h *hdr4, tu *tuple6, ih *hdr4, itu *tuple6, o []byte, inner bool) (int, error) {
	proto := h.proto
	if proto == protoICMP {
		proto = protoICMPv6
	}
	hl := ipv6HeaderLen
	if h.fragment() {
		hl += fragHeaderLen
	}
	if len(o) < hl {
		return 0, ErrShortBuffer
	}
	body := o[hl:]
	var n int
	var err error
	switch {
	case !h.first():
		n = copy(body, h.l4)
		if n < len(h.l4) && !inner {
			return 0, ErrShortBuffer
		}
	case proto == protoICMPv6:
		n, err = t.icmp4to6(h, tu, ih, itu, body, inner)
	default:
		oldP := sum(sum(0, h.src[:]), h.dst[:])
		newP := sum(sum(0, tu.src[:]), tu.dst[:])
		n, err = rewriteL4(body, h.l4, proto, tu.sport, tu.dport, oldP, newP, inner, h.fragment())
		if err == nil && !inner && proto == protoUDP && binary.BigEndian.Uint16(body[6:]) == 0 {
			// RFC 7915 §4.5: compute the checksum IPv4 left out; a
			// fragment cannot be, so it is dropped (RFC 6146 §3.4).
			if h.fragment() {
				err = ErrFragment
				break
			}
			cs := checksum(sum(pseudo6(&tu.src, &tu.dst, n, protoUDP), body[:n]))
			if cs == 0 {
				cs = 0xffff
			}
			binary.BigEndian.PutUint16(body[6:], cs)
		}
	}
	if err != nil {
		return 0, err
	}
	plen := hl - ipv6HeaderLen + n
	if inner {
		plen = hl - ipv6HeaderLen + h.l4len
	}
	hlim := h.ttl
	if !inner {
		hlim--
	}
	nh := proto
	if h.fragment() {
		nh = nhFragment
		f := o[ipv6HeaderLen:]
		f[0] = proto
		f[1] = 0
		fo := h.fragOff << 3
		if h.mf {
			fo |= 1
		}
		binary.BigEndian.PutUint16(f[2:], fo)
		binary.BigEndian.PutUint32(f[4:], uint32(h.id))
	}
	put6(o, h.tos, plen, nh, hlim, &tu.src, &tu.dst)
	return hl + n, nil
}

// rfc1191Plateaus are the MTU plateaus of RFC 1191 §7, for Fragmentation
// Needed messages from routers that leave the MTU field zero.
var rfc1191Plateaus = [...]int{65535, 32000, 17914, 8166, 4352, 2002, 1492, 1006, 508, 296, 68}

// pointer4to6 maps an ICMPv4 Parameter Problem pointer to the IPv6 header
// field it names (RFC 7915 §4.2, Figure 3); -1 for fields IPv6 lacks.
func pointer4to6(p uint8) int {
	switch {
	case p == 0:
		return 0
	case p == 1:
		return 1
	case p == 2 || p == 3:
		return 4
	case p == 8:
		return 7
	case p == 9:
		return 6
	case p >= 12 && p <= 15:
		return 8
	case p >= 16 && p <= 19:
		return 24
	}
	return -1
}

// pointer6to4 maps an ICMPv6 Parameter Problem pointer (RFC 7915 §5.2,
// Figure 6).
func pointer6to4(p uint32) int {
	switch {
	case p == 0:
		return 0
	case p == 1:
		return 1
	case p == 4 || p == 5:
		return 2
	case p == 6:
		return 9
	case p == 7:
		return 8
	case p >= 8 && p <= 23:
		return 12
	case p >= 24 && p <= 39:
		return 16
	}
	return -1
}

// icmp6to4 translates an ICMPv6 message into ICMPv4 (RFC 7915 §5.2,
// §5.3) and returns its length.
func (t *Translator) icmp6to4(h *hdr6, tu *tuple4, ih *hdr6, itu *tuple4, o []byte, inner bool) (int, error) {
	m := h.l4
	if len(m) < 8 {
		return 0, ErrTruncated
	}
	typ, code := m[0], m[1]
	if typ == icmp6Echo || typ == icmp6EchoReply {
		n := copy(o, m)
		if n < 8 || (!inner && n < len(m)) {
			return 0, ErrShortBuffer
		}
		nt := uint8(icmp4Echo)
		if typ == icmp6EchoReply {
			nt = icmp4EchoReply
		}
		o[0] = nt
		binary.BigEndian.PutUint16(o[4:], tu.sport)
		// Incremental: the ICMPv6 pseudo-header leaves, type and
		// identifier change; the rest of the message is untouched.
		old := pseudo6(&h.src, &h.dst, h.l4len, protoICMPv6) + uint64(typ)<<8 + uint64(code) + uint64(binary.BigEndian.Uint16(m[4:]))
		nw := uint64(nt)<<8 + uint64(code) + uint64(tu.sport)
		binary.BigEndian.PutUint16(o[2:], adjust(binary.BigEndian.Uint16(m[2:]), old, nw))
		return n, nil
	}
	if inner || ih == nil || !isICMP6Error(typ) {
		return 0, ErrICMPType // informational (ND, MLD, ...) stay on their link
	}
	// The message is rebuilt, so its checksum is computed afresh; verify
	// the old one first or a corrupted error would leave valid.
	if checksum(pseudo6(&h.src, &h.dst, h.l4len, protoICMPv6)+sum(0, m)) != 0 {
		return 0, ErrChecksum
	}
	var rest [4]byte
	switch typ {
	case icmp6DstUnreach:
		typ = icmp4DstUnreach
		switch code {
		case 0, 2, 3: // no route, beyond scope, address unreachable
			code = 1 // host unreachable
		case 1:
			code = 10 // administratively prohibited
		case 4:
			code = 3 // port unreachable
		default:
			return 0, ErrICMPType
		}
	case icmp6PacketTooBig:
		typ, code = icmp4DstUnreach, 4
		mtu := int(binary.BigEndian.Uint32(m[4:])) - 20
		mtu = min(mtu, t.cfg.MTU4, t.cfg.MTU6-20)
		mtu = max(mtu, 68)
		binary.BigEndian.PutUint16(rest[2:], uint16(min(mtu, 0xffff)))
	case icmp6TimeExceeded:
		typ = icmp4TimeExceeded
	case icmp6ParamProblem:
		switch code {
		case 0:
			p := pointer6to4(binary.BigEndian.Uint32(m[4:]))
			if p < 0 {
				return 0, ErrICMPType
			}
			typ, code = icmp4ParamProblem, 0
			rest[0] = uint8(p)
		case 1:
			typ, code = icmp4DstUnreach, 2 // protocol unreachable
		default:
			return 0, ErrICMPType
		}
	default:
		return 0, ErrICMPType
	}
	if len(o) < 8 {
		return 0, ErrShortBuffer
	}
	o[0], o[1], o[2], o[3] = typ, code, 0, 0
	copy(o[4:8], rest[:])
	lim := min(len(o), t.cfg.MTU4-ipv4HeaderLen)
	in, err := t.to4(ih, itu, nil, nil, o[8:lim], true)
	if err != nil {
		return 0, err
	}
	n := 8 + in
	binary.BigEndian.PutUint16(o[2:], checksum(sum(0, o[:n])))
	return n, nil
}

// icmp4to6 translates an ICMPv4 message into ICMPv6 (RFC 7915 §4.2,
// §4.3) and returns its length.
func (t *Translator) icmp4to6(h *hdr4, tu *tuple6, ih *hdr4, itu *tuple6, o []byte, inner bool) (int, error) {
	m := h.l4
	if len(m) < 8 {
		return 0, ErrTruncated
	}
	typ, code := m[0], m[1]
	if typ == icmp4Echo || typ == icmp4EchoReply {
		n := copy(o, m)
		if n < 8 || (!inner && n < len(m)) {
			return 0, ErrShortBuffer
		}
		nt := uint8(icmp6Echo)
		if typ == icmp4EchoReply {
			nt = icmp6EchoReply
		}
		o[0] = nt
		binary.BigEndian.PutUint16(o[4:], tu.sport)
		old := uint64(typ)<<8 + uint64(code) + uint64(binary.BigEndian.Uint16(m[4:]))
		nw := pseudo6(&tu.src, &tu.dst, h.l4len, protoICMPv6) + uint64(nt)<<8 + uint64(code) + uint64(tu.sport)
		binary.BigEndian.PutUint16(o[2:], adjust(binary.BigEndian.Uint16(m[2:]), old, nw))
		return n, nil
	}
	if inner || ih == nil || !isICMP4Error(typ) {
		return 0, ErrICMPType
	}
	if checksum(sum(0, m)) != 0 {
		return 0, ErrChecksum
	}
	var rest [4]byte
	switch typ {
	case icmp4DstUnreach:
		typ = icmp6DstUnreach
		switch code {
		case 0, 1, 5, 6, 7, 8, 11, 12:
			code = 0 // no route
		case 2: // protocol unreachable: Parameter Problem at Next Header
			typ, code = icmp6ParamProblem, 1
			binary.BigEndian.PutUint32(rest[:], 6)
		case 3:
			code = 4 // port unreachable
		case 4: // fragmentation needed (RFC 7915 §4.2)
			typ, code = icmp6PacketTooBig, 0
			mtu := int(binary.BigEndian.Uint16(m[6:]))
			if mtu == 0 {
				mtu = 68
				for _, p := range rfc1191Plateaus {
					if p < ih.totalLen {
						mtu = p
						break
					}
				}
			}
			mtu = min(mtu+20, t.cfg.MTU6, t.cfg.MTU4+20)
			mtu = max(mtu, 1280)
			binary.BigEndian.PutUint32(rest[:], uint32(mtu))
		case 9, 10, 13, 15:
			code = 1 // administratively prohibited
		default:
			return 0, ErrICMPType
		}
	case icmp4TimeExceeded:
		typ = icmp6TimeExceeded
	case icmp4ParamProblem:
		if code != 0 && code != 2 {
			return 0, ErrICMPType
		}
		p := pointer4to6(m[4])
		if p < 0 {
			return 0, ErrICMPType
		}
		typ, code = icmp6ParamProblem, 0
		binary.BigEndian.PutUint32(rest[:], uint32(p))
	default: // source quench, redirect: single-hop or obsolete
		return 0, ErrICMPType
	}
	if len(o) < 8 {
		return 0, ErrShortBuffer
	}
	o[0], o[1], o[2], o[3] = typ, code, 0, 0
	copy(o[4:8], rest[:])
	lim := min(len(o), icmpv6MinErrorLimit-ipv6HeaderLen, t.cfg.MTU6-ipv6HeaderLen)
	if lim < 8 {
		return 0, ErrShortBuffer
	}
	in, err := t.to6(ih, itu, nil, nil, o[8:lim], true)
	if err != nil {
		return 0, err
	}
	n := 8 + in
	binary.BigEndian.PutUint16(o[2:], checksum(sum(pseudo6(&tu.src, &tu.dst, n, protoICMPv6), o[:n])))
	return n, nil
}
