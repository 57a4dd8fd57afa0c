package dht_test

import (
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/memnet"
	"github.com/sipmesh/sipmesh/ssr"
	"github.com/sipmesh/sipmesh/ssr/dht"
)

var fastSSR = ssr.Params{
	HelloInterval:    100 * time.Millisecond,
	NeighbourTimeout: 350 * time.Millisecond,
	RingInterval:     100 * time.Millisecond,
	RingIntervalMax:  400 * time.Millisecond,
	FingerInterval:   2 * time.Second,
	MaxTimeout:       2 * time.Second,
}

var fastDHT = dht.Params{RingPoll: 200 * time.Millisecond, SyncInterval: time.Second, RequestTimeout: 500 * time.Millisecond}

func key(seed uint64) ed25519.PrivateKey {
	var s [ed25519.SeedSize]byte
	binary.BigEndian.PutUint64(s[:], seed)
	copy(s[8:], "sipmesh dht driver test")
	return ed25519.NewKeyFromSeed(s[:])
}

// meshDHT is routers on a memnet line, each with a DHT driver.
type meshDHT struct {
	routers []*ssr.Router
	drivers []*dht.Driver
	cancel  []context.CancelFunc
	wg      sync.WaitGroup
}

func newMeshDHT(t *testing.T, n int) *meshDHT { t.Helper(); return newMeshDHTIn(t, n, nil) }

