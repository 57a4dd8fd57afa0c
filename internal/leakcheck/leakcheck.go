// Package leakcheck fails a test that leaves goroutines running.
//
// Every sipmesh component promises that Close (or the return of Run) waits
// for each goroutine it started (docs/CONVENTIONS.md, "Concurrency
// and lifecycle"); goroutine leaks are the most reported bug class in the SIP and
// mesh daemons this project learns from. Call Check first thing in a test:
//
//	func TestRelay(t *testing.T) {
//		leakcheck.Check(t)
//		r := newRelay(t)
//		t.Cleanup(r.Close)
//		...
//	}
//
// Check uses t.Cleanup rather than a returned func for defer, so it cannot
// be half-written (a forgotten trailing "()" would check nothing), and
// because cleanups run last-registered-first, calling Check first makes its
// check run after every other cleanup of the test, i.e. after the Close calls.
//
// Goroutines are identified by ID, so Check cannot tell the goroutines of
// the test under check from those that a test running in parallel starts;
// don't call it in tests that use t.Parallel or that run beside such tests.
package leakcheck

import (
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Timeout is how long Check waits for goroutines to exit after the test
// before it reports them. Closing a socket or cancelling a context wakes a
// goroutine promptly, but under -race on a loaded two-core CI machine it
// may take a while to be scheduled and finish.
const Timeout = 2 * time.Second

// Check snapshots the running goroutines and registers a cleanup that fails
// t, listing their stacks, if goroutines started since are still running
// Timeout after the test (and its other cleanups) finished.
func Check(t testing.TB) {
	t.Helper()
	before := make(map[int]bool)
	for _, g := range goroutines() {
		before[g.id] = true
	}
	t.Cleanup(func() {
		leaked := waitForExit(before, Timeout)
		if len(leaked) == 0 {
			return
		}
		var b strings.Builder
		fmt.Fprintf(&b, "%d goroutine(s) leaked; still running %v after the test:", len(leaked), Timeout)
		for _, g := range leaked {
			b.WriteString("\n\n")
			b.WriteString(g.stack)
		}
		t.Errorf("%s", b.String())
	})
}

// waitForExit polls until no goroutine outside before (and not ignored) is
// running, or timeout passes, and returns the survivors. Polling with a
// growing interval keeps the common no-leak case to about a millisecond.
func waitForExit(before map[int]bool, timeout time.Duration) []goroutine {
	deadline := time.Now().Add(timeout)
	wait := time.Millisecond
	for {
		var leaked []goroutine
		gs := goroutines()
		// runtime.Stack lists the calling goroutine first: the one running
		// this cleanup, which belongs to the test framework.
		for _, g := range gs[min(1, len(gs)):] {
			if !before[g.id] && !ignored(g.stack) {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 || time.Now().After(deadline) {
			return leaked
		}
		time.Sleep(wait)
		wait = min(2*wait, 100*time.Millisecond)
	}
}

type goroutine struct {
	id    int
	stack string // including the "goroutine N [state]:" header
}

// goroutines returns the stacks of all goroutines, the caller's first.
func goroutines() []goroutine {
	buf := make([]byte, 64<<10)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var gs []goroutine
	for text := range strings.SplitSeq(string(buf), "\n\n") {
		text = strings.TrimSpace(text)
		// Header: "goroutine 17 [chan receive, 2 minutes]:"
		rest, ok := strings.CutPrefix(text, "goroutine ")
		if !ok {
			continue
		}
		idText, _, _ := strings.Cut(rest, " ")
		id, err := strconv.Atoi(idText)
		if err != nil {
			continue
		}
		gs = append(gs, goroutine{id: id, stack: text})
	}
	return gs
}

// ignoredFrames mark goroutines that the Go runtime, the standard library or
// the testing package start once, lazily, and keep for the life of the
// process: not leaks of the code under test, even though a test may be the
// first to trigger them.
var ignoredFrames = []string{
	// Runtime and standard library singletons. Some are system goroutines
	// that runtime.Stack hides on current Go; the older names keep Check
	// quiet on the Go 1.24 and 1.25 runtimes as well.
	"os/signal.signal_recv",    // the loop behind signal.Notify
	"os/signal.loop",           // its caller
	"runtime.ensureSigM",       // per-process signal mask goroutine
	"runtime.runFinalizers",    // finalizers (Go ≥1.26)
	"runtime.runfinq",          // finalizers (Go ≤1.25)
	"runtime.runCleanups",      // runtime.AddCleanup, used by package unique
	"registerUniqueMapCleanup", // package unique's cleanup loop (Go ≤1.24)
	"unique.registerCleanup",

	// The testing package's own goroutines: other tests, fuzz workers and
	// the -timeout alarm are not started by the code under test.
	"created by testing.(*T).Run",
	"created by testing.(*F).Fuzz",
	"created by testing.runFuzzTests",
	"testing.(*M).startAlarm",
	"testing.tRunner.func1", // a test waiting for its parallel subtests
}

func ignored(stack string) bool {
	return slices.ContainsFunc(ignoredFrames, func(f string) bool { return strings.Contains(stack, f) })
}
