package provisioning

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// mapRegistry is a SubnetRegistry in a map: first claimant wins, as the
// DHT-backed one behaves.
type mapRegistry struct {
	owners map[netip.Prefix]uint64
	err    error
}

func (r *mapRegistry) Claim(_ context.Context, p netip.Prefix, id uint64) (uint64, error) {
	if r.err != nil {
		return 0, r.err
	}
	if o, ok := r.owners[p]; ok {
		return o, nil
	}
	r.owners[p] = id
	return id, nil
}

func TestDeriveSubnet(t *testing.T) {
	seen := make(map[netip.Prefix]bool)
	for id := uint64(0); id < 200; id++ {
		p, err := DeriveSubnet(DefaultSupernet, DefaultLANBits, id, 0)
		if err != nil {
			t.Fatal(err)
		}
		if p.Bits() != 24 || !DefaultSupernet.Contains(p.Addr()) || p.Masked() != p {
			t.Fatalf("node %d: %v is not a /24 inside %v", id, p, DefaultSupernet)
		}
		again, _ := DeriveSubnet(DefaultSupernet, DefaultLANBits, id, 0)
		if again != p {
			t.Fatalf("node %d: %v then %v: not deterministic", id, p, again)
		}
		next, _ := DeriveSubnet(DefaultSupernet, DefaultLANBits, id, 1)
		if next == p {
			t.Errorf("node %d: attempt 1 gives the same subnet %v", id, p)
		}
		seen[p] = true
	}
	// 200 nodes in 16384 subnets: a few birthday collisions at most.
	if len(seen) < 195 {
		t.Errorf("200 node IDs gave only %d distinct subnets", len(seen))
	}
	for _, bad := range []struct {
		super netip.Prefix
		bits  int
	}{
		{netip.MustParsePrefix("2001:db8::/32"), 64},
		{DefaultSupernet, 8},
		{DefaultSupernet, 31},
	} {
		if _, err := DeriveSubnet(bad.super, bad.bits, 1, 0); err == nil {
			t.Errorf("DeriveSubnet(%v, /%d) accepted", bad.super, bad.bits)
		}
	}
	if got := NodeLANAddress(netip.MustParsePrefix("10.64.7.0/24")); got != netip.MustParseAddr("10.64.7.1") {
		t.Errorf("NodeLANAddress = %v", got)
	}
}

func TestClaimSubnetCollision(t *testing.T) {
	ctx := context.Background()
	reg := &mapRegistry{owners: make(map[netip.Prefix]uint64)}
	const me, other = 42, 7
	first, _ := DeriveSubnet(DefaultSupernet, 24, me, 0)
	second, _ := DeriveSubnet(DefaultSupernet, 24, me, 1)
	reg.owners[first] = other

	c, err := ClaimSubnet(ctx, reg, DefaultSupernet, 24, me, 0)
	if err != nil {
		t.Fatal(err)
	}
	if c.Subnet != second || len(c.Collisions) != 1 || c.Collisions[0] != (SubnetCollision{first, other}) {
		t.Fatalf("claim = %+v, want %v after a collision on %v with node %d", c, second, first, other)
	}
	// Claiming again (a restart) gives the same subnet, no new collision.
	c2, err := ClaimSubnet(ctx, reg, DefaultSupernet, 24, me, 0)
	if err != nil || c2.Subnet != second {
		t.Fatalf("re-claim = %+v, %v", c2, err)
	}

	// A tiny supernet, all taken: a clear error.
	tiny := netip.MustParsePrefix("10.0.0.0/23")
	full := &mapRegistry{owners: map[netip.Prefix]uint64{
		netip.MustParsePrefix("10.0.0.0/24"): 1, netip.MustParsePrefix("10.0.1.0/24"): 2}}
	if _, err := ClaimSubnet(ctx, full, tiny, 24, me, 8); !errors.Is(err, ErrSubnetsExhausted) {
		t.Fatalf("full supernet: err = %v", err)
	}
	// A registry failure is not a collision.
	boom := errors.New("dht unreachable")
	if _, err := ClaimSubnet(ctx, &mapRegistry{err: boom}, DefaultSupernet, 24, me, 0); !errors.Is(err, boom) {
		t.Fatalf("registry error: %v", err)
	}
}

func TestHostLabelAndFQDN(t *testing.T) {
	for in, want := range map[string]string{
		"Yealink T46S": "yealink-t46s", "SEP001122334455.corp": "sep001122334455",
		"-_-": "", "ümlaut": "mlaut", strings.Repeat("a", 80): strings.Repeat("a", 63),
	} {
		if got := hostLabel(in); got != want {
			t.Errorf("hostLabel(%q) = %q, want %q", in, got, want)
		}
	}
	wire := append([]byte{0x05, 0, 0}, 5, 'd', 'e', 's', 'k', '1', 4, 'm', 'e', 's', 'h', 0)
	if got := decodeFQDN(wire); got != "desk1.mesh" {
		t.Errorf("FQDN with E flag = %q", got)
	}
	if got := decodeFQDN(append([]byte{0, 0, 0}, "desk1.example."...)); got != "desk1.example" {
		t.Errorf("ASCII FQDN = %q", got)
	}
	for _, bad := range [][]byte{nil, {0, 0}, append([]byte{0, 0, 0}, "bad name"...), {0x04, 0, 0, 0xc0, 0x00}} {
		if got := decodeFQDN(bad); got != "" {
			t.Errorf("decodeFQDN(% x) = %q, want nothing", bad, got)
		}
	}
}