// newMeshDHTIn is newMeshDHT with node i keeping its records in dirs[i]
// (none when dirs is nil).
func newMeshDHTIn(t *testing.T, n int, dirs []string) *meshDHT {
	t.Helper()
	net := memnet.New(memnet.Config{Seed: 1})
	m := &meshDHT{}
	hosts := make([]*memnet.Host, n)
	ifn := make([][]string, n)
	for i := range hosts {
		hosts[i] = net.AddHost(fmt.Sprintf("n%d", i))
	}
	for i := 0; i+1 < n; i++ {
		a := hosts[i].AddInterface(fmt.Sprintf("m%d", i+1), 1500)
		b := hosts[i+1].AddInterface(fmt.Sprintf("m%d", i), 1500)
		ifn[i], ifn[i+1] = append(ifn[i], a.Name()), append(ifn[i+1], b.Name())
		net.Connect(a, b, memnet.LinkConfig{Delay: 2 * time.Millisecond})
	}
	for i, h := range hosts {
		k := key(uint64(i + 1))
		r, err := ssr.NewRouter(ssr.RouterConfig{Network: h, Key: k, Interfaces: ifn[i], Params: fastSSR})
		if err != nil {
			t.Fatal(err)
		}
		cfg := dht.DriverConfig{Router: r, Key: k, Params: fastDHT}
		if dirs != nil {
			cfg.StateDir = dirs[i]
		}
		d, err := dht.NewDriver(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		m.routers, m.drivers, m.cancel = append(m.routers, r), append(m.drivers, d), append(m.cancel, cancel)
		m.wg.Go(func() {
			if err := r.Run(ctx); err != nil {
				t.Errorf("router Run: %v", err)
			}
		})
		m.wg.Go(func() {
			if err := d.Run(ctx); err != nil {
				t.Errorf("dht Run: %v", err)
			}
		})
	}
	t.Cleanup(m.stop)
	return m
}

func (m *meshDHT) stop() {
	for _, c := range m.cancel {
		c()
	}
	m.wg.Wait()
}

// waitRing waits (virtual time) until every router's first successor is
// the true one.
func (m *meshDHT) waitRing(t *testing.T) {
	t.Helper()
	var ids []ssr.NodeID
	for _, r := range m.routers {
		ids = append(ids, r.ID())
	}
	slices.Sort(ids)
	for range 600 {
		ok := true
		for _, r := range m.routers {
			i := slices.Index(ids, r.ID())
			st := r.Status()
			if len(st.Successors) == 0 || st.Successors[0].ID != ids[(i+1)%len(ids)].String() {
				ok = false
			}
		}
		if ok {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("ring not formed")
}

func TestDriverPutGetDelete(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		m := newMeshDHT(t, 5)
		m.waitRing(t)
		time.Sleep(2 * time.Second) // the drivers read the ring
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		const k = "aor:sip:201@mesh"
		if err := m.drivers[0].Put(ctx, k, []byte("contact at n0"), time.Hour); err != nil {
			t.Fatal(err)
		}
		if err := m.drivers[3].Put(ctx, k, []byte("contact at n3"), time.Hour); err != nil {
			t.Fatal(err)
		}
		res, err := m.drivers[4].GetResult(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, r := range res.Records {
			got = append(got, string(r.Value))
		}
		slices.Sort(got)
		if !slices.Equal(got, []string{"contact at n0", "contact at n3"}) {
			t.Fatalf("get = %q", got)
		}
		if err := m.drivers[0].Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
		recs, err := m.drivers[2].Get(ctx, k)
		if err != nil || len(recs) != 1 || string(recs[0].Value) != "contact at n3" {
			t.Fatalf("after delete: %v %v", recs, err)
		}
		time.Sleep(3 * time.Second) // replication
		total := 0
		for _, d := range m.drivers {
			total += d.Metrics().Records
		}
		if total != 6 { // 2 records (one a tombstone) × 3 copies
			t.Fatalf("%d copies held in all, want 6", total)
		}
		// An account signed by the administrator key, written at one node
		// and read at another.
		acct, err := dht.NewRecord(key(1000), "user:201", []byte("ha1"), 24*time.Hour, 1, false)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.drivers[2].PutRecord(ctx, acct); err != nil {
			t.Fatal(err)
		}
		if recs, err := m.drivers[0].Get(ctx, "user:201"); err != nil || len(recs) != 1 || !recs[0].Writer.Equal(key(1000).Public()) {
			t.Fatalf("account: %v %v", recs, err)
		}
		if err := m.drivers[1].Put(ctx, "", []byte("x"), time.Hour); !errors.Is(err, dht.ErrInvalid) {
			t.Fatalf("empty key: %v", err)
		}
		// A stopped driver answers ErrClosed, promptly.
		m.cancel[1]()
		time.Sleep(100 * time.Millisecond)
		if _, err := m.drivers[1].Get(ctx, k); !errors.Is(err, dht.ErrClosed) {
			t.Fatalf("get on a stopped driver: %v", err)
		}
	})
}

// TestDriverCancel: a call whose context ends returns at once, and Run
// still stops cleanly with requests in flight.
func TestDriverCancel(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		m := newMeshDHT(t, 2)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		defer cancel()
		// Before the ring formed the get may take long: it must obey ctx.
		_, err := m.drivers[0].Get(ctx, "name:nowhere")
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("get: %v", err)
		}
		for range 20 {
			go func() { _, _ = m.drivers[1].Get(context.Background(), "name:x") }()
		}
		time.Sleep(5 * time.Millisecond)
		m.stop()
		synctest.Wait()
	})
}

// TestDriverJoinsGets: gets for one key while one is in flight join it:
// every caller gets the records (its own copy of the slice), the node asks
// once, and a get after the answer asks again (sees a later write).
func TestDriverJoinsGets(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		m := newMeshDHT(t, 4)
		m.waitRing(t)
		time.Sleep(2 * time.Second) // the drivers read the ring
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		const k = "aor:sip:202@mesh"
		if err := m.drivers[0].Put(ctx, k, []byte("v1"), time.Hour); err != nil {
			t.Fatal(err)
		}
		d := m.drivers[3]
		before := d.Metrics()
		const n = 20
		got := make([][]dht.Record, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				recs, err := d.Get(ctx, k)
				if err != nil {
					t.Errorf("get %d: %v", i, err)
				}
				got[i] = recs
			})
		}
		wg.Wait()
		for i, recs := range got {
			if len(recs) != 1 || string(recs[0].Value) != "v1" {
				t.Fatalf("get %d: %v", i, recs)
			}
			if i > 0 && &recs[0] == &got[0][0] {
				t.Fatalf("gets %d and 0 share their records", i)
			}
		}
		after := d.Metrics()
		if asked, joined := after.Requests-before.Requests, after.GetsJoined-before.GetsJoined; asked+joined != n || asked > 2 {
			t.Fatalf("%d gets asked the mesh, %d joined, of %d", asked, joined, n)
		}
		if err := m.drivers[1].Put(ctx, k, []byte("v2"), time.Hour); err != nil {
			t.Fatal(err)
		}
		if recs, err := d.Get(ctx, k); err != nil || len(recs) != 2 {
			t.Fatalf("get after a later write: %v, %v", recs, err)
		}
	})
}

