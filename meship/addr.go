package meship

import (
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
// on the ring); its 4096 addresses are two /117s: the LAN (the node is
// host 1) and the CLAT (RFC 6877), which maps the low 11 bits of an IPv4
// LAN host (a LAN of /21 or longer maps one to one; sipmesh's derived LANs
// are /24s). The nibble keeps the ID readable in the address: the node
// 0123456789abcdef has the space fdf0:4cb5:d384:1012:3456:789a:bcde:f000/116.
const (
	spaceBits = 116
	lanBits   = 117
	clatBits  = 117
	kindSpace = 1
	// clatHost is the host part of the CLAT half of a space.
	clatHost = 0x800
	// clatMask is the IPv4 host bits a CLAT address carries.
	clatMask = 0x7ff
)

// MeshNet is the mesh's /48: every node address and node space.
var MeshNet = netip.PrefixFrom(ssr.MeshPrefix.Addr(), 48).Masked()

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

// Space is id's node space, a /116: its LAN and CLAT halves.
func Space(id ssr.NodeID) netip.Prefix { return netip.PrefixFrom(spaceAddr(id, 0), spaceBits) }

// LANPrefix is the /117 of id's LAN hosts (statically addressed; a /117
// cannot do SLAAC, which needs a /64: RFC 4862 §5.5.3).
func LANPrefix(id ssr.NodeID) netip.Prefix { return netip.PrefixFrom(spaceAddr(id, 0), lanBits) }

// LANAddr is the node's own address on its LAN: host 1 of LANPrefix, the
// LAN hosts' router.
func LANAddr(id ssr.NodeID) netip.Addr { return spaceAddr(id, 1) }

// CLATPrefix is the /117 that id's CLAT (RFC 6877) translates its IPv4 LAN
// hosts into: packets to it route back to id with no state anywhere. An
// address in it carries the low 11 bits of the IPv4 host (CLATAddr); the
// node's CLAT knows its own LAN prefix and restores the rest (CLATv4).
func CLATPrefix(id ssr.NodeID) netip.Prefix {
	return netip.PrefixFrom(spaceAddr(id, clatHost), clatBits)
}

// CLATAddr is the IPv6 address of the IPv4 LAN host v4 of node id.
func CLATAddr(id ssr.NodeID, v4 netip.Addr) netip.Addr {
	b := v4.Unmap().As4()
	return spaceAddr(id, clatHost|uint16(binary.BigEndian.Uint32(b[:])&clatMask))
}

// CLATv4 is the IPv4 host in lan (the node's IPv4 LAN, /21 or longer) that
// the CLAT address a stands for; false if a is not in a CLAT half or lan is
// not an IPv4 prefix of /21 or longer.
func CLATv4(a netip.Addr, lan netip.Prefix) (netip.Addr, bool) {
	if !lan.Addr().Is4() || lan.Bits() < 21 || !spacesNet.Contains(a) {
		return netip.Addr{}, false
	}
	b := a.As16()
	host := binary.BigEndian.Uint16(b[14:]) & 0xfff
	if host&clatHost == 0 {
		return netip.Addr{}, false
	}
	n := lan.Masked().Addr().As4()
	v := binary.BigEndian.Uint32(n[:]) | uint32(host&clatMask)
	binary.BigEndian.PutUint32(n[:], v)
	out := netip.AddrFrom4(n)
	if !lan.Contains(out) {
		return netip.Addr{}, false
	}
	return out, true
}

// NodeOf is the node whose address or space a is in: its mesh address
// (ssr.MeshPrefix + ID) or its /116 space. false for anything else,
// including the reserved parts of MeshNet.
func NodeOf(a netip.Addr) (ssr.NodeID, bool) {
	if !a.Is6() || a.Is4In6() {
		return 0, false
	}
	if id, ok := ssr.IDFromAddr(a); ok {
		return id, true
	}
	if !spacesNet.Contains(a) {
		return 0, false
	}
	b := a.As16()
	hi := binary.BigEndian.Uint64(b[:8])
	lo := binary.BigEndian.Uint64(b[8:])
	return ssr.NodeID(hi&0xfff<<52 | lo>>12), true
}

// nodeOf16 is NodeOf on the 16 raw bytes of a packet's address (no
// netip.Addr on the hot path).
func nodeOf16(b []byte) (ssr.NodeID, bool) {
	m := meshHi
	hi := binary.BigEndian.Uint64(b[:8])
	lo := binary.BigEndian.Uint64(b[8:16])
	switch {
	case hi == m: // ssr.MeshPrefix: fdf0:4cb5:d384:0000::/64
		return ssr.NodeID(lo), true
	case hi>>12 == (m|kindSpace<<12)>>12:
		return ssr.NodeID(hi&0xfff<<52 | lo>>12), true
	}
	return 0, false
}

// meshHi is the high 64 bits of ssr.MeshPrefix (its /64, subnet 0).
var meshHi = func() uint64 {
	b := ssr.MeshPrefix.Addr().As16()
	return binary.BigEndian.Uint64(b[:8])
}()

// inMesh reports whether the raw address b lies in MeshNet.
func inMesh(b []byte) bool {
	return binary.BigEndian.Uint64(b[:8])>>16 == meshHi>>16
}
