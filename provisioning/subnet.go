package provisioning

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net/netip"
)

// Default LAN addressing: every node's phone LAN is one /24 inside
// 10.64.0.0/10 (16384 subnets), picked from the node ID so that nodes
// rarely collide even before they claim (docs/DESIGN.md: node IDs
// are uniform).
var (
	DefaultSupernet = netip.MustParsePrefix("10.64.0.0/10")
)

// DefaultLANBits is the prefix length of a node's phone LAN.
const DefaultLANBits = 24

// DefaultClaimAttempts bounds how many candidate subnets ClaimSubnet tries.
const DefaultClaimAttempts = 64

// SubnetRegistry is the mesh-wide record of which node owns which LAN
// subnet; the node backs it with the DHT. Claim records nodeID as the owner
// of subnet unless another node owns it already, and returns the owner
// after the call: nodeID on success (also when nodeID owned it before), the
// other node's ID on a collision.
type SubnetRegistry interface {
	Claim(ctx context.Context, subnet netip.Prefix, nodeID uint64) (owner uint64, err error)
}

// SubnetCollision is a candidate subnet that another node owns.
type SubnetCollision struct {
	Subnet netip.Prefix
	Owner  uint64
}

// SubnetClaim is the outcome of ClaimSubnet: the subnet now owned and the
// candidates skipped on the way because other nodes owned them, which the
// node reports (log, status page).
type SubnetClaim struct {
	Subnet     netip.Prefix
	Collisions []SubnetCollision
}

// DeriveSubnet returns the attempt-th candidate LAN subnet of a node: a
// prefix of length bits inside supernet, chosen by SHA-256 of the node ID
// and the attempt number (docs/DESIGN.md: keys are hashed with a
// cryptographic hash). The same inputs always give the same subnet, so a
// node that restarts without its state derives the subnet it had.
func DeriveSubnet(supernet netip.Prefix, bits int, nodeID uint64, attempt int) (netip.Prefix, error) {
	supernet = supernet.Masked()
	if !supernet.IsValid() || !supernet.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("provisioning: supernet %v: must be an IPv4 prefix", supernet)
	}
	// A LAN needs a network, a broadcast, the node and at least one phone.
	if bits < supernet.Bits() || bits > 29 {
		return netip.Prefix{}, fmt.Errorf("provisioning: LAN prefix length /%d: must be between /%d (the supernet) and /29", bits, supernet.Bits())
	}
	if attempt < 0 {
		return netip.Prefix{}, fmt.Errorf("provisioning: negative subnet attempt %d", attempt)
	}
	span := uint64(1) << (bits - supernet.Bits()) // number of subnets, ≤ 2^29
	var in [16]byte
	binary.BigEndian.PutUint64(in[:8], nodeID)
	binary.BigEndian.PutUint64(in[8:], uint64(attempt))
	sum := sha256.Sum256(in[:])
	idx := binary.BigEndian.Uint64(sum[:8]) % span
	base := binary.BigEndian.Uint32(supernet.Addr().AsSlice())
	net := base + uint32(idx)<<(32-bits)
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], net)
	return netip.PrefixFrom(netip.AddrFrom4(b), bits), nil
}

// ClaimSubnet derives the node's candidate subnets in order and claims each
// in reg until one is owned by nodeID; candidates owned by other nodes are
// reported in the result. maxAttempts ≤ 0 means DefaultClaimAttempts. A
// registry error stops the search: the caller retries later rather than
// taking a subnet it could not check.
func ClaimSubnet(ctx context.Context, reg SubnetRegistry, supernet netip.Prefix, bits int, nodeID uint64, maxAttempts int) (SubnetClaim, error) {
	if maxAttempts <= 0 {
		maxAttempts = DefaultClaimAttempts
	}
	var res SubnetClaim
	seen := make(map[netip.Prefix]bool)
	for attempt := range maxAttempts {
		p, err := DeriveSubnet(supernet, bits, nodeID, attempt)
		if err != nil {
			return res, err
		}
		if seen[p] { // small supernets repeat candidates
			continue
		}
		seen[p] = true
		owner, err := reg.Claim(ctx, p, nodeID)
		if err != nil {
			return res, fmt.Errorf("provisioning: claim LAN subnet %v: %w", p, err)
		}
		if owner == nodeID {
			res.Subnet = p
			return res, nil
		}
		res.Collisions = append(res.Collisions, SubnetCollision{Subnet: p, Owner: owner})
	}
	return res, fmt.Errorf("%w: %d candidates in %v tried", ErrSubnetsExhausted, maxAttempts, supernet)
}

// NodeLANAddress is the node's own address on a LAN subnet: the first host
// address (10.x.y.1 on a /24), which phones get as router and DNS server.
func NodeLANAddress(subnet netip.Prefix) netip.Addr {
	return subnet.Masked().Addr().Next()
}

// broadcastOf returns the subnet-directed broadcast address of an IPv4
// prefix (RFC 919/922).
func broadcastOf(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	for i := p.Bits(); i < 32; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	return netip.AddrFrom4(b)
}
