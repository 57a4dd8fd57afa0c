package registrar

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/sipmesh/sipmesh/netx"
	"github.com/sipmesh/sipmesh/sipnet"
)

// maxDatagram is the largest SIP datagram read (RFC 3261 §18.1.1 allows
// up to 65535 bytes over UDP).
const maxDatagram = 65535

// ServeUDP answers SIP datagrams on pc until ctx ends or pc fails, then
// closes pc and returns after its workers have finished. The caller opens
// pc (netx.Network.ListenPacket: kernel or memnet).
//
// Workers goroutines read the socket concurrently, each handling its own
// datagram to the end, as Kamailio's worker processes share one socket: no
// hand-off between goroutines, and the kernel's socket buffer is the
// bounded queue (it drops when full).
//
// Flood handling: a datagram over its source's rate is dropped before it
// is parsed, silently. An answer (503) would cost as much as the request,
// double the traffic on the radio links and could be aimed at a spoofed
// victim; a real phone retransmits with back-off (RFC 3261 §17.1.2.2) and
// gets through when the source slows down.
func (r *Registrar) ServeUDP(ctx context.Context, pc net.PacketConn) error {
	stop := context.AfterFunc(ctx, func() { pc.Close() })
	defer stop()
	errs := make(chan error, r.cfg.Workers)
	var wg sync.WaitGroup
	for range r.cfg.Workers {
		wg.Go(func() {
			err := r.udpWorker(ctx, pc)
			errs <- err
			pc.Close() // one worker's failure stops the others
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func (r *Registrar) udpWorker(ctx context.Context, pc net.PacketConn) error {
	buf := make([]byte, maxDatagram)
	fast, _ := pc.(sipnet.AddrPortConn)
	for {
		var (
			n   int
			src netip.AddrPort
			err error
		)
		if fast != nil {
			n, src, err = fast.ReadFromUDPAddrPort(buf)
			src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		} else {
			var addr net.Addr
			n, addr, err = pc.ReadFrom(buf)
			if err == nil {
				var ok bool
				if src, ok = sipnet.AddrPortOf(addr); !ok {
					continue
				}
			}
		}
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		r.received.Add(1)
		if r.limiter != nil && !r.limiter.Allow(src.Addr(), r.cfg.Now()) {
			r.rateLimited.Add(1)
			continue
		}
		if n <= 4 && len(bytes.Trim(buf[:n], "\r\n\x00")) == 0 {
			continue // keep-alive (RFC 5626 §3.5.1 CRLF)
		}
		out, dst := r.processDatagram(ctx, buf[:n], src)
		if out == nil {
			continue
		}
		if fast != nil {
			fast.WriteToUDPAddrPort(out, dst)
		} else {
			pc.WriteTo(out, net.UDPAddrFromAddrPort(dst))
		}
	}
}

// processDatagram is the transport-independent part of the UDP path: the
// answer to send (nil for none) and where.
func (r *Registrar) processDatagram(ctx context.Context, data []byte, src netip.AddrPort) ([]byte, netip.AddrPort) {
	if sipnet.BareCRLF(data) {
		// sipgo would keep the bare CR or LF inside a header value, and
		// echoing it would break the response's framing.
		r.malformed.Add(1)
		r.logBad(src, "bare CR or LF in a header")
		return nil, src
	}
	msg, err := sip.ParseMessage(data)
	if err != nil {
		r.malformed.Add(1)
		reason := sipnet.DescribeParseError(err)
		r.logBad(src, reason)
		return sipnet.BadRequest(data, reason, r.cfg.ServerName), src
	}
	req, ok := msg.(*sip.Request)
	if !ok {
		return nil, src // a stray response: nothing to match it to
	}
	req.SetTransport("UDP")
	if reason := sipnet.RawContactProblem(data); reason != "" && answerable(req) {
		r.malformed.Add(1)
		r.logBad(src, reason)
		req.SetSource(src.String())
		return []byte(r.response(req, 400, "Bad Request ("+reason+")").String()), src
	}
	// Only REGISTERs that can change bindings need their answer kept:
	// a 401 is stateless (a retransmission just gets a fresh nonce), and
	// so a flood of unauthenticated requests costs no cache memory.
	key, ok := "", false
	if req.Method == sip.REGISTER && (r.cfg.noAuth || req.GetHeader("Authorization") != nil) {
		key, ok = txKey(req)
	}
	if ok {
		switch cached, state := r.txc.lookup(key, r.cfg.Now()); state {
		case txDone:
			r.retransmitted.Add(1)
			return cached.data, cached.dst
		case txPending:
			return nil, src // first copy still being handled
		}
	}
	res := r.handle(ctx, req, src, "udp", true)
	if res == nil {
		if ok {
			r.txc.forget(key)
		}
		return nil, src
	}
	out := []byte(res.String())
	dst := r.replyAddr(req, src)
	if ok {
		r.txc.store(key, out, dst, r.cfg.Now())
	}
	return out, dst
}

// replyAddr is where a UDP answer goes: the source (rport, RFC 3581 §4),
// or with ViaPortReplies and no rport the Via port at the source address
// (RFC 3261 §18.2.2).
func (r *Registrar) replyAddr(req *sip.Request, src netip.AddrPort) netip.AddrPort {
	if !r.cfg.ViaPortReplies {
		return src
	}
	via := req.Via()
	if via == nil || via.Params.Has("rport") {
		return src
	}
	port := via.Port
	if port <= 0 || port > 65535 {
		port = 5060
	}
	return netip.AddrPortFrom(src.Addr(), uint16(port))
}

// ServeTCP accepts SIP over TCP on ln until ctx ends, then closes ln and
// every connection and returns after their goroutines ended. At most
// MaxTCPConns connections are served (sipnet.DefaultMaxTCPPerSource per
// source); more are closed at once. A connection idle for
// sipnet.DefaultTCPIdle is closed (RFC 5626 keep-alives arrive more
// often). Accept errors (EMFILE) are retried after a back-off. Unparsable input gets a 400 where a response can be built,
// then the connection is closed: the framing is lost (RFC 4475 §3.1.2.3).
func (r *Registrar) ServeTCP(ctx context.Context, ln net.Listener) error {
	// The limits and the retry of accept errors (EMFILE) are the
	// listener's; idle connections are closed by serveConn's deadline.
	ln = sipnet.LimitListener(ln, sipnet.ListenerLimits{MaxConns: r.cfg.MaxTCPConns, Idle: tcpIdle, ServerName: r.cfg.ServerName})
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = make(map[net.Conn]bool)
	)
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	defer stop()
	var err error
	for {
		c, aerr := ln.Accept()
		if aerr != nil {
			if ctx.Err() == nil && !errors.Is(aerr, net.ErrClosed) {
				var ne net.Error
				if errors.As(aerr, &ne) && ne.Timeout() {
					continue
				}
				err = aerr
			}
			break
		}
		mu.Lock()
		if len(conns) >= r.cfg.MaxTCPConns || ctx.Err() != nil {
			mu.Unlock()
			c.Close()
			continue
		}
		conns[c] = true
		mu.Unlock()
		wg.Go(func() {
			r.serveConn(ctx, c)
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
			c.Close()
		})
	}
	ln.Close()
	mu.Lock()
	for c := range conns {
		c.Close()
	}
	mu.Unlock()
	wg.Wait()
	return err
}

const tcpIdle = sipnet.DefaultTCPIdle

func (r *Registrar) serveConn(ctx context.Context, c net.Conn) {
	src, ok := sipnet.AddrPortOf(c.RemoteAddr())
	if !ok {
		return
	}
	ps := sip.NewParser().NewSIPStream()
	defer ps.Close()
	buf := make([]byte, 8192)
	// cur holds the bytes of the message being parsed (the parser
	// consumes its buffer as it goes), for the 400 of a parse failure.
	var cur []byte
	mid := false // a message is partly parsed
	for {
		c.SetReadDeadline(time.Now().Add(tcpIdle))
		n, err := c.Read(buf)
		if n > 0 {
			ps.Write(buf[:n])
			cur = append(cur, buf[:n]...)
			for {
				if !mid {
					// RFC 5626 §3.5.1 keep-alive: CRLFCRLF is answered
					// with CRLF; stray CRLFs between messages are skipped
					// (RFC 3261 §7.5).
					pending := ps.Buffer()
					for bytes.HasPrefix(pending.Bytes(), []byte("\r\n")) {
						k := 2
						if bytes.HasPrefix(pending.Bytes(), []byte("\r\n\r\n")) {
							k = 4
							c.Write([]byte("\r\n"))
						}
						pending.Next(k)
						cur = cur[k:]
					}
					if pending.Len() == 0 {
						break
					}
				}
				msg, used, perr := ps.ParseNext()
				if errors.Is(perr, io.ErrUnexpectedEOF) {
					mid = true
					break
				}
				mid = false
				r.received.Add(1)
				if r.limiter != nil && !r.limiter.Allow(src.Addr(), r.cfg.Now()) {
					r.rateLimited.Add(1)
					if perr != nil {
						return
					}
					cur = cur[min(used, len(cur)):]
					continue
				}
				if perr != nil {
					r.malformed.Add(1)
					reason := sipnet.DescribeParseError(perr)
					r.logBad(src, reason)
					if out := sipnet.BadRequest(cur, reason, r.cfg.ServerName); out != nil {
						c.Write(out)
					}
					return
				}
				cur = cur[min(used, len(cur)):]
				req, ok := msg.(*sip.Request)
				if !ok {
					continue
				}
				req.SetTransport("TCP")
				if res := r.HandleRequest(ctx, req, src, "tcp"); res != nil {
					if _, err := c.Write([]byte(res.String())); err != nil {
						return
					}
				}
			}
		}
		if err != nil {
			return
		}
	}
}

// txCache keeps the final responses of recent requests for Timer J, so a
// retransmitted REGISTER gets the same answer without being processed
// again (RFC 3261 §17.2.2), which would fail the CSeq check of §10.3.
// It is bounded: beyond max entries the oldest is dropped early, which
// only costs a retransmission the reprocessing it would have had anyway.
type txCache struct {
	max int

	mu    sync.Mutex
	m     map[string]*txEntry
	order []string // FIFO of keys, oldest at head
	head  int
}

type txEntry struct {
	data    []byte // nil while the first copy is being handled
	dst     netip.AddrPort
	created time.Time
}

type txState int

const (
	txNew txState = iota
	txPending
	txDone
)

func newTxCache(max int) *txCache { return &txCache{max: max, m: make(map[string]*txEntry)} }

// lookup returns the cached answer for key or marks key pending.
func (t *txCache) lookup(key string, now time.Time) (txEntry, txState) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.expireLocked(now)
	if e, ok := t.m[key]; ok {
		if e.data == nil {
			return txEntry{}, txPending
		}
		return *e, txDone
	}
	for len(t.m) >= t.max {
		t.dropOldestLocked()
	}
	t.m[key] = &txEntry{created: now}
	t.order = append(t.order, key)
	return txEntry{}, txNew
}

func (t *txCache) store(key string, data []byte, dst netip.AddrPort, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.m[key]; ok {
		e.data, e.dst, e.created = data, dst, now
	}
}

func (t *txCache) forget(key string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.m, key)
}

func (t *txCache) expireLocked(now time.Time) {
	for t.head < len(t.order) {
		k := t.order[t.head]
		if e, ok := t.m[k]; ok && now.Sub(e.created) < txLifetime {
			break
		}
		t.dropOldestLocked()
	}
}

func (t *txCache) dropOldestLocked() {
	if t.head >= len(t.order) {
		// Keys forgotten out of order: the map is authoritative.
		clear(t.m)
		t.order, t.head = t.order[:0], 0
		return
	}
	delete(t.m, t.order[t.head])
	t.order[t.head] = ""
	t.head++
	if t.head > 1024 && t.head*2 > len(t.order) {
		t.order = append(t.order[:0], t.order[t.head:]...)
		t.head = 0
	}
}

func (t *txCache) sweep(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.expireLocked(now)
}

func (t *txCache) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}

