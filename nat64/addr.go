package nat64

import (
	"fmt"
	"net/netip"
)

// WellKnownPrefix is the NAT64 Well-Known Prefix 64:ff9b::/96 (RFC 6052
// §2.1).
var WellKnownPrefix = netip.MustParsePrefix("64:ff9b::/96")

// ValidatePrefix reports whether p can carry IPv4-embedded IPv6 addresses:
// length 32, 40, 48, 56, 64 or 96 (RFC 6052 §2.2), no bits set after the
// length, and for a /96 a zero u octet (bits 64-71, RFC 6052 §2.2).
func ValidatePrefix(p netip.Prefix) error {
	if !p.IsValid() || !p.Addr().Is6() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
		return fmt.Errorf("nat64: prefix %v: not an IPv6 prefix", p)
	}
	if _, ok := v4Offsets(p.Bits()); !ok {
		return fmt.Errorf("nat64: prefix %v: length must be 32, 40, 48, 56, 64 or 96 (RFC 6052 §2.2)", p)
	}
	if p.Masked() != p {
		return fmt.Errorf("nat64: prefix %v: has bits set after the prefix length", p)
	}
	if p.Bits() == 96 && p.Addr().As16()[8] != 0 {
		return fmt.Errorf("nat64: prefix %v: bits 64-71 (the u octet) must be zero (RFC 6052 §2.2)", p)
	}
	return nil
}

// v4Offsets gives the byte offsets of the four IPv4 octets in an address
// under a prefix of the given length (RFC 6052 §2.2, Figure 1). Byte 8,
// bits 64-71 (the u octet), is never used: the 32 bits skip over it.
func v4Offsets(bits int) ([4]int, bool) {
	switch bits {
	case 32:
		return [4]int{4, 5, 6, 7}, true
	case 40:
		return [4]int{5, 6, 7, 9}, true
	case 48:
		return [4]int{6, 7, 9, 10}, true
	case 56:
		return [4]int{7, 9, 10, 11}, true
	case 64:
		return [4]int{9, 10, 11, 12}, true
	case 96:
		return [4]int{12, 13, 14, 15}, true
	}
	return [4]int{}, false
}

// prefix is a validated RFC 6052 prefix in the form the packet path uses:
// all lengths are whole bytes, so membership is a byte compare.
type prefix struct {
	a     [16]byte
	bytes int
	off   [4]int
}

func newPrefix(p netip.Prefix) (prefix, error) {
	if err := ValidatePrefix(p); err != nil {
		return prefix{}, err
	}
	off, _ := v4Offsets(p.Bits())
	return prefix{a: p.Addr().As16(), bytes: p.Bits() / 8, off: off}, nil
}

// embed returns the IPv4-embedded IPv6 address of v4 (RFC 6052 §2.2): the
// prefix, the 32 IPv4 bits around the u octet, and a zero suffix.
func (p *prefix) embed(v4 [4]byte) [16]byte {
	var a [16]byte
	copy(a[:p.bytes], p.a[:p.bytes])
	for i, o := range p.off {
		a[o] = v4[i]
	}
	return a
}

// extract returns the IPv4 address embedded in a (RFC 6052 §2.3) and
// whether a is under the prefix at all. The suffix is ignored, as §2.3
// allows.
func (p *prefix) extract(a *[16]byte) ([4]byte, bool) {
	for i := 0; i < p.bytes; i++ {
		if a[i] != p.a[i] {
			return [4]byte{}, false
		}
	}
	return [4]byte{a[p.off[0]], a[p.off[1]], a[p.off[2]], a[p.off[3]]}, true
}

// Embed returns the IPv4-embedded IPv6 address of v4 under pfx (RFC 6052
// §2.2).
func Embed(pfx netip.Prefix, v4 netip.Addr) (netip.Addr, error) {
	p, err := newPrefix(pfx)
	if err != nil {
		return netip.Addr{}, err
	}
	if v4 = v4.Unmap(); !v4.Is4() {
		return netip.Addr{}, fmt.Errorf("nat64: embed %v: not an IPv4 address", v4)
	}
	return netip.AddrFrom16(p.embed(v4.As4())), nil
}

// Extract returns the IPv4 address embedded in a under pfx (RFC 6052
// §2.3), and false when a is not under pfx or pfx is not a valid RFC 6052
// prefix.
func Extract(pfx netip.Prefix, a netip.Addr) (netip.Addr, bool) {
	p, err := newPrefix(pfx)
	if err != nil || !a.Is6() || a.Is4In6() {
		return netip.Addr{}, false
	}
	b := a.As16()
	v4, ok := p.extract(&b)
	if !ok {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4(v4), true
}
