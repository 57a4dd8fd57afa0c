package sipnet

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
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
		return &limitedConn{Conn: c, l: l, key: key}, nil
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
	deadline atomic.Bool // a read deadline of the caller's is set
}

func (c *limitedConn) Read(b []byte) (int, error) {
	if !c.deadline.Load() {
		c.Conn.SetReadDeadline(time.Now().Add(c.l.lim.Idle))
	}
	n, err := c.Conn.Read(b)
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
