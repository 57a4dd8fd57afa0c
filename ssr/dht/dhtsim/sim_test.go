package dhtsim

import (
	"testing"
)

// TestChurn runs the real SSR and DHT code on a random radio mesh: 10 % of
// the nodes die at random and as many join; no binding may be lost and
// every one must resolve again from random nodes.
func TestChurn(t *testing.T) {
	cases := []struct {
		name                  string
		nodes, aors, kill, jn int
		seed                  uint64
	}{
		{"60 nodes", 60, 500, 6, 6, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := New(Config{Nodes: c.nodes, AORs: c.aors, Kill: c.kill, Join: c.jn, Seed: c.seed, Samples: 2})
			if err != nil {
				t.Fatal(err)
			}
			rep := s.Run()
			t.Logf("%+v", rep)
			if rep.PutsOK != c.aors {
				t.Errorf("%d of %d puts acknowledged", rep.PutsOK, c.aors)
			}
			if rep.ResolvableBefore != 1 {
				t.Errorf("resolvable before churn %.4f, want 1", rep.ResolvableBefore)
			}
			if rep.Lost != 0 {
				t.Errorf("%d AORs lost", rep.Lost)
			}
			if rep.ResolvableAfter != 1 || rep.RecoveryS < 0 {
				t.Errorf("resolvable after churn %.4f (recovery %v s), want 1", rep.ResolvableAfter, rep.RecoveryS)
			}
			if rep.UnderReplicated != 0 {
				t.Errorf("%d AORs with fewer than %d copies at the end", rep.UnderReplicated, rep.Replicas)
			}
			if rep.HandoffsAcked == 0 || rep.LookupHopsP50 <= 0 {
				t.Errorf("no hand-offs or no lookup hops measured: %+v", rep)
			}
		})
	}
}

// TestHeavyChurn kills a third of the nodes at once: AORs whose every
// copy died are gone, but the DHT must lose nothing else, and everything
// else must resolve again.
func TestHeavyChurn(t *testing.T) {
	s, err := New(Config{Nodes: 48, AORs: 300, Kill: 16, Join: 4, Seed: 4, Samples: 2})
	if err != nil {
		t.Fatal(err)
	}
	rep := s.Run()
	t.Logf("%+v", rep)
	if rep.Lost != rep.AllCopiesKilled {
		t.Errorf("%d AORs lost, but only %d had every copy on a killed node", rep.Lost, rep.AllCopiesKilled)
	}
	if want := 1 - float64(rep.Lost)/float64(rep.AORs); rep.ResolvableAfter != want || rep.RecoveryS < 0 {
		t.Errorf("resolvable after %.4f (recovery %v s), want %.4f", rep.ResolvableAfter, rep.RecoveryS, want)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []Config{
		{Nodes: 1, AORs: 1},
		{Nodes: 10, AORs: 0},
		{Nodes: 10, AORs: 1, Kill: 9},
		{Nodes: 10, AORs: 1, Join: -1},
	} {
		if _, err := New(c); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}
