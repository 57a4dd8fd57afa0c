package dhtsim

import (
	"testing"

	"github.com/sipmesh/sipmesh/ssr/dht"
)

// TestEclipseAttack: 1 % of 300 nodes are an attacker's, with IDs of its
// choice around the ring positions of 20 AORs, denying every get and
// dropping every write. Without the defence each of its nodes takes one
// AOR away; with it (the default), no target may become unresolvable,
// whatever the attacker does: answer "not found" from a cluster packed
// below one key, spread one node per key, or stay silent.
func TestEclipseAttack(t *testing.T) {
	cases := []struct {
		name    string
		walk    int
		cluster int
		silent  bool
		want    float64 // fraction of the targets unresolvable
	}{
		{"rank only", -1, 0, false, 3.0 / 20},
		{"defence, packed cluster", 0, 0, false, 0},
		{"defence, spread", 0, 1, false, 0},
		{"defence, silent", 0, 0, true, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := Config{Nodes: 300, AORs: 60, Seed: 3, Samples: 2,
				Params: dht.Params{Walk: c.walk},
				Attack: Attack{Fraction: 0.01, Targets: 20, Cluster: c.cluster, Silent: c.silent}}
			s, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			rep := s.Run()
			t.Logf("%+v", rep)
			if rep.Attackers != 3 || rep.TargetsAttacked == 0 {
				t.Fatalf("%d attackers on %d targets, want 3 on at least 1", rep.Attackers, rep.TargetsAttacked)
			}
			if rep.UnresolvableTargets != c.want {
				t.Errorf("%.4f of the targets unresolvable, want %.4f", rep.UnresolvableTargets, c.want)
			}
			if rep.UnresolvableTargetsAfter != c.want {
				t.Errorf("%.4f of the targets unresolvable after the churn, want %.4f", rep.UnresolvableTargetsAfter, c.want)
			}
			// The AORs nobody targeted resolve (an attacker node that
			// happens to own one is stepped over too).
			if c.walk >= 0 && rep.ResolvableBefore != 1 {
				t.Errorf("resolvable before %.4f, want 1", rep.ResolvableBefore)
			}
		})
	}
}
