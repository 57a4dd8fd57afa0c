package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/sipmesh/sipmesh/sipnet"
)

// SIP over TCP from a gateway's Internet side (RFC 3261 §18.1.1, RFC 3263
// §4.1: a server whose NAPTR or SRV records offer TCP only).
//
// sipgo would dial a TCP connection itself, from the operating system
// (libraries.md §1 pitfall 2), outside the Network the service was given
// and without limits. Here the service dials (UplinkConfig.Dial) and
// hands the connection to sipgo as if its TCP listener had accepted it:
// sipgo keeps it in its pool under the server's address, reads its
// responses and requests, and later requests to the same server reuse it
// (the spirit of RFC 5923: one connection per server, both ways). It
// passes the same limits as the LAN's accepted connections
// (sipnet.LimitListener: in total and per server, idle ones closed).

// Outbound TCP bounds.
const (
	// uplinkDialTimeout is how long a connection to a located server may
	// take before the server counts as failed and the next one is tried
	// (RFC 3263 §4.3): as long as a silent gateway gets (gatewayTry).
	uplinkDialTimeout = gatewayTry
	// maxUplinkDials bounds the connections being opened at once.
	maxUplinkDials = 32
	// maxUplinkConns and maxUplinkPerServer bound the open ones: a
	// provider or a domain's proxy needs one; a few more cover calls
	// that dialled at the same moment.
	maxUplinkConns     = 256
	maxUplinkPerServer = 4
)

// uplinkDialer opens TCP connections to Internet servers and hands them
// to sipgo through ln, served like accepted ones.
type uplinkDialer struct {
	dial  func(ctx context.Context, network, address string) (net.Conn, error)
	conns *dialedConns
	ln    *sipnet.Listener // conns within limits
	sem   chan struct{}    // dials in progress

	mu       sync.Mutex
	inflight map[netip.AddrPort]*dialCall // at most maxUplinkDials
}

// dialCall is a connection being opened; requests for the same server
// meanwhile wait for it instead of opening another.
type dialCall struct {
	done chan struct{}
	err  error
}

func newUplinkDialer(dial func(ctx context.Context, network, address string) (net.Conn, error), lim sipnet.ListenerLimits) *uplinkDialer {
	c := &dialedConns{ch: make(chan dialed), closed: make(chan struct{})}
	lim.MaxConns, lim.MaxPerSource = maxUplinkConns, maxUplinkPerServer
	return &uplinkDialer{dial: dial, conns: c, ln: sipnet.LimitListener(c, lim), sem: make(chan struct{}, maxUplinkDials),
		inflight: make(map[netip.AddrPort]*dialCall)}
}

// connect opens a connection to dst and waits until sipgo holds it (or
// refused it over a limit: the caller then finds none). While one is
// being opened, another call for dst waits for it: calls that start
// together share one connection.
func (d *uplinkDialer) connect(ctx context.Context, dst netip.AddrPort) error {
	d.mu.Lock()
	if c := d.inflight[dst]; c != nil {
		d.mu.Unlock()
		select {
		case <-c.done:
			return c.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	c := &dialCall{done: make(chan struct{})}
	d.inflight[dst] = c
	d.mu.Unlock()
	c.err = d.open(ctx, dst)
	d.mu.Lock()
	delete(d.inflight, dst)
	d.mu.Unlock()
	close(c.done)
	return c.err
}

// open dials dst and hands the connection to sipgo.
func (d *uplinkDialer) open(ctx context.Context, dst netip.AddrPort) error {
	select {
	case d.sem <- struct{}{}:
		defer func() { <-d.sem }()
	default:
		return errors.New("too many TCP connections being opened")
	}
	ctx, cancel := context.WithTimeout(ctx, uplinkDialTimeout)
	defer cancel()
	network := "tcp4"
	if dst.Addr().Is6() {
		network = "tcp6"
	}
	c, err := d.dial(ctx, network, dst.String())
	if err != nil {
		return fmt.Errorf("connect to %s: %w", dst, err)
	}
	return d.conns.hand(ctx, c)
}

// dialedConns is a net.Listener whose connections are the dialled ones.
type dialedConns struct {
	ch        chan dialed
	closed    chan struct{}
	closeOnce sync.Once
	mu        sync.Mutex
	prev      chan struct{} // of the connection Accept returned last
}

type dialed struct {
	c      net.Conn
	served chan struct{} // closed when sipgo took c
}

// hand gives c to the next Accept and waits until its caller is done
// with it: the listener's caller (sipnet.Listener, then sipgo's Serve
// loop) calls Accept again only after it registered c or refused it.
func (l *dialedConns) hand(ctx context.Context, c net.Conn) error {
	d := dialed{c: c, served: make(chan struct{})}
	select {
	case l.ch <- d:
	case <-l.closed:
		c.Close()
		return net.ErrClosed
	case <-ctx.Done():
		c.Close()
		return ctx.Err()
	}
	select {
	case <-d.served:
		return nil
	case <-l.closed:
		return net.ErrClosed
	}
}

func (l *dialedConns) Accept() (net.Conn, error) {
	l.mu.Lock()
	if l.prev != nil {
		close(l.prev)
		l.prev = nil
	}
	l.mu.Unlock()
	select {
	case d := <-l.ch:
		l.mu.Lock()
		l.prev = d.served
		l.mu.Unlock()
		return d.c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *dialedConns) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return nil
}

// Addr is no address: nothing listens.
func (l *dialedConns) Addr() net.Addr { return &net.TCPAddr{} }

// dialUplink opens a connection to dst from the Internet side for a
// request that must leave over TCP and finds none (connReady): only to an
// address the uplink may send to (internetAllowed).
func (s *SIPService) dialUplink(dst string) error {
	ap, err := netip.ParseAddrPort(dst)
	if err != nil {
		return err
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	if s.dialer == nil || !s.isLAN(s.sockFor(ap.Addr())) || !s.internetAllowed(ap) {
		return fmt.Errorf("no TCP connection to %s", dst)
	}
	start := time.Now()
	if err := s.dialer.connect(s.ctx, ap); err != nil {
		return err
	}
	s.log.Debug("tcp connection opened", "dst", ap, "took", time.Since(start))
	return nil
}
