//go:build !router

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/sipmesh/sipmesh/ssr/ssrsim"
)

func init() {
	register(command{name: "sim", summary: "simulate SSR routing on N in-memory nodes in virtual time", run: runSim,
		subcommands: []string{"dht"}})
}

// simTopologies are the topology names ssrsim knows.
var simTopologies = []string{"line", "grid", "random"}

func runSim(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "dht" {
		return inSubcommand("sim dht", runSimDHT(ctx, args[1:], stdout, stderr))
	}
	fs := newFlagSet("sim", "[flags]", `Sim runs the real SSR code for --nodes routers on the in-memory network in
virtual time, waits for a consistent ring, measures delivery of random exact
and closest (DHT) datagrams and their stretch, and with --churn lets that
fraction of nodes leave and as many join, then measures again. Each exact
datagram starts a flow, as a call does: it is answered, and the source sends
again on the route the answer taught it; stretch is reported for the first
datagram and for the established flow.
'sipmesh help sim dht' describes the DHT simulation.`, stderr)
	nodes := fs.Int("nodes", 100, "number of nodes")
	topo := fs.String("topology", "random", "line, grid or random (geometric radio mesh)")
	seed := fs.Uint64("seed", 1, "random seed (same seed, same run)")
	churn := fs.Float64("churn", 0, "fraction of nodes that leave, and as many join, after convergence")
	var probes optInt
	fs.Var(&probes, "probes", "`N` probes per mode per measurement (default min(1000, 10*nodes))")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile (go tool pprof) to this file")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usageErrorf("unexpected arguments %q", fs.Args())
	}
	switch {
	case *nodes < 2:
		return usageErrorf("--nodes %d: want at least 2", *nodes)
	case !slices.Contains(simTopologies, *topo):
		return usageErrorf("--topology %q: want line, grid or random", *topo)
	case *churn < 0 || *churn >= 1 || math.IsNaN(*churn):
		return usageErrorf("--churn %v: want a fraction in [0, 1)", *churn)
	case probes.set && probes.v < 1:
		return usageErrorf("--probes %d: want at least 1", probes.v)
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	return simulate(ctx, ssrsim.Config{Nodes: *nodes, Topology: *topo, Seed: *seed},
		ssrsim.Scenario{Churn: *churn, Probes: probes.or(0)}, *asJSON, stdout, stderr)
}

// simulate runs a scenario with a progress line on stderr and prints the
// report on stdout, as a table or as JSON.
func simulate(ctx context.Context, cfg ssrsim.Config, sc ssrsim.Scenario, asJSON bool, stdout, stderr io.Writer) error {
	start := time.Now()
	// A simulation's heap is millions of long-lived cache entries that the
	// garbage collector would otherwise re-mark every time it doubles;
	// trading memory for CPU is right for a batch job on a workstation.
	defer debug.SetGCPercent(debug.SetGCPercent(simGCPercent))
	s, err := ssrsim.New(cfg)
	if err != nil {
		return err
	}
	// A line before the long silence of a big run, on a pipe too.
	fmt.Fprintf(stderr, "%d nodes built; simulating (Ctrl-C stops with partial results)\n", cfg.Nodes)
	bar := newProgress(stderr)
	sc.Progress = func(phase string, virt time.Duration, consistent float64) {
		if ctx.Err() != nil {
			return
		}
		bar.update(phase, virt, consistent)
	}
	sc.Stop = func() bool { return ctx.Err() != nil }
	sc.Logf = func(format string, args ...any) {
		bar.done()
		fmt.Fprintf(stderr, format+"\n", args...)
	}
	rep := s.Run(sc)
	bar.done()
	rep.WallS = math.Round(time.Since(start).Seconds()*100) / 100
	rep.PeakRSSMB = peakRSSMB()
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(jsonSafe(rep)); err != nil {
			return err
		}
	} else {
		printReport(stdout, rep)
	}
	// Interrupted: the partial report is out; exit 128+signal.
	return context.Cause(ctx)
}

// simGCPercent is GOGC while a simulation runs.
const simGCPercent = 400

// peakRSSMB is the process's peak resident set (Linux reports KiB).
func peakRSSMB() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return math.Round(float64(ru.Maxrss)/1024*10) / 10
}

