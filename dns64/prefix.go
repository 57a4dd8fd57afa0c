package dns64

import (
	"fmt"
	"net/netip"
	"strings"
)

// WellKnownPrefix is the NAT64 Well-Known Prefix 64:ff9b::/96 (RFC 6052
// §2.1), the default synthesis prefix.
var WellKnownPrefix = netip.MustParsePrefix("64:ff9b::/96")

// ValidatePrefix reports whether p can carry embedded IPv4 addresses: an
// IPv6 prefix of length 32, 40, 48, 56, 64 or 96 (RFC 6052 §2.2), without
// host bits, whose bits 64 to 71 (the "u" octet, which the address format
// reserves and requires to be zero) are zero when the prefix covers them.
func ValidatePrefix(p netip.Prefix) error {
	if !p.IsValid() || !p.Addr().Is6() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
		return fmt.Errorf("dns64: prefix %v: not an IPv6 prefix", p)
	}
	switch p.Bits() {
	case 32, 40, 48, 56, 64, 96:
	default:
		return fmt.Errorf("dns64: prefix %v: length must be 32, 40, 48, 56, 64 or 96 (RFC 6052 §2.2)", p)
	}
	if p.Masked() != p {
		return fmt.Errorf("dns64: prefix %v: has bits set after the prefix length", p)
	}
	if p.Bits() == 96 && p.Addr().As16()[8] != 0 {
		return fmt.Errorf("dns64: prefix %v: bits 64-71 (the u octet) must be zero (RFC 6052 §2.2)", p)
	}
	return nil
}

// Embed returns the IPv4-embedded IPv6 address of v4 under prefix (RFC
// 6052 §2.2): the 32 IPv4 bits follow the prefix, skipping bits 64–71 (the
// u octet, always zero), and the suffix after them is zero. prefix must
// have passed ValidatePrefix.
func Embed(prefix netip.Prefix, v4 netip.Addr) netip.Addr {
	a := prefix.Addr().As16()
	b := v4.Unmap().As4()
	// Byte offsets of the four IPv4 octets for each prefix length; byte 8
	// (bits 64-71) is never used (RFC 6052 §2.2, Figure 1).
	var at [4]int
	switch prefix.Bits() {
	case 32:
		at = [4]int{4, 5, 6, 7}
	case 40:
		at = [4]int{5, 6, 7, 9}
	case 48:
		at = [4]int{6, 7, 9, 10}
	case 56:
		at = [4]int{7, 9, 10, 11}
	case 64:
		at = [4]int{9, 10, 11, 12}
	default: // 96
		at = [4]int{12, 13, 14, 15}
	}
	for i, off := range at {
		a[off] = b[i]
	}
	return netip.AddrFrom16(a)
}

// Extract returns the IPv4 address embedded in a, an address under prefix
// (RFC 6052 §2.3), and whether a is under prefix at all.
func Extract(prefix netip.Prefix, a netip.Addr) (netip.Addr, bool) {
	if !a.Is6() || !prefix.Contains(a.WithZone("")) {
		return netip.Addr{}, false
	}
	b := a.As16()
	var v4 [4]byte
	switch prefix.Bits() {
	case 32:
		copy(v4[:], b[4:8])
	case 40:
		v4 = [4]byte{b[5], b[6], b[7], b[9]}
	case 48:
		v4 = [4]byte{b[6], b[7], b[9], b[10]}
	case 56:
		v4 = [4]byte{b[7], b[9], b[10], b[11]}
	case 64:
		copy(v4[:], b[9:13])
	case 96:
		copy(v4[:], b[12:16])
	default:
		return netip.Addr{}, false
	}
	return netip.AddrFrom4(v4), true
}

