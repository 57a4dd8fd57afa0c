package sipnet

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"testing/synctest"
	"time"
)

// fakeListener hands out the server ends of net.Pipes, or errors.
type fakeListener struct {
	conns  chan net.Conn
	errs   chan error
	closed chan struct{}
}

func newFakeListener() *fakeListener {
	return &fakeListener{conns: make(chan net.Conn), errs: make(chan error), closed: make(chan struct{})}
}

func (f *fakeListener) Accept() (net.Conn, error) {
	select {
	case err := <-f.errs:
		return nil, err
	case c := <-f.conns:
		return c, nil
	case <-f.closed:
		return nil, net.ErrClosed
	}
}
func (f *fakeListener) Close() error   { close(f.closed); return nil }
func (f *fakeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 5060} }

// remoteConn is a pipe end with a remote address.
type remoteConn struct {
	net.Conn
	remote net.Addr
}

func (c remoteConn) RemoteAddr() net.Addr { return c.remote }

// dial connects a client at src to the fake listener.
func (f *fakeListener) dial(src string) net.Conn {
	cli, srv := net.Pipe()
	f.conns <- remoteConn{Conn: srv, remote: net.TCPAddrFromAddrPort(netip.MustParseAddrPort(src))}
	return cli
}

// serve reads every accepted connection until it ends, as sipgo does.
func serve(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			io.Copy(io.Discard, c)
		}()
	}
}

func closedByNode(c net.Conn) bool {
	_, err := c.Read(make([]byte, 1))
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe)
}

// TestLimitListener: connections beyond the total and per-source caps
// are closed at once, a closed connection frees its slot, an idle one is
// closed after Idle while one sending RFC 5626 keep-alives stays, and
// accept errors (EMFILE) are retried, never returned.
func TestLimitListener(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeListener()
		l := LimitListener(f, ListenerLimits{MaxConns: 4, MaxPerSource: 2, Idle: 2 * time.Minute})
		go serve(l)
		a1, a2 := f.dial("10.0.0.10:5060"), f.dial("10.0.0.10:5061")
		if a3 := f.dial("10.0.0.10:5062"); !closedByNode(a3) {
			t.Error("a third connection from one source was kept")
		}
		b1, b2 := f.dial("10.0.0.11:5060"), f.dial("10.0.0.11:5061")
		if c1 := f.dial("10.0.0.12:5060"); !closedByNode(c1) {
			t.Error("a fifth connection was kept")
		}
		synctest.Wait() // the refusal is counted after the close the client saw
		if got := l.Refused.Load(); got != 2 {
			t.Errorf("refused %d, want 2", got)
		}
		b2.Close()
		synctest.Wait()
		c2 := f.dial("10.0.0.12:5060") // b2's slot is free again
		synctest.Wait()
		if got := l.Open(); got != 4 {
			t.Errorf("%d open, want 4", got)
		}

		// a1 sends a CRLFCRLF keep-alive every 100 s; the others stay quiet.
		for range 3 {
			time.Sleep(100 * time.Second)
			a1.Write([]byte("\r\n\r\n"))
		}
		synctest.Wait()
		if got := l.Open(); got != 1 {
			t.Errorf("after 5 min, %d open, want 1 (the one with keep-alives)", got)
		}
		for _, c := range []net.Conn{a2, b1, c2} {
			if !closedByNode(c) {
				t.Error("an idle connection was kept")
			}
		}

		// Out of file descriptors: the listener waits and retries.
		for range 10 {
			f.errs <- &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
		}
		d := f.dial("10.0.0.13:5060")
		if got := l.AcceptErrors.Load(); got != 10 {
			t.Errorf("%d accept errors retried, want 10", got)
		}
		a1.Close()
		d.Close()
		l.Close()
		synctest.Wait()
	})
}

// TestFrameTracker: message boundaries are followed across reads,
// keep-alives and bodies; a message over the limit is caught by its
// Content-Length or by a header section that never ends.
func TestFrameTracker(t *testing.T) {
	msg := func(body int) string {
		return "MESSAGE sip:202@mesh SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.5;branch=z9hG4bKx\r\nl: " +
			strconv.Itoa(body) + "\r\n\r\n" + strings.Repeat("x", body)
	}
	for _, tc := range []struct {
		name   string
		stream string
		chunk  int
		caught bool
	}{
		{"small messages and keep-alives", "\r\n\r\n" + msg(10) + "\r\n\r\n" + msg(500) + msg(0), 7, false},
		{"body over the limit", msg(10) + msg(2000), 100, true},
		{"body over the limit in one read", msg(2000), 1 << 20, true},
		{"endless headers", "INVITE sip:x SIP/2.0\r\n" + strings.Repeat("X-A: b\r\n", 300), 64, true},
	} {
		f := frameTracker{max: 1024}
		caught := false
		for s := tc.stream; len(s) > 0 && !caught; {
			k := min(tc.chunk, len(s))
			caught = f.feed([]byte(s[:k])) != nil
			s = s[k:]
		}
		if caught != tc.caught {
			t.Errorf("%s: caught %v, want %v", tc.name, caught, tc.caught)
		}
	}
	if out := TooLarge([]byte(msg(2000)[:100]), "test"); !strings.HasPrefix(string(out), "SIP/2.0 513 ") {
		t.Errorf("TooLarge: %q", out)
	}
}
