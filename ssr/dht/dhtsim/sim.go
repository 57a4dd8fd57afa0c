// Package dhtsim runs the real DHT (package dht) on the real SSR core in
// virtual time (package ssrsim): registrations are written through random
// nodes, nodes die and join, and the report says whether every binding can
// still be found and how long that took. It is what `sipmesh sim dht`
// prints.
//
// Measuring "resolvable". An AOR counts as resolvable in a measurement when
// every one of Samples gets for it, each issued from a different random live
// node, returned the binding that was written (same writer, same value).
// Checking every (node, AOR) pair would cost nodes × AORs lookups; since a
// get travels to the key's owner whichever node asks, the outcome depends
// on the asking node only through the route, and a few random askers per
// AOR sample that. `lost` is not sampled: it is ground truth over the
// stores of all live nodes.
package dhtsim

import (
	"crypto/ed25519"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/sipmesh/sipmesh/internal/stats"
	"github.com/sipmesh/sipmesh/memnet"
	"github.com/sipmesh/sipmesh/ssr"
	"github.com/sipmesh/sipmesh/ssr/dht"
	"github.com/sipmesh/sipmesh/ssr/ssrsim"
)

// ValueFunc makes the value stored for AOR number i, registered through
// node: what the registrar would write.
type ValueFunc func(i int, aor string, node ssr.NodeID, rng *rand.Rand) []byte

// Config describes a run.
type Config struct {
	Nodes    int
	AORs     int
	Kill     int // live nodes killed at random after the writes
	Join     int // nodes joined at the same time
	Seed     uint64
	Topology string // ssrsim topology, default random
	Params   dht.Params
	SSR      ssr.Params
	// Value generates binding values; nil uses Binding.
	Value ValueFunc
	// TTL of the bindings (default 1 h: nothing expires during a run).
	TTL time.Duration
	// Samples is the number of random asking nodes per AOR in the final
	// measurements (default 3); recovery rounds use one.
	Samples int
	// Limit bounds the wait for recovery (virtual, default 10 min).
	Limit    time.Duration
	Progress func(phase string, virtual time.Duration, done float64)
	// Logf, if set, receives a line per phase outcome (for stderr).
	Logf func(format string, args ...any)
	Stop func() bool
	// Attack, if its Fraction is set, makes some of the nodes eclipse
	// attackers (attack.go).
	Attack Attack
}

