//go:build !router

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sipmesh/sipmesh/registrar"
	"github.com/sipmesh/sipmesh/ssr"
	"github.com/sipmesh/sipmesh/ssr/dht/dhtsim"
)

// runSimDHT is `sipmesh sim dht`: the replicated registrar database under
// churn, in virtual time (package dhtsim).
func runSimDHT(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("sim dht", "[flags]", `Sim dht runs the real SSR and DHT code for --nodes routers in virtual time:
it waits for a consistent ring, writes --aors registration bindings through
random nodes, measures how many resolve, kills --kill random nodes and joins
--join new ones, measures every few seconds until every AOR resolves again,
and reports. An AOR counts as resolvable when gets from several random
nodes all find its binding; "lost" is checked over every live node's store.

With --attack F, that fraction of the nodes are an eclipse attacker's: IDs
of its choice around the ring positions of the first --targets AORs, placed
as well as the placement allows (--attack-cluster nodes per target; by
default the best against it), answering "not found" to every get and
"stored" to every write (or nothing, --attack-silent). The report adds the
fraction of the targets honest nodes cannot resolve. --eclipse-defence=false
runs the placement without the defence, for comparison.`, stderr)
	nodes := fs.Int("nodes", 100, "number of nodes")
	aors := fs.Int("aors", 2000, "registration bindings written")
	var kill, join optInt
	fs.Var(&kill, "kill", "`N` random live nodes killed after the writes (default 10 % of --nodes)")
	fs.Var(&join, "join", "`N` nodes joined at the same time (default as many as --kill)")
	seed := fs.Uint64("seed", 1, "random seed (same seed, same run)")
	topo := fs.String("topology", "random", "line, grid or random (geometric radio mesh)")
	samples := fs.Int("samples", 3, "random asking nodes per AOR in a measurement")
	replicas := fs.Int("replicas", 3, "copies of each record")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	attack := fs.Float64("attack", 0, "fraction `F` of the nodes that are eclipse attackers (0: none)")
	targets := fs.Int("targets", 100, "AORs the attacker targets (with --attack)")
	cluster := fs.Int("attack-cluster", 0, "attacker nodes per target (0: the best against the placement)")
	silent := fs.Bool("attack-silent", false, "attackers do not answer at all")
	defence := fs.Bool("eclipse-defence", true, "walk past the owner and keep copies within the arc (false: the placement before it)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usageErrorf("unexpected arguments %q", fs.Args())
	}
	if *nodes < 2 {
		return usageErrorf("--nodes %d: want at least 2", *nodes)
	}
	// Defaults scale with the mesh: 10 % churn (100 nodes: 10).
	nkill := kill.or(min(int(math.Round(0.1*float64(*nodes))), *nodes-2))
	njoin := join.or(nkill)
	switch {
	case *aors < 1:
		return usageErrorf("--aors %d: want at least 1", *aors)
	case nkill < 0 || nkill > *nodes-2:
		return usageErrorf("--kill %d: want 0 to %d (--nodes minus 2)", nkill, *nodes-2)
	case njoin < 0:
		return usageErrorf("--join %d: want ≥ 0", njoin)
	case !slices.Contains(simTopologies, *topo):
		return usageErrorf("--topology %q: want line, grid or random", *topo)
	case *replicas < 1 || *replicas > 5:
		return usageErrorf("--replicas %d: want 1..5", *replicas)
	case *samples < 1:
		return usageErrorf("--samples %d: want ≥ 1", *samples)
	case *attack < 0 || *attack > 0.5:
		return usageErrorf("--attack %v: want 0 to 0.5", *attack)
	case *attack > 0 && (*targets < 1 || *targets > *aors):
		return usageErrorf("--targets %d: want 1 to %d (--aors)", *targets, *aors)
	case *cluster < 0:
		return usageErrorf("--attack-cluster %d: want ≥ 0", *cluster)
	}
	start := time.Now()
	bar := newProgress(stderr)
	cfg := dhtsim.Config{
		Nodes: *nodes, AORs: *aors, Kill: nkill, Join: njoin, Seed: *seed, Topology: *topo, Samples: *samples,
		Progress: func(phase string, virt time.Duration, done float64) {
			if ctx.Err() == nil {
				bar.updateDone(phase, virt, done)
			}
		},
		Logf: func(format string, args ...any) {
			bar.done()
			fmt.Fprintf(stderr, format+"\n", args...)
		},
		Stop: func() bool { return ctx.Err() != nil },
	}
	cfg.Params.Replicas = *replicas
	if !*defence {
		cfg.Params.Walk = -1
	}
	if *attack > 0 {
		cfg.Attack = dhtsim.Attack{Fraction: *attack, Targets: *targets, Cluster: *cluster, Silent: *silent}
	}
	cfg.Value = registrarBinding
	s, err := dhtsim.New(cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "%d nodes built; simulating (Ctrl-C stops with partial results)\n", *nodes)
	rep := s.Run()
	bar.done()
	rep.WallS = math.Round(time.Since(start).Seconds()*100) / 100
	rep.PeakRSSMB = peakRSSMB()
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		printDHTReport(stdout, rep)
	}
	// Interrupted: the partial report is out; exit 128+signal.
	return context.Cause(ctx)
}

// updateDone is update with a generic "done" bar: the fraction of the
// ring that is consistent while converging, of requests issued otherwise.
func (p *progress) updateDone(phase string, virt time.Duration, done float64) {
	if !p.tty || time.Since(p.last) < 200*time.Millisecond {
		return
	}
	p.last, p.used = time.Now(), true
	line := fmt.Sprintf("%-10s t=%5.0fs", phase, virt.Seconds())
	if !math.IsNaN(done) {
		const width = 30
		k := int(done * width)
		line += fmt.Sprintf(" [%s%s] %5.1f%%", strings.Repeat("#", k), strings.Repeat(".", width-k), 100*done)
	}
	fmt.Fprintf(p.w, "\r%-72s", line)
}

