package ssrsim

import (
	"math"
	"time"

	"github.com/sipmesh/sipmesh/ssr"
)

// Report is the outcome of Run; its JSON keys are what `sipmesh sim --json`
// prints.
type Report struct {
	Nodes    int    `json:"nodes"`
	Topology string `json:"topology"`
	Seed     uint64 `json:"seed"`
	Links    int    `json:"links"`
	Diameter int    `json:"diameter_hops"`
	Phase
	HopsP50        float64 `json:"hops_p50"`
	RouteCacheP95  float64 `json:"route_cache_p95"`
	ControlPerNode float64 `json:"control_msgs_per_node_s"`
	Probes         int     `json:"probes"`
	Churn          *Churn  `json:"churn,omitempty"`
	VirtualS       float64 `json:"virtual_s"`
	WallS          float64 `json:"wall_s"`
	PeakRSSMB      float64 `json:"peak_rss_mb"`
	// Interrupted names the phase during which Scenario.Stop ended the
	// run ("converging", "settling", "churn"); what was not measured is
	// NaN (and Churn nil when the churn had not started).
	Interrupted string `json:"interrupted,omitempty"`
}

// Churn reports the second phase: nodes leave and join, the ring heals.
type Churn struct {
	Fraction float64 `json:"fraction"`
	Left     int     `json:"left"`
	Joined   int     `json:"joined"`
	Phase
}

// Phase is what the formation and the churn phase each report: how the
// ring converged, then how probes fared.
type Phase struct {
	RingConsistent bool    `json:"ring_consistent"`
	ConvergeS      float64 `json:"converge_s"`
	DeliveryExact  float64 `json:"delivery_exact"`
	DeliveryClose  float64 `json:"delivery_closest"`
	// StretchP50/P95 are the first datagrams' (no route known yet: a
	// call's INVITE); the established ones are the third datagram of
	// the same flow, sent when the answer arrived (a call's media).
	StretchP50    float64 `json:"stretch_p50"`
	StretchP95    float64 `json:"stretch_p95"`
	Established   float64 `json:"delivery_established"`
	EstStretchP50 float64 `json:"stretch_established_p50"`
	EstStretchP95 float64 `json:"stretch_established_p95"`
	// Failures counts the probes that failed, by mode and cause.
	Failures map[string]int `json:"failures,omitempty"`
}

// unmeasured marks the delivery figures as not measured (NaN).
func (p *Phase) unmeasured() {
	nan := math.NaN()
	p.DeliveryExact, p.DeliveryClose, p.StretchP50, p.StretchP95 = nan, nan, nan, nan
	p.Established, p.EstStretchP50, p.EstStretchP95 = nan, nan, nan
}

// measured records a delivery measurement.
func (p *Phase) measured(d DeliveryResult) {
	p.DeliveryExact, p.DeliveryClose = d.Exact, d.Closest
	p.StretchP50, p.StretchP95 = d.StretchP50, d.StretchP95
	p.Established, p.EstStretchP50, p.EstStretchP95 = d.Established, d.EstablishedP50, d.EstablishedP95
	p.Failures = d.Failures
}

// Scenario is what Run does.
type Scenario struct {
	Churn    float64       // fraction of nodes that leave, and as many join
	Probes   int           // probes of each mode per measurement (default min(1000, 10·nodes))
	Limit    time.Duration // give up on convergence after this (virtual), default 30 min
	Progress func(phase string, virtual time.Duration, consistent float64)
	Stop     func() bool // when it returns true, Run ends early (Ctrl-C)
	// Logf, when set, gets each phase's outcome as it ends, so a long run
	// shows its results before the report.
	Logf func(format string, args ...any)
}

func (sc Scenario) logf(format string, args ...any) {
	if sc.Logf != nil {
		sc.Logf(format, args...)
	}
}

func (sc Scenario) stopped() bool { return sc.Stop != nil && sc.Stop() }

