package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// stopSignals end a command early but cleanly: Ctrl-C (SIGINT), a service
// manager's SIGTERM and a closed terminal's SIGHUP. Left to the Go
// runtime, SIGHUP would kill the process without running any deferred
// cleanup, leaving the demo's temporary node keys on disk.
//
// SIGPIPE is not one of them. A process that asks for SIGPIPE gets it for
// a write to ANY broken pipe or socket (os/signal: "the file descriptor
// number does not matter"): a phone that closed its SIP-over-TCP
// connection, a browser leaving the web UI or `sipmesh ping` giving up on
// the control socket would stop the node. SIGPIPE is ignored instead, so
// every such write just fails with EPIPE, and a reader of our own output
// that went away (`sipmesh demo 2>&1 | head`) is noticed by the write to
// stdout or stderr that fails (pipeWriter), which stops the command as
// SIGPIPE would have, cleanly.
var stopSignals = []os.Signal{os.Interrupt, syscall.SIGTERM, syscall.SIGHUP}

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
// a *signalError cause, and wraps stdout and stderr so that a write to a
// reader that went away (EPIPE) cancels it too, as SIGPIPE. A second
// SIGINT, SIGTERM or SIGHUP means "now": it runs the registered cleanups
// (removing temporary key directories) and exits at once, for a shutdown
// that is stuck. stop releases the handlers.
func notifySignals(stdout, stderr io.Writer) (ctx context.Context, out, errOut io.Writer, stop func()) {
	ctx, cancel := context.WithCancelCause(context.Background())
	signal.Ignore(syscall.SIGPIPE)
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
				if first {
					first = false
					cancel(&signalError{sig})
					continue
				}
				runCleanups()
				fmt.Fprintf(stderr, "sipmesh: second %v: exiting without waiting\n", &signalError{sig})
				os.Exit(128 + int(sig))
			}
		}
	})
	closed := func() { cancel(&signalError{syscall.SIGPIPE}) }
	return ctx, pipeWriter{stdout, closed}, pipeWriter{stderr, closed}, func() {
		signal.Stop(ch)
		close(done)
		wg.Wait()
		cancel(nil)
	}
}

// pipeWriter calls closed when a write fails with EPIPE: the reader of
// the command's output went away.
type pipeWriter struct {
	w      io.Writer
	closed func()
}

func (p pipeWriter) Write(b []byte) (int, error) {
	n, err := p.w.Write(b)
	if errors.Is(err, syscall.EPIPE) {
		p.closed()
	}
	return n, err
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