// Report is the outcome; its JSON keys are what `sipmesh sim dht --json`
// prints.
type Report struct {
	Nodes            int     `json:"nodes"`
	AORs             int     `json:"aors"`
	Killed           int     `json:"killed"`
	Joined           int     `json:"joined"`
	Seed             uint64  `json:"seed"`
	Replicas         int     `json:"replicas"`
	RingConvergeS    float64 `json:"ring_converge_s"`
	PutsOK           int     `json:"puts_ok"`
	PutsFailed       int     `json:"puts_failed"`
	ValueBytesP50    int     `json:"value_bytes_p50"`
	ResolvableBefore float64 `json:"resolvable_before"`
	ResolvableAfter  float64 `json:"resolvable_after"`
	Samples          int     `json:"samples_per_aor"`
	// RecoveryS: from the churn to the end of the first round in which
	// every AOR with a live copy left resolved; -1: not within Limit.
	RecoveryS      float64 `json:"recovery_s"`
	RecoveryRounds int     `json:"recovery_rounds"`
	Lost           int     `json:"lost"`
	// AllCopiesKilled counts AORs whose every copy, right before the
	// churn, was on a node that was killed: no store can keep those.
	AllCopiesKilled int     `json:"all_copies_killed"`
	UnderReplicated int     `json:"under_replicated"` // fewer than replicas live copies at the end
	RecordsP95      float64 `json:"records_per_node_p95"`
	LookupHopsP50   float64 `json:"lookup_hops_p50"`
	LookupMsP50     float64 `json:"lookup_ms_p50"`
	LookupMsP95     float64 `json:"lookup_ms_p95"`
	Gets            int     `json:"gets"`
	GetsFailed      int     `json:"gets_failed"`
	HandoffsSent    uint64  `json:"handoffs_sent"`
	HandoffsAcked   uint64  `json:"handoffs_acked"`
	Pushed          uint64  `json:"replica_pushes"`
	GetsServed      uint64  `json:"gets_served"`     // by owners
	ConsultsServed  uint64  `json:"consults_served"` // owners asking replicas
	SyncRounds      uint64  `json:"sync_rounds"`
	SyncMismatches  uint64  `json:"sync_mismatches"`
	VirtualS        float64 `json:"virtual_s"`
	WallS           float64 `json:"wall_s"`
	PeakRSSMB       float64 `json:"peak_rss_mb"`
	// The eclipse attack (attack.go); zero without one.
	EclipseDefence  bool `json:"eclipse_defence"`
	Attackers       int  `json:"attackers,omitempty"`
	Targets         int  `json:"targets,omitempty"`
	TargetsAttacked int  `json:"targets_attacked,omitempty"`
	AttackCluster   int  `json:"attack_cluster,omitempty"` // attacker nodes per attacked target
	AttackSilent    bool `json:"attack_silent,omitempty"`
	// UnresolvableTargets is the fraction of the Targets that honest
	// askers could not resolve (any of the samples failed), before and
	// after the churn; -1 when not measured.
	UnresolvableTargets      float64 `json:"unresolvable_targets"`
	UnresolvableTargetsAfter float64 `json:"unresolvable_targets_after"`
	WalkSteps                uint64  `json:"walk_steps"`
	WalkFound                uint64  `json:"walk_found"` // gets answered past the owner
	// Interrupted names the phase during which Config.Stop ended the run
	// ("ring", "write", "measure", "recover", …); the measurements not
	// reached are -1 (Killed and Joined 0 when the churn was not reached).
	Interrupted string `json:"interrupted,omitempty"`
}

// Sim is a DHT on a simulated mesh.
type Sim struct {
	cfg   Config
	ss    *ssrsim.Sim
	clock *memnet.VirtualClock
	rng   *rand.Rand
	nodes []*node // by ssrsim index

	aors    []aor
	waiting map[opKey]*op
	ops     []*op
	gone    dht.Metrics // of dead nodes, summed

	evil    map[int]bool // attacker nodes by ssrsim index
	targets int          // AORs 0..targets-1 are the attack's targets
	plan    attackPlan
}

type aor struct {
	key    string
	value  []byte
	writer ed25519.PublicKey
	ok     bool // the put was acknowledged
}

type opKey struct {
	node int
	id   uint64
}

type op struct {
	aor  int
	done bool
	res  dht.Result
}

// node is one simulated router's DHT and its driver state.
type node struct {
	s     *Sim
	idx   int
	d     *dht.Node
	alive bool
	evil  bool // an eclipse attacker (attack.go)
	queue []ssr.Event
	drain bool
	timer memnet.Timer
	at    time.Time
}

// New builds the mesh and a DHT node on every router.
func New(cfg Config) (*Sim, error) {
	if cfg.Topology == "" {
		cfg.Topology = "random"
	}
	if cfg.Value == nil {
		cfg.Value = Binding
	}
	if cfg.TTL == 0 {
		cfg.TTL = time.Hour
	}
	if cfg.Samples <= 0 {
		cfg.Samples = 3
	}
	if cfg.Limit == 0 {
		cfg.Limit = 10 * time.Minute
	}
	if cfg.AORs < 1 {
		return nil, fmt.Errorf("dhtsim: need at least one AOR, got %d", cfg.AORs)
	}
	if cfg.Kill < 0 || cfg.Join < 0 || cfg.Kill > cfg.Nodes-2 {
		return nil, fmt.Errorf("dhtsim: cannot kill %d of %d nodes (and join %d)", cfg.Kill, cfg.Nodes, cfg.Join)
	}
	plan, err := planAttack(&cfg)
	if err != nil {
		return nil, err
	}
	ss, err := ssrsim.New(ssrsim.Config{Nodes: cfg.Nodes, Topology: cfg.Topology, Seed: cfg.Seed, Params: cfg.SSR, ChooseID: plan.chooseID})
	if err != nil {
		return nil, err
	}
	s := &Sim{
		cfg: cfg, ss: ss, clock: ss.Clock(),
		rng:     rand.New(rand.NewPCG(cfg.Seed, 0xd47)),
		waiting: make(map[opKey]*op),
		evil:    plan.evil,
		targets: cfg.Attack.Targets,
		plan:    plan,
	}
	ss.App = s.event
	for i := range ss.Len() {
		s.addNode(i)
	}
	return s, nil
}

