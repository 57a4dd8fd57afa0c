package leakcheck

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeTB records what Check reports instead of failing the real test, so the
// tests can show that Check fails a leaking test. The embedded testing.TB
// supplies the methods Check does not use (and the unexported one that keeps
// testing.TB from being implemented outside package testing).
type fakeTB struct {
	testing.TB
	mu       sync.Mutex
	cleanups []func()
	errors   []string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Cleanup(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cleanups = append(f.cleanups, fn)
}

func (f *fakeTB) Errorf(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errors = append(f.errors, fmt.Sprintf(format, args...))
}

// finish runs the cleanups last-first, as package testing does at the end of
// a test, and returns the errors reported.
func (f *fakeTB) finish() []string {
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
	return f.errors
}

// leakyWorker is the bug Check exists to catch: it blocks on a channel that
// nobody closes. Its name appears in the stack Check reports.
func leakyWorker(stop <-chan struct{}) { <-stop }

func TestDetectsLeak(t *testing.T) {
	stop := make(chan struct{})
	// Release the goroutine once the fake check has seen it, so this test
	// does not leak itself.
	defer close(stop)

	ft := &fakeTB{TB: t}
	Check(ft)
	go leakyWorker(stop)
	start := time.Now()
	errs := ft.finish()

	if len(errs) != 1 {
		t.Fatalf("Check reported %d errors, want 1: %q", len(errs), errs)
	}
	if !strings.Contains(errs[0], "1 goroutine(s) leaked") || !strings.Contains(errs[0], "leakcheck.leakyWorker") {
		t.Errorf("report does not name the leaked goroutine:\n%s", errs[0])
	}
	if waited := time.Since(start); waited < Timeout {
		t.Errorf("Check reported after %v, want it to wait %v for the goroutine to exit", waited, Timeout)
	}
}

func TestNoLeak(t *testing.T) {
	ft := &fakeTB{TB: t}
	Check(ft)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { leakyWorker(stop) })
	close(stop)
	wg.Wait()
	if errs := ft.finish(); len(errs) != 0 {
		t.Errorf("Check reported a leak in a test without one: %q", errs)
	}
}

// TestWaitsForSlowExit covers the common case of a goroutine that is told
// to stop but exits a little after the test body returns, such as a reader
// woken by Close.
func TestWaitsForSlowExit(t *testing.T) {
	ft := &fakeTB{TB: t}
	Check(ft)
	stop := make(chan struct{})
	go leakyWorker(stop)
	ft.Cleanup(func() {
		// Registered after Check, so it runs before Check's cleanup, like
		// a t.Cleanup(server.Close) in a real test.
		time.AfterFunc(50*time.Millisecond, func() { close(stop) })
	})
	if errs := ft.finish(); len(errs) != 0 {
		t.Errorf("Check reported a goroutine that exited within the timeout: %q", errs)
	}
}

// TestPreexistingGoroutinesIgnored checks that a goroutine started before
// Check (by an earlier test or TestMain) is not blamed on this test.
func TestPreexistingGoroutinesIgnored(t *testing.T) {
	stop := make(chan struct{})
	defer close(stop)
	go leakyWorker(stop)

	ft := &fakeTB{TB: t}
	Check(ft)
	if errs := ft.finish(); len(errs) != 0 {
		t.Errorf("Check blamed a goroutine that predates it: %q", errs)
	}
}

func TestGoroutinesParse(t *testing.T) {
	gs := goroutines()
	if len(gs) == 0 {
		t.Fatal("goroutines() found none")
	}
	if !strings.Contains(gs[0].stack, "TestGoroutinesParse") {
		t.Errorf("first goroutine is not the caller:\n%s", gs[0].stack)
	}
	seen := map[int]bool{}
	for _, g := range gs {
		if g.id <= 0 || seen[g.id] {
			t.Errorf("bad or duplicate goroutine id %d", g.id)
		}
		seen[g.id] = true
	}
}

// TestCheckItself uses Check on a real test: it must pass.
func TestCheckItself(t *testing.T) {
	Check(t)
	done := make(chan struct{})
	go func() { close(done) }()
	<-done
}
