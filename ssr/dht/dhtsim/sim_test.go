package dhtsim

import (
	"testing"
	"time"
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

// TestStopInEveryPhase stops runs in the middle of each phase (as Ctrl-C
// does through Config.Stop): Run returns a partial report naming the
// phase, without a panic, counting no write still in flight as failed and
// claiming no measurement it did not finish.
func TestStopInEveryPhase(t *testing.T) {
	for _, phase := range []string{"ring", "write", "measure", "recover"} {
		t.Run(phase, func(t *testing.T) {
			stop := false
			cfg := Config{Nodes: 30, AORs: 300, Kill: 3, Join: 3, Seed: 2, Samples: 2,
				Progress: func(p string, _ time.Duration, done float64) {
					// Half-way through the phase's requests (or its
					// first second, for the ring).
					if p == phase && (p == "ring" || done >= 0.5) {
						stop = true
					}
				},
				Stop: func() bool { return stop },
			}
			s, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			rep := s.Run()
			if !stop || rep.Interrupted != phase {
				t.Fatalf("stopped %v, report interrupted during %q; want %q", stop, rep.Interrupted, phase)
			}
			if rep.PutsFailed != 0 {
				t.Errorf("%d puts counted failed; the run was only stopped", rep.PutsFailed)
			}
			if phase == "write" && (rep.PutsOK == 0 || rep.PutsOK >= cfg.AORs) {
				t.Errorf("stopped half-way through the writes, %d of %d acknowledged", rep.PutsOK, cfg.AORs)
			}
			if rep.ResolvableAfter != -1 {
				t.Errorf("resolvable after churn %v, want -1 (not measured)", rep.ResolvableAfter)
			}
			if phase != "recover" && rep.ResolvableBefore != -1 {
				t.Errorf("resolvable before churn %v, want -1 (not measured)", rep.ResolvableBefore)
			}
			if phase == "recover" && (rep.RecoveryS != -1 || rep.Killed != 3) {
				t.Errorf("recovery %v s after %d killed; want -1 after 3", rep.RecoveryS, rep.Killed)
			}
		})
	}
}
