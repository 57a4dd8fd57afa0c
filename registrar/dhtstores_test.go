package gateway

import (
	"context"
	"crypto/ed25519"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/dns64"
	"github.com/sipmesh/sipmesh/ssr"
	"github.com/sipmesh/sipmesh/ssr/dht"
)

// memDHT is a DHT shared by several writers (one memDHT view per node
// key), keeping the newest record per (key, writer) as the real one does.
type memDHT struct {
	mu    *sync.Mutex
	store map[string]map[string]dht.Record
	key   ed25519.PrivateKey
	seq   *uint64
}

func newMemDHT(t *testing.T, nodes int) []*memDHT {
	t.Helper()
	var mu sync.Mutex
	var seq uint64
	store := map[string]map[string]dht.Record{}
	out := make([]*memDHT, nodes)
	for i := range out {
		_, k, err := ed25519.GenerateKey(nil)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = &memDHT{mu: &mu, store: store, key: k, seq: &seq}
	}
	return out
}

func (m *memDHT) id() ssr.NodeID { return dht.WriterID(m.key.Public().(ed25519.PublicKey)) }

func (m *memDHT) Put(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	m.mu.Lock()
	*m.seq++
	seq := *m.seq
	m.mu.Unlock()
	r, err := dht.NewRecord(m.key, key, value, ttl, seq, false)
	if err != nil {
		return err
	}
	return m.PutRecord(ctx, r)
}

func (m *memDHT) PutRecord(_ context.Context, r dht.Record) error {
	if err := r.Verify(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	w := string(r.Writer)
	if m.store[r.Key] == nil {
		m.store[r.Key] = map[string]dht.Record{}
	}
	if old, ok := m.store[r.Key][w]; ok && old.Seq >= r.Seq {
		return dht.ErrStale
	}
	m.store[r.Key][w] = r
	return nil
}

func (m *memDHT) Get(_ context.Context, key string) ([]dht.Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []dht.Record
	for _, r := range m.store[key] {
		out = append(out, r)
	}
	return out, nil
}

func (m *memDHT) Delete(ctx context.Context, key string) error {
	m.mu.Lock()
	*m.seq++
	seq := *m.seq
	m.mu.Unlock()
	r, err := dht.NewRecord(m.key, key, nil, time.Hour, seq, true)
	if err != nil {
		return err
	}
	return m.PutRecord(ctx, r)
}

func TestDHTLocation(t *testing.T) {
	ctx := context.Background()
	d := newMemDHT(t, 3)
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
	if err := locs[0].SetBindings(ctx, aor, d[0].id(), []Binding{b(d[0].id(), "sip:201@10.0.0.2")}); err != nil {
		t.Fatal(err)
	}
	if err := locs[1].SetBindings(ctx, aor, d[1].id(), []Binding{b(d[1].id(), "sip:201@10.1.0.2")}); err != nil {
		t.Fatal(err)
	}
	// A third node lies: it writes a binding in node 0's name.
	if err := locs[2].SetBindings(ctx, aor, d[0].id(), []Binding{b(d[0].id(), "sip:201@6.6.6.6")}); err != nil {
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
	if err := locs[0].SetBindings(ctx, aor, d[0].id(), nil); err != nil {
		t.Fatal(err)
	}
	got, _ = locs[1].Bindings(ctx, aor)
	if merged := MergeBindings(got, now); len(merged) != 1 || merged[0].Node != d[1].id() {
		t.Fatalf("after removal: %+v", merged)
	}
}

func TestDHTAccounts(t *testing.T) {
	ctx := context.Background()
	d := newMemDHT(t, 2)
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
	r, _ := dht.NewRecord(d[1].key, userKeyPrefix+"201", evilRec, time.Hour, 1, false)
	if err := d[1].PutRecord(ctx, r); err != nil {
		t.Fatal(err)
	}
	if got, _ := reader.Account(ctx, "201"); got.Display != "Alice" {
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
	if _, err := reader.Account(ctx, "202"); !errors.Is(err, ErrNoAccount) {
		t.Fatalf("deleted account: %v", err)
	}
	if list, _ := reader.ListAccounts(ctx); len(list) != 1 {
		t.Fatalf("list after delete: %+v", list)
	}
}

func TestClaims(t *testing.T) {
	ctx := context.Background()
	d := newMemDHT(t, 2)
	t0 := time.Unix(1_700_000_000, 0)
	first := &Claims{DHT: d[0], Self: d[0].id(), Since: t0}
	second := &Claims{DHT: d[1], Self: d[1].id(), Since: t0.Add(time.Minute)}
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
