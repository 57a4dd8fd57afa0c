package main

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sipmesh/sipmesh/gateway"
	"github.com/sipmesh/sipmesh/internal/leakcheck"
)

// TestGatewayAnnouncedOnMesh: the gateway role with the daemon's own
// parts on the in-memory network, in virtual time. A line of four nodes,
// n1 and n4 gateways: n2 sees both with its mesh path to each (1 and 2
// hops), and chooses among them; n4 is killed, and n2 stops choosing it
// within the announcement's lifetime plus one read.
func TestGatewayAnnouncedOnMesh(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, gatewayAnnouncedOnMesh)
}

func gatewayAnnouncedOnMesh(t *testing.T) {
	line := [][]int{{1}, {0, 2}, {1, 3}, {2}}
	m := startMesh(t, meshConfig{Nodes: 4, Seed: 14, Adj: line, Gateways: []int{0, 3}})
	defer stopMesh(t, m)
	ctx := context.Background()
	n2 := m.nodes[1]
	var gws []gateway.GatewayInfo
	deadline := time.Now().Add(60 * time.Second)
	for {
		gws, _ = n2.Gateways(ctx)
		if len(gws) == 2 && gws[0].MeshProbes > 0 && gws[1].MeshProbes > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("n2 does not see both gateways measured after 60 s: %+v", gws)
		}
		time.Sleep(time.Second)
	}
	hops := map[string]int{}
	for _, g := range gws {
		hops[g.Name] = g.MeshHops
		if !g.Up || !g.Usable || len(g.Offers) != 1 || g.Offers[0] != "uris" || g.R < 80 {
			t.Errorf("gateway %s: %+v", g.Name, g)
		}
	}
	if hops["n1"] != 1 || hops["n4"] != 2 {
		t.Errorf("mesh hops from n2: %v, want n1 1 and n4 2", hops)
	}
	if st := m.nodes[0].Status().Gateway; st == nil || !st.Up || st.Public != "198.51.100.1" || st.Address != "198.51.100.1" {
		t.Errorf("n1's gateway status: %+v", st)
	}
	if st := n2.Status(); st.Gateway != nil || len(st.Gateways) != 2 {
		t.Errorf("n2's status: gateway %+v, %d gateways", st.Gateway, len(st.Gateways))
	}
	n1, n4 := m.nodes[0].Router().ID(), m.nodes[3].Router().ID()
	chosen := map[any]int{}
	for range 6 {
		id, err := n2.ChooseGateway(ctx, gateway.KindURI)
		if err != nil {
			t.Fatal(err)
		}
		chosen[id]++
	}
	if chosen[n1]+chosen[n4] != 6 {
		t.Errorf("chosen: %v", chosen)
	}
	if _, err := n2.ChooseGateway(ctx, gateway.KindTrunk); err == nil {
		t.Error("a trunk call found a gateway, but none has a trunk")
	}

	m.kill(3)
	killed := time.Now()
	for {
		ok := true
		for range 4 {
			if id, err := n2.ChooseGateway(ctx, gateway.KindURI); err != nil || id != n1 {
				ok = false
			}
		}
		if ok {
			break
		}
		if time.Since(killed) > 30*time.Second {
			t.Fatalf("n2 still chooses the dead n4 30 s after its kill")
		}
		time.Sleep(500 * time.Millisecond)
	}
	gone := time.Since(killed)
	t.Logf("n4 killed: n2 chooses only n1 after %v", gone)
	// The record lives 10 s; a read every 3 s; the pings' verdict (3
	// failed) can come first.
	if gone > 13*time.Second {
		t.Errorf("the dead gateway was chosen for %v, want at most 13 s", gone)
	}
}
