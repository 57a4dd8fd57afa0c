// Package meship makes the mesh an IPv6 network (issue 15): every node has
// a TUN, the kernel routes the mesh's addresses into it, and each IPv6
// packet travels to the node its destination names as one exact SSR
// datagram (end-to-end sealed, ssr/e2e.go) on mesh port Port (41), to be
// written into that node's TUN, from where its kernel delivers or forwards
// it (to a LAN host). ssr/FORMAT.md, "IP network", is the reference.
//
// Addressing (addr.go). The mesh is the ULA /48 of ssr.MeshPrefix (RFC
// 4193: fd + a 40-bit global ID). 64-bit node IDs and a /64 per LAN do not
// both fit in the 80 bits below a /48, and a LAN /64 named by part of the
// ID would need a lookup (the DHT, as Yggdrasil's /64s do) to find the
// full ID, and could collide. So each node has a /116 that carries its
// whole ID after the nibble 1: fdf0:4cb5:d384:1<ID, 16 hex digits><3 hex
// digits>. A destination names its node exactly, by arithmetic, and no two
// nodes share a space. The /116 is the node's LAN (the node is host 1, LAN
// hosts take the rest, statically: a /116 cannot do SLAAC, RFC 4862
// §5.5.3). A CLAT (RFC 6877) needs a /96 per node (RFC 6052 §2.2 embeds
// the whole IPv4 address after a /96), which cannot carry a 64-bit ID in
// a /48: the CLAT prefixes are CLATNet (a ULA /32) + ID, so return traffic
// to IPv4 hosts routes back to their node with no state anywhere. The
// node's own mesh address (ssr.MeshPrefix + ID) is on its TUN.
//
// The kernel (tun_linux.go, Open): the TUN has the node's mesh address as
// a /48 (the connected route sends all of MeshNet into it) and a route for
// CLATNet, the LAN interface has LANAddr/116 (its more specific route
// keeps the node's LAN there; the node's CLAT device gets its own /96),
// and IPv6 forwarding is on. Closing the TUN removes the interface
// with its route; Close takes the LAN address and forwarding back.
//
// The data plane (plane.go). Packets from the TUN: whole IPv6 packets
// only; link-local and multicast ones stay (RFC 4291 §2.5.6); a source in
// the mesh's blocks must be this node's (BCP 38); the
// destination's node is computed (NodeOf), or, outside the mesh, chosen by
// Config.Exit (the gateway's choice of NAT64 exit, gateway/ipnet.go; an
// exit the mesh cannot reach is reported to Config.ExitFailed); no node →
// ICMPv6 Destination Unreachable, no route (RFC 4443 §3.1); over the MTU
// → Packet Too Big (§3.2, RFC 8201); the mesh reports an exact target
// unreachable (ssr's NotifyUnreachable) → Destination Unreachable, address
// unreachable, quoting the last packet sent to that node. Packets from the
// mesh: delivered only if the source lies in the sending node's space (ssr
// authenticated the sender end to end) or, from outside the mesh, if
// Config.Exit names the sender for that source (an exit's translated
// return traffic), and the destination is this node's (or one
// Config.ExitFor claims); larger than this node's MTU → Packet Too Big
// back across the mesh. ICMPv6 errors follow RFC 4443 §2.4: never about
// an error or to a multicast source, at most 1280 bytes, rate-limited
// (100/s, burst 50). Nothing is dropped silently: every drop is counted
// (Stats, `status --json`, /metrics).
//
// MTU (MTUFor). A packet costs Overhead(L) = 127 + 8·L bytes on a link
// (link IPv6/UDP, link security, routed header, an L-node route, ports,
// end-to-end seal). The TUN MTU is the smallest mesh link MTU less
// Overhead(RouteReserve = 8), at least 1280: 1309 on 1500-byte links. A
// longer route than 8 nodes still delivers: the link's UDP fragments the
// frame, as it does a large SIP message.
//
// Bounds and cost: TUN reads and writes move batches (wireguard-go's
// tun.Device; offloads on); the buffers are allocated once (64 from the
// mesh, one TUN batch of the MTU); when the TUN falls behind, the mesh
// socket's bounded queue holds the burst (its drops counted by ssr); the
// ICMPv6 quoting state is 256 fixed slots. The sends copy into ssr's
// pooled buffers; nothing on the hot path allocates (TestNoAllocs).
package meship