// nonGlobal lists the IPv4 ranges that RFC 6052 §3.1 forbids representing
// under the Well-Known Prefix: "The Well-Known Prefix MUST NOT be used to
// represent non-global IPv4 addresses, such as those defined in [RFC1918]
// or listed in Section 3 of [RFC5735]", plus the RFC 6598 shared address
// space (100.64.0.0/10), which is not global either. 192.88.99.0/24 (6to4
// relay anycast, RFC 5735 §3) is left out: it is globally routed.
var nonGlobal = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),          // "this" network (RFC 1122)
	netip.MustParsePrefix("10.0.0.0/8"),         // private (RFC 1918)
	netip.MustParsePrefix("100.64.0.0/10"),      // shared address space (RFC 6598)
	netip.MustParsePrefix("127.0.0.0/8"),        // loopback
	netip.MustParsePrefix("169.254.0.0/16"),     // link local (RFC 3927)
	netip.MustParsePrefix("172.16.0.0/12"),      // private (RFC 1918)
	netip.MustParsePrefix("192.0.0.0/24"),       // IETF protocol assignments
	netip.MustParsePrefix("192.0.2.0/24"),       // TEST-NET-1 (RFC 5737)
	netip.MustParsePrefix("192.168.0.0/16"),     // private (RFC 1918)
	netip.MustParsePrefix("198.18.0.0/15"),      // benchmarking (RFC 2544)
	netip.MustParsePrefix("198.51.100.0/24"),    // TEST-NET-2 (RFC 5737)
	netip.MustParsePrefix("203.0.113.0/24"),     // TEST-NET-3 (RFC 5737)
	netip.MustParsePrefix("224.0.0.0/4"),        // multicast (RFC 3171)
	netip.MustParsePrefix("240.0.0.0/4"),        // reserved for future use
	netip.MustParsePrefix("255.255.255.255/32"), // limited broadcast
}

// IsGlobal4 reports whether v4 is a global IPv4 address in the sense of
// RFC 6052 §3.1, i.e. one the Well-Known Prefix may represent.
func IsGlobal4(v4 netip.Addr) bool {
	v4 = v4.Unmap()
	for _, p := range nonGlobal {
		if p.Contains(v4) {
			return false
		}
	}
	return true
}

// mappedPrefix is the IPv4-mapped range ::ffff:0:0/96: RFC 6147 §5.1.4 says
// a DNS64 "SHOULD include the ::ffff/96 network" in the set of AAAA
// addresses treated as though the answer were empty.
var mappedPrefix = netip.MustParsePrefix("::ffff:0:0/96")

// excludedAAAA reports whether an upstream AAAA address is unusable by an
// IPv6-only host and counts as absent (RFC 6147 §5.1.4).
func excludedAAAA(a netip.Addr) bool { return mappedPrefix.Contains(a) }

// reverseName returns the ip6.arpa name of a (RFC 3596 §2.5).
func reverseName6(a netip.Addr) string {
	const hex = "0123456789abcdef"
	b := a.As16()
	var sb strings.Builder
	for i := 15; i >= 0; i-- {
		sb.WriteByte(hex[b[i]&0xf])
		sb.WriteByte('.')
		sb.WriteByte(hex[b[i]>>4])
		sb.WriteByte('.')
	}
	sb.WriteString("ip6.arpa.")
	return sb.String()
}

// parseReverse6 parses a full 32-nibble ip6.arpa name (lower case, fully
// qualified) into the address it names.
func parseReverse6(name string) (netip.Addr, bool) {
	rest, ok := strings.CutSuffix(name, ".ip6.arpa.")
	if !ok || len(rest) != 63 {
		return netip.Addr{}, false
	}
	var b [16]byte
	for i := range 32 {
		c := rest[2*i]
		if i < 31 && rest[2*i+1] != '.' {
			return netip.Addr{}, false
		}
		var v byte
		switch {
		case c >= '0' && c <= '9':
			v = c - '0'
		case c >= 'a' && c <= 'f':
			v = c - 'a' + 10
		default:
			return netip.Addr{}, false
		}
		// Nibble i counts from the least significant end of the address.
		idx := 15 - i/2
		if i%2 == 0 {
			b[idx] |= v
		} else {
			b[idx] |= v << 4
		}
	}
	return netip.AddrFrom16(b), true
}

// reverseName4 returns the in-addr.arpa name of v4 (RFC 1035 §3.5).
func reverseName4(v4 netip.Addr) string {
	b := v4.As4()
	return fmt.Sprintf("%d.%d.%d.%d.in-addr.arpa.", b[3], b[2], b[1], b[0])
}