// Run builds nothing new: it drives s through convergence, measurement,
// and optionally churn, and reports.
func (s *Sim) Run(sc Scenario) Report {
	if sc.Probes == 0 {
		sc.Probes = min(1000, 10*len(s.nodes))
	}
	if sc.Limit == 0 {
		sc.Limit = 30 * time.Minute
	}
	nan := math.NaN()
	rep := Report{Nodes: len(s.nodes), Topology: s.cfg.Topology, Seed: s.cfg.Seed, Probes: sc.Probes,
		HopsP50: nan, RouteCacheP95: nan, ControlPerNode: nan}
	rep.unmeasured()
	for _, a := range s.topo.adj {
		rep.Links += len(a)
	}
	rep.Links /= 2
	rep.Diameter = s.diameterEstimate()
	// interrupted ends a run stopped during phase with what it has.
	interrupted := func(phase string) bool {
		if !sc.stopped() {
			return false
		}
		rep.Interrupted = phase
		rep.VirtualS = math.Round(s.Now().Seconds()*1000) / 1000
		return true
	}

	conv, ok := s.converge("converging", sc)
	rep.ConvergeS, rep.RingConsistent = conv.Seconds(), ok
	if interrupted("converging") {
		return rep
	}
	sc.logf("t=%v ring consistent: %v, after %v", s.Now().Round(time.Second), ok, conv)
	// Steady state: fingers fill in; control traffic is measured here.
	c0, t0 := s.ControlFrames(), s.Now()
	s.runWithProgress("settling", s.fingerWarmup(), sc)
	if interrupted("settling") {
		return rep
	}
	rep.ControlPerNode = float64(s.ControlFrames()-c0) / float64(len(s.Live())) / (s.Now() - t0).Seconds()
	d := s.MeasureDelivery(sc.Probes, 10*time.Second, probeSettle)
	rep.measured(d)
	rep.HopsP50, rep.RouteCacheP95 = d.HopsP50, s.CacheP95()
	sc.logf("t=%v delivery exact %.4f closest %.4f established %.4f, stretch first p50 %.2f p95 %.2f, established p50 %.2f p95 %.2f, route cache p95 %.0f, %.1f control frames/node/s, failures %v",
		s.Now().Round(time.Second), d.Exact, d.Closest, d.Established, d.StretchP50, d.StretchP95, d.EstablishedP50, d.EstablishedP95, rep.RouteCacheP95, rep.ControlPerNode, d.Failures)

	if sc.Churn > 0 {
		k := int(math.Round(sc.Churn * float64(len(s.Live()))))
		ch := &Churn{Fraction: sc.Churn, Left: k, Joined: k}
		ch.unmeasured()
		rep.Churn = ch
		live := s.Live()
		s.rng.Shuffle(len(live), func(i, j int) { live[i], live[j] = live[j], live[i] })
		for _, i := range live[:k] {
			s.Kill(i)
		}
		for range k {
			s.Join()
		}
		s.Reconnect()
		conv, ok := s.converge("churn", sc)
		ch.ConvergeS, ch.RingConsistent = conv.Seconds(), ok
		if interrupted("churn") {
			return rep
		}
		sc.logf("t=%v after %d left and %d joined: ring consistent: %v, after %v", s.Now().Round(time.Second), k, k, ok, conv)
		s.runWithProgress("settling", s.fingerWarmup(), sc)
		if interrupted("settling after churn") {
			return rep
		}
		d := s.MeasureDelivery(sc.Probes, 10*time.Second, probeSettle)
		ch.measured(d)
	}
	rep.VirtualS = math.Round(s.Now().Seconds()*1000) / 1000
	return rep
}

func (s *Sim) fingerWarmup() time.Duration {
	p := s.cfg.Params.FingerInterval
	if p == 0 {
		p = ssr.DefaultParams.FingerInterval
	}
	return p + 5*time.Second
}

// converge runs until the ring is consistent, checking every virtual
// second, and returns the time it took.
func (s *Sim) converge(phase string, sc Scenario) (time.Duration, bool) {
	t0 := s.Now()
	for s.Now()-t0 < sc.Limit && !sc.stopped() {
		s.RunFor(time.Second)
		c := s.Consistency()
		if sc.Progress != nil {
			sc.Progress(phase, s.Now(), c)
		}
		if c == 1 {
			return s.Now() - t0, true
		}
	}
	return s.Now() - t0, false
}

func (s *Sim) runWithProgress(phase string, d time.Duration, sc Scenario) {
	for end := s.Now() + d; s.Now() < end && !sc.stopped(); {
		s.RunFor(min(5*time.Second, end-s.Now()))
		if sc.Progress != nil {
			sc.Progress(phase, s.Now(), math.NaN())
		}
	}
}

// diameterEstimate is the eccentricity of a BFS from a far node (a
// two-sweep lower bound, exact on trees and close on meshes).
func (s *Sim) diameterEstimate() int {
	alive := s.aliveMask()
	dist := make([]int32, len(s.nodes))
	dist = bfs(s.topo.adj, alive, 0, dist, nil)
	far := 0
	for i, d := range dist {
		if d > dist[far] {
			far = i
		}
	}
	dist = bfs(s.topo.adj, alive, far, dist, nil)
	m := int32(0)
	for _, d := range dist {
		m = max(m, d)
	}
	return int(m)
}

// probeSettle is how long a measurement waits after the last probe: a frame
// lives at most 255 hops of a few milliseconds each, and so does the
// unreachable report about it.
const probeSettle = 5 * time.Second
