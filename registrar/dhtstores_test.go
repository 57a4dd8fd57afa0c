package registrar

import (
	"context"
	"crypto/ed25519"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/ssr"
	"github.com/sipmesh/sipmesh/ssr/dht"
	"github.com/sipmesh/sipmesh/ssr/dht/dhttest"
)

func TestDHTLocation(t *testing.T) {
	ctx := context.Background()
	d := dhttest.NewShared(3)
	now := time.Unix(1_700_000_000, 0)
	locs := make([]*DHTLocation, len(d))
	for i := range d {
		locs[i] = &DHTLocation{DHT: d[i], Now: func() time.Time { return now }}
	}
	aor := AOR("201")
	b := func(node ssr.NodeID, contact string) Binding {
		return Binding{AOR: aor, Node: node, Contact: contact, Expires: now.Add(time.Hour), CallID: "c", CSeq: 1}
	}
	// Two nodes register a contact each for the same AOR.
	if err := locs[0].SetBindings(ctx, aor, d[0].ID(), []Binding{b(d[0].ID(), "sip:201@10.0.0.2")}); err != nil {
		t.Fatal(err)
	}
	if err := locs[1].SetBindings(ctx, aor, d[1].ID(), []Binding{b(d[1].ID(), "sip:201@10.1.0.2")}); err != nil {
		t.Fatal(err)
	}
	// A third node lies: it writes a binding in node 0's name.
	if err := locs[2].SetBindings(ctx, aor, d[0].ID(), []Binding{b(d[0].ID(), "sip:201@6.6.6.6")}); err != nil {
		t.Fatal(err)
	}
	got, err := locs[2].Bindings(ctx, aor)
	if err != nil {
		t.Fatal(err)
	}
	merged := MergeBindings(got, now)
	if len(merged) != 2 || merged[0].Contact != "sip:201@10.0.0.2" || merged[1].Contact != "sip:201@10.1.0.2" {
		t.Fatalf("bindings seen from node 2: %+v", merged)
	}
	// Node 0 removes its binding; node 1's stays.
	if err := locs[0].SetBindings(ctx, aor, d[0].ID(), nil); err != nil {
		t.Fatal(err)
	}
	got, _ = locs[1].Bindings(ctx, aor)
	if merged := MergeBindings(got, now); len(merged) != 1 || merged[0].Node != d[1].ID() {
		t.Fatalf("after removal: %+v", merged)
	}
}

func TestDHTAccounts(t *testing.T) {
	ctx := context.Background()
	d := dhttest.NewShared(2)
	adminPub, admin, _ := ed25519.GenerateKey(nil)
	manager := &DHTAccounts{DHT: d[0], Admin: adminPub, Key: admin}
	reader := &DHTAccounts{DHT: d[1], Admin: adminPub}

	a, err := NewAccount("201", "secret", "Alice")
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := SignAccount(admin, a, false)
	if err := reader.PutRecord(ctx, rec); !errors.Is(err, ErrNoAdminKey) {
		t.Fatalf("a node without the admin key stored an account: %v", err)
	}
	if err := manager.PutRecord(ctx, rec); err != nil {
		t.Fatal(err)
	}
	got, err := reader.Account(ctx, "201")
	if err != nil || got.Display != "Alice" || !got.Updated.Equal(a.Updated) {
		t.Fatalf("account from another node: %+v, %v", got, err)
	}
	// Replay of the same version and a forged record are refused.
	if err := manager.PutRecord(ctx, rec); !errors.Is(err, ErrStaleRecord) {
		t.Fatalf("replayed record: %v", err)
	}
	_, forger, _ := ed25519.GenerateKey(nil)
	forged, _ := SignAccount(forger, a, false)
	if err := manager.PutRecord(ctx, forged); !errors.Is(err, ErrAccountSignature) {
		t.Fatalf("forged record: %v", err)
	}
	// A record someone else wrote straight into the DHT is ignored.
	evil := a
	evil.Display, evil.Updated = "Mallory", a.Updated.Add(time.Hour)
	evilRec, _ := SignAccount(forger, evil, false)
	r, _ := dht.NewRecord(d[1].Key(), userKeyPrefix+"201", evilRec, time.Hour, 1, false)
	if err := d[1].PutRecord(ctx, r); err != nil {
		t.Fatal(err)
	}
	fresh := &DHTAccounts{DHT: d[1], Admin: adminPub} // reads the DHT, not reader's cache
	if got, _ := fresh.Account(ctx, "201"); got.Display != "Alice" {
		t.Fatalf("a forged DHT record won: %+v", got)
	}

	b, err := NewAccount("202", "bobs-password", "Bob")
	if err != nil {
		t.Fatal(err)
	}
	rec, _ = SignAccount(admin, b, false)
	if err := manager.PutRecord(ctx, rec); err != nil {
		t.Fatal(err)
	}
	list, err := reader.ListAccounts(ctx)
	if err != nil || len(list) != 2 || list[0].Ext != "201" || list[1].Ext != "202" {
		t.Fatalf("list: %+v, %v", list, err)
	}
	// Deletion: a newer tombstone.
	b.Updated = b.Updated.Add(time.Second)
	tomb, _ := SignAccount(admin, b, true)
	if err := manager.PutRecord(ctx, tomb); err != nil {
		t.Fatal(err)
	}
	// (reader cached 202 when it listed it: other nodes see the deletion
	// within accountCacheTTL, TestDHTAccountsCache.)
	fresh = &DHTAccounts{DHT: d[1], Admin: adminPub}
	if _, err := fresh.Account(ctx, "202"); !errors.Is(err, ErrNoAccount) {
		t.Fatalf("deleted account: %v", err)
	}
	if list, _ := fresh.ListAccounts(ctx); len(list) != 1 {
		t.Fatalf("list after delete: %+v", list)
	}
}

