package gateway

import (
	"context"
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/ssr"
	"github.com/sipmesh/sipmesh/ssr/dht"
	"github.com/sipmesh/sipmesh/ssr/dht/dhttest"
)

// clockDHT is dhttest's DHT with records that expire on a test clock, as
// the real DHT's holders count a record's remaining life down.
type clockDHT struct {
	*dhttest.DHT
	mu      *sync.Mutex
	now     *time.Time
	written map[string]time.Time // writer key → when its last record was written
	fail    *bool
}

func (c *clockDHT) Put(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	c.mu.Lock()
	c.written[string(c.Key().Public().(ed25519.PublicKey))] = *c.now
	c.mu.Unlock()
	return c.DHT.Put(ctx, key, value, ttl)
}

func (c *clockDHT) Get(ctx context.Context, key string) ([]dht.Record, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if *c.fail {
		return nil, errors.New("DHT unreachable")
	}
	recs, err := c.DHT.Get(ctx, key)
	var out []dht.Record
	for _, r := range recs {
		r.Remaining = r.Lifetime - c.now.Sub(c.written[string(r.Writer)])
		if r.Remaining > 0 {
			out = append(out, r)
		}
	}
	return out, err
}

// gwWorld is a DHT shared by n nodes on a test clock, with a mesh whose
// pings answer as rtts and lost say.
type gwWorld struct {
	mu    sync.Mutex
	now   time.Time
	fail  bool
	dhts  []*clockDHT
	rtts  map[ssr.NodeID]time.Duration
	lost  map[ssr.NodeID]bool
	hops  map[ssr.NodeID]int
	pings int
}

func newGWWorld(n int) *gwWorld {
	w := &gwWorld{now: time.Unix(1e9, 0), rtts: map[ssr.NodeID]time.Duration{}, lost: map[ssr.NodeID]bool{}, hops: map[ssr.NodeID]int{}}
	written := map[string]time.Time{}
	for _, d := range dhttest.NewShared(n) {
		w.dhts = append(w.dhts, &clockDHT{DHT: d, mu: &w.mu, now: &w.now, written: written, fail: &w.fail})
	}
	return w
}

func (w *gwWorld) dir(i int) *gatewayDir {
	g := newGatewayDir(w.dhts[i], w.dhts[i].ID(), func(ctx context.Context, id ssr.NodeID) (time.Duration, int, error) {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.pings++
		if w.lost[id] {
			return 0, 0, errors.New("timeout")
		}
		return w.rtts[id], w.hops[id], nil
	})
	g.now = func() time.Time { w.mu.Lock(); defer w.mu.Unlock(); return w.now }
	return g
}

func (w *gwWorld) announce(t *testing.T, i int, a Announcement) {
	t.Helper()
	if err := w.dhts[i].Put(context.Background(), gatewaysKey, encodeAnnouncement(a), announceLifetime); err != nil {
		t.Fatal(err)
	}
}

func (w *gwWorld) advance(d time.Duration) { w.mu.Lock(); w.now = w.now.Add(d); w.mu.Unlock() }