func (s *Sim) addNode(i int) {
	var seed [32]byte
	for j := range 4 {
		v := s.rng.Uint64()
		for k := range 8 {
			seed[8*j+k] = byte(v >> (8 * k))
		}
	}
	n := &node{s: s, idx: i, alive: true, evil: s.evil[i]}
	n.d = dht.New(s.ss.Node(i).ID(), ed25519.NewKeyFromSeed(seed[:]), s.cfg.Params, n, s.rng.Uint64())
	for len(s.nodes) <= i {
		s.nodes = append(s.nodes, nil)
	}
	s.nodes[i] = n
	if !n.evil {
		n.schedule(s.clock.Now()) // an attacker's DHT node never runs
	}
}

// event is the ssrsim App hook: it runs inside a node's frame handling, so
// it only queues; a clock event at the same instant hands the queue to the
// DHT.
func (s *Sim) event(i int, ev ssr.Event) {
	n := s.nodes[i]
	if n == nil || !n.alive {
		return
	}
	switch ev := ev.(type) {
	case ssr.Datagram:
		if ev.DstPort != dht.Port {
			return
		}
	case ssr.Unreachable:
		if ev.DstPort != dht.Port {
			return
		}
	default:
		return
	}
	n.queue = append(n.queue, ev)
	if !n.drain {
		n.drain = true
		s.clock.AfterFunc(0, n.handle)
	}
}

func (n *node) handle() {
	n.drain = false
	q := n.queue
	n.queue = nil
	if !n.alive {
		return
	}
	now := n.s.clock.Now()
	if n.evil {
		n.s.deny(n, q)
		return
	}
	for _, ev := range q {
		switch ev := ev.(type) {
		case ssr.Datagram:
			n.d.HandleDatagram(now, ev)
		case ssr.Unreachable:
			n.d.HandleUnreachable(now, ev)
		}
	}
	n.schedule(now)
}

// Send implements dht.Env.
func (n *node) Send(now time.Time, target ssr.NodeID, mode ssr.Mode, payload []byte) {
	_ = n.s.ss.Send(n.idx, target, mode, dht.Port, dht.Port, payload)
}

// Ring implements dht.Env.
func (n *node) Ring() (succ, pred []ssr.NodeID) {
	sn := n.s.ss.Node(n.idx)
	return sn.Successors(), sn.Predecessors()
}

// Complete implements dht.Env.
func (n *node) Complete(r dht.Result) {
	k := opKey{n.idx, r.ID}
	if o := n.s.waiting[k]; o != nil {
		delete(n.s.waiting, k)
		o.done, o.res = true, r
	}
}

// schedule arms the node's timer for its next deadline if that moved.
func (n *node) schedule(now time.Time) {
	d := n.d.NextDeadline()
	if d.IsZero() || d.Before(now) {
		d = now
	}
	if n.timer != nil && !d.Before(n.at) {
		return
	}
	if n.timer != nil {
		n.timer.Stop()
	}
	n.at = d
	n.timer = n.s.clock.AfterFunc(d.Sub(now), func() {
		n.timer = nil
		if !n.alive {
			return
		}
		t := n.s.clock.Now()
		n.d.Tick(t)
		n.schedule(t)
	})
}

func (s *Sim) live() []int { return s.ss.Live() }

// honest are the live nodes that are not attackers: the writers, askers
// and churn victims.
func (s *Sim) honest() []int {
	return slices.DeleteFunc(s.ss.Live(), func(i int) bool { return s.evil[i] })
}

func (s *Sim) logf(format string, args ...any) {
	if s.cfg.Logf != nil {
		s.cfg.Logf("t=%5.1fs "+format, append([]any{s.ss.Now().Seconds()}, args...)...)
	}
}

