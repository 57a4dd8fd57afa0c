package sipnet

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"
)

// SIP over TCP from a LAN no one vouches for (RFC 5626 §4.4.1, RFC 5923
// §11 on connection limits): a listener that caps connections in total
// and per source, closes idle ones, and never returns an accept error a
// later Accept may not have (EMFILE, ENFILE, ECONNABORTED): it backs off
// and retries, as net/http's Server does, so a client that exhausts the
// file descriptors stalls new connections instead of ending the node.

// TCP limits.
const (
	DefaultMaxTCPConns     = 1024
	DefaultMaxTCPPerSource = 16
	// DefaultTCPIdle closes a connection that sent nothing for this long.
	// RFC 5626 §4.4.1 keep-alives (CRLFCRLF, every 95–120 s for TCP per
	// its default Flow-Timer of 120 s) count as activity, so a phone that
	// keeps its flow alive keeps its connection.
	DefaultTCPIdle = 150 * time.Second
)

// ListenerLimits configures LimitListener; zero values take the defaults.
type ListenerLimits struct {
	MaxConns     int           // open connections in total
	MaxPerSource int           // open connections per source (IPv6: per /64)
	Idle         time.Duration // read inactivity before a connection is closed
	// ServerName is the Server header of the 513 answered to a message
	// longer than sipgo reads (sip.ParseMaxMessageLength).
	ServerName string
	// OnDrop, if set, is called for every connection refused over a
	// limit and every accept error retried (err non-nil): a hook for
	// counters and a rate-limited log line. It must not block.
	OnDrop func(src netip.AddrPort, err error)
}

// LimitListener wraps ln with limits. Its Accept returns only accepted
// connections within the limits, or the error of a closed listener.
func LimitListener(ln net.Listener, lim ListenerLimits) *Listener {
	if lim.MaxConns <= 0 {
		lim.MaxConns = DefaultMaxTCPConns
	}
	if lim.MaxPerSource <= 0 {
		lim.MaxPerSource = DefaultMaxTCPPerSource
	}
	if lim.Idle <= 0 {
		lim.Idle = DefaultTCPIdle
	}
	return &Listener{Listener: ln, lim: lim, perSrc: make(map[netip.Addr]int), closed: make(chan struct{})}
}

// Listener is a net.Listener with connection limits (LimitListener).
type Listener struct {
	net.Listener
	lim       ListenerLimits
	closeOnce sync.Once
	closed    chan struct{}

	// Refused counts connections closed at once over a limit;
	// AcceptErrors the accept errors retried after a back-off.
	Refused, AcceptErrors atomic.Uint64

	mu     sync.Mutex
	open   int
	perSrc map[netip.Addr]int
}

// Open is how many accepted connections are open.
func (l *Listener) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open
}

// Close closes the listener (not the connections it accepted).
func (l *Listener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// Accept waits for a connection within the limits.
func (l *Listener) Accept() (net.Conn, error) {
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || isClosed(l.closed) {
				return nil, err
			}
			// Too many open files, a connection reset before accept, a
			// timeout: all pass. Back off 5 ms doubling to 1 s, as
			// net/http does.
			l.AcceptErrors.Add(1)
			if l.lim.OnDrop != nil {
				l.lim.OnDrop(netip.AddrPort{}, err)
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-l.closed:
				t.Stop()
				return nil, net.ErrClosed
			}
			continue
		}
		delay = 0
		src, _ := AddrPortOf(c.RemoteAddr())
		key := RateKey(src.Addr())
		l.mu.Lock()
		if l.open >= l.lim.MaxConns || l.perSrc[key] >= l.lim.MaxPerSource {
			l.mu.Unlock()
			c.Close()
			l.Refused.Add(1)
			if l.lim.OnDrop != nil {
				l.lim.OnDrop(src, nil)
			}
			continue
		}
		l.open++
		l.perSrc[key]++
		l.mu.Unlock()
		return &limitedConn{Conn: c, l: l, key: key, frames: frameTracker{max: sip.ParseMaxMessageLength}}, nil
	}
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func (l *Listener) release(key netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if l.perSrc[key]--; l.perSrc[key] <= 0 {
		delete(l.perSrc, key)
	}
}

