// Package nat64 will be a stateful NAT64 in user space on gateway nodes,
// so hosts on the IPv6-only mesh reach the IPv4 Internet: session state
// and port allocation per RFC 6146, IPv4-embedded IPv6 addresses per
// RFC 6052 and IP/ICMP header translation per RFC 7915.
//
// Planned: the package holds no code yet. The node's config already takes
// its prefix (nat64-prefix), which DNS64 (package dns64) synthesises
// addresses in.
package nat64