func (s *Sim) stopped() bool { return s.cfg.Stop != nil && s.cfg.Stop() }

func (s *Sim) progress(phase string, done float64) {
	if s.cfg.Progress != nil {
		s.cfg.Progress(phase, s.ss.Now(), done)
	}
}

// Run executes the scenario: converge, write, measure, churn, recover,
// measure.
func (s *Sim) Run() Report {
	cfg := s.cfg
	rep := Report{Nodes: cfg.Nodes, AORs: cfg.AORs, Seed: cfg.Seed,
		Replicas: dht.DefaultParams.Replicas, Samples: cfg.Samples, RecoveryS: -1,
		ResolvableBefore: -1, ResolvableAfter: -1, LookupHopsP50: -1, LookupMsP50: -1, LookupMsP95: -1,
		EclipseDefence: cfg.Params.Walk >= 0, UnresolvableTargets: -1, UnresolvableTargetsAfter: -1}
	if len(s.evil) > 0 {
		rep.Attackers, rep.Targets, rep.TargetsAttacked = len(s.evil), s.targets, s.plan.attacked
		rep.AttackCluster, rep.AttackSilent = s.plan.cluster, cfg.Attack.Silent
	}
	if cfg.Params.Replicas > 0 {
		rep.Replicas = cfg.Params.Replicas
	}
	var hops, ms []float64
	// interrupted ends a run stopped during phase with what it has.
	interrupted := func(phase string) bool {
		if !s.stopped() {
			return false
		}
		rep.Interrupted = phase
		s.finish(&rep, hops, ms)
		return true
	}
	conv, ok := s.converge("ring")
	rep.RingConvergeS = conv.Seconds()
	if interrupted("ring") {
		return rep
	}
	s.logf("ring consistent: %v", ok)
	s.runFor("settle", 10*time.Second)
	if interrupted("settle") {
		return rep
	}

	s.write(&rep)
	if interrupted("write") {
		return rep
	}
	s.logf("%d bindings written, %d failed", rep.PutsOK, rep.PutsFailed)
	s.runFor("replicate", 3*s.syncInterval())
	s.settleWalks()
	if interrupted("replicate") {
		return rep
	}
	f, bad := s.measureBad("measure", cfg.Samples, &rep, &hops, &ms)
	if interrupted("measure") {
		return rep
	}
	rep.ResolvableBefore = f
	rep.UnresolvableTargets = s.unresolvable(bad)
	if rep.UnresolvableTargets >= 0 {
		s.logf("eclipse attack: %.4f of %d targets unresolvable", rep.UnresolvableTargets, s.targets)
	}
	s.logf("resolvable before churn: %.4f", rep.ResolvableBefore)
	rep.Killed, rep.Joined = cfg.Kill, cfg.Join

	// Churn: random live nodes die (adjacent or not, as chance has it);
	// new ones join at random places. Attackers stay.
	live := s.honest()
	s.rng.Shuffle(len(live), func(i, j int) { live[i], live[j] = live[j], live[i] })
	rep.AllCopiesKilled = s.allCopiesOn(live[:cfg.Kill])
	for _, i := range live[:cfg.Kill] {
		s.kill(i)
	}
	for range cfg.Join {
		s.addNode(s.ss.Join())
	}
	s.ss.Reconnect()
	t0 := s.ss.Now()
	for s.ss.Now()-t0 < cfg.Limit && !s.stopped() {
		rep.RecoveryRounds++
		var h, m []float64
		f, bad := s.measureBad("recover", 1, nil, &h, &m)
		if s.stopped() {
			break // a partial round proves nothing
		}
		// Done when every AOR that still has a copy somewhere resolves:
		// the lost ones (every copy died) never will.
		copies := s.copies()
		unrecoverable, pending := 0, 0
		for k, b := range bad {
			switch {
			case k < s.targets && len(s.evil) > 0:
				// An attacked AOR: what the attack achieves is measured
				// after the recovery, not waited for.
			case copies[k] == 0:
				unrecoverable++
			case b:
				pending++
			}
		}
		s.logf("recovery round %d: %.4f resolvable (%d unresolved with a live copy, %d lost), ring consistency %.3f",
			rep.RecoveryRounds, f, pending, unrecoverable, s.ss.Consistency())
		if pending == 0 {
			rep.RecoveryS = math.Round((s.ss.Now()-t0).Seconds()*10) / 10
			break
		}
		s.runFor("recover", 2*time.Second)
	}
	s.runFor("settle", s.syncInterval())
	if interrupted("recover") {
		return rep
	}
	f, bad = s.measureBad("measure", cfg.Samples, &rep, &hops, &ms)
	if interrupted("measure") {
		return rep
	}
	rep.ResolvableAfter = f
	rep.UnresolvableTargetsAfter = s.unresolvable(bad)
	s.logf("resolvable after churn: %.4f", rep.ResolvableAfter)
	s.finish(&rep, hops, ms)
	return rep
}