// txKey identifies a server transaction (RFC 3261 §17.2.3): the top Via
// branch with its sent-by and the method; for RFC 2543 clients without a
// magic-cookie branch, Call-ID, CSeq, From tag and sent-by. Call-ID and
// CSeq are added to the RFC 3261 key too: a client that reuses a branch
// for a new request (RFC 4475's messages do) must not get the answer to
// the old one.
func txKey(req *sip.Request) (string, bool) {
	via, callID, cseq := req.Via(), req.CallID(), req.CSeq()
	if via == nil || callID == nil || cseq == nil {
		return "", false // not a valid request: answered without caching
	}
	sentBy := strings.ToLower(via.Host) + ":" + itoa(via.Port)
	branch, _ := via.Params.Get("branch")
	if strings.HasPrefix(branch, "z9hG4bK") && len(branch) > len("z9hG4bK") {
		return branch + "|" + sentBy + "|" + string(req.Method) + "|" + string(*callID) + "|" + itoa(int(cseq.SeqNo)), true
	}
	from := req.From()
	tag := ""
	if from != nil {
		tag, _ = from.Params.Get("tag")
	}
	return "2543|" + string(*callID) + "|" + itoa(int(cseq.SeqNo)) + "|" + tag + "|" + sentBy + "|" + string(req.Method), true
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	neg := n < 0
	if neg {
		n = -n
	}
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			break
		}
	}
	if neg {
		i--
		b[i] = '-'
	}
	return string(b[i:])
}

