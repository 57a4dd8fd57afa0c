package registrar

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/memnet"
)

// memLAN is a node and a phone on one in-memory segment, the registrar
// serving UDP and TCP on the node's port 5060.
type memLAN struct {
	g      *rig
	node   *memnet.Host
	phone  *memnet.Host
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newMemLAN(t *testing.T, mod ...func(*RegistrarConfig)) *memLAN {
	t.Helper()
	n := memnet.New(memnet.Config{SocketQueue: 4096})
	seg := n.NewSegment("lan", memnet.LinkConfig{})
	node, phone := n.AddHost("node"), n.AddHost("phone")
	seg.Attach(node.AddInterface("eth0", 1500, netip.MustParsePrefix("10.120.0.1/24")))
	seg.Attach(phone.AddInterface("eth0", 1500, netip.MustParsePrefix("10.120.0.2/24")))
	l := &memLAN{g: newRig(t, mod...), node: node, phone: phone}
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	pc, err := node.ListenPacket(ctx, "udp", "10.120.0.1:5060")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := node.Listen(ctx, "tcp", "10.120.0.1:5060")
	if err != nil {
		t.Fatal(err)
	}
	l.wg.Go(func() {
		if err := l.g.r.ServeUDP(ctx, pc); err != nil {
			t.Errorf("ServeUDP: %v", err)
		}
	})
	l.wg.Go(func() {
		if err := l.g.r.ServeTCP(ctx, ln); err != nil {
			t.Errorf("ServeTCP: %v", err)
		}
	})
	t.Cleanup(l.stop)
	return l
}

func (l *memLAN) stop() {
	l.cancel()
	l.wg.Wait()
}

func readResponse(t *testing.T, c net.PacketConn) *sip.Response {
	t.Helper()
	buf := make([]byte, 65535)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _, err := c.ReadFrom(buf)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	m, err := sip.ParseMessage(buf[:n])
	if err != nil {
		t.Fatalf("bad answer %q: %v", buf[:n], err)
	}
	return m.(*sip.Response)
}

// TestServeUDPAndTCP registers with digest over UDP and over TCP on the
// in-memory network, and checks everything stops with the context.
func TestServeUDPAndTCP(t *testing.T) {
	leakcheck.Check(t)
	l := newMemLAN(t)
	ctx := context.Background()
	g := l.g
	srv := net.UDPAddrFromAddrPort(netip.MustParseAddrPort("10.120.0.1:5060"))

	pc, err := l.phone.ListenPacket(ctx, "udp", "10.120.0.2:5062")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	m := reg{viaSentBy: "10.120.0.2:5062", viaRport: true, contacts: []string{"<sip:201@10.120.0.2:5062>"}}
	pc.WriteTo([]byte(g.build(m)), srv)
	res := readResponse(t, pc)
	wantCode(t, res, 401)
	m.auth = authorize(t, res, "", "201", "secret201", 1)
	pc.WriteTo([]byte(g.build(m)), srv)
	res = readResponse(t, pc)
	wantCode(t, res, 200)
	if p, _ := res.Via().Params.Get("rport"); p != "5062" {
		t.Errorf("Via %s", res.Via())
	}

	conn, err := l.phone.Dial(ctx, "tcp", "10.120.0.1:5060")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ps := sip.NewParser().NewSIPStream()
	defer ps.Close()
	readTCP := func() *sip.Response {
		t.Helper()
		buf := make([]byte, 4096)
		for {
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := conn.Read(buf)
			if err != nil {
				t.Fatalf("tcp read: %v", err)
			}
			ps.Write(buf[:n])
			msg, _, err := ps.ParseNext()
			if err == nil {
				return msg.(*sip.Response)
			}
		}
	}
	m = reg{viaSentBy: "10.120.0.2:5063", contacts: []string{"<sip:201@10.120.0.2:5063;transport=tcp>"}, callID: "tcp-call"}
	raw := strings.Replace(g.build(m), "SIP/2.0/UDP", "SIP/2.0/TCP", 1)
	conn.Write([]byte(raw))
	res = readTCP()
	wantCode(t, res, 401)
	m.auth = authorize(t, res, "MD5", "201", "secret201", 1)
	conn.Write([]byte(strings.Replace(g.build(m), "SIP/2.0/UDP", "SIP/2.0/TCP", 1)))
	res = readTCP()
	wantCode(t, res, 200)
	if got := contactsOf(res); len(got) != 2 {
		t.Errorf("contacts %q", got)
	}
	bs, _ := g.loc.Bindings(ctx, "sip:201@mesh")
	transports := map[string]bool{}
	for _, b := range bs {
		transports[b.Transport] = true
	}
	if !transports["udp"] || !transports["tcp"] {
		t.Errorf("flows %+v", bs)
	}
	// RFC 5626 §3.5.1 keep-alive: CRLFCRLF gets CRLF.
	conn.Write([]byte("\r\n\r\n"))
	pong := make([]byte, 2)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(conn, pong); err != nil || string(pong) != "\r\n" {
		t.Errorf("keep-alive answer %q, %v", pong, err)
	}
	// Garbage on TCP: a 400, then the connection is closed.
	conn.Write([]byte("REGISTER sip:mesh SIP/2.0\r\nVia: SIP/2.0/TCP 10.120.0.2:5063;branch=z9hG4bKx\r\nContent-Length: -5\r\n\r\n"))
	res = readTCP()
	wantCode(t, res, 400)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 10)); err == nil {
		t.Error("connection still open after unparsable input")
	}
	l.stop()
}

