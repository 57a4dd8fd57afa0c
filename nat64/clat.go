package nat64

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// CLATAddr4 is the CLAT's own IPv4 address, the source of the ICMPv4
// errors it sends to LAN hosts: 192.0.0.1 from the IPv4 Service
// Continuity Prefix 192.0.0.0/29 (RFC 7335), which RFC 6877 CLATs use.
var CLATAddr4 = netip.MustParseAddr("192.0.0.1")

// The stateless mode: a CLAT (RFC 6877 §6.3, the customer-side translator
// of 464XLAT). IPv4 packets of hosts on a node's LAN become IPv6 packets
// from the node's CLAT prefix (RFC 6052 embedding of the host's IPv4
// address) to the NAT64 prefix (embedding of the IPv4 destination), and
// IPv6 packets from the NAT64 prefix to the CLAT prefix become IPv4
// packets back, one to one, with no state: RFC 7915 translation through
// the same code as the stateful mode (to4, to6, the ICMP and fragment
// handling), only the addresses come from the packet instead of a
// binding. The gateway's NAT64 does the stateful part (RFC 6877 §6.2,
// the PLAT).
//
// The NAT64 prefix follows the gateway a node would use (its exit may
// change), so it is set at run time with SetPrefix; the CLAT prefix is
// the node's own and fixed.

// CLATConfig configures a stateless translator.
type CLATConfig struct {
	// CLAT is the node's CLAT prefix (RFC 6052: 32, 40, 48, 56, 64 or 96
	// bits), the IPv6 side of its LAN's IPv4 hosts.
	CLAT netip.Prefix
	// Prefix is the NAT64 prefix IPv4 destinations are embedded in
	// (SetPrefix changes it); default WellKnownPrefix.
	Prefix netip.Prefix
	// MTU4 and MTU6 as in Config (default 1500 and 1280).
	MTU4, MTU6 int
	// ICMPErrorsPerSecond as in Config (default 100).
	ICMPErrorsPerSecond int
	// Now is the clock (the ICMP rate limit); default time.Now.
	Now func() time.Time
}

// NewCLAT returns a stateless translator (a CLAT): In4 and In4Split
// translate IPv4 packets of LAN hosts to IPv6, In6 translates IPv6
// packets from the NAT64 prefix to the CLAT prefix to IPv4.
func NewCLAT(cfg CLATConfig) (*Translator, error) {
	c, err := newCLATPrefix(cfg.CLAT)
	if err != nil {
		return nil, fmt.Errorf("nat64: CLAT prefix: %w", err)
	}
	if cfg.Prefix == (netip.Prefix{}) {
		cfg.Prefix = WellKnownPrefix
	}
	if cfg.Prefix.Overlaps(cfg.CLAT) {
		return nil, fmt.Errorf("nat64: CLAT prefix %v overlaps the NAT64 prefix %v", cfg.CLAT, cfg.Prefix)
	}
	t, err := New(Config{
		Prefix: cfg.Prefix, Pool: []netip.Addr{CLATAddr4},
		MTU4: cfg.MTU4, MTU6: cfg.MTU6, ICMPErrorsPerSecond: cfg.ICMPErrorsPerSecond, Now: cfg.Now,
		// Its ICMPv6 errors come from its own address under the CLAT
		// prefix, its ICMPv4 errors from CLATAddr4.
		Addr4: CLATAddr4, Addr6: netip.AddrFrom16(c.embed(CLATAddr4.As4())),
		MaxSessions: 1, MaxFragments: 1, // no state is kept
	})
	if err != nil {
		return nil, err
	}
	t.clat = &c
	return t, nil
}

// newCLATPrefix is newPrefix for the CLAT's own /96, whose u octet (bits
// 64–71) may be set. RFC 6052 §2.2 keeps it zero so that an embedded
// address reads as an IPv6 interface identifier; a CLAT prefix is never
// synthesized by DNS64 or parsed by a NAT64 (the stateful NAT64 of RFC
// 6146 maps its addresses as opaque IPv6 sources), only routed back to
// the node and read by the CLAT itself, which takes the IPv4 address from
// bits 96–127. A mesh node's CLAT /96 carries its whole 64-bit ID
// (meship.CLATPrefix), which cannot leave the u octet free.
func newCLATPrefix(p netip.Prefix) (prefix, error) {
	if p.IsValid() && p.Bits() == 96 && p.Addr().Is6() && p.Addr().As16()[8] != 0 {
		a := p.Addr().As16()
		a[8] = 0
		if _, err := newPrefix(netip.PrefixFrom(netip.AddrFrom16(a), 96)); err != nil {
			return prefix{}, err
		}
		off, _ := v4Offsets(96)
		return prefix{a: p.Addr().As16(), bytes: 12, off: off}, nil
	}
	return newPrefix(p)
}

// SetPrefix changes a CLAT's NAT64 prefix (the gateway it sends through
// changed): packets from now on use p.
func (t *Translator) SetPrefix(p netip.Prefix) error {
	if t.clat == nil {
		return errors.New("nat64: SetPrefix on a stateful translator")
	}
	np, err := newPrefix(p)
	if err != nil {
		return err
	}
	if p.Overlaps(netip.PrefixFrom(netip.AddrFrom16(t.clat.a), t.clat.bytes*8)) {
		return fmt.Errorf("nat64: NAT64 prefix %v overlaps the CLAT prefix", p)
	}
	t.mu.Lock()
	t.pfx = np
	t.mu.Unlock()
	return nil
}

