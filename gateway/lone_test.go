package gateway

import (
	"context"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/memnet"
)

// TestLoneNode (issue 10): a node whose only mesh link is down is a mesh of
// one. It claims a LAN subnet, puts the derived address on its LAN
// interface and starts SIP without a ring neighbour; its name resolves
// from its own DHT store. When the link comes up, the second node finds
// the first one's name and subnet claims (handed over by the DHT), and the
// address the first node added is gone after it stops.
func TestLoneNode(t *testing.T) {
	leakcheck.Check(t)
	nw := memnet.New(memnet.Config{})
	ha, hb := nw.AddHost("a"), nw.AddHost("b")
	link := nw.Connect(ha.AddInterface("m0", 1500), hb.AddInterface("m0", 1500), memnet.LinkConfig{Delay: time.Millisecond})
	link.SetDown(true)
	lan := ha.AddInterface("lan0", 1500)
	nw.NewSegment("lan", memnet.LinkConfig{}).Attach(lan)

	nodes := make([]*Node, 2)
	for i, h := range []*memnet.Host{ha, hb} {
		o := DefaultOptions()
		o.Name = h.Name()
		o.StateDir = filepath.Join(t.TempDir(), h.Name())
		o.MeshInterfaces = []string{"m0"}
		o.Control = ""
		o.routerParams = fastParams
		if i == 0 {
			o.LANInterface = "lan0"
			o.DHCP = false
		}
		n, err := NewNode(o, h, nil)
		if err != nil {
			t.Fatal(err)
		}
		n.dnsPort = 5353
		nodes[i] = n
	}
	a, b := nodes[0], nodes[1]
	var mu sync.Mutex
	var added, removed []netip.Prefix
	a.addAddress = func(ifname string, p netip.Prefix) (bool, error) {
		ha.AddAddress(ha.Interface(ifname), p)
		mu.Lock()
		added = append(added, p)
		mu.Unlock()
		return true, nil
	}
	a.removeAddress = func(ifname string, p netip.Prefix) error {
		ha.RemoveAddress(ha.Interface(ifname), p)
		mu.Lock()
		removed = append(removed, p)
		mu.Unlock()
		return nil
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errs := make([]error, 2)
	run := func(i int) { wg.Go(func() { errs[i] = nodes[i].Run(ctx) }) }
	run(0)
	defer func() {
		cancel()
		wg.Wait()
	}()

	// Alone: the phone LAN comes up on a claimed subnet.
	waitCond(t, 10*time.Second, "the lone node's phone LAN", func() bool { return a.SIP() != nil })
	addr := a.LANAddress()
	if !a.opts.LANSupernet.Contains(addr.Addr()) || !slices.Equal(v4(lan.Addrs()), []netip.Prefix{addr}) {
		t.Fatalf("LAN address %v, interface has %v", addr, lan.Addrs())
	}
	if st := a.Router().Status(); len(st.Successors) != 0 {
		t.Fatalf("the lone node has ring successors %+v", st.Successors)
	}
	waitCond(t, 10*time.Second, "a.mesh to resolve on the lone node", func() bool {
		got, err := a.svc.claims.LookupName(ctx, "a.mesh")
		return err == nil && len(got) == 1 && got[0] == a.Router().Addr()
	})

	// b comes: the ring forms and a's claims reach it.
	run(1)
	link.SetDown(false)
	waitCond(t, 20*time.Second, "the ring of two", func() bool {
		st := b.Router().Status()
		return len(st.Successors) > 0 && st.Successors[0].ID == a.Router().ID().String()
	})
	waitCond(t, 20*time.Second, "a.mesh to resolve on b", func() bool {
		got, err := b.svc.claims.LookupName(ctx, "a.mesh")
		return err == nil && len(got) == 1 && got[0] == a.Router().Addr()
	})
	// The name and the subnet claim are separate records, handed over
	// (or re-published) independently: wait for the second one too.
	subnet := addr.Masked()
	waitCond(t, 20*time.Second, "a's subnet claim to reach b", func() bool {
		recs, err := b.DHT().Get(ctx, subnetKeyPrefix+subnet.String())
		w, ok := firstClaim(recs)
		return err == nil && ok && w.writer == a.Router().ID()
	})

	cancel()
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("node %d: %v", i, err)
		}
	}
	if len(v4(lan.Addrs())) != 0 || len(removed) != 1 || removed[0] != addr || len(added) != 1 {
		t.Errorf("after stop: interface has %v; added %v, removed %v", lan.Addrs(), added, removed)
	}
}

// waitCond waits until cond holds, failing t after limit (a guard, not a
// measurement).
func waitCond(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(limit)
	for !cond() {
		select {
		case <-deadline:
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		case <-tick.C:
		}
	}
}

// v4 returns the IPv4 prefixes among ps.
func v4(ps []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if p.Addr().Is4() {
			out = append(out, p)
		}
	}
	return out
}