// TestServeUDPRateLimit floods from one source over the in-memory
// network: the per-source bucket drops most of it silently, another
// source still gets answers, and the stored binding stays.
func TestServeUDPRateLimit(t *testing.T) {
	leakcheck.Check(t)
	var clk *fakeClock
	l := newMemLAN(t, func(c *RegistrarConfig) { c.Rate, c.Burst = 50, 100 })
	clk = l.g.clock // frozen: no refill during the flood
	ctx := context.Background()
	g := l.g
	srv := net.UDPAddrFromAddrPort(netip.MustParseAddrPort("10.120.0.1:5060"))
	pc, err := l.phone.ListenPacket(ctx, "udp", "10.120.0.2:6000")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	const n = 1000
	for i := range n {
		pc.WriteTo([]byte(g.build(reg{viaSentBy: "10.120.0.2:6000", callID: "flood" + itoa(i)})), srv)
	}
	// Count answers until the registrar has read the whole flood.
	answers := 0
	buf := make([]byte, 65535)
	for {
		pc.SetReadDeadline(time.Now().Add(time.Second))
		if _, _, err := pc.ReadFrom(buf); err != nil {
			if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
				break
			}
			t.Fatal(err)
		}
		answers++
	}
	s := g.r.Stats()
	t.Logf("%d answers to %d requests; stats %+v", answers, n, s)
	if answers > 100 || s.RateLimited < n-100 {
		t.Errorf("burst 100: %d answered, %d rate-limited", answers, s.RateLimited)
	}
	// Another phone is not affected.
	pc2, _ := l.phone.ListenPacket(ctx, "udp", "10.120.0.2:6001")
	defer pc2.Close()
	l.phone.AddAddress(l.phone.Interface("eth0"), netip.MustParsePrefix("10.120.0.3/24"))
	pc3, err := l.phone.ListenPacket(ctx, "udp", "10.120.0.3:6002")
	if err != nil {
		t.Fatal(err)
	}
	defer pc3.Close()
	pc3.WriteTo([]byte(g.build(reg{viaSentBy: "10.120.0.3:6002"})), srv)
	wantCode(t, readResponse(t, pc3), 401)
	// After a second the flooding source has tokens again.
	clk.Advance(time.Second)
	pc.WriteTo([]byte(g.build(reg{viaSentBy: "10.120.0.2:6000"})), srv)
	wantCode(t, readResponse(t, pc), 401)
	l.stop()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestRun listens through netx on two addresses (IPv4 LAN, IPv6 mesh)
// and stops cleanly; a busy port fails at once.
func TestRun(t *testing.T) {
	leakcheck.Check(t)
	n := memnet.New(memnet.Config{})
	seg := n.NewSegment("lan", memnet.LinkConfig{})
	node, phone := n.AddHost("node"), n.AddHost("phone")
	seg.Attach(node.AddInterface("eth0", 1500, netip.MustParsePrefix("10.120.0.1/24"), netip.MustParsePrefix("fd00::1/64")))
	seg.Attach(phone.AddInterface("eth0", 1500, netip.MustParsePrefix("10.120.0.2/24"), netip.MustParsePrefix("fd00::2/64")))
	g := newRig(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.r.Run(ctx, node, "10.120.0.1:5060", "[fd00::1]:5060") }()
	pc, err := phone.ListenPacket(ctx, "udp", "[fd00::2]:5062")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	// Run listens asynchronously and memnet drops datagrams to unbound
	// ports silently: retransmit as a SIP client does (Timer E) until the
	// answer comes.
	var res *sip.Response
	for i := 0; res == nil && i < 50; i++ {
		pc.WriteTo([]byte(g.build(reg{viaSentBy: "[fd00::2]:5062", ruri: "sip:[fd00::1]"})), net.UDPAddrFromAddrPort(netip.MustParseAddrPort("[fd00::1]:5060")))
		buf := make([]byte, 4096)
		pc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if n, _, err := pc.ReadFrom(buf); err == nil {
			m, _ := sip.ParseMessage(buf[:n])
			res, _ = m.(*sip.Response)
		}
	}
	wantCode(t, res, 401)
	// The Via names the source address itself (IPv6, written without
	// brackets by sipgo): no received parameter.
	if res.Via().Params.Has("received") {
		t.Errorf("Via %s", res.Via())
	}
	// A second registrar on the same addresses fails at once.
	if err := g.r.Run(ctx, node, "10.120.0.1:5060"); err == nil {
		t.Error("second Run on a busy port succeeded")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}