// TestGatewayChoiceByQuality: the rule of gwchoice.go picks the gateway
// whose whole path rates best, not the nearest nor the first found.
func TestGatewayChoiceByQuality(t *testing.T) {
	ctx := context.Background()
	w := newGWWorld(4) // node 0 chooses; 1, 2 and 3 are gateways
	near, far, down := w.dhts[1].ID(), w.dhts[2].ID(), w.dhts[3].ID()
	// near: 1 hop, 10 ms over the mesh, but its uplink loses 8 %;
	// far: 4 hops, 60 ms, a clean uplink. Voice over 8 % loss is worse
	// than 30 ms more delay: far wins.
	w.rtts[near], w.hops[near] = 10*time.Millisecond, 1
	w.rtts[far], w.hops[far] = 60*time.Millisecond, 4
	w.rtts[down] = 5 * time.Millisecond
	w.announce(t, 1, Announcement{Name: "near", Up: true, URIs: true, RTT: 20 * time.Millisecond, Loss: 0.08, Probes: 10})
	w.announce(t, 2, Announcement{Name: "far", Up: true, URIs: true, RTT: 20 * time.Millisecond, Probes: 10})
	w.announce(t, 3, Announcement{Name: "down", Up: false, URIs: true, Trunk: true, DialPrefix: "0"})
	g := w.dir(0)
	if err := g.refresh(ctx); err != nil {
		t.Fatal(err)
	}
	g.probeAll(ctx)
	for range 5 {
		if id, ok := g.choose(ctx, KindURI); !ok || id != far {
			t.Fatalf("choose = %v, %v; want far %v (near %v)", id, ok, far, near)
		}
	}
	if id, ok := g.choose(ctx, KindTrunk); ok {
		t.Errorf("trunk call: chose %v, but the only trunk's uplink is down", id)
	}
	list := g.list()
	if len(list) != 3 || list[0].Name != "far" || !list[0].Best || list[1].Name != "near" || list[2].Name != "down" || list[2].Usable {
		t.Fatalf("list: %+v", list)
	}
	if f := list[0]; f.MeshHops != 4 || f.MeshRTTMs != 60 || f.MeshProbes != 1 || f.UplinkRTTMs != 20 || f.R < 80 || f.MOS < 4 {
		t.Errorf("far: %+v", f)
	}
	if n := list[1]; n.UplinkLossPct != 8 || n.R >= list[0].R-rSpread {
		t.Errorf("near: %+v (far R %.1f)", n, list[0].R)
	}

	// The mesh path to far starts losing every probe: after
	// unreachableAfter probes it is never chosen; near takes the calls.
	w.lost[far] = true
	for range unreachableAfter {
		g.probeAll(ctx)
	}
	if id, ok := g.choose(ctx, KindURI); !ok || id != near {
		t.Errorf("far unreachable: choose = %v, %v; want near", id, ok)
	}
}

// TestGatewayChoiceSpreads: gateways whose paths rate within rSpread of
// each other take new calls in turn.
func TestGatewayChoiceSpreads(t *testing.T) {
	ctx := context.Background()
	w := newGWWorld(3)
	a, b := w.dhts[1].ID(), w.dhts[2].ID()
	w.rtts[a], w.rtts[b] = 8*time.Millisecond, 12*time.Millisecond
	w.announce(t, 1, Announcement{Name: "a", Up: true, URIs: true, RTT: 15 * time.Millisecond, Probes: 10})
	w.announce(t, 2, Announcement{Name: "b", Up: true, URIs: true, RTT: 18 * time.Millisecond, Probes: 10})
	g := w.dir(0)
	g.refresh(ctx)
	g.probeAll(ctx)
	count := map[ssr.NodeID]int{}
	for range 10 {
		id, ok := g.choose(ctx, KindURI)
		if !ok {
			t.Fatal("no gateway")
		}
		count[id]++
	}
	if count[a] != 5 || count[b] != 5 {
		t.Errorf("10 calls over two equally good gateways: %v", count)
	}
}

// TestGatewayExpiry: a gateway that stops announcing (killed, or cut
// off) is gone within announceLifetime, even while the DHT cannot be
// read; one that announces again is back at once; unprobed gateways
// still serve.
func TestGatewayExpiry(t *testing.T) {
	ctx := context.Background()
	w := newGWWorld(3)
	g1, g2 := w.dhts[1].ID(), w.dhts[2].ID()
	g := w.dir(0)
	w.announce(t, 1, Announcement{Name: "g1", Up: true, URIs: true})
	w.announce(t, 2, Announcement{Name: "g2", Up: true, URIs: true})
	if _, ok := g.choose(ctx, KindURI); !ok {
		t.Fatal("no gateway chosen before any probe")
	}
	// Both keep announcing every announceEvery for a while.
	for range 4 {
		w.advance(announceEvery)
		w.announce(t, 1, Announcement{Name: "g1", Up: true, URIs: true})
		w.announce(t, 2, Announcement{Name: "g2", Up: true, URIs: true})
		g.refresh(ctx)
	}
	// g2 dies. Until its record expires it may still be listed; after
	// announceLifetime it is not, and every call goes to g1.
	died := w.now
	for w.now.Sub(died) < announceLifetime {
		w.advance(time.Second)
		if w.now.Sub(died)%announceEvery == 0 {
			w.announce(t, 1, Announcement{Name: "g1", Up: true, URIs: true})
		}
		g.choose(ctx, KindURI)
	}
	for range 4 {
		if id, ok := g.choose(ctx, KindURI); !ok || id != g1 {
			t.Fatalf("%v after g2 died: choose = %v, %v; want g1", w.now.Sub(died), id, ok)
		}
	}
	if l := g.list(); len(l) != 1 || l[0].Name != "g1" {
		t.Errorf("list after g2 died: %+v", l)
	}
	// The DHT becomes unreadable: what is known lives to its expiry.
	w.fail = true
	w.advance(announceEvery)
	if id, ok := g.choose(ctx, KindURI); !ok || id != g1 {
		t.Errorf("DHT unreadable, g1's record alive: choose = %v, %v", id, ok)
	}
	w.advance(announceLifetime)
	if id, ok := g.choose(ctx, KindURI); ok {
		t.Errorf("DHT unreadable, every record expired: chose %v", id)
	}
	w.fail = false
	w.announce(t, 2, Announcement{Name: "g2", Up: true, URIs: true})
	if id, ok := g.choose(ctx, KindURI); !ok || id != g2 {
		t.Errorf("g2 back: choose = %v, %v", id, ok)
	}
}

