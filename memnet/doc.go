// Package memnet is an in-memory network emulator: hosts with named
// interfaces and addresses, joined by point-to-point links and broadcast
// segments that have delay, jitter, loss and can be cut (partitions). Each
// *Host is a netx.Network, so sipmesh services run on it unchanged in unit
// tests and in `sipmesh demo`; the simulator (`sipmesh sim`) drives the same
// topology in virtual time through a second, callback face (HandlePacket and
// Interface.Send) that uses no goroutines.
//
// What it emulates, simplified from a kernel: UDP delivery to sockets bound
// to an address or to the wildcard (dual-stack for "udp", like Go on Linux),
// EADDRINUSE, ephemeral ports, IPv6 link-local addresses derived from the
// host and interface name with the receiving interface as zone, IPv6 and IPv4
// multicast on a segment, IPv4 limited and subnet broadcast, local delivery
// to the host's own and loopback addresses, MTU (a datagram longer than the
// interface MTU minus 48 bytes of IPv6+UDP header fails with EMSGSIZE and is
// counted), bounded socket receive queues and link queues (drops are
// counted), socket deadlines on the network's Clock, and in-memory TCP.
// Errors wrap the kernel's errno (syscall.ECONNREFUSED, EADDRINUSE,
// ENETUNREACH, EMSGSIZE...) inside *net.OpError, so callers test them with
// errors.Is the same way on both transports.
//
// With a VirtualClock nothing moves unless the simulator steps the clock,
// so code inside clock events must never block: WriteTo never does, but
// ReadFrom and Accept would wait forever for an event that cannot run. The
// handler face exists for that code.
//
// What it does not: no IP forwarding between hosts (a destination must be
// on-link; services that route, like SSR, do it themselves), no
// fragmentation, no ICMP (so no port-unreachable errors on UDP), no
// multicast or broadcast loopback to the sending host, and TCP streams are
// synchronous pipes that ignore link delay and loss (a down link only makes
// Dial fail). A link is lossy per datagram and preserves order: a packet
// never overtakes one sent earlier on the same link, which is what a real
// transmit queue does even with jitter.
package memnet
