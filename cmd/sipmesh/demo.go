//go:build !router

package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/sipmesh/sipmesh/phones"
)

func init() {
	register(command{name: "demo", summary: "telephone demo: phones call each other across an in-memory mesh", run: runDemo})
}

// Demo defaults.
const (
	demoNodes  = 12
	demoPhones = 8
	// demoHold is how long a call's media runs at least before it is
	// judged: the tone detector needs 200 ms, the MOS a second of packets.
	demoHold = time.Second
	// demoAudioWait bounds the wait for two-way audio after the answer.
	demoAudioWait = 10 * time.Second
)

// demoReport is the demo's result (--json prints it).
type demoReport struct {
	Nodes      int           `json:"nodes"`
	Links      int           `json:"links"`
	Diameter   int           `json:"diameter"`
	Seed       uint64        `json:"seed"`
	Loss       float64       `json:"loss"`
	RingS      float64       `json:"ring_s"` // until the ring was consistent
	Phones     []phoneInfo   `json:"phones"`
	Registered int           `json:"registered"`
	Calls      []callResult  `json:"calls"`
	Rooms      []roomResult  `json:"rooms"`
	Groups     []groupResult `json:"groups"`
	// Gateways are the gateway nodes (--gateways); KilledGateway the one
	// --kill-gateway killed halfway through the gateway calls.
	Gateways      []string `json:"gateways,omitempty"`
	KilledGateway string   `json:"killed_gateway,omitempty"`
	OK            bool     `json:"ok"` // every call had two-way audio
	WallS         float64  `json:"wall_s"`
	// Interrupted: a signal stopped the demo; the report is partial.
	Interrupted bool `json:"interrupted,omitempty"`
}

type phoneInfo struct {
	Ext  string  `json:"ext"`
	Node string  `json:"node"`
	Hz   float64 `json:"tone_hz"`
}

// callResult is one call of the demo or a test.
type callResult struct {
	From string `json:"from"`
	To   string `json:"to"` // the dialled extension
	// Feature names the service a call reached instead of a phone
	// ("echo": the echo test); empty for phone-to-phone calls.
	Feature  string `json:"feature,omitempty"`
	FromNode string `json:"from_node"`
	ToNode   string `json:"to_node"`
	Hops     int    `json:"hops"` // shortest mesh path between the nodes
	// PostDialDelayMs is INVITE → 180 (ITU-T E.721), SetupMs INVITE → 200.
	PostDialDelayMs float64 `json:"post_dial_delay_ms"`
	SetupMs         float64 `json:"setup_ms"`
	AudioAB         bool    `json:"audio_ab"` // the callee heard the caller's tone
	AudioBA         bool    `json:"audio_ba"` // the caller heard the callee's (for the echo test: its own)
	// MOS is the worse direction's ITU-T G.107 E-model estimate at the
	// receiving phone; MOSAB and MOSBA are each direction's.
	MOS   float64 `json:"mos"`
	MOSAB float64 `json:"mos_ab"`
	MOSBA float64 `json:"mos_ba"`
	// LostAB and LostBA are the RTP packets the receiving phone counted
	// lost (RFC 3550 §6.4.1 cumulative loss).
	LostAB int64  `json:"lost_ab"`
	LostBA int64  `json:"lost_ba"`
	Status int    `json:"status"` // final status of the INVITE
	Error  string `json:"error,omitempty"`
	// Direction is mesh (phone to phone), outbound (a mesh phone calls
	// the Internet) or inbound (the Internet calls a mesh phone);
	// Gateway is the gateway node the call went through, empty for mesh
	// calls (demogateways.go).
	Direction string `json:"direction"`
	Gateway   string `json:"gateway"`
}

// callee is the dialled number as the table shows it: "3246 (echo)".
func (r callResult) callee() string {
	if r.Feature != "" {
		return r.To + " (" + r.Feature + ")"
	}
	return r.To
}

