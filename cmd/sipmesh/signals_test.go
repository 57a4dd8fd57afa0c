package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// TestEPIPEOnASocketDoesNotStop: a peer that closed its connection makes
// our next write fail with EPIPE. That must not stop a command: the node
// used to ask for SIGPIPE, which the runtime then delivers for any broken
// socket, so a phone closing its SIP-over-TCP connection, a browser or
// `sipmesh ping` giving up on the control socket shut the node down.
// Then a real SIGHUP, which must be the cause that stops the command.
func TestEPIPEOnASocketDoesNotStop(t *testing.T) {
	ctx, _, _, stop := notifySignals(io.Discard, io.Discard)
	defer stop()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	peer, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	peer.(*net.TCPConn).SetLinger(0) // close with RST: our writes fail at once
	peer.Close()
	// The first write after the reset may fail with ECONNRESET; the next
	// ones fail with EPIPE, the error that raises SIGPIPE.
	var werr error
	for range 1000 {
		if _, werr = c.Write(bytes.Repeat([]byte("x"), 4096)); errors.Is(werr, syscall.EPIPE) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if !errors.Is(werr, syscall.EPIPE) {
		t.Fatalf("writes to a reset connection: %v, want EPIPE", werr)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	<-ctx.Done()
	var se *signalError
	if !errors.As(context.Cause(ctx), &se) || se.sig != syscall.SIGHUP {
		t.Fatalf("stopped by %v, want SIGHUP (a broken socket is no reason to stop)", context.Cause(ctx))
	}
}

// TestEPIPEOnOutputStops: a write to our own output whose reader went
// away stops the command, as SIGPIPE would, with its exit status.
func TestEPIPEOnOutputStops(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	r.Close()
	ctx, out, _, stop := notifySignals(w, io.Discard)
	defer stop()
	if _, err := out.Write([]byte("table\n")); !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("write to a pipe without reader: %v", err)
	}
	<-ctx.Done()
	var se *signalError
	if !errors.As(context.Cause(ctx), &se) || se.sig != syscall.SIGPIPE || se.exitCode() != 141 {
		t.Fatalf("cause %v, want SIGPIPE (exit 141)", context.Cause(ctx))
	}
}