// limitedConn is an accepted connection: its slot is released once when
// it closes, and a read that waits Idle without a byte closes it.
type limitedConn struct {
	net.Conn
	l        *Listener
	key      netip.Addr
	once     sync.Once
	deadline atomic.Bool  // a read deadline of the caller's is set
	frames   frameTracker // read by Read only (one reader)
}

func (c *limitedConn) Read(b []byte) (int, error) {
	if !c.deadline.Load() {
		c.Conn.SetReadDeadline(time.Now().Add(c.l.lim.Idle))
	}
	n, err := c.Conn.Read(b)
	if n > 0 {
		if head := c.frames.feed(b[:n]); head != nil {
			if out := TooLarge(head, c.l.lim.ServerName); out != nil {
				c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
				c.Conn.Write(out)
			}
			c.Close()
			return 0, io.EOF
		}
	}
	if err != nil && !c.deadline.Load() && errors.Is(err, os.ErrDeadlineExceeded) {
		// Idle: close, and tell the reader it ended, which it is (sipgo
		// logs other read errors at error level).
		c.Close()
		return n, io.EOF
	}
	return n, err
}

// SetReadDeadline and SetDeadline with a non-zero time replace the idle
// limit by the caller's own deadline.
func (c *limitedConn) SetReadDeadline(t time.Time) error {
	c.deadline.Store(!t.IsZero())
	return c.Conn.SetReadDeadline(t)
}

func (c *limitedConn) SetDeadline(t time.Time) error {
	c.deadline.Store(!t.IsZero())
	return c.Conn.SetDeadline(t)
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.key) })
	return err
}

// frameTracker follows the message boundaries of a SIP stream (RFC 3261
// §18.3: the header section, then Content-Length bytes of body) to catch
// a message longer than sipgo reads (sip.ParseMaxMessageLength): sipgo
// would close the connection without an answer; here the sender gets a
// 513 first.
type frameTracker struct {
	max  int
	hdr  []byte // the header section read so far
	body int    // body bytes still to come
}

// feed follows b; it returns the header section of a message too large
// to read, or nil.
func (f *frameTracker) feed(b []byte) (tooLarge []byte) {
	for len(b) > 0 {
		if f.body > 0 {
			k := min(f.body, len(b))
			f.body -= k
			b = b[k:]
			continue
		}
		if len(f.hdr) == 0 {
			// CRLFs between messages (RFC 5626 §3.5.1 keep-alives).
			for len(b) > 0 && (b[0] == '\r' || b[0] == '\n') {
				b = b[1:]
			}
			if len(b) == 0 {
				return nil
			}
		}
		start := max(len(f.hdr)-3, 0)
		f.hdr = append(f.hdr, b...)
		end := bytes.Index(f.hdr[start:], []byte("\r\n\r\n"))
		if end < 0 {
			if len(f.hdr) > f.max {
				return f.hdr
			}
			return nil
		}
		end += start + 4
		rest := len(f.hdr) - end // bytes of b after the header section
		cl := contentLength(f.hdr[:end])
		if end+cl > f.max {
			return f.hdr[:end]
		}
		b = b[len(b)-rest:]
		f.hdr = f.hdr[:0]
		f.body = cl
	}
	return nil
}

// contentLength is the Content-Length (or l) of a header section; 0 when
// absent or unreadable (sipgo answers those).
func contentLength(h []byte) int {
	for _, line := range bytes.Split(h, []byte("\r\n")) {
		name, val, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		name = bytes.TrimSpace(name)
		if !bytes.EqualFold(name, []byte("content-length")) && !bytes.EqualFold(name, []byte("l")) {
			continue
		}
		n, err := strconv.Atoi(string(bytes.TrimSpace(val)))
		if err != nil || n < 0 {
			return 0
		}
		return min(n, 1<<30)
	}
	return 0
}
