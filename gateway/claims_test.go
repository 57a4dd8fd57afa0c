package gateway

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/dns64"
	"github.com/sipmesh/sipmesh/ssr/dht/dhttest"
)

func TestClaims(t *testing.T) {
	ctx := context.Background()
	d := dhttest.NewShared(2)
	t0 := time.Unix(1_700_000_000, 0)
	first := &Claims{DHT: d[0], Self: d[0].ID(), Since: t0}
	second := &Claims{DHT: d[1], Self: d[1].ID(), Since: t0.Add(time.Minute)}
	a1 := netip.MustParseAddr("fdf0:4cb5:d384::1")
	if owner, err := first.ClaimName(ctx, "node1", a1); err != nil || owner != first.Self {
		t.Fatalf("first claim: %v %v", owner, err)
	}
	if owner, err := second.ClaimName(ctx, "Node1", netip.MustParseAddr("fdf0:4cb5:d384::2")); !errors.Is(err, ErrNameTaken) || owner != first.Self {
		t.Fatalf("second claim of the same name: %v %v", owner, err)
	}
	if addrs, err := second.LookupName(ctx, "NODE1.mesh"); err != nil || len(addrs) != 1 || addrs[0] != a1 {
		t.Fatalf("node1.mesh: %v %v", addrs, err)
	}
	if _, err := second.LookupName(ctx, "nobody.mesh"); !errors.Is(err, dns64.ErrNoSuchName) {
		t.Fatalf("unclaimed name: %v", err)
	}
	// Host names count only from the node holding the node name.
	phone := netip.MustParseAddr("10.64.7.20")
	if err := first.PublishHost(ctx, "deskphone", "node1", phone); err != nil {
		t.Fatal(err)
	}
	if err := second.PublishHost(ctx, "evil", "node1", phone); err != nil {
		t.Fatal(err)
	}
	if addrs, err := second.LookupName(ctx, "deskphone.node1.mesh"); err != nil || len(addrs) != 1 || addrs[0] != phone {
		t.Fatalf("deskphone.node1.mesh: %v %v", addrs, err)
	}
	if _, err := first.LookupName(ctx, "evil.node1.mesh"); !errors.Is(err, dns64.ErrNoSuchName) {
		t.Fatalf("host published by a node not holding the name: %v", err)
	}
	// Subnets: the first claimant keeps it.
	sn := netip.MustParsePrefix("10.64.7.0/24")
	if owner, err := first.Claim(ctx, sn, uint64(first.Self)); err != nil || owner != uint64(first.Self) {
		t.Fatalf("subnet claim: %v %v", owner, err)
	}
	if owner, err := second.Claim(ctx, sn, uint64(second.Self)); err != nil || owner != uint64(first.Self) {
		t.Fatalf("colliding subnet claim: owner %v, %v", owner, err)
	}
}
