// Package nat64 is a stateful NAT64 in user space on gateway nodes, so hosts
// on the IPv6-only mesh reach the IPv4 Internet: session state and port
// allocation per RFC 6146, IPv4-embedded IPv6 addresses per RFC 6052 and
// IP/ICMP header translation per RFC 7915.
package nat64