// TestDHTAccountsCache: Account answers from its cache for accountCacheTTL
// (accountMissTTL for a missing account), so other nodes see a change that
// late, the node that made it at once.
func TestDHTAccountsCache(t *testing.T) {
	ctx := context.Background()
	d := dhttest.NewShared(2)
	adminPub, admin, _ := ed25519.GenerateKey(nil)
	now := time.Unix(1e9, 0)
	clock := func() time.Time { return now }
	manager := &DHTAccounts{DHT: d[0], Admin: adminPub, Key: admin, Now: clock}
	reader := &DHTAccounts{DHT: d[1], Admin: adminPub, Now: clock}

	if _, err := reader.Account(ctx, "201"); !errors.Is(err, ErrNoAccount) {
		t.Fatalf("no account yet: %v", err)
	}
	a, _ := NewAccount("201", "secret", "Alice")
	rec, _ := SignAccount(admin, a, false)
	if err := manager.PutRecord(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if _, err := reader.Account(ctx, "201"); !errors.Is(err, ErrNoAccount) {
		t.Fatalf("the miss was not cached: %v", err)
	}
	now = now.Add(accountMissTTL)
	if got, err := reader.Account(ctx, "201"); err != nil || got.Display != "Alice" {
		t.Fatalf("after the miss expired: %+v %v", got, err)
	}
	if got, err := manager.Account(ctx, "201"); err != nil || got.Display != "Alice" {
		t.Fatalf("manager: %+v %v", got, err)
	}
	// A change: the manager sees it at once, the reader after its TTL.
	a.Display, a.Updated = "Alice B.", a.Updated.Add(time.Second)
	rec, _ = SignAccount(admin, a, false)
	if err := manager.PutRecord(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if got, _ := manager.Account(ctx, "201"); got.Display != "Alice B." {
		t.Fatalf("manager after its change: %+v", got)
	}
	now = now.Add(accountCacheTTL - time.Second)
	if got, _ := reader.Account(ctx, "201"); got.Display != "Alice" {
		t.Fatalf("reader within the TTL: %+v (want the cached answer)", got)
	}
	now = now.Add(time.Second)
	if got, _ := reader.Account(ctx, "201"); got.Display != "Alice B." {
		t.Fatalf("reader after the TTL: %+v", got)
	}
	// Bounded.
	for i := range 2 * maxCachedAccount {
		reader.Account(ctx, strconv.Itoa(10000+i))
	}
	if n := reader.cache.Len(); n > maxCachedAccount {
		t.Fatalf("%d cached accounts, bound %d", n, maxCachedAccount)
	}
}

// forgetfulDHT answers Get with nothing (an owner that has just joined,
// or lost its replicas' answers) or with an error, as set.
type forgetfulDHT struct {
	DHT
	empty bool
	err   error
}

func (f *forgetfulDHT) Get(ctx context.Context, key string) ([]dht.Record, error) {
	if f.err != nil {
		return nil, f.err
	}
	if f.empty {
		return nil, nil
	}
	return f.DHT.Get(ctx, key)
}

// TestDHTLocationOwnRecord: a node finds the phones registered with it
// whatever the DHT answers, and a REGISTER's read-modify-write after an
// empty answer keeps the node's other bindings of the AOR.
func TestDHTLocationOwnRecord(t *testing.T) {
	ctx := context.Background()
	d := dhttest.NewShared(2)
	now := time.Unix(1_700_000_000, 0)
	clock := func() time.Time { return now }
	f := &forgetfulDHT{DHT: d[0]}
	loc := &DHTLocation{DHT: f, Now: clock, Self: d[0].ID()}
	other := &DHTLocation{DHT: d[1], Now: clock, Self: d[1].ID()}
	aor := AOR("201")
	b := func(node ssr.NodeID, contact string, exp time.Duration) Binding {
		return Binding{AOR: aor, Node: node, Contact: contact, Expires: now.Add(exp), CallID: "c", CSeq: 1}
	}
	if err := loc.SetBindings(ctx, aor, d[0].ID(), []Binding{b(d[0].ID(), "sip:201@10.0.0.2", time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := other.SetBindings(ctx, aor, d[1].ID(), []Binding{b(d[1].ID(), "sip:201@10.1.0.2", time.Hour)}); err != nil {
		t.Fatal(err)
	}
	contacts := func(bs []Binding) []string {
		var out []string
		for _, b := range MergeBindings(bs, now) {
			out = append(out, b.Contact)
		}
		return out
	}
	got, err := loc.Bindings(ctx, aor)
	if c := contacts(got); err != nil || len(c) != 2 {
		t.Fatalf("both nodes' bindings: %v, %v", c, err)
	}
	f.empty = true
	got, err = loc.Bindings(ctx, aor)
	if c := contacts(got); err != nil || len(c) != 1 || c[0] != "sip:201@10.0.0.2" {
		t.Fatalf("own binding after an empty DHT answer: %v, %v", c, err)
	}
	f.empty, f.err = false, errors.New("timeout")
	got, err = loc.Bindings(ctx, aor)
	if c := contacts(got); err == nil || len(c) != 1 {
		t.Fatalf("own binding with the DHT's error: %v, %v", c, err)
	}
	// Another node's view is the DHT's: node 1 reads node 0's record.
	got, _ = other.Bindings(ctx, aor)
	if c := contacts(got); len(c) != 2 {
		t.Fatalf("node 1 sees %v", c)
	}
	// A record written in another node's name is not kept as own.
	f.err = nil
	if err := loc.SetBindings(ctx, aor, d[1].ID(), []Binding{b(d[1].ID(), "sip:201@6.6.6.6", time.Hour)}); err != nil {
		t.Fatal(err)
	}
	f.empty = true
	got, _ = loc.Bindings(ctx, aor)
	if c := contacts(got); len(c) != 1 || c[0] != "sip:201@10.0.0.2" {
		t.Fatalf("after a write in another's name: %v", c)
	}
	// Expired, the own record is forgotten; removed, too.
	now = now.Add(2 * time.Hour)
	if got, _ := loc.Bindings(ctx, aor); len(got) != 0 {
		t.Fatalf("expired own record still answered: %+v", got)
	}
	if n := len(loc.own); n != 0 {
		t.Fatalf("%d own records kept after expiry", n)
	}
	if err := loc.SetBindings(ctx, aor, d[0].ID(), []Binding{b(d[0].ID(), "sip:201@10.0.0.3", time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := loc.SetBindings(ctx, aor, d[0].ID(), nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := loc.Bindings(ctx, aor); len(got) != 0 {
		t.Fatalf("removed own record still answered: %+v", got)
	}
}

// TestDHTLocationOwnBound: the own records are bounded; past the bound a
// new AOR is read from the DHT only.
func TestDHTLocationOwnBound(t *testing.T) {
	d := dhttest.NewShared(1)
	now := time.Unix(1_700_000_000, 0)
	loc := &DHTLocation{DHT: d[0], Now: func() time.Time { return now }, Self: d[0].ID()}
	for i := range maxOwnRecords + 10 {
		aor := AOR(strconv.Itoa(100000 + i))
		loc.keepOwn(aor, d[0].ID(), []Binding{{AOR: aor, Node: d[0].ID(), Contact: "sip:x@10.0.0.2", Expires: now.Add(time.Hour)}})
	}
	if n := len(loc.own); n != maxOwnRecords {
		t.Fatalf("%d own records kept, bound %d", n, maxOwnRecords)
	}
}