func printDHTReport(w io.Writer, r dhtsim.Report) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	// A stopped run (r.Interrupted) prints the phases it reached.
	ring := "consistent"
	if r.Interrupted == "ring" {
		ring = "not consistent"
	}
	fmt.Fprintf(tw, "nodes\t%d (seed %d), ring %s after %.0f s (virtual)\n", r.Nodes, r.Seed, ring, r.RingConvergeS)
	wrote := r.Interrupted != "ring" && r.Interrupted != "settle"
	if wrote {
		fmt.Fprintf(tw, "bindings\t%d written (%d failed), value p50 %d bytes, %d copies each\n", r.PutsOK, r.PutsFailed, r.ValueBytesP50, r.Replicas)
	}
	if r.Attackers > 0 {
		how := "deny gets, drop writes"
		if r.AttackSilent {
			how = "silent"
		}
		fmt.Fprintf(tw, "eclipse attack\t%d attacker nodes (%s), %d per target on %d of %d targets; defence %s\n",
			r.Attackers, how, r.AttackCluster, r.TargetsAttacked, r.Targets, onOff(r.EclipseDefence))
	}
	if r.ResolvableBefore >= 0 {
		fmt.Fprintf(tw, "resolvable before\t%.4f  (%d random nodes per AOR)\n", r.ResolvableBefore, r.Samples)
	}
	if r.UnresolvableTargets >= 0 {
		fmt.Fprintf(tw, "targets unresolvable\t%.4f before churn, %.4f after  (walk steps %d, gets answered past the owner %d)\n",
			r.UnresolvableTargets, r.UnresolvableTargetsAfter, r.WalkSteps, r.WalkFound)
	}
	if r.Interrupted == "" || r.RecoveryRounds > 0 {
		fmt.Fprintf(tw, "churn\t%d killed, %d joined\n", r.Killed, r.Joined)
		switch {
		case r.RecoveryS >= 0:
			fmt.Fprintf(tw, "recovery\t%.1f s (virtual, %d rounds)\n", r.RecoveryS, r.RecoveryRounds)
		case r.Interrupted != "":
			fmt.Fprintf(tw, "recovery\tnot yet (%d rounds)\n", r.RecoveryRounds)
		default:
			fmt.Fprintf(tw, "recovery\tnot within the limit (%d rounds)\n", r.RecoveryRounds)
		}
	}
	if r.ResolvableAfter >= 0 {
		fmt.Fprintf(tw, "resolvable after\t%.4f\n", r.ResolvableAfter)
	}
	if wrote && r.Interrupted != "write" {
		fmt.Fprintf(tw, "lost\t%d  (every copy on a killed node: %d; under-replicated at the end: %d)\n", r.Lost, r.AllCopiesKilled, r.UnderReplicated)
		fmt.Fprintf(tw, "records per node p95\t%.0f\n", r.RecordsP95)
	}
	if r.Gets > 0 {
		fmt.Fprintf(tw, "lookup\thops p50 %.0f, latency p50 %.0f ms, p95 %.0f ms (%d gets, %d failed)\n", r.LookupHopsP50, r.LookupMsP50, r.LookupMsP95, r.Gets, r.GetsFailed)
	}
	fmt.Fprintf(tw, "hand-offs\t%d sent, %d acknowledged; %d replica pushes\n", r.HandoffsSent, r.HandoffsAcked, r.Pushed)
	fmt.Fprintf(tw, "time\t%.0f s virtual in %.1f s wall, peak RSS %.0f MB\n", r.VirtualS, r.WallS, r.PeakRSSMB)
	if r.Interrupted != "" {
		fmt.Fprintf(tw, "interrupted\tduring %s: partial results\n", r.Interrupted)
	}
	tw.Flush()
}

// simEpoch is the virtual clock's start in dhtsim (bindings expire an
// hour after it).
var simEpoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// registrarBinding is the value the registrar stores for a phone that
// registered through node (registrar.DHTLocation): the node's BindingList
// for the AOR, here with the one binding a desk phone's REGISTER creates
// (RFC 5626 instance, a LAN contact, the NAT source).
func registrarBinding(i int, aor string, node ssr.NodeID, rng *rand.Rand) []byte {
	user := strings.TrimSuffix(strings.TrimPrefix(aor, "sip:"), "@mesh")
	ip := netip.AddrFrom4([4]byte{10, byte(64 + rng.IntN(64)), byte(rng.IntN(256)), byte(2 + rng.IntN(250))})
	b := registrar.Binding{
		AOR: aor, Node: node, Q: -1,
		Contact:   fmt.Sprintf("sip:%s@%s:5060;transport=udp", user, ip),
		Expires:   simEpoch.Add(time.Hour),
		Updated:   simEpoch,
		Instance:  fmt.Sprintf("<urn:uuid:%08x-%04x-%04x-%04x-%012x>", rng.Uint32(), rng.IntN(1<<16), rng.IntN(1<<16), rng.IntN(1<<16), rng.Uint64()&(1<<48-1)),
		RegID:     1,
		CallID:    fmt.Sprintf("%016x@%s", rng.Uint64(), ip),
		CSeq:      uint32(1 + i%100),
		Source:    netip.AddrPortFrom(ip, 5060),
		Transport: "udp",
		UserAgent: "Yealink SIP-T46U 108.86.0.45",
	}
	v, err := registrar.BindingList{b}.MarshalBinary()
	if err != nil {
		panic(fmt.Sprintf("encoding a simulated binding: %v", err)) // a bug in this function
	}
	return v
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}