// finish fills in the report's lookup statistics, ground truth, store
// sizes and counters: the parts that are known whenever the run ends.
func (s *Sim) finish(rep *Report, hops, ms []float64) {
	rep.LookupHopsP50 = quantile(hops, 0.5)
	rep.LookupMsP50 = quantile(ms, 0.5)
	rep.LookupMsP95 = quantile(ms, 0.95)

	rep.Lost, rep.UnderReplicated = s.groundTruth(rep.Replicas)
	var recs []float64
	for _, i := range s.honest() {
		recs = append(recs, float64(s.nodes[i].d.Len()))
	}
	rep.RecordsP95 = quantile(recs, 0.95)
	for _, n := range s.nodes {
		if n.alive {
			s.addMetrics(rep, n.d.Metrics())
		}
	}
	s.addMetrics(rep, s.gone)
	rep.VirtualS = s.ss.Now().Seconds()
}

func (s *Sim) addMetrics(rep *Report, m dht.Metrics) {
	rep.WalkSteps += m.WalkSteps
	rep.WalkFound += m.WalkFound
	rep.HandoffsSent += m.HandoffsSent
	rep.HandoffsAcked += m.HandoffsAcked
	rep.Pushed += m.Pushed
	rep.GetsServed += m.GetsServed
	rep.ConsultsServed += m.ConsultsServed
	rep.SyncRounds += m.SyncRounds
	rep.SyncMismatches += m.SyncMismatches
}

func (s *Sim) syncInterval() time.Duration {
	if s.cfg.Params.SyncInterval > 0 {
		return s.cfg.Params.SyncInterval
	}
	return dht.DefaultParams.SyncInterval
}

func (s *Sim) kill(i int) {
	n := s.nodes[i]
	m := n.d.Metrics()
	g := &s.gone
	g.HandoffsSent += m.HandoffsSent
	g.HandoffsAcked += m.HandoffsAcked
	g.Pushed += m.Pushed
	g.GetsServed += m.GetsServed
	g.ConsultsServed += m.ConsultsServed
	g.SyncRounds += m.SyncRounds
	g.SyncMismatches += m.SyncMismatches
	g.WalkSteps += m.WalkSteps
	g.WalkFound += m.WalkFound
	n.alive = false
	if n.timer != nil {
		n.timer.Stop()
		n.timer = nil
	}
	s.ss.Kill(i)
}

func (s *Sim) converge(phase string) (time.Duration, bool) {
	t0 := s.ss.Now()
	for s.ss.Now()-t0 < 30*time.Minute && !s.stopped() {
		s.ss.RunFor(time.Second)
		c := s.ss.Consistency()
		s.progress(phase, c)
		if c == 1 {
			return s.ss.Now() - t0, true
		}
	}
	return s.ss.Now() - t0, false
}

func (s *Sim) runFor(phase string, d time.Duration) {
	for end := s.ss.Now() + d; s.ss.Now() < end && !s.stopped(); {
		s.ss.RunFor(min(time.Second, end-s.ss.Now()))
		s.progress(phase, math.NaN())
	}
}