// Run listens on UDP and TCP at each of addrs (host:port, e.g.
// "10.120.0.1:5060" on the phone LAN and "[fd00::1]:5060" on the mesh) on
// netw and serves until ctx ends or a socket fails; it returns after every
// socket is closed and every goroutine it started has ended. A failure to
// listen closes what was opened and returns at once.
func (r *Registrar) Run(ctx context.Context, netw netx.Network, addrs ...string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		pcs []net.PacketConn
		lns []net.Listener
	)
	closeAll := func() {
		for _, pc := range pcs {
			pc.Close()
		}
		for _, ln := range lns {
			ln.Close()
		}
	}
	for _, a := range addrs {
		pc, err := netw.ListenPacket(ctx, "udp", a)
		if err != nil {
			closeAll()
			return fmt.Errorf("registrar: %w", err)
		}
		pcs = append(pcs, pc)
		ln, err := netw.Listen(ctx, "tcp", a)
		if err != nil {
			closeAll()
			return fmt.Errorf("registrar: %w", err)
		}
		lns = append(lns, ln)
	}
	r.log.Info("registrar listening", "addrs", addrs)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	fail := func(err error) {
		if err != nil {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
			cancel()
		}
	}
	for _, pc := range pcs {
		wg.Go(func() { fail(r.ServeUDP(ctx, pc)) })
	}
	for _, ln := range lns {
		wg.Go(func() { fail(r.ServeTCP(ctx, ln)) })
	}
	wg.Wait()
	return errors.Join(errs...)
}
