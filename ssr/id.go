package ssr

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
)

// NodeID is a position on the virtual ring: 64 bits of SHA-256 of the node's
// ed25519 public key, so IDs are uniform on the ring (the thesis's MAC-derived
// IDs put every key on one router, §4). Keys of the DHT live on the same ring.
type NodeID uint64

// String formats the ID as 16 hex digits.
func (id NodeID) String() string {
	s := strconv.FormatUint(uint64(id), 16)
	for len(s) < 16 {
		s = "0" + s
	}
	return s
}

// ParseNodeID parses 16 hex digits or a mesh IPv6 address.
func ParseNodeID(s string) (NodeID, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		id, ok := IDFromAddr(a)
		if !ok {
			return 0, fmt.Errorf("ssr: %s is not a mesh address (want %s)", s, MeshPrefix)
		}
		return id, nil
	}
	v, err := strconv.ParseUint(s, 16, 64)
	if err != nil || len(s) != 16 {
		return 0, fmt.Errorf("ssr: bad node ID %q: want 16 hex digits or a mesh address", s)
	}
	return NodeID(v), nil
}

// IDFromPublicKey derives a node ID from an ed25519 public key.
func IDFromPublicKey(pub ed25519.PublicKey) NodeID {
	h := sha256.New()
	h.Write([]byte("sipmesh node id v1\x00"))
	h.Write(pub)
	var sum [sha256.Size]byte
	return NodeID(binary.BigEndian.Uint64(h.Sum(sum[:0])))
}

// KeyID hashes an application key (an AOR, a name) onto the ring with a
// cryptographic hash truncated to the ID width (docs/DESIGN.md: never djb2).
func KeyID(key []byte) NodeID {
	sum := sha256.Sum256(key)
	return NodeID(binary.BigEndian.Uint64(sum[:8]))
}

// MeshPrefix is the mesh's IPv6 ULA /64 (RFC 4193): fd + 40 bits of
// SHA-256("sipmesh") + subnet 0. A mesh address is MeshPrefix + node ID as
// the interface identifier, so any mesh address maps to its node without a
// lookup.
var MeshPrefix = func() netip.Prefix {
	sum := sha256.Sum256([]byte("sipmesh"))
	var a [16]byte
	a[0] = 0xfd
	copy(a[1:6], sum[:5])
	return netip.PrefixFrom(netip.AddrFrom16(a), 64)
}()

// Addr returns the node's mesh IPv6 address.
func (id NodeID) Addr() netip.Addr {
	a := MeshPrefix.Addr().As16()
	binary.BigEndian.PutUint64(a[8:], uint64(id))
	return netip.AddrFrom16(a)
}

// IDFromAddr maps a mesh address to its node ID.
func IDFromAddr(a netip.Addr) (NodeID, bool) {
	a = a.WithZone("")
	if !MeshPrefix.Contains(a) {
		return 0, false
	}
	b := a.As16()
	return NodeID(binary.BigEndian.Uint64(b[8:])), true
}

// cw is the clockwise distance from a to b on the ring: how far b lies after a.
func cw(a, b NodeID) uint64 { return uint64(b - a) }

// Between reports whether x lies in the half-open ring interval (a, b]
// going clockwise from a. With a == b the interval is the whole ring but a.
func Between(a, x, b NodeID) bool {
	d := cw(a, x)
	if d == 0 {
		return false
	}
	return a == b || d <= cw(a, b)
}
