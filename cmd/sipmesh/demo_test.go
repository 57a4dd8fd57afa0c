//go:build !router

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/memnet"
	"github.com/sipmesh/sipmesh/phones"
)

// tailWriter keeps the last max lines written to it.
type tailWriter struct {
	mu    sync.Mutex
	max   int
	lines []string
}

func (w *tailWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lines = append(w.lines, string(b))
	if len(w.lines) > w.max {
		w.lines = slices.Delete(w.lines, 0, len(w.lines)-w.max)
	}
	return len(b), nil
}

func (w *tailWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(w.lines, "")
}

// startMesh runs a telephone mesh for a test and waits for its ring;
// the caller stops it (stopMesh).
func startMesh(t *testing.T, cfg meshConfig) *telMesh {
	t.Helper()
	if cfg.Log == nil {
		// The nodes' warnings, shown if the test fails: a call's error
		// says what the caller got, the node's log why.
		w := &tailWriter{max: 200}
		cfg.Log = slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("the nodes' last warnings:\n%s", w)
			}
		})
	}
	m, err := newTelMesh(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m.start(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := m.waitRing(ctx); err != nil {
		m.stop()
		t.Fatal(err)
	}
	return m
}

func stopMesh(t *testing.T, m *telMesh) {
	if err := m.stop(); err != nil {
		t.Errorf("mesh: %v", err)
	}
}

// addPhones plugs n phones per node into every node (extensions from
// 201), stores their accounts and registers them.
func addPhones(t *testing.T, m *telMesh, perNode int, policy phones.Policy) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var exts []string
	first := len(m.phones)
	for k := range perNode {
		for node := range m.nodes {
			i := first + k*len(m.nodes) + node
			ext := fmt.Sprint(201 + i)
			if _, err := m.addPhone(node, ext, toneFor(i), policy); err != nil {
				t.Fatal(err)
			}
			exts = append(exts, ext)
		}
	}
	if err := m.addAccounts(ctx, exts, nil); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, p := range m.phones[first:] {
		wg.Go(func() {
			if err := m.register(ctx, p); err != nil {
				t.Errorf("phone %s on %s: %v", p.Ext, nodeName(p.Node), err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
}

// farthest returns two phones whose nodes are farthest apart.
func farthest(m *telMesh, ps []*meshPhone) (a, b *meshPhone) {
	best := -1
	for i, p := range ps {
		for _, q := range ps[i+1:] {
			if h := m.hops(p.Node, q.Node); h > best && p.Hz != q.Hz {
				a, b, best = p, q, h
			}
		}
	}
	return a, b
}

// runCalls places the calls in waves of wave calls (0: all at once):
// each wave starts once the calls before it are judged (two-way audio
// heard, or given up), and every call stays up until all are judged, so
// at the end all of them are up at the same time; then each checks its
// audio again and hangs up.
func runCalls(m *telMesh, plan []plannedCall, hold time.Duration, wave int) []callResult {
	if wave <= 0 {
		wave = len(plan)
	}
	res := make([]callResult, len(plan))
	release := make(chan struct{})
	var wg sync.WaitGroup
	for start := 0; start < len(plan); start += wave {
		batch := plan[start:min(start+wave, len(plan))]
		var judged sync.WaitGroup
		judged.Add(len(batch))
		for i, pc := range batch {
			wg.Go(func() { res[start+i] = m.call(context.Background(), pc.a, pc.b, hold, judged.Done, release) })
		}
		judged.Wait()
	}
	close(release)
	wg.Wait()
	return res
}

// checkIdle waits until no node holds ALG state or relay sessions of a
// call: every call's state ends with its BYE.
func checkIdle(t *testing.T, m *telMesh) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(10 * time.Second)
	for {
		busy := ""
		for _, p := range m.phones {
			// Only nodes with a registered phone: their SIP service is up.
			if st := m.nodes[p.Node].SIP().Stats(); st.Calls != 0 {
				busy = fmt.Sprintf("%s holds %d calls", nodeName(p.Node), st.Calls)
			}
			if n := m.nodes[p.Node].SIP().EchoSessions(); n != 0 {
				busy = fmt.Sprintf("%s holds %d echo sessions", nodeName(p.Node), n)
			}
			if n := len(p.Calls()); n != 0 {
				busy = fmt.Sprintf("phone %s has %d calls", p.Ext, n)
			}
		}
		if busy == "" {
			return
		}
		select {
		case <-timeout:
			t.Errorf("after the calls: %s", busy)
			return
		case <-tick.C:
		}
	}
}

// TestMeshCalls runs the in-memory telephone network end to end on a
// 20-node multi-hop mesh (real routers, DHT, registrars, proxies, relays):
// a call across the diameter, 100 concurrent calls, a call to an unknown
// extension and one to an unregistered one, a call cancelled while it
// rings, and calls with 2 % loss on every mesh link.
//
// It runs in a synctest bubble: the nodes, phones and links keep virtual
// time, so a machine too slow to carry 100 calls of 50 packets per second
// each in real time (two cores under -race) delays the test but does not
// drop packets the way an overloaded router would.
func TestMeshCalls(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, meshCalls)
}

func meshCalls(t *testing.T) {
	m := startMesh(t, meshConfig{Nodes: 20, Seed: 7, MinDiameter: 5})
	defer stopMesh(t, m)
	if d := m.diameter(); d < 5 {
		t.Fatalf("diameter %d hops, want at least 5", d)
	}
	addPhones(t, m, 2, phones.Policy{Mode: phones.AutoAnswer})
	ctx := context.Background()

	{ // far call
		a, b := farthest(m, m.phones)
		r := m.call(ctx, a, b, 500*time.Millisecond, nil, nil)
		t.Logf("%s on %s → %s on %s, %d hops: setup %.0f ms, MOS %.2f/%.2f", r.From, r.FromNode, r.To, r.ToNode, r.Hops, r.SetupMs, r.MOSAB, r.MOSBA)
		if r.Hops < 4 {
			t.Errorf("farthest phones %d hops apart, want at least 4", r.Hops)
		}
		if !r.ok() || r.Status != 200 {
			t.Errorf("call: %+v", r)
		}
		if r.MOS < 4 {
			t.Errorf("MOS %.2f on a lossless mesh", r.MOS)
		}
	}

	{ // echo
		var plan []plannedCall
		for _, p := range m.phones[:4] {
			plan = append(plan, plannedCall{a: p})
		}
		// Answered by each caller's own node: nothing is proxied.
		proxied := func() (n uint64) {
			for _, p := range m.phones {
				n += m.nodes[p.Node].SIP().Stats().Proxied
			}
			return n
		}
		before := proxied()
		for _, r := range runCalls(m, plan, 300*time.Millisecond, 0) {
			if !r.ok() {
				t.Errorf("echo test: %+v", r)
			}
		}
		if after := proxied(); after != before {
			t.Errorf("echo test calls were proxied: %d requests", after-before)
		}
	}

	{ // unknown and unregistered
		a := m.phones[0]
		_, err := a.Call(ctx, "299", phones.CallOptions{})
		if se := (*phones.StatusError)(nil); !errors.As(err, &se) || se.Code != 404 {
			t.Errorf("call to an unknown extension: %v, want 404", err)
		}
		if err := m.addAccounts(ctx, []string{"298"}, nil); err != nil {
			t.Fatal(err)
		}
		_, err = a.Call(ctx, "298", phones.CallOptions{})
		if se := (*phones.StatusError)(nil); !errors.As(err, &se) || se.Code != 480 {
			t.Errorf("call to an extension without a phone: %v, want 480", err)
		}
	}

	{ // cancel
		// A phone that rings until told otherwise, at the far end.
		a, far := farthest(m, m.phones)
		b, err := m.addPhone(far.Node, "290", toneFor(24), phones.Policy{Mode: phones.Manual})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.addAccounts(ctx, []string{"290"}, nil); err != nil {
			t.Fatal(err)
		}
		if err := m.register(ctx, b); err != nil {
			t.Fatal(err)
		}
		c, err := a.Dial(ctx, "290", phones.CallOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var in *phones.Call
		select {
		case in = <-b.Incoming():
		case <-time.After(10 * time.Second):
			t.Fatal("the callee never rang")
		}
		if b.Ringing() != 1 {
			t.Errorf("callee rings %d calls", b.Ringing())
		}
		cancelled := time.Now() // virtual time: the bubble's clock
		c.Cancel()
		<-c.Done()
		callerDone := time.Since(cancelled)
		if se := (*phones.StatusError)(nil); !errors.As(c.Err(), &se) || se.Code != 487 {
			t.Errorf("cancelled call ended with %v, want 487", c.Err())
		}
		// The caller's node answers 487 at once (RFC 3261 §16.10) and
		// CANCELs its branch; the callee stops ringing when that CANCEL
		// has crossed the mesh: no timer is involved, only its latency.
		select {
		case <-in.RingingDone():
		case <-time.After(time.Second):
			t.Error("the callee still rings a second after the caller's 487")
		}
		calleeDone := time.Since(cancelled)
		t.Logf("CANCEL across %d hops: caller has its 487 after %v, callee stopped ringing after %v",
			m.hops(a.Node, far.Node), callerDone, calleeDone)
		<-in.Done()
		if in.Status() != 487 || b.Ringing() != 0 {
			t.Errorf("callee: status %d, %d ringing", in.Status(), b.Ringing())
		}
	}

	{ // 100 concurrent
		// 40 phones in 100 calls, the most distant pairs first; each
		// phone takes part in five.
		plan := planCalls(m, m.phones[:40], 100, 0)
		if len(plan) != 100 {
			t.Fatalf("planned %d calls", len(plan))
		}
		start := time.Now()
		res := runCalls(m, plan, 300*time.Millisecond, 0)
		bad, hops := 0, 0
		for _, r := range res {
			hops += r.Hops
			if !r.ok() {
				bad++
				t.Errorf("%s → %s (%d hops): %+v", r.From, r.To, r.Hops, r)
			}
		}
		t.Logf("100 concurrent calls, mean %.1f hops, all judged and hung up in %v", float64(hops)/100, time.Since(start).Round(time.Millisecond))
		var qf, sent uint64
		for _, l := range m.links {
			st := l.Stats()
			qf += st.QueueFull
			sent += st.Sent
		}
		var lanQF uint64
		for _, l := range m.lans {
			lanQF += l.Stats().QueueFull
		}
		var sq, dropped uint64
		for _, n := range m.nodes {
			st := n.Router().Status()
			sq += st.Driver.SocketQueueFull
			dropped += st.Stats.Dropped
		}
		t.Logf("mesh links: %d datagrams sent, %d dropped at full queues; LANs: %d dropped; routers: %d dropped at full sockets, %d frames dropped",
			sent, qf, lanQF, sq, dropped)
		checkIdle(t, m)
	}

	{ // 2% loss
		for _, l := range m.links {
			l.Set(memnet.LinkConfig{Delay: 2 * time.Millisecond, Loss: 0.02})
		}
		defer func() {
			for _, l := range m.links {
				l.Set(memnet.LinkConfig{Delay: 2 * time.Millisecond})
			}
		}()
		plan := planCalls(m, m.phones[:40], 10, 0)
		for _, r := range runCalls(m, plan, time.Second, 0) {
			t.Logf("%s → %s, %d hops: setup %.0f ms, MOS %.2f/%.2f, lost %d/%d", r.From, r.To, r.Hops, r.SetupMs, r.MOSAB, r.MOSBA, r.LostAB, r.LostBA)
			if r.Status != 200 || !r.ok() {
				t.Errorf("%s → %s with 2 %% loss: %+v", r.From, r.To, r)
			}
			if r.MOS <= 1 || r.MOS > 4.5 {
				t.Errorf("%s → %s: MOS %.2f not reported", r.From, r.To, r.MOS)
			}
		}
		checkIdle(t, m)
	}
	checkIdle(t, m)
}

// TestDemoCommand runs `sipmesh demo --json` on a small mesh.
func TestDemoCommand(t *testing.T) {
	leakcheck.Check(t)
	code, stdout, stderr := run(t, "demo", "--nodes", "6", "--phones", "4", "--seed", "3", "--json")
	if code != 0 {
		t.Fatalf("exit %d\nstderr:\n%s", code, stderr)
	}
	var rep demoReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	if rep.Registered != 4 || len(rep.Calls) != 3 || !rep.OK || rep.Diameter < 4 {
		t.Errorf("report: %+v", rep)
	}
	for _, c := range rep.Calls {
		if !c.AudioAB || !c.AudioBA || c.MOS <= 1 || c.SetupMs <= 0 {
			t.Errorf("call %+v", c)
		}
	}
	// The echo call: the number dialled, and the feature it reached.
	if c := rep.Calls[len(rep.Calls)-1]; c.To != "3246" || c.Feature != "echo" {
		t.Errorf("echo call to %q, feature %q; want 3246 and echo", c.To, c.Feature)
	}
	// The party line: every member heard every other and not itself.
	if len(rep.Rooms) != 1 || rep.Rooms[0].Number != "426" || len(rep.Rooms[0].Members) < 2 ||
		len(rep.Rooms[0].Nodes) != len(rep.Rooms[0].Members) || !rep.Rooms[0].HeardAll {
		t.Errorf("rooms: %+v", rep.Rooms)
	}
	// The ring group: four members on four nodes, one answered, the
	// others stopped ringing (the bound is the issue's, in real time
	// on an in-memory mesh).
	if len(rep.Groups) != 1 {
		t.Fatalf("groups: %+v", rep.Groups)
	}
	g := rep.Groups[0]
	nodes := map[string]bool{}
	for _, n := range g.Nodes {
		nodes[n] = true
	}
	if g.Number != demoGroup || len(g.Members) != 4 || len(nodes) != 4 || !slices.Contains(g.Members, g.AnsweredBy) ||
		g.OthersStoppedMs <= 0 || g.Error != "" {
		t.Errorf("group: %+v", g)
	}
	t.Logf("group %s: %s answered, the others stopped ringing within %.1f ms", g.Number, g.AnsweredBy, g.OthersStoppedMs)
	if !strings.Contains(stderr, "ring formed") || !strings.Contains(stderr, "phones registered") {
		t.Errorf("no progress on stderr:\n%s", stderr)
	}
	// Into a pipe: no self-overwriting lines, no sipgo log lines.
	if strings.Contains(stderr, "\r") || strings.Contains(stderr, "INFO") {
		t.Errorf("stderr has a \\r or an INFO log line:\n%q", stderr)
	}

	for _, args := range [][]string{
		{"demo", "--nodes", "1"},
		{"demo", "--loss", "0.7"},
		{"demo", "--echo", "9", "--phones", "2"},
		{"demo", "extra"},
	} {
		if code, _, stderr := run(t, args...); code != 2 {
			t.Errorf("%q: exit %d, want 2 (usage)\n%s", args, code, stderr)
		}
	}
}