// TestGatewayDirBounded: garbage and more gateways than maxGateways are
// not kept; this node's own announcement is rated with no mesh path and
// never pinged.
func TestGatewayDirBounded(t *testing.T) {
	ctx := context.Background()
	w := newGWWorld(maxGateways + 3)
	for i := 1; i < len(w.dhts); i++ {
		w.announce(t, i, Announcement{Name: "g", Up: true, URIs: true})
	}
	if err := w.dhts[1].Put(ctx, gatewaysKey, []byte("garbage"), announceLifetime); err != nil {
		t.Fatal(err)
	}
	g := w.dir(2)
	g.refresh(ctx)
	if n := len(g.list()); n != maxGateways {
		t.Errorf("%d gateways kept, want at most %d", n, maxGateways)
	}
	w.announce(t, 0, Announcement{Name: "self", Up: true, URIs: true})
	self := w.dir(0)
	for _, d := range w.dhts[1:] {
		d.Delete(ctx, gatewaysKey)
	}
	self.refresh(ctx)
	self.probeAll(ctx)
	if w.pings != 0 {
		t.Errorf("%d pings: a gateway pinged itself", w.pings)
	}
	if id, ok := self.choose(ctx, KindURI); !ok || id != w.dhts[0].ID() {
		t.Errorf("the gateway's own node: choose = %v, %v", id, ok)
	}
}

func TestReadSecretFile(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "trunk.pw")
	os.WriteFile(pw, []byte("s3cret\n"), 0o600)
	if got, err := readSecretFile(pw); err != nil || got != "s3cret" {
		t.Errorf("readSecretFile = %q, %v", got, err)
	}
	os.Chmod(pw, 0o640)
	if _, err := readSecretFile(pw); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("group-readable: %v", err)
	}
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o600)
	if _, err := readSecretFile(empty); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("empty: %v", err)
	}
	// The password is never in an error.
	os.Chmod(pw, 0o644)
	if _, err := readSecretFile(pw); err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("error shows the password: %v", err)
	}
}

// TestGatewaySuspect: a gateway a call found silent is not chosen until
// its record would have expired or a ping is answered.
func TestGatewaySuspect(t *testing.T) {
	ctx := context.Background()
	w := newGWWorld(3)
	a, b := w.dhts[1].ID(), w.dhts[2].ID()
	w.announce(t, 1, Announcement{Name: "a", Up: true, URIs: true})
	w.announce(t, 2, Announcement{Name: "b", Up: true, URIs: true})
	g := w.dir(0)
	g.refresh(ctx)
	g.failed(a.Addr())
	for range 4 {
		if id, ok := g.choose(ctx, KindURI); !ok || id != b {
			t.Fatalf("a suspect: choose = %v, %v; want b", id, ok)
		}
	}
	if l := g.list(); l[0].Name != "b" || l[1].Usable {
		t.Errorf("list with a suspect: %+v", l)
	}
	g.probeAll(ctx) // a answers its ping
	n := map[ssr.NodeID]int{}
	for range 4 {
		id, _ := g.choose(ctx, KindURI)
		n[id]++
	}
	if n[a] == 0 {
		t.Errorf("a answered a ping but is still skipped: %v", n)
	}
	g.failed(b.Addr())
	w.advance(announceLifetime)
	w.announce(t, 1, Announcement{Name: "a", Up: true, URIs: true})
	w.announce(t, 2, Announcement{Name: "b", Up: true, URIs: true})
	n = map[ssr.NodeID]int{}
	for range 4 {
		id, _ := g.choose(ctx, KindURI)
		n[id]++
	}
	if n[b] == 0 {
		t.Errorf("b's suspicion outlived announceLifetime: %v", n)
	}
}