// clat6 is In6 of a CLAT: an IPv6 packet from the NAT64 prefix to the
// CLAT prefix becomes the IPv4 packet for the LAN host.
func (t *Translator) clat6(pkt, out []byte, h *hdr6) (int, bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	dst4, ok := t.clat.extract(&h.dst)
	if !ok {
		return t.drop(ErrNotPrefix)
	}
	src4, ok := t.pfx.extract(&h.src)
	if !ok || !unicast4(dst4) || !unicast4(src4) {
		return t.drop(ErrBadAddr)
	}
	now := t.cfg.Now()
	if h.segLeft != 0 {
		return t.reply6Locked(out, pkt, h, icmp6ParamProblem, 0, uint32(h.segLeft), ErrRoutingHeader, now)
	}
	if h.hlim <= 1 {
		return t.reply6Locked(out, pkt, h, icmp6TimeExceeded, 0, 0, ErrHopLimit, now)
	}
	if h.proto != protoTCP && h.proto != protoUDP && h.proto != protoICMPv6 {
		return t.drop(ErrProto)
	}
	tu := tuple4{src: src4, dst: dst4}
	var itu tuple4
	var ihp *hdr6
	var ih hdr6
	if h.first() {
		sp, dp, err := l4ports(h.proto, h.l4)
		if err != nil {
			return t.drop(err)
		}
		if h.proto == protoICMPv6 && isICMP6Error(h.l4[0]) {
			// The quoted packet is one the LAN host sent: from the CLAT
			// prefix to the NAT64 prefix.
			if ih, err = parse6(h.l4[8:], true); err != nil {
				return t.drop(err)
			}
			if !ih.first() || (ih.proto != protoTCP && ih.proto != protoUDP && ih.proto != protoICMPv6) {
				return t.drop(ErrICMPType)
			}
			isp, idp, err := l4ports(ih.proto, ih.l4)
			if err != nil {
				return t.drop(err)
			}
			is4, ok1 := t.clat.extract(&ih.src)
			id4, ok2 := t.pfx.extract(&ih.dst)
			if !ok1 || !ok2 {
				return t.drop(ErrNoMapping)
			}
			itu = tuple4{src: is4, dst: id4, sport: isp, dport: idp}
			ihp = &ih
		} else {
			if h.proto == protoICMPv6 && h.l4[0] != icmp6Echo && h.l4[0] != icmp6EchoReply {
				return t.drop(ErrICMPType)
			}
			tu.sport, tu.dport = sp, dp // an echo's identifier twice
		}
	}
	return t.finish6Locked(pkt, out, h, &tu, ihp, &itu, now)
}

// clat4 is In4 of a CLAT: an IPv4 packet of a LAN host becomes an IPv6
// packet from the CLAT prefix to the NAT64 prefix.
func (t *Translator) clat4(pkt, out []byte, h *hdr4, emit func([]byte)) (int, bool, error) {
	if !unicast4(h.src) || !unicast4(h.dst) {
		return t.drop(ErrBadAddr)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.cfg.Now()
	if h.ttl <= 1 {
		return t.reply4Locked(out, pkt, h, icmp4TimeExceeded, 0, 0, ErrHopLimit, now)
	}
	if h.srcRoute {
		return t.reply4Locked(out, pkt, h, icmp4DstUnreach, 5, 0, ErrSourceRoute, now)
	}
	if h.proto != protoTCP && h.proto != protoUDP && h.proto != protoICMP {
		return t.drop(ErrProto)
	}
	tu := tuple6{src: t.clat.embed(h.src), dst: t.pfx.embed(h.dst)}
	var itu tuple6
	var ihp *hdr4
	var ih hdr4
	if h.first() {
		sp, dp, err := l4ports(h.proto, h.l4)
		if err != nil {
			return t.drop(err)
		}
		if h.proto == protoICMP && isICMP4Error(h.l4[0]) {
			// The quoted packet came to the LAN host from the Internet:
			// from the NAT64 prefix to the CLAT prefix.
			if ih, err = parse4(h.l4[8:], true); err != nil {
				return t.drop(err)
			}
			if !ih.first() || (ih.proto != protoTCP && ih.proto != protoUDP && ih.proto != protoICMP) {
				return t.drop(ErrICMPType)
			}
			isp, idp, err := l4ports(ih.proto, ih.l4)
			if err != nil {
				return t.drop(err)
			}
			itu = tuple6{src: t.pfx.embed(ih.src), dst: t.clat.embed(ih.dst), sport: isp, dport: idp}
			ihp = &ih
		} else {
			if h.proto == protoICMP && h.l4[0] != icmp4Echo && h.l4[0] != icmp4EchoReply {
				return t.drop(ErrICMPType)
			}
			tu.sport, tu.dport = sp, dp
		}
	}
	return t.finish4Locked(pkt, out, h, &tu, ihp, &itu, emit, now)
}