// ok reports two-way audio.
func (r callResult) ok() bool { return r.AudioAB && r.AudioBA && r.Error == "" }

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo", "[flags]", `Demo starts --nodes sipmesh nodes (router, DHT, registrar, proxy, media relay,
DNS, DHCP: the real code) on the in-memory network, joined by radio links in a
random multi-hop topology, plugs --phones simulated IPv4 phones into random
nodes, registers them, and calls between the phones farthest apart and to the
echo test (3246). Every phone sends a tone of its own; tone detection proves
audio both ways. Progress goes to stderr, a summary table (or --json) to
stdout; the exit status is 1 if any call lacked two-way audio.
With --gateways N, N nodes are Internet gateways with an uplink on an emulated
Internet where example.net (NAPTR, SRV, A) has a callee, bob; then
--gateway-calls calls go out of the mesh to sip:bob@example.net and as many
come in from carol@example.net to sip:EXT@voice.example.org, the mesh's public
domain, one after the other; the table shows which gateway each used.
--kill-gateway kills the first gateway halfway through them.
The routing-only simulation is 'sipmesh sim'.`, stderr)
	nodes := fs.Int("nodes", demoNodes, "number of mesh nodes")
	nphones := fs.Int("phones", demoPhones, "number of phones")
	seed := fs.Uint64("seed", 1, "random seed (topology, phone placement, link loss)")
	loss := fs.Float64("loss", 0, "datagram loss on every mesh link, a fraction (0.02 is 2 %)")
	var calls optInt
	fs.Var(&calls, "calls", "`N` phone-to-phone calls (default phones/2)")
	echo := fs.Int("echo", 1, "calls to the echo test 3246")
	gws := fs.Int("gateways", 0, "Internet gateway nodes, with calls out of and into the mesh through them")
	gwCalls := fs.Int("gateway-calls", 4, "with --gateways: calls out of the mesh, and as many into it")
	killGW := fs.Bool("kill-gateway", false, "with --gateways 2 or more: kill one gateway halfway through the gateway calls")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	verbose := fs.Bool("v", false, "log the nodes' info messages on stderr")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	switch {
	case fs.NArg() != 0:
		return usageErrorf("unexpected arguments %q", fs.Args())
	case *nodes < 2 || *nodes > 250:
		return usageErrorf("--nodes %d: want 2 to 250", *nodes)
	case *nphones < 2 || *nphones > 500:
		return usageErrorf("--phones %d: want 2 to 500", *nphones)
	case *loss < 0 || *loss >= 0.5:
		return usageErrorf("--loss %v: want a fraction in [0, 0.5)", *loss)
	case *echo < 0 || *echo > *nphones:
		return usageErrorf("--echo %d: want 0 to --phones (%d)", *echo, *nphones)
	case calls.or(0) < 0 || calls.or(0) > 1000:
		return usageErrorf("--calls %d: want 0 to 1000", calls.v)
	case calls.or(1) == 0 && *echo == 0:
		return usageErrorf("--calls 0 and --echo 0: nothing to call")
	case *gws < 0 || *gws > maxDemoGateways || *gws >= *nodes:
		return usageErrorf("--gateways %d: want 0 to %d, fewer than --nodes", *gws, maxDemoGateways)
	case *gwCalls < 1 || *gwCalls > 100:
		return usageErrorf("--gateway-calls %d: want 1 to 100", *gwCalls)
	case *killGW && *gws < 2:
		return usageErrorf("--kill-gateway needs --gateways 2 or more: the calls after the kill go through another")
	case *gws > 0 && *nphones+2 > 25:
		return usageErrorf("--gateways with --phones %d: at most 23 phones, each with a tone of its own besides bob's and carol's", *nphones)
	}
	var log *slog.Logger
	if *verbose {
		log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	rep, err := demo(ctx, demoConfig{Mesh: meshConfig{Nodes: *nodes, Seed: *seed, Loss: *loss, Log: log},
		Phones: *nphones, Calls: calls.or(*nphones / 2), Echo: *echo, Hold: demoHold,
		Gateways: *gws, GatewayCalls: *gwCalls, KillGateway: *killGW}, newDemoLog(stderr))
	if ctx.Err() != nil {
		// A signal: what was measured so far, then exit 128+signal.
		rep.Interrupted = true
		err = context.Cause(ctx)
	} else if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		printDemo(stdout, rep)
	}
	if rep.Interrupted {
		return err
	}
	if !rep.OK {
		bad := 0
		for _, c := range rep.Calls {
			if !c.ok() {
				bad++
			}
		}
		return fmt.Errorf("demo: %d of %d calls without two-way audio", bad, len(rep.Calls))
	}
	return nil
}

// demoConfig is one run of the demo.
type demoConfig struct {
	Mesh   meshConfig
	Phones int
	Calls  int           // phone-to-phone calls, all at once
	Echo   int           // calls to the echo test, at the same time
	Hold   time.Duration // media time before a call is judged
	// Gateways is the number of gateway nodes (demogateways.go); with
	// them, GatewayCalls calls go out of the mesh and as many come in,
	// one after the other, and KillGateway kills the first gateway
	// halfway.
	Gateways     int
	GatewayCalls int
	KillGateway  bool
}

// demoLog prints progress lines with the time since the start and, on a
// terminal, a self-overwriting status line for slow steps.
type demoLog struct {
	w     io.Writer
	tty   bool
	start time.Time
	mu    sync.Mutex
	shown bool // a status line is on the screen
}

func newDemoLog(w io.Writer) *demoLog { return &demoLog{w: w, tty: isTerminal(w), start: time.Now()} }

func (l *demoLog) printf(format string, args ...any) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.clearLocked()
	fmt.Fprintf(l.w, "[%5.1fs] %s\n", time.Since(l.start).Seconds(), fmt.Sprintf(format, args...))
}

// status replaces the status line; it shows only on a terminal.
func (l *demoLog) status(format string, args ...any) {
	if l == nil || !l.tty {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.w, "\r%-72s", fmt.Sprintf("[%5.1fs] %s", time.Since(l.start).Seconds(), fmt.Sprintf(format, args...)))
	l.shown = true
}

func (l *demoLog) clearLocked() {
	if l.shown {
		fmt.Fprintf(l.w, "\r%-72s\r", "")
		l.shown = false
	}
}

// demo runs the telephone demo and returns its report. An error means the
// mesh could not be set up; failed calls are in the report.
func demo(ctx context.Context, cfg demoConfig, plog *demoLog) (rep demoReport, err error) {
	start := time.Now()
	mc := cfg.Mesh
	mc.RingGroups = map[string][]string{demoGroup: demoGroupMembers}
	mc.GatewayCount = cfg.Gateways
	m, err := newTelMesh(mc)
	if err != nil {
		return rep, err
	}
	defer func() { rep.WallS = math.Round(time.Since(start).Seconds()*100) / 100 }()
	rep = demoReport{Nodes: cfg.Mesh.Nodes, Links: len(m.links), Diameter: m.diameter(), Seed: cfg.Mesh.Seed, Loss: cfg.Mesh.Loss}
	plog.printf("mesh: %d nodes, %d radio links, diameter %d hops, %.0f %% loss per link", rep.Nodes, rep.Links, rep.Diameter, 100*rep.Loss)
	m.start(ctx)
	defer func() {
		if serr := m.stop(); serr != nil && err == nil && ctx.Err() == nil {
			err = serr
		}
	}()

	rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := m.waitRing(rctx); err != nil {
		return rep, err
	}
	rep.RingS = math.Round(time.Since(start).Seconds()*100) / 100
	plog.printf("ring formed: every node knows its successor")

	exts := make([]string, cfg.Phones)
	for i := range exts {
		exts[i] = fmt.Sprint(201 + i)
	}
	// Under loss the writes take retries: show how far they got.
	err = m.addAccounts(rctx, exts, func(done int) {
		plog.status("storing accounts in the DHT: %d of %d", done, len(exts))
	})
	if err != nil {
		return rep, err
	}
	plog.printf("accounts %s…%s stored in the DHT (signed on n1)", exts[0], exts[len(exts)-1])

	// Phones on random nodes (different ones while there are enough),
	// each with a tone of its own.
	perm := m.rng.Perm(cfg.Mesh.Nodes)
	for i, ext := range exts {
		node := perm[i%len(perm)]
		p, err := m.addPhone(node, ext, toneFor(i), phones.Policy{Mode: phones.AutoAnswer, RingDelay: 100 * time.Millisecond})
		if err != nil {
			return rep, err
		}
		rep.Phones = append(rep.Phones, phoneInfo{Ext: ext, Node: nodeName(node), Hz: p.Hz})
	}
	var wg sync.WaitGroup
	regErrs := make([]error, len(m.phones))
	for i, p := range m.phones {
		wg.Go(func() { regErrs[i] = m.register(rctx, p) })
	}
	wg.Wait()
	for i, err := range regErrs {
		if err == nil {
			rep.Registered++
		} else {
			plog.printf("phone %s on %s: registration failed: %v", m.phones[i].Ext, nodeName(m.phones[i].Node), err)
		}
	}
	plog.printf("%d of %d phones registered (each found its SIP server as sipserver.mesh through its node's DNS)", rep.Registered, len(m.phones))
	if rep.Registered < 2 {
		return rep, errors.New("demo: fewer than two phones registered")
	}

	var live []*meshPhone
	for i, p := range m.phones {
		if regErrs[i] == nil {
			live = append(live, p)
		}
	}
	plan := planCalls(m, live, cfg.Calls, cfg.Echo)
	plog.printf("placing %d calls at once (%d to the echo test)", len(plan), cfg.Echo)
	rep.Calls = make([]callResult, len(plan))
	// Every call stays up until all have been judged: they are concurrent.
	judged := make(chan struct{})
	var pending sync.WaitGroup
	pending.Add(len(plan))
	go func() { pending.Wait(); close(judged) }()
	for i, pc := range plan {
		wg.Go(func() {
			rep.Calls[i] = m.call(ctx, pc.a, pc.b, cfg.Hold, pending.Done, judged)
			r := rep.Calls[i]
			switch {
			case ctx.Err() != nil:
			case r.Error != "":
				plog.printf("  %s → %s: %s", r.From, r.callee(), r.Error)
			default:
				plog.printf("  %s → %s: answered in %.0f ms, audio %s/%s, MOS %.2f", r.From, r.callee(), r.SetupMs, yesNo(r.AudioAB), yesNo(r.AudioBA), r.MOS)
			}
		})
	}
	wg.Wait()
	rep.OK = len(rep.Calls) > 0
	for i, c := range rep.Calls {
		rep.OK = rep.OK && c.ok()
		if ctx.Err() != nil && c.Error != "" {
			rep.Calls[i].Error = "interrupted"
		}
	}
	dead := map[int]bool{} // nodes killed (--kill-gateway)
	if ctx.Err() == nil && cfg.Gateways > 0 {
		in, err := m.startInternet(toneFor(cfg.Phones), toneFor(cfg.Phones+1))
		if err != nil {
			return rep, err
		}
		names := make([]string, len(m.cfg.Gateways))
		for i, g := range m.cfg.Gateways {
			names[i] = nodeName(g)
		}
		gctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		err = m.waitGateways(gctx, live)
		cancel()
		if err != nil {
			return rep, err
		}
		plog.printf("gateways %s up; the Internet: example.net (bob) and carol calling voice.example.org", strings.Join(names, ", "))
		rep.Gateways = names
		gcalls, killed := m.gatewayCalls(ctx, in, live, cfg.GatewayCalls, cfg.KillGateway, cfg.Hold, plog)
		rep.KilledGateway = killed
		if killed != "" {
			// What follows uses the living nodes only: the killed one's
			// phones went with it.
			dead[m.cfg.Gateways[0]] = true // gatewayCalls kills the first
			live = slices.DeleteFunc(live, func(p *meshPhone) bool { return dead[p.Node] })
		}
		rep.Calls = append(rep.Calls, gcalls...)
		for _, c := range gcalls {
			rep.OK = rep.OK && c.ok()
		}
	}
	if ctx.Err() == nil {
		plog.printf("party line: up to 4 phones on different nodes dial 426")
		room := m.partyLine(ctx, live, 4, cfg.Hold)
		rep.Rooms = append(rep.Rooms, room)
		plog.printf("  426: %d members, heard all: %s %s", len(room.Members), yesNo(room.HeardAll), room.Error)
	}
	if ctx.Err() == nil && len(live) > 0 {
		plog.printf("ring group %s: %d phones on different nodes ring at once, one answers", demoGroup, len(demoGroupMembers))
		g := groupResult{Number: demoGroup, Members: demoGroupMembers}
		gctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		perm := slices.DeleteFunc(m.rng.Perm(cfg.Mesh.Nodes), func(i int) bool { return dead[i] })
		members, err := m.addGroupPhones(gctx, perm)
		cancel()
		if err != nil {
			g.Error = err.Error()
		} else {
			g = m.ringGroup(ctx, live[0], members, m.rng.IntN(len(members)))
		}
		rep.Groups = append(rep.Groups, g)
		plog.printf("  %s: answered by %s, the others stopped ringing within %.0f ms %s", g.Number, g.AnsweredBy, g.OthersStoppedMs, g.Error)
	}
	if ctx.Err() == nil {
		plog.printf("done")
	}
	return rep, ctx.Err()
}

// toneFor gives phone i a tone at least 130 Hz from every other phone's
// (the detector tells tones 100 Hz apart), inside the telephone band.
func toneFor(i int) float64 { return float64(350 + 130*(i%25)) }

func nodeName(i int) string { return fmt.Sprintf("n%d", i+1) }

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "NO"
}

// plannedCall is a caller and a callee (nil: the echo test).
type plannedCall struct{ a, b *meshPhone }

// planCalls picks calls phone → phone among ps: the pairs farthest apart
// in mesh hops first, each phone in one call while there are free ones,
// then in more, up to an even share (MaxCalls of a phone bounds it
// anyway); then echo calls from the first phones.
func planCalls(m *telMesh, ps []*meshPhone, calls, echo int) []plannedCall {
	type pair struct{ a, b, hops int }
	var pairs []pair
	for i := range ps {
		for j := i + 1; j < len(ps); j++ {
			pairs = append(pairs, pair{i, j, m.hops(ps[i].Node, ps[j].Node)})
		}
	}
	slices.SortStableFunc(pairs, func(x, y pair) int { return cmp.Compare(y.hops, x.hops) })
	var plan []plannedCall
	share := (2*calls+len(ps)-1)/max(len(ps), 1) + 1
	inCalls := make([]int, len(ps))
	taken := make([]bool, len(pairs))
	for limit := 1; limit <= share && len(plan) < calls; limit++ {
		for k, p := range pairs {
			if len(plan) == calls {
				break
			}
			if taken[k] || inCalls[p.a] >= limit || inCalls[p.b] >= limit || ps[p.a].Hz == ps[p.b].Hz {
				continue
			}
			taken[k] = true
			inCalls[p.a]++
			inCalls[p.b]++
			a, b := ps[p.a], ps[p.b]
			if len(plan)%2 == 1 {
				a, b = b, a // INVITEs in both directions across the table
			}
			plan = append(plan, plannedCall{a, b})
		}
	}
	for i := 0; i < echo && i < len(ps); i++ {
		plan = append(plan, plannedCall{a: ps[i]})
	}
	return plan
}

// call places one call from a to b (nil: the echo test 3246), holds it
// until both sides hear the other's tone and at least hold has passed (or
// demoAudioWait), records what each side heard, calls judged (if not
// nil), and hangs up once release is closed (nil: at once).
func (m *telMesh) call(ctx context.Context, a, b *meshPhone, hold time.Duration, judged func(), release <-chan struct{}) (r callResult) {
	r = callResult{From: a.Ext, FromNode: nodeName(a.Node), Direction: dirMesh}
	if judged != nil {
		var once sync.Once
		done := judged
		defer once.Do(done) // also when the call failed
		judged = func() { once.Do(done) }
	}
	target, expect := phones.EchoExtension, a.Hz
	if b != nil {
		target, expect = b.Ext, b.Hz
		r.To, r.ToNode, r.Hops = b.Ext, nodeName(b.Node), m.hops(a.Node, b.Node)
	} else {
		r.To, r.Feature, r.ToNode = phones.EchoExtension, "echo", nodeName(a.Node)
	}
	// A caller's patience: longer than a node's lookup budget (10 s, a
	// DHT read retried on a lossy mesh) plus SIP's own retransmissions
	// across the hops, so a slow setup is a slow setup, not a CANCEL.
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := a.Call(cctx, target, phones.CallOptions{ExpectHz: expect})
	if !r.setUp(c, err) {
		return r
	}
	answered := time.Now()
	var bc *phones.Call // the callee's side of the call: same Call-ID
	heard := func() (ab, ba bool, callee *phones.Call) {
		if b != nil && bc == nil {
			for _, x := range b.Calls() {
				if x.ID() == c.ID() {
					bc = x
				}
			}
		}
		ba = c.HeardRemote()
		if b == nil {
			return ba, ba, nil // the echo: what the caller heard is what came back
		}
		return bc != nil && bc.Heard(a.Hz), ba, bc
	}
	defer func() {
		if judged != nil {
			judged()
		}
		if release != nil {
			select {
			case <-release:
			case <-ctx.Done():
			}
			// Once every call has been judged, all are up at once: check
			// that each still carries both tones (the detector judges the
			// last second received) before hanging up. r is the named
			// result, so what this finds is what the caller gets.
			ab, ba, _ := heard()
			r.AudioAB, r.AudioBA = r.AudioAB && ab, r.AudioBA && ba
			if !r.ok() && r.Error == "" {
				r.Error = "no two-way audio with every call up"
			}
		}
		hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		c.Hangup(hctx)
	}()
	awaitAudio(cctx, &r, c, answered, hold, true, heard)
	return r
}

// awaitAudio polls heard every 20 ms until each side of the answered call
// c hears the other's tone and at least hold has passed since answered, or
// demoAudioWait has; then it records each direction's MOS and RTP loss
// (RFC 3550 §6.4.1) in r, as each receiving phone measured them. heard
// reports both directions and the callee's side of the call (nil until it
// is found). Where no callee side is found, mirror lets the caller's
// figures stand for both directions (the echo test: what the caller heard
// is what came back); otherwise the callee's stay zero. If cctx ends
// first, r says the call timed out.
func awaitAudio(cctx context.Context, r *callResult, c *phones.Call, answered time.Time, hold time.Duration, mirror bool, heard func() (ab, ba bool, callee *phones.Call)) {
	var bc *phones.Call
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		r.AudioAB, r.AudioBA, bc = heard()
		waited := time.Since(answered)
		if (r.AudioAB && r.AudioBA && waited >= hold) || waited >= demoAudioWait {
			break
		}
		select {
		case <-cctx.Done():
			r.Error = "call timed out"
			return
		case <-t.C:
		}
	}
	st := c.Stats()
	r.MOSBA, r.LostBA = round2(st.MOS), st.RTP.Lost
	if bc != nil {
		bs := bc.Stats()
		r.MOSAB, r.LostAB = round2(bs.MOS), bs.RTP.Lost
	} else if mirror {
		r.MOSAB, r.LostAB = r.MOSBA, r.LostBA
	}
	r.MOS = min(r.MOSAB, r.MOSBA)
	if !r.AudioAB || !r.AudioBA {
		r.Error = "no two-way audio"
	}
}

// setUp records the outcome of placing call c (nil if none came of it)
// and its setup error err: the INVITE's final status, the post-dial delay
// and setup time. It reports whether the call was answered.
func (r *callResult) setUp(c *phones.Call, err error) bool {
	if c != nil {
		r.Status = c.Status()
		r.PostDialDelayMs = ms(c.PostDialDelay())
		r.SetupMs = ms(c.SetupTime())
	}
	if err != nil {
		r.Error = err.Error()
		return false
	}
	return true
}

func ms(d time.Duration) float64 { return math.Round(float64(d)/float64(time.Millisecond)*10) / 10 }

func round2(f float64) float64 { return math.Round(f*100) / 100 }

func printDemo(w io.Writer, r demoReport) {
	if r.Nodes == 0 {
		fmt.Fprintf(w, "interrupted before the mesh was built\n")
		return
	}
	ring := fmt.Sprintf("ring formed after %.1f s", r.RingS)
	if r.RingS == 0 {
		ring = "ring not formed"
	}
	fmt.Fprintf(w, "%d nodes, %d radio links, diameter %d hops, %.0f %% loss per link, seed %d; %s\n",
		r.Nodes, r.Links, r.Diameter, 100*r.Loss, r.Seed, ring)
	if len(r.Phones) > 0 {
		fmt.Fprintf(w, "%d of %d phones registered\n", r.Registered, len(r.Phones))
	}
	if len(r.Calls) == 0 {
		if r.Interrupted {
			fmt.Fprintf(w, "interrupted after %.1f s, before any call\n", r.WallS)
		}
		return
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	// With gateways, two more columns: the call's direction and the
	// gateway it went through.
	gw := slices.ContainsFunc(r.Calls, func(c callResult) bool { return c.Direction == dirOutbound || c.Direction == dirInbound })
	extra := func(c callResult) string {
		if !gw {
			return ""
		}
		return c.Direction + "\t" + cmp.Or(c.Gateway, "-") + "\t"
	}
	head := "caller\tcallee\tnodes\thops\t"
	if gw {
		head += "direction\tgateway\t"
	}
	fmt.Fprintf(tw, "%spost-dial ms\tsetup ms\taudio A→B\taudio B→A\tMOS\t  result\n", head)
	for _, c := range r.Calls {
		res := "ok"
		if !c.ok() {
			res = c.Error
		}
		pdd := "-" // answered without ringing (the echo test)
		if c.PostDialDelayMs > 0 {
			pdd = fmt.Sprintf("%.0f", c.PostDialDelayMs)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s → %s\t%d\t%s%s\t%.0f\t%s\t%s\t%.2f\t  %s\n", c.From, c.callee(), c.FromNode, c.ToNode, c.Hops,
			extra(c), pdd, c.SetupMs, yesNo(c.AudioAB), yesNo(c.AudioBA), c.MOS, res)
	}
	tw.Flush()
	fmt.Fprint(w, demoLegend)
	if gw {
		fmt.Fprint(w, demoGatewayLegend)
		if r.KilledGateway != "" {
			fmt.Fprintf(w, "gateways %s; %s was killed halfway through the gateway calls.\n", strings.Join(r.Gateways, ", "), r.KilledGateway)
		}
	}
	ok := 0
	for _, c := range r.Calls {
		if c.ok() {
			ok++
		}
	}
	fmt.Fprintf(w, "\n%d of %d calls with two-way audio, in %.1f s\n", ok, len(r.Calls), r.WallS)
	printRooms(w, r.Rooms)
	printGroups(w, r.Groups)
	if r.Interrupted {
		fmt.Fprintf(w, "interrupted: partial results\n")
	}
}

// demoLegend explains the table's columns.
const demoLegend = `
post-dial ms: INVITE sent until the callee's phone rings (180 Ringing; ITU-T
  E.721 post-dial delay); "-" when nothing rang (the echo test answers at once).
setup ms: INVITE sent until the call is answered (200 OK).
audio: the other side's tone was detected. MOS: ITU-T G.107 E-model estimate
  of the worse direction's voice quality, 1 (bad) to 4.4 (best for G.711).
`

// demoGatewayLegend explains the gateway columns.
const demoGatewayLegend = `direction: mesh (phone to phone), outbound (to sip:bob@example.net on the
  Internet), inbound (carol@example.net to sip:EXT@voice.example.org).
gateway: the gateway node the call went through; hops: mesh hops between the
  phone's node and it.
`