// rate is how many requests per virtual second the whole mesh issues
// during writes and measurements: some per node, as a busy registrar
// would see.
func (s *Sim) rate() float64 { return max(200, 2*float64(len(s.live()))) }

// issue spreads count requests over virtual time at rate(), calling f for
// each, then waits until all have an outcome.
func (s *Sim) issue(phase string, count int, f func(k int)) {
	rate := s.rate()
	if phase == "recover" {
		// Recovery rounds check every AOR within about 3 s so that
		// recovery_s is not coarser than that.
		rate = max(rate, float64(count)/3)
	}
	step := time.Duration(float64(time.Second) / rate)
	const batch = 10 * time.Millisecond
	per := max(1, int(batch/max(step, 1)))
	for k := 0; k < count && !s.stopped(); {
		for j := 0; j < per && k < count; j++ {
			f(k)
			k++
		}
		s.ss.RunFor(time.Duration(per) * step)
		s.progress(phase, float64(k)/float64(count))
	}
	for w := 0; len(s.waiting) > 0 && w < 1200 && !s.stopped(); w++ {
		s.ss.RunFor(100 * time.Millisecond)
	}
}

func (s *Sim) pickLive(live []int) int { return live[s.rng.IntN(len(live))] }

// write puts every AOR's binding through a random node.
func (s *Sim) write(rep *Report) {
	live := s.honest()
	s.aors = make([]aor, s.cfg.AORs)
	ops := make([]*op, s.cfg.AORs)
	var sizes []float64
	s.issue("write", s.cfg.AORs, func(k int) {
		i := s.pickLive(live)
		n := s.nodes[i]
		name := aorName(k)
		a := aor{key: aorKey(k), writer: n.d.PublicKey()}
		a.value = s.cfg.Value(k, name, n.d.ID(), s.rng)
		sizes = append(sizes, float64(len(a.value)))
		s.aors[k] = a
		now := s.clock.Now()
		id, err := n.d.Put(now, a.key, a.value, s.cfg.TTL)
		n.schedule(now)
		o := &op{aor: k}
		ops[k] = o
		if err != nil {
			o.done, o.res.Err = true, err
			return
		}
		s.waiting[opKey{i, id}] = o
	})
	// A stopped run issued only a prefix of the writes: the rest are not
	// AORs of this run.
	n := 0
	for n < len(ops) && ops[n] != nil {
		n++
	}
	ops, s.aors = ops[:n], s.aors[:n]
	for k, o := range ops {
		switch {
		case o.done && o.res.Err == nil:
			s.aors[k].ok = true
			rep.PutsOK++
		case o.done || !s.stopped():
			rep.PutsFailed++
		}
		// else: still in flight when the run was stopped
	}
	rep.ValueBytesP50 = int(quantile(sizes, 0.5))
}

// measure gets every AOR from samples distinct random live nodes and
// returns the fraction of AORs for which every get found the binding.
func (s *Sim) measure(phase string, samples int, rep *Report, hops, ms *[]float64) float64 {
	f, _ := s.measureBad(phase, samples, rep, hops, ms)
	return f
}

// measureBad is measure that also returns which AORs failed.
func (s *Sim) measureBad(phase string, samples int, rep *Report, hops, ms *[]float64) (float64, []bool) {
	live := s.honest()
	samples = min(samples, len(live))
	type get struct{ aor, node int }
	var gets []get
	for k := range s.aors {
		picked := make([]int, 0, samples)
		for len(picked) < samples {
			i := s.pickLive(live)
			if !slices.Contains(picked, i) {
				picked = append(picked, i)
			}
		}
		for _, i := range picked {
			gets = append(gets, get{k, i})
		}
	}
	ops := make([]*op, len(gets))
	s.issue(phase, len(gets), func(j int) {
		g := gets[j]
		n := s.nodes[g.node]
		now := s.clock.Now()
		o := &op{aor: g.aor}
		ops[j] = o
		id, err := n.d.Get(now, s.aors[g.aor].key)
		n.schedule(now)
		if err != nil {
			o.done, o.res.Err = true, err
			return
		}
		s.waiting[opKey{g.node, id}] = o
	})
	clear(s.waiting)
	bad := make([]bool, len(s.aors))
	for _, o := range ops {
		if o == nil {
			break // not issued: the run was stopped
		}
		ok := o.done && o.res.Err == nil && s.found(o.aor, o.res.Records)
		if !ok {
			bad[o.aor] = true
		} else {
			*hops = append(*hops, float64(o.res.Hops))
			*ms = append(*ms, float64(o.res.Latency)/float64(time.Millisecond))
		}
		if rep != nil {
			rep.Gets++
			if !ok {
				rep.GetsFailed++
			}
		}
	}
	good := 0
	for _, b := range bad {
		if !b {
			good++
		}
	}
	return float64(good) / float64(len(s.aors)), bad
}

