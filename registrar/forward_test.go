package registrar

import (
	"context"
	"errors"
	"fmt"
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

// TestDHTMessages: a message stored by one node is taken once by
// another; the mailbox is bounded.
func TestDHTMessages(t *testing.T) {
	ctx := context.Background()
	d := dhttest.NewShared(2)
	a, b := &DHTMessages{DHT: d[0], Node: d[0].ID()}, &DHTMessages{DHT: d[1], Node: d[1].ID()}
	now := time.Now()
	stored := 0
	for i := range MaxStoredMessages + 1 {
		m := StoredMessage{ID: fmt.Sprint("m", i), To: "202", From: "sip:201@mesh", Body: "see you at 5", Stored: now}
		err := a.Store(ctx, m)
		if errors.Is(err, ErrMailboxFull) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		stored++
	}
	if stored < 3 || stored > MaxStoredMessages {
		t.Errorf("%d short messages stored before the mailbox was full", stored)
	}
	got, err := b.Take(ctx, "202")
	if err != nil || len(got) != stored {
		t.Fatalf("take on node 1: %d messages, %v", len(got), err)
	}
	if again, _ := a.Take(ctx, "202"); len(again) != 0 {
		t.Errorf("taken twice: %d", len(again))
	}
	if err := a.Store(ctx, StoredMessage{ID: "y", To: "202", Stored: now}); err != nil {
		t.Errorf("the mailbox is free again after delivery: %v", err)
	}
}