// TestDriverRestartFromDisk: every driver of a mesh stops and a new mesh
// starts on the same state directories and keys: every record resolves
// again, the account signed by the administrator included.
func TestDriverRestartFromDisk(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		const nodes, keys = 4, 12
		var dirs []string
		for range nodes {
			dirs = append(dirs, t.TempDir())
		}
		m := newMeshDHTIn(t, nodes, dirs)
		m.waitRing(t)
		time.Sleep(2 * time.Second)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for i := range keys {
			if err := m.drivers[i%nodes].Put(ctx, fmt.Sprintf("aor:sip:%d@mesh", 200+i), []byte("contact"), time.Hour); err != nil {
				t.Fatal(err)
			}
		}
		acct, err := dht.NewRecord(key(1000), "user:201", []byte("ha1"), 24*time.Hour, 1, false)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.drivers[1].PutRecord(ctx, acct); err != nil {
			t.Fatal(err)
		}
		// The writer flushed them (every 2 s).
		time.Sleep(3 * time.Second)
		for _, d := range m.drivers {
			if mt := d.Metrics(); mt.DiskPending != 0 || mt.DiskBytes == 0 {
				t.Fatalf("3 s after the writes: %+v", mt)
			}
		}
		for _, dir := range dirs {
			if fi, err := os.Stat(filepath.Join(dir, dht.StoreFile)); err != nil || fi.Size() < 1000 {
				t.Fatalf("records file after a flush: %v %v", fi, err)
			}
		}
		// One more, stopped once its copies arrived (100 ms), before the
		// next flush: the last flush at stop keeps it.
		if err := m.drivers[0].Put(ctx, fmt.Sprintf("aor:sip:%d@mesh", 200+keys), []byte("contact"), time.Hour); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
		m.stop()
		time.Sleep(time.Hour / 2)

		m = newMeshDHTIn(t, nodes, dirs)
		time.Sleep(time.Millisecond) // the drivers load their files
		held, loaded := 0, uint64(0)
		for _, d := range m.drivers {
			mt := d.Metrics()
			held, loaded = held+mt.Records, loaded+mt.DiskLoaded
			if mt.DiskRefused != 0 || mt.DiskDamaged != 0 || mt.DiskBytes == 0 {
				t.Fatalf("disk metrics after a clean stop: %+v", mt)
			}
		}
		if loaded != uint64(held) {
			t.Fatalf("%d records held, %d loaded from disk", held, loaded)
		}
		if held < 3*(keys+2) {
			t.Fatalf("%d copies loaded, want %d", held, 3*(keys+2))
		}
		m.waitRing(t)
		time.Sleep(2 * time.Second)
		ctx, cancel = context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for i := range keys + 1 {
			recs, err := m.drivers[(i+1)%nodes].Get(ctx, fmt.Sprintf("aor:sip:%d@mesh", 200+i))
			if err != nil || len(recs) != 1 || string(recs[0].Value) != "contact" {
				t.Fatalf("aor %d after restart: %v %v", 200+i, recs, err)
			}
			if rem := recs[0].Remaining; rem > time.Hour/2 {
				t.Fatalf("aor %d: %v left after half an hour off", 200+i, rem)
			}
		}
		if recs, err := m.drivers[3].Get(ctx, "user:201"); err != nil || len(recs) != 1 || !recs[0].Writer.Equal(key(1000).Public()) {
			t.Fatalf("account after restart: %v %v", recs, err)
		}
	})
}
