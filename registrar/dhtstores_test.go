package registrar

import (
	"context"
	"crypto/ed25519"
	"errors"
	"net/netip"
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

// countingDHT counts the writes that reach the DHT.
type countingDHT struct {
	DHT
	puts int
}

func (c *countingDHT) Put(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	c.puts++
	return c.DHT.Put(ctx, key, value, ttl)
}

// TestRoamRefreshShortcut: a refresh that changes only the expiry is not
// stored in the DHT while the stored copy still says the same within the
// slack, and a phone roaming A→B→A is never lost or shadowed by a stale
// copy: back at A, A stores again, and A's later refreshes do not let B's
// copy win any reader's merge.
func TestRoamRefreshShortcut(t *testing.T) {
	d := dhttest.NewShared(3)
	cntA, cntB := &countingDHT{DHT: d[0]}, &countingDHT{DHT: d[1]}
	gA := newRig(t, func(c *RegistrarConfig) { c.noAuth = true })
	clock := gA.clock
	locA := &DHTLocation{DHT: cntA, Now: clock.Now, Self: d[0].ID()}
	locB := &DHTLocation{DHT: cntB, Now: clock.Now, Self: d[1].ID()}
	gA = newRig(t, func(c *RegistrarConfig) { c.noAuth, c.Node, c.Locations, c.Now = true, d[0].ID(), locA, clock.Now })
	gB := newRig(t, func(c *RegistrarConfig) { c.noAuth, c.Node, c.Locations, c.Now = true, d[1].ID(), locB, clock.Now })
	gB.seq = 1000
	reader := &DHTLocation{DHT: d[2], Now: clock.Now} // a third node: the DHT's view only
	phone := "<sip:201@192.168.1.50:5062>"
	// seen is what the third node finds: the binding's node and seconds left.
	seen := func(step string, node ssr.NodeID, left time.Duration) {
		t.Helper()
		bs, err := reader.Bindings(context.Background(), AOR("201"))
		if err != nil {
			t.Fatal(err)
		}
		m := MergeBindings(bs, clock.Now())
		if len(m) != 1 || m[0].Node != node || m[0].Expires.Sub(clock.Now()) != left {
			t.Fatalf("%s: the third node sees %+v, want node %v with %v left", step, m, node, left)
		}
	}
	register := func(g *rig, cseq int, expires string, want string) {
		t.Helper()
		res := g.send(g.build(reg{contacts: []string{phone}, expires: expires, cseq: cseq}))
		wantCode(t, res, 200)
		if got := contactsOf(res); len(got) != 1 || got[0] != want {
			t.Fatalf("200 lists %q, want %q", got, want)
		}
	}
	puts := func(step string, c *countingDHT, want int) {
		t.Helper()
		if c.puts != want {
			t.Fatalf("%s: %d writes stored, want %d", step, c.puts, want)
		}
	}

	register(gA, 1, "3600", "sip:201@192.168.1.50:5062 3600")
	puts("first registration", cntA, 1)
	seen("first registration", d[0].ID(), time.Hour)
	// An early refresh: the 200 has the full hour, the DHT's copy stays.
	clock.Advance(10 * time.Second)
	register(gA, 2, "3600", "sip:201@192.168.1.50:5062 3600")
	puts("early refresh", cntA, 1)
	if locA.Refreshes() != 1 {
		t.Fatalf("%d refreshes not stored, want 1", locA.Refreshes())
	}
	seen("early refresh", d[0].ID(), time.Hour-10*time.Second)

	// Roaming to B, then back to A: each move is stored and wins.
	clock.Advance(time.Second)
	register(gB, 3, "3600", "sip:201@192.168.1.50:5062 3600")
	seen("at B", d[1].ID(), time.Hour)
	clock.Advance(time.Second)
	register(gA, 4, "3600", "sip:201@192.168.1.50:5062 3600")
	puts("back at A", cntA, 2)
	seen("back at A", d[0].ID(), time.Hour)
	// B still holds its copy; A's refreshes must not let it win.
	for i := range 5 {
		clock.Advance(time.Second)
		register(gA, 5+i, "3600", "sip:201@192.168.1.50:5062 3600")
		seen("refresh after the return", d[0].ID(), time.Hour-time.Duration(i+1)*time.Second)
	}
	puts("refreshes after the return", cntA, 2)

	// Past the slack the refresh is stored: the copy never lags more.
	clock.Advance(refreshSlack)
	register(gA, 20, "3600", "sip:201@192.168.1.50:5062 3600")
	puts("refresh past the slack", cntA, 3)
	seen("refresh past the slack", d[0].ID(), time.Hour)
	// A shorter interval is stored at once: no node may see it longer.
	clock.Advance(time.Second)
	register(gA, 21, "600", "sip:201@192.168.1.50:5062 600")
	puts("shorter interval", cntA, 4)
	seen("shorter interval", d[0].ID(), 10*time.Minute)
	// A short interval allows a quarter of it as slack, no more.
	clock.Advance(time.Minute)
	register(gA, 22, "120", "sip:201@192.168.1.50:5062 120")
	puts("short interval", cntA, 5)
	clock.Advance(20 * time.Second)
	register(gA, 23, "120", "sip:201@192.168.1.50:5062 120")
	puts("refresh within a quarter", cntA, 5)
	clock.Advance(11 * time.Second)
	register(gA, 24, "120", "sip:201@192.168.1.50:5062 120")
	puts("refresh past a quarter", cntA, 6)
	seen("refresh past a quarter", d[0].ID(), 2*time.Minute)
	// A new source (the phone's NAT moved it) is stored at once.
	clock.Advance(time.Second)
	gA.src = netip.MustParseAddrPort("192.168.1.50:5070")
	register(gA, 25, "120", "sip:201@192.168.1.50:5062 120")
	puts("new source", cntA, 7)
	// Removal is stored: the third node sees nothing (B's copy hidden).
	clock.Advance(time.Second)
	res := gA.send(gA.build(reg{contacts: []string{phone}, expires: "0", cseq: 26}))
	wantCode(t, res, 200)
	if got := contactsOf(res); len(got) != 0 {
		t.Fatalf("200 after removal lists %q", got)
	}
	puts("removal", cntA, 8)
	bs, err := reader.Bindings(context.Background(), AOR("201"))
	if m := MergeBindings(bs, clock.Now()); err != nil || len(m) != 0 {
		t.Fatalf("after removal the third node sees %+v (%v)", m, err)
	}
}
