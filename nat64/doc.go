// Package nat64 is a stateful NAT64 in user space for gateway nodes, so
// hosts on the IPv6-only mesh reach the IPv4 Internet. It owns:
//
//   - IPv4-embedded IPv6 addresses (RFC 6052 §2.2, §2.3) for prefixes of
//     length 32, 40, 48, 56, 64 and 96, skipping the u octet (bits 64-71):
//     Embed, Extract, ValidatePrefix.
//   - IP/ICMP translation (RFC 7915) between byte slices, into a buffer the
//     caller provides, without allocating per packet: IPv6↔IPv4 headers
//     (§4.1, §5.1: traffic class/TOS, hop limit/TTL with Time Exceeded at
//     expiry, DF set above 1260 bytes, IPv4 fragments ↔ the Fragment
//     Header §5.1.1), TCP/UDP checksums updated incrementally (RFC 1624)
//     and a zero IPv4 UDP checksum computed (§4.5), ICMPv4↔ICMPv6
//     type/code mapping (§4.2, §5.2) with pointer and MTU fields (Packet
//     Too Big and Fragmentation Needed differ by 20; RFC 1191 plateaus for
//     an MTU of 0), and ICMP errors with their quoted packets translated
//     (§4.3, §5.3).
//   - The RFC 6146 state: Binding Information Base and sessions for TCP,
//     UDP and ICMP echo (§3.1, §3.5), endpoint-independent mapping with
//     address-dependent filtering (§3.5.1.1: an IPv4 packet passes only
//     from an address the binding has a session with), the TCP state
//     machine (§3.5.2.2), lifetimes of §4 (UDP 5 min, TCP established
//     2 h 4 min, transitory 4 min, ICMP 60 s) on an injected clock, a port
//     pool per protocol with random start (RFC 6056) and paired address
//     choice, a bounded table with a per-/64 session limit so no IPv6 host
//     takes every port, and rate-limited ICMP errors of its own (Time
//     Exceeded, Packet Too Big / Fragmentation Needed, address
//     unreachable when no binding can be made). ICMP errors are translated
//     only when the packet they quote belongs to a session.
//
// NewCLAT makes the same Translator stateless: a CLAT (RFC 6877 §6.3),
// which translates IPv4 packets of LAN hosts to IPv6 from the node's CLAT
// prefix to the NAT64 prefix and back, one to one, through the same
// RFC 7915 code (clat.go); SetPrefix follows the gateway in use.
//
// Translator.In6 and Translator.In4 are the interface a TUN loop drives:
// one packet in, one packet (or an ICMP error for the sender) out.
// Package nat64/tun64 is that loop.
//
// Fragments after the first carry no ports (RFC 6146 §3.4): rather than
// reassembling, the translator remembers the addresses it gave each first
// fragment for FRAGMENT_MIN (2 s, RFC 6146 §4) in a bounded table and
// gives them to the rest; a fragment arriving before its first is dropped.
//
// An IPv4 packet without DF whose translation outgrows the IPv6 MTU is
// split into IPv6 fragments by Translator.In4Split (RFC 7915 §4.1);
// Translator.In4 drops it with ErrNeedFragment.
//
// Not here: static bindings (IPv4 hosts cannot open sessions), an
// explicit hairpinning path (RFC 6146 §3.8; with the pool routed into the
// TUN device the kernel sends a packet for a pool address back through
// In4), and translation of protocols other than TCP, UDP and ICMP.
package nat64