// found reports whether recs hold AOR k's binding as written.
func (s *Sim) found(k int, recs []dht.Record) bool {
	a := &s.aors[k]
	for _, r := range recs {
		if r.Writer.Equal(a.writer) && string(r.Value) == string(a.value) {
			return true
		}
	}
	return false
}

// copies counts, over the stores of all live nodes, the copies of every
// AOR's binding as written.
func (s *Sim) copies() []int {
	now := s.clock.Now()
	byKey := make(map[string]int, len(s.aors))
	for k := range s.aors {
		byKey[s.aors[k].key] = k
	}
	n := make([]int, len(s.aors))
	for _, i := range s.live() {
		for _, r := range s.nodes[i].d.Records(now) {
			if k, ok := byKey[r.Key]; ok && s.found(k, []dht.Record{r}) {
				n[k]++
			}
		}
	}
	return n
}

// allCopiesOn counts the AORs whose every copy is on one of nodes.
func (s *Sim) allCopiesOn(nodes []int) int {
	now := s.clock.Now()
	byKey := make(map[string]int, len(s.aors))
	for k := range s.aors {
		byKey[s.aors[k].key] = k
	}
	on := make([]bool, len(s.nodes))
	for _, i := range nodes {
		on[i] = true
	}
	inside, outside := make([]int, len(s.aors)), make([]int, len(s.aors))
	for _, i := range s.live() {
		for _, r := range s.nodes[i].d.Records(now) {
			if k, ok := byKey[r.Key]; ok && s.found(k, []dht.Record{r}) {
				if on[i] {
					inside[k]++
				} else {
					outside[k]++
				}
			}
		}
	}
	n := 0
	for k := range s.aors {
		if inside[k] > 0 && outside[k] == 0 {
			n++
		}
	}
	return n
}

// groundTruth counts AORs with no copy of their binding left on a live
// node and AORs with fewer than r copies.
func (s *Sim) groundTruth(r int) (lost, under int) {
	for _, c := range s.copies() {
		if c == 0 {
			lost++
		}
		if c < r {
			under++
		}
	}
	return lost, under
}

// quantile is stats.Quantile with -1 for "no data": the report is JSON,
// which has no NaN.
func quantile(v []float64, q float64) float64 {
	if x := stats.Quantile(v, q); !math.IsNaN(x) {
		return x
	}
	return -1
}

// Binding is the default value generator: a registration binding as the
// registrar stores it, {AOR, node, contact, expires, instance}, here as
// compact JSON of realistic size (about 200 bytes).
func Binding(i int, aor string, node ssr.NodeID, rng *rand.Rand) []byte {
	ip := fmt.Sprintf("10.%d.%d.%d", rng.IntN(256), rng.IntN(256), 2+rng.IntN(250))
	inst := fmt.Sprintf("%08x-%04x-%04x-%04x-%012x", rng.Uint32(), rng.IntN(1<<16), rng.IntN(1<<16), rng.IntN(1<<16), rng.Uint64()&(1<<48-1))
	user := aor[4:]
	if at := slices.Index([]byte(user), '@'); at > 0 {
		user = user[:at]
	}
	return fmt.Appendf(nil, `{"aor":%q,"node":%q,"contact":"<sip:%s@%s:5060;transport=udp;rinstance=%016x>","expires":3600,"instance":"<urn:uuid:%s>"}`,
		aor, node.String(), user, ip, rng.Uint64(), inst)
}
