package ssrsim

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/ssr"
)

// TestClosestAgainstBruteForce checks closest-node delivery — the DHT's
// primitive — against a brute-force reference (the live node with the
// largest ID ≤ key, wrapping) over many random topologies and join/leave
// sequences, as wireguard-go checks its allowedips trie against a list.
func TestClosestAgainstBruteForce(t *testing.T) {
	closestAgainstBruteForce(t, 40, Config{})
}

// TestClosestWithLinkAuth: the same with link security on every node (IDs
// from keys, handshakes, sealed frames), authenticated only and encrypted;
// afterwards no node refused a genuine frame.
func TestClosestWithLinkAuth(t *testing.T) {
	for _, enc := range []bool{false, true} {
		t.Run(fmt.Sprintf("encrypt=%v", enc), func(t *testing.T) {
			closestAgainstBruteForce(t, 6, Config{Auth: true, Encrypt: enc})
		})
	}
}

func closestAgainstBruteForce(t *testing.T, seeds uint64, base Config) {
	kinds := []string{"random", "grid", "line"}
	for seed := uint64(1); seed <= seeds; seed++ {
		rng := rand.New(rand.NewPCG(seed, 7))
		n := 8 + rng.IntN(40)
		kind := kinds[int(seed)%len(kinds)]
		t.Run(fmt.Sprintf("seed%d-%s-%d", seed, kind, n), func(t *testing.T) {
			cfg := base
			cfg.Nodes, cfg.Topology, cfg.Seed = n, kind, seed
			s, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			sc := Scenario{Limit: 5 * time.Minute}
			for round := 0; round < 4; round++ {
				if _, ok := s.converge("test", sc); !ok {
					t.Fatalf("round %d: ring not consistent after %v (%.3f)", round, sc.Limit, s.Consistency())
				}
				s.RunFor(s.fingerWarmup())
				checkClosest(t, s, rng, 40)
				// A join/leave step: up to 3 leave, up to 3 join.
				live := s.Live()
				for k := rng.IntN(min(3, len(live)-4) + 1); k > 0; k-- {
					live = s.Live()
					s.Kill(live[rng.IntN(len(live))])
				}
				for k := rng.IntN(4); k > 0; k-- {
					s.Join()
				}
				s.Reconnect()
			}
			if st := s.AuthStats(); st.BadMAC+st.Replayed+st.WrongSender+st.BadHandshake != 0 || cfg.Auth && st.Handshakes == 0 {
				t.Errorf("link security: %+v", st)
			}
		})
	}
}

func checkClosest(t *testing.T, s *Sim, rng *rand.Rand, count int) {
	t.Helper()
	live := s.Live()
	var ps []*probe
	for i := 0; i < count; i++ {
		key := ssr.NodeID(rng.Uint64())
		if i%4 == 0 { // exactly a node's ID, and one past it: the edges
			key = s.nodes[live[rng.IntN(len(live))]].id + ssr.NodeID(i%8/4)
		}
		ps = append(ps, s.Probe(live[rng.IntN(len(live))], ssr.Closest, key))
		s.RunFor(50 * time.Millisecond)
	}
	s.RunFor(5 * time.Second)
	for _, p := range ps {
		if p.got != p.want {
			t.Errorf("closest %v from n%d: delivered at %d, want n%d (%v); report: %q", p.key, p.src, p.got, p.want, s.nodes[p.want].id, p.why)
		}
	}
}

// TestSimReport runs the scenario of `sipmesh sim` on a small mesh with
// churn and checks the report's claims.
func TestSimReport(t *testing.T) {
	s, err := New(Config{Nodes: 150, Topology: "random", Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	r := s.Run(Scenario{Churn: 0.05, Probes: 300})
	if !r.RingConsistent || r.DeliveryExact < 0.999 || r.DeliveryClose < 0.999 {
		t.Errorf("before churn: %+v", r)
	}
	if c := r.Churn; c == nil || !c.RingConsistent || c.DeliveryExact < 0.99 || c.DeliveryClose < 0.99 {
		t.Errorf("after churn: %+v", c)
	}
	if r.StretchP50 < 1 || r.RouteCacheP95 <= 0 || r.ControlPerNode <= 0 || r.Diameter <= 0 {
		t.Errorf("implausible report: %+v", r)
	}
	// Every delivered exact probe started a flow: answered, and sent
	// again on the route the answer taught its source.
	phases := []*Phase{&r.Phase}
	if r.Churn != nil {
		phases = append(phases, &r.Churn.Phase)
	}
	for _, p := range phases {
		if p.Established < 0.99 || p.EstStretchP50 < 1 || p.EstStretchP95 < p.EstStretchP50 {
			t.Errorf("established flows: delivered %v, stretch %v / %v", p.Established, p.EstStretchP50, p.EstStretchP95)
		}
	}
}

func TestBadConfig(t *testing.T) {
	if _, err := New(Config{Nodes: 10, Topology: "torus"}); err == nil {
		t.Error("unknown topology accepted")
	}
	if _, err := New(Config{Nodes: 1, Topology: "line"}); err == nil {
		t.Error("one node accepted")
	}
}

// TestStopInEveryPhase stops runs during each phase, as Ctrl-C does
// through Scenario.Stop: the report names the phase and leaves what it
// did not measure NaN rather than a made-up zero.
func TestStopInEveryPhase(t *testing.T) {
	for _, phase := range []string{"converging", "settling", "churn"} {
		t.Run(phase, func(t *testing.T) {
			s, err := New(Config{Nodes: 40, Topology: "random", Seed: 3})
			if err != nil {
				t.Fatal(err)
			}
			stop := false
			r := s.Run(Scenario{Churn: 0.1, Probes: 50,
				Progress: func(p string, _ time.Duration, _ float64) { stop = stop || p == phase },
				Stop:     func() bool { return stop }})
			if r.Interrupted != phase {
				t.Fatalf("interrupted during %q, want %q", r.Interrupted, phase)
			}
			measured := phase == "churn"
			if !math.IsNaN(r.DeliveryExact) != measured || !math.IsNaN(r.ControlPerNode) != measured {
				t.Errorf("delivery %v, control %v; measured before the stop: %v", r.DeliveryExact, r.ControlPerNode, measured)
			}
			if c := r.Churn; measured && (c == nil || !math.IsNaN(c.DeliveryExact)) {
				t.Errorf("churn phase %+v, want its delivery not measured", c)
			}
		})
	}
}