// jsonSafe replaces NaN (no data, e.g. no exact probe delivered) with -1:
// encoding/json refuses NaN.
func jsonSafe(r ssrsim.Report) ssrsim.Report {
	fix := func(f *float64) {
		if math.IsNaN(*f) {
			*f = -1
		}
	}
	fixPhase := func(p *ssrsim.Phase) {
		fix(&p.DeliveryExact)
		fix(&p.DeliveryClose)
		fix(&p.StretchP50)
		fix(&p.StretchP95)
		fix(&p.Established)
		fix(&p.EstStretchP50)
		fix(&p.EstStretchP95)
	}
	fixPhase(&r.Phase)
	fix(&r.HopsP50)
	fix(&r.RouteCacheP95)
	fix(&r.ControlPerNode)
	if r.Churn != nil {
		c := *r.Churn
		fixPhase(&c.Phase)
		r.Churn = &c
	}
	return r
}

func printReport(w io.Writer, r ssrsim.Report) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "nodes\t%d (%s topology, %d links, diameter ≈ %d hops, seed %d)\n", r.Nodes, r.Topology, r.Links, r.Diameter, r.Seed)
	fmt.Fprintf(tw, "ring consistent\t%v after %.0f s (virtual)\n", r.RingConsistent, r.ConvergeS)
	if !math.IsNaN(r.DeliveryExact) {
		fmt.Fprintf(tw, "delivery exact\t%.4f  (%d probes)\n", r.DeliveryExact, r.Probes)
		fmt.Fprintf(tw, "delivery closest\t%.4f  (%d probes)\n", r.DeliveryClose, r.Probes)
		fmt.Fprintf(tw, "stretch p50 / p95\t%.2f / %.2f  (first datagram; hops p50 %.0f)\n", r.StretchP50, r.StretchP95, r.HopsP50)
		fmt.Fprintf(tw, "established flows\t%.4f delivered, stretch %.2f / %.2f  (after the answer)\n", r.Established, r.EstStretchP50, r.EstStretchP95)
		fmt.Fprintf(tw, "route cache p95\t%.0f entries\n", r.RouteCacheP95)
		fmt.Fprintf(tw, "control traffic\t%.2f frames/node/s\n", r.ControlPerNode)
		printFailures(tw, "failed probes", r.Failures)
	}
	if c := r.Churn; c != nil && !math.IsNaN(c.DeliveryExact) {
		fmt.Fprintf(tw, "churn\t%d left, %d joined (%.0f %%)\n", c.Left, c.Joined, 100*c.Fraction)
		fmt.Fprintf(tw, "  ring consistent\t%v after %.0f s (virtual)\n", c.RingConsistent, c.ConvergeS)
		fmt.Fprintf(tw, "  delivery exact / closest\t%.4f / %.4f\n", c.DeliveryExact, c.DeliveryClose)
		fmt.Fprintf(tw, "  stretch p50 / p95\t%.2f / %.2f  (first datagram)\n", c.StretchP50, c.StretchP95)
		fmt.Fprintf(tw, "  established flows\t%.4f delivered, stretch %.2f / %.2f\n", c.Established, c.EstStretchP50, c.EstStretchP95)
		printFailures(tw, "  failed probes", c.Failures)
	}
	fmt.Fprintf(tw, "time\t%.0f s virtual in %.1f s wall, peak RSS %.0f MB\n", r.VirtualS, r.WallS, r.PeakRSSMB)
	if r.Interrupted != "" {
		fmt.Fprintf(tw, "interrupted\tduring %s: partial results\n", r.Interrupted)
	}
	tw.Flush()
}

func printFailures(w io.Writer, label string, f map[string]int) {
	keys := slices.Sorted(maps.Keys(f))
	for _, k := range keys {
		fmt.Fprintf(w, "%s\t%d %s\n", label, f[k], k)
	}
}

// progress draws one self-overwriting status line on stderr, at most a few
// times a second, when stderr is a terminal; into a pipe or a file it
// writes nothing (the phase outcomes still come as lines).
type progress struct {
	w    io.Writer
	tty  bool
	last time.Time
	used bool
}

func newProgress(w io.Writer) *progress { return &progress{w: w, tty: isTerminal(w)} }

func (p *progress) update(phase string, virt time.Duration, consistent float64) {
	if !p.tty || time.Since(p.last) < 200*time.Millisecond {
		return
	}
	p.last, p.used = time.Now(), true
	line := fmt.Sprintf("%-10s t=%5.0fs", phase, virt.Seconds())
	if !math.IsNaN(consistent) {
		const width = 30
		k := int(consistent * width)
		line += fmt.Sprintf(" ring [%s%s] %5.1f%%", strings.Repeat("#", k), strings.Repeat(".", width-k), 100*consistent)
	}
	fmt.Fprintf(p.w, "\r%-72s", line)
}

func (p *progress) done() {
	if p.used {
		fmt.Fprintf(p.w, "\r%-72s\r", "")
	}
}
