package meship

import (
	"crypto/sha256"
	"encoding/binary"
	"net/netip"

	"github.com/sipmesh/sipmesh/ssr"
)

// Addressing (FORMAT.md, "IP network"). The mesh is one ULA /48 (RFC
// 4193): the /48 of ssr.MeshPrefix. Its 80 bits below the /48 cannot hold
// a 64-bit node ID and a /64 for a LAN, so the /48 is split by the nibble
// after it (bits 48–51):
//
//	fdf0:4cb5:d384:0…/52  ssr's node addresses: ssr.MeshPrefix (subnet 0) + ID
//	fdf0:4cb5:d384:1…/52  node spaces: nibble 1, the full 64-bit ID, 12 bits per node
//	nibbles 2–f           reserved
//
// A node's space is a /116 that carries its whole ID, so any address in it
// names its node exactly, with no lookup and no collision (IDs are unique
// on the ring); it is the node's LAN (the node is host 1). The nibble
// keeps the ID readable: node 0123456789abcdef has the space
// fdf0:4cb5:d384:1012:3456:789a:bcde:f000/116.
//
// A CLAT (RFC 6877) needs a /96 per node, to embed a whole IPv4 address
// as RFC 6052 §2.2 does at /96, and no /96 can carry a 64-bit ID inside a
// /48 (48 + 64 > 96). The CLAT prefixes therefore come from a ULA /32 of
// their own, CLATNet (fd + 24 bits of SHA-256("sipmesh clat")): a node's
// CLAT /96 is CLATNet + its ID. (A /32 spans 65,536 ULA Global IDs: a
// randomly chosen /48 of another site falls in it with probability
// 2^-24.)
const (
	spaceBits = 116
	kindSpace = 1
)

// MeshNet is the mesh's /48: every node address and node space.
var MeshNet = netip.PrefixFrom(ssr.MeshPrefix.Addr(), 48).Masked()

// CLATNet is the /32 of the nodes' CLAT prefixes: fdca:654::/32.
var CLATNet = func() netip.Prefix {
	sum := sha256.Sum256([]byte("sipmesh clat"))
	var a [16]byte
	a[0] = 0xfd
	copy(a[1:4], sum[:3])
	return netip.PrefixFrom(netip.AddrFrom16(a), 32)
}()

// clatHi is the top 32 bits of CLATNet.
var clatHi = func() uint32 {
	b := CLATNet.Addr().As16()
	return binary.BigEndian.Uint32(b[:4])
}()

// spacesNet is the /52 of the node spaces (nibble 1).
var spacesNet = func() netip.Prefix {
	b := MeshNet.Addr().As16()
	b[6] = kindSpace << 4
	return netip.PrefixFrom(netip.AddrFrom16(b), 52)
}()

// spaceAddr is the address host (12 bits) of id's space.
func spaceAddr(id ssr.NodeID, host uint16) netip.Addr {
	var b [16]byte
	m := MeshNet.Addr().As16()
	copy(b[:6], m[:6])
	hi := binary.BigEndian.Uint64(b[:8]) | kindSpace<<12 | uint64(id)>>52
	lo := uint64(id)<<12 | uint64(host&0xfff)
	binary.BigEndian.PutUint64(b[:8], hi)
	binary.BigEndian.PutUint64(b[8:], lo)
	return netip.AddrFrom16(b)
}

// LANPrefix is id's node space, a /116: its LAN, statically addressed (a
// /116 cannot do SLAAC, which needs a /64: RFC 4862 §5.5.3).
func LANPrefix(id ssr.NodeID) netip.Prefix { return netip.PrefixFrom(spaceAddr(id, 0), spaceBits) }

// LANAddr is the node's own address on its LAN: host 1 of LANPrefix, the
// LAN hosts' router.
func LANAddr(id ssr.NodeID) netip.Addr { return spaceAddr(id, 1) }

// CLATPrefix is the /96 that id's CLAT (RFC 6877) translates its IPv4 LAN
// hosts into, embedding the IPv4 address in the last 32 bits (RFC 6052
// §2.2): CLATNet + id. Packets to it route back to id with no state.
func CLATPrefix(id ssr.NodeID) netip.Prefix {
	var b [16]byte
	binary.BigEndian.PutUint32(b[:4], clatHi)
	binary.BigEndian.PutUint64(b[4:12], uint64(id))
	return netip.PrefixFrom(netip.AddrFrom16(b), 96)
}

// NodeOf is the node whose address or space a is in: its mesh address
// (ssr.MeshPrefix + ID), its /116 LAN or its CLAT /96. false for anything
// else, including the reserved parts of MeshNet.
func NodeOf(a netip.Addr) (ssr.NodeID, bool) {
	if !a.Is6() || a.Is4In6() {
		return 0, false
	}
	b := a.As16()
	return nodeOf16(b[:])
}

// nodeOf16 is NodeOf on the 16 raw bytes of a packet's address (no
// netip.Addr on the hot path).
func nodeOf16(b []byte) (ssr.NodeID, bool) {
	hi := binary.BigEndian.Uint64(b[:8])
	lo := binary.BigEndian.Uint64(b[8:16])
	switch {
	case hi == meshHi: // ssr.MeshPrefix: fdf0:4cb5:d384:0000::/64
		return ssr.NodeID(lo), true
	case hi>>12 == (meshHi|kindSpace<<12)>>12:
		return ssr.NodeID(hi&0xfff<<52 | lo>>12), true
	case uint32(hi>>32) == clatHi:
		return ssr.NodeID(hi<<32 | lo>>32), true
	}
	return 0, false
}

// meshHi is the high 64 bits of ssr.MeshPrefix (its /64, subnet 0).
var meshHi = func() uint64 {
	b := ssr.MeshPrefix.Addr().As16()
	return binary.BigEndian.Uint64(b[:8])
}()

// inMesh reports whether the raw address b lies in the mesh's blocks:
// MeshNet or CLATNet. Within them only NodeOf's addresses are valid.
func inMesh(b []byte) bool {
	hi := binary.BigEndian.Uint64(b[:8])
	return hi>>16 == meshHi>>16 || uint32(hi>>32) == clatHi
}
