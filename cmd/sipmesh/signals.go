package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// stopSignals end a command early but cleanly: Ctrl-C (SIGINT), a service
// manager's SIGTERM, a closed terminal's SIGHUP, and SIGPIPE — a reader of
// our output that went away (`sipmesh demo 2>&1 | head`). Left to the Go
// runtime, SIGHUP and SIGPIPE would kill the process without running any
// deferred cleanup, leaving the demo's temporary node keys on disk.
var stopSignals = []os.Signal{os.Interrupt, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGPIPE}

// signalError is the cause of a command's context cancelled by a signal.
type signalError struct{ sig syscall.Signal }

func (e *signalError) Error() string { return "signal " + e.String() }

// String names the signal as a shell user knows it.
func (e *signalError) String() string {
	switch e.sig {
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGHUP:
		return "SIGHUP"
	case syscall.SIGPIPE:
		return "SIGPIPE"
	}
	return e.sig.String()
}

// exitCode is the shell's convention for a process ended by a signal.
func (e *signalError) exitCode() int { return 128 + int(e.sig) }

// notifySignals returns a context that the first stop signal cancels with
// a *signalError cause. A second SIGINT, SIGTERM or SIGHUP means "now":
// it runs the registered cleanups (removing temporary key directories)
// and exits at once, for a shutdown that is stuck. Further SIGPIPEs are
// ignored: every write to a closed stderr raises one. stop releases the
// handlers.
func notifySignals(stderr io.Writer) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(context.Background())
	ch := make(chan os.Signal, 4)
	signal.Notify(ch, stopSignals...)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		first := true
		for {
			select {
			case <-done:
				return
			case s := <-ch:
				sig, _ := s.(syscall.Signal)
				switch {
				case first:
					first = false
					cancel(&signalError{sig})
				case sig != syscall.SIGPIPE:
					runCleanups()
					fmt.Fprintf(stderr, "sipmesh: second %v: exiting without waiting\n", &signalError{sig})
					os.Exit(128 + int(sig))
				}
			}
		}
	})
	return ctx, func() {
		signal.Stop(ch)
		close(done)
		wg.Wait()
		cancel(nil)
	}
}

// cleanups are what must happen even when the process is forced to exit
// (a second Ctrl-C): removing directories that hold private keys.
var cleanups struct {
	mu   sync.Mutex
	next int
	fns  map[int]func()
}

// atExit registers f to run if the process is forced to exit, and returns
// a function that runs f (once) and unregisters it: the normal path.
func atExit(f func()) (run func()) {
	cleanups.mu.Lock()
	defer cleanups.mu.Unlock()
	if cleanups.fns == nil {
		cleanups.fns = make(map[int]func())
	}
	id := cleanups.next
	cleanups.next++
	var once sync.Once
	g := func() { once.Do(f) }
	cleanups.fns[id] = g
	return func() {
		cleanups.mu.Lock()
		delete(cleanups.fns, id)
		cleanups.mu.Unlock()
		g()
	}
}

func runCleanups() {
	cleanups.mu.Lock()
	fns := cleanups.fns
	cleanups.fns = nil
	cleanups.mu.Unlock()
	for _, f := range fns {
		f()
	}
}

// isTerminal reports whether w is a terminal: self-overwriting progress
// lines ("\r") are for eyes, not for pipes and log files.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
