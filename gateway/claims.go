package gateway

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/sipmesh/sipmesh/dns64"
	"github.com/sipmesh/sipmesh/registrar"
	"github.com/sipmesh/sipmesh/ssr"
	"github.com/sipmesh/sipmesh/ssr/dht"
)

// Key namespaces of the claims in the DHT (the registrar's stores use
// others: "aor:", "user:", "users:").
const (
	nameKeyPrefix   = "name:"   // + node name: claims of the name
	hostKeyPrefix   = "host:"   // + host.node: a DHCP client's address
	subnetKeyPrefix = "subnet:" // + prefix: claims of a LAN subnet
)

// claimLifetime is how long a name or subnet claim lives unless renewed;
// the node renews its claims while it runs.
const claimLifetime = time.Hour

// A claim is a name or subnet a node holds: the first claimant (earliest
// signed claim time, then lowest node ID) keeps it while it renews it.
type claim struct {
	since  time.Time
	addr   netip.Addr // the claimed name's address (names only)
	writer ssr.NodeID
}

func encodeClaim(since time.Time, addr netip.Addr) []byte {
	b := binary.BigEndian.AppendUint64(nil, uint64(since.UnixMicro()))
	if addr.IsValid() {
		b = append(b, addr.AsSlice()...)
	}
	return b
}

func decodeClaim(v []byte) (claim, bool) {
	if len(v) < 8 {
		return claim{}, false
	}
	c := claim{since: time.UnixMicro(int64(binary.BigEndian.Uint64(v)))}
	if a, ok := netip.AddrFromSlice(v[8:]); ok {
		c.addr = a.Unmap()
	} else if len(v) != 8 {
		return claim{}, false
	}
	return c, true
}

// firstClaim returns the winning claim among recs.
func firstClaim(recs []dht.Record) (claim, bool) {
	var best claim
	found := false
	for _, r := range recs {
		if r.Tombstone {
			continue
		}
		c, ok := decodeClaim(r.Value)
		if !ok {
			continue
		}
		c.writer = dht.WriterID(r.Writer)
		if !found || c.since.Before(best.since) || c.since.Equal(best.since) && c.writer < best.writer {
			best, found = c, true
		}
	}
	return best, found
}

// Claims publishes and resolves first-come names and subnets on the DHT:
// node names (`<name>.mesh`), DHCP host names (`<host>.<node>.mesh`) and
// LAN subnets. It is the dns64.Zone and the provisioning.SubnetRegistry of
// a node.
type Claims struct {
	DHT  registrar.DHT
	Self ssr.NodeID
	// Since is when this node first claimed what it holds; a restart keeps
	// it (the node's state directory), so the node keeps its claims.
	Since time.Time
}

// ErrNameTaken reports a name or subnet another node claimed first.
var ErrNameTaken = errors.New("claimed by another node")

// ClaimName publishes name → addr for this node and reports the node that
// holds the name (this one unless another claimed it first).
func (c *Claims) ClaimName(ctx context.Context, name string, addr netip.Addr) (ssr.NodeID, error) {
	key := nameKeyPrefix + strings.ToLower(name)
	if err := c.DHT.Put(ctx, key, encodeClaim(c.Since, addr), claimLifetime); err != nil {
		return 0, fmt.Errorf("claiming name %s: %w", name, err)
	}
	recs, err := c.DHT.Get(ctx, key)
	if err != nil {
		return 0, fmt.Errorf("claiming name %s: %w", name, err)
	}
	if w, ok := firstClaim(recs); ok && w.writer != c.Self {
		return w.writer, fmt.Errorf("name %s: %w %v", name, ErrNameTaken, w.writer)
	}
	return c.Self, nil
}

// PublishHost publishes host.node → addr (a DHCP client that sent its
// host name); only the node holding the node name is believed.
func (c *Claims) PublishHost(ctx context.Context, host, node string, addr netip.Addr) error {
	key := hostKeyPrefix + strings.ToLower(host+"."+node)
	return c.DHT.Put(ctx, key, encodeClaim(c.Since, addr), claimLifetime)
}

// LookupName answers the .mesh zone from the DHT: "node.mesh" and
// "host.node.mesh" (dns64.Zone); a name nobody claimed is
// dns64.ErrNoSuchName (NXDOMAIN).
func (c *Claims) LookupName(ctx context.Context, name string) ([]netip.Addr, error) {
	name = strings.TrimSuffix(strings.ToLower(name), ".")
	rest, ok := strings.CutSuffix(name, ".mesh")
	if !ok || rest == "" {
		return nil, dns64.ErrNoSuchName
	}
	labels := strings.Split(rest, ".")
	switch len(labels) {
	case 1:
		recs, err := c.DHT.Get(ctx, nameKeyPrefix+labels[0])
		if err != nil {
			return nil, err
		}
		if w, ok := firstClaim(recs); ok && w.addr.IsValid() {
			return []netip.Addr{w.addr}, nil
		}
	case 2:
		owner, err := c.DHT.Get(ctx, nameKeyPrefix+labels[1])
		if err != nil {
			return nil, err
		}
		o, ok := firstClaim(owner)
		if !ok {
			break
		}
		recs, err := c.DHT.Get(ctx, hostKeyPrefix+rest)
		if err != nil {
			return nil, err
		}
		for _, r := range recs {
			if dht.WriterID(r.Writer) != o.writer || r.Tombstone {
				continue
			}
			if h, ok := decodeClaim(r.Value); ok && h.addr.IsValid() {
				return []netip.Addr{h.addr}, nil
			}
		}
	}
	return nil, dns64.ErrNoSuchName
}

// Claim claims a LAN subnet for node (provisioning.SubnetRegistry): it
// returns the node holding the subnet after the claim.
func (c *Claims) Claim(ctx context.Context, subnet netip.Prefix, node uint64) (uint64, error) {
	key := subnetKeyPrefix + subnet.String()
	if err := c.DHT.Put(ctx, key, encodeClaim(c.Since, netip.Addr{}), claimLifetime); err != nil {
		return 0, fmt.Errorf("claiming subnet %s: %w", subnet, err)
	}
	recs, err := c.DHT.Get(ctx, key)
	if err != nil {
		return 0, fmt.Errorf("claiming subnet %s: %w", subnet, err)
	}
	if w, ok := firstClaim(recs); ok {
		return uint64(w.writer), nil
	}
	return node, nil
}
