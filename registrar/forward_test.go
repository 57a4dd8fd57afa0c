package registrar

import (
	"context"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/ssr/dht/dhttest"
)

// TestDHTForwards: the newest forward of any node wins, a clear written
// later outranks an older set from another node, and bad targets are
// refused.
func TestDHTForwards(t *testing.T) {
	ctx := context.Background()
	d := dhttest.NewShared(2)
	a, b := &DHTForwards{DHT: d[0]}, &DHTForwards{DHT: d[1]}
	t0 := time.Unix(1_700_000_000, 0)
	if f, err := a.Forward(ctx, "202"); err != nil || f != (Forward{Ext: "202"}) {
		t.Fatalf("no forward: %+v, %v", f, err)
	}
	if err := a.SetForward(ctx, Forward{Ext: "202", Always: "203", Updated: t0}); err != nil {
		t.Fatal(err)
	}
	if f, _ := b.Forward(ctx, "202"); f.Always != "203" {
		t.Fatalf("seen from node 1: %+v", f)
	}
	if err := b.SetForward(ctx, Forward{Ext: "202", Updated: t0.Add(time.Second)}); err != nil {
		t.Fatal(err)
	}
	if f, _ := a.Forward(ctx, "202"); f.Always != "" {
		t.Fatalf("after the clear on node 1: %+v", f)
	}
	for _, bad := range []Forward{{Ext: "202", Always: "202"}, {Ext: "202", Busy: "a b"}, {Ext: ""}} {
		if err := a.SetForward(ctx, bad); err == nil {
			t.Errorf("SetForward(%+v) accepted", bad)
		}
	}
}
