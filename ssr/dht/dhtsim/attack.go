package dhtsim

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/sipmesh/sipmesh/ssr"
	"github.com/sipmesh/sipmesh/ssr/dht"
)

// Attack is an eclipse attack on the DHT (issue 19): a fraction of the
// nodes are the attacker's, with IDs of its choice (it ground keys until
// their hashes fell there: ~N tries per ID on an N-node ring, cheap),
// placed around the ring positions of the first Targets AORs. They route
// like every node (routing attacks are out of scope: link security binds
// IDs to keys, and a relay that drops is a different attack), but their
// DHT answers "not found" to every get and "stored" to every write,
// storing nothing (dht.DenyAnswer), or stays silent. The report says
// which fraction of the targets honest askers can no longer resolve.
type Attack struct {
	Fraction float64 // of Nodes, rounded, at least 1 node when > 0
	Targets  int     // AORs attacked: the first Targets written (≤ AORs)
	// Cluster is the number of attacker nodes per attacked target; 0
	// chooses the best against the placement (planAttack).
	Cluster int
	Silent  bool // no answer at all instead of "not found" / "stored"
}

// attackPlan is where the attacker's nodes go.
type attackPlan struct {
	evil              map[int]bool
	ids               map[int]ssr.NodeID
	cluster, attacked int
}

func (p attackPlan) chooseID(i int, random ssr.NodeID) ssr.NodeID {
	if id, ok := p.ids[i]; ok {
		return id
	}
	return random
}

// aorKey is the DHT key of AOR number k.
func aorKey(k int) string { return "aor:" + aorName(k) }

func aorName(k int) string { return fmt.Sprintf("sip:%d@mesh", 1000+k) }

// planAttack picks the attacker's nodes and their IDs. The best attack
// depends on the placement (dht package doc, "Eclipse"):
//
//   - Rank-only placement (Params.Walk < 0): one node with the ID just
//     at a key owns it; the writer's STORE reaches it first and it fans
//     out nothing, so the two honest nodes below never get a copy. One
//     node per target: as many targets as nodes.
//   - With the walk, a node that answers is stepped over; the attacker
//     can only make the walk give up, by putting more than Walk nodes
//     before the first honest holder. Its best is its whole budget on as
//     few targets as that needs (all on one target when the budget is
//     smaller), packed right below the key, so the walk meets every one.
//   - Silent nodes are stepped over blindly, a quarter of a gap at a
//     time: the attacker covers the arc with silent nodes a quarter of the
//     mean gap apart, 4·Arc + 1 nodes per target.
func planAttack(cfg *Config) (attackPlan, error) {
	a := cfg.Attack
	if a.Fraction == 0 && a.Targets == 0 && a.Cluster == 0 && !a.Silent {
		return attackPlan{}, nil
	}
	budget := int(math.Round(a.Fraction * float64(cfg.Nodes)))
	switch {
	case a.Fraction <= 0 || a.Fraction > 0.5:
		return attackPlan{}, fmt.Errorf("dhtsim: attack fraction %v, want (0, 0.5]", a.Fraction)
	case a.Targets < 1 || a.Targets > cfg.AORs:
		return attackPlan{}, fmt.Errorf("dhtsim: %d attack targets, want 1..%d (the AORs)", a.Targets, cfg.AORs)
	case a.Cluster < 0:
		return attackPlan{}, fmt.Errorf("dhtsim: attack cluster %d, want ≥ 0", a.Cluster)
	}
	budget = max(budget, 1)
	p := cfg.Params
	walk, arc := p.Walk, p.Arc
	if walk == 0 {
		walk = dht.DefaultParams.Walk
	}
	if arc == 0 {
		arc = dht.DefaultParams.Arc
	}
	cluster := a.Cluster
	if cluster == 0 {
		switch {
		case walk < 0:
			cluster = 1
		case a.Silent:
			cluster = min(budget, 4*arc+1)
		default:
			cluster = min(budget, walk+1)
		}
	}
	cluster = min(cluster, budget)
	plan := attackPlan{evil: make(map[int]bool), ids: make(map[int]ssr.NodeID), cluster: cluster}
	plan.attacked = min(a.Targets, budget/cluster)
	rng := rand.New(rand.NewPCG(cfg.Seed, 0xec1))
	idx := rng.Perm(cfg.Nodes)[:budget]
	gap := uint64(math.MaxUint64) / uint64(cfg.Nodes)
	next := 0
	for t := range plan.attacked {
		pos := dht.KeyOf(aorKey(t))
		for j := range cluster {
			id := pos - ssr.NodeID(j) // the owner, then every node a walk meets first
			if a.Silent {
				id = pos - ssr.NodeID(uint64(j)*(gap/4))
			}
			plan.ids[idx[next]] = id
			next++
		}
	}
	for _, i := range idx {
		plan.evil[i] = true // the rest keep random IDs and deny what they own
	}
	return plan, nil
}

// deny is an attacker node's DHT: DenyAnswer, or silence.
func (s *Sim) deny(n *node, q []ssr.Event) {
	if s.cfg.Attack.Silent {
		return
	}
	for _, ev := range q {
		d, ok := ev.(ssr.Datagram)
		if !ok {
			continue
		}
		if ans := dht.DenyAnswer(nil, d.Payload); ans != nil {
			_ = s.ss.Send(n.idx, d.Src, ssr.Exact, dht.Port, dht.Port, ans)
		}
	}
}

// unresolvable is the fraction of the attack's targets marked bad, -1
// without an attack.
func (s *Sim) unresolvable(bad []bool) float64 {
	if len(s.evil) == 0 || s.targets == 0 {
		return -1
	}
	n := 0
	for k := range min(s.targets, len(bad)) {
		if bad[k] {
			n++
		}
	}
	return float64(n) / float64(s.targets)
}

// settleWalks lets the writes' walks past an attacker's nodes finish
// before the measurement (each walk step is a round trip), for at most
// two minutes.
func (s *Sim) settleWalks() {
	if len(s.evil) == 0 {
		return
	}
	for t0 := s.ss.Now(); s.ss.Now()-t0 < 2*time.Minute && !s.stopped(); {
		busy := 0
		for _, i := range s.honest() {
			busy += s.nodes[i].d.Walking()
		}
		if busy == 0 {
			return
		}
		s.runFor("replicate", time.Second)
	}
}
