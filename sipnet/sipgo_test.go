package sipnet

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
)

// scriptConn hands out the datagrams of in, one per read, then fails with
// net.ErrClosed; writes are recorded.
type scriptConn struct {
	net.PacketConn // nil: only ReadFrom and WriteTo are called
	in             []datagram
	out            []datagram
}

type datagram struct {
	data string
	addr netip.AddrPort
}

func (c *scriptConn) ReadFrom(b []byte) (int, net.Addr, error) {
	if len(c.in) == 0 {
		return 0, nil, net.ErrClosed
	}
	d := c.in[0]
	c.in = c.in[1:]
	return copy(b, d.data), net.UDPAddrFromAddrPort(d.addr), nil
}

func (c *scriptConn) WriteTo(b []byte, a net.Addr) (int, error) {
	ap, _ := AddrPortOf(a)
	c.out = append(c.out, datagram{string(b), ap})
	return len(b), nil
}

const guardInvite = "INVITE sip:201@mesh SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK1\r\n" +
	"From: <sip:202@mesh>;tag=a\r\nTo: <sip:201@mesh>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"

// reads returns what sipgo would read through g from the datagrams in.
func reads(g *Guard, c *scriptConn) []string {
	pc := g.Conn(c)
	var got []string
	buf := make([]byte, 2048)
	for {
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			return got
		}
		got = append(got, string(buf[:n]))
	}
}

func TestGuard(t *testing.T) {
	src := netip.MustParseAddrPort("10.0.0.5:5060")
	other := netip.MustParseAddrPort("10.0.0.6:5060")
	bye := strings.Replace(strings.Replace(guardInvite, "INVITE sip", "BYE sip", 1), "1 INVITE", "2 BYE", 1)
	garbage := "INVITE sip:201@mesh SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK2\r\nCSeq: x\r\nContent-Length: 99\r\n\r\n"

	t.Run("rate", func(t *testing.T) {
		g := &Guard{Limiter: NewRateLimiter(1, 2, 16)}
		c := &scriptConn{in: []datagram{{guardInvite, src}, {guardInvite, src}, {guardInvite, src}, {guardInvite, other}}}
		if got := reads(g, c); len(got) != 3 {
			t.Errorf("%d datagrams passed, want the burst of 2 from one source and 1 from another", len(got))
		}
		if g.RateLimited.Load() != 1 {
			t.Errorf("RateLimited = %d, want 1", g.RateLimited.Load())
		}
	})
	t.Run("overload", func(t *testing.T) {
		g := &Guard{MaxLive: 1}
		g.Hold(src.Addr())
		c := &scriptConn{in: []datagram{{guardInvite, src}, {bye, src}, {"SIP/2.0 200 OK\r\n\r\n", src}, {"\r\n\r\n", src}}}
		got := reads(g, c)
		if len(got) != 3 || !strings.HasPrefix(got[0], "BYE ") {
			t.Errorf("passed %q, want the BYE, the response and the keep-alive", got)
		}
		if g.Overloaded.Load() != 1 {
			t.Errorf("Overloaded = %d, want 1", g.Overloaded.Load())
		}
	})
	t.Run("fair share", func(t *testing.T) {
		// A flood from 64 sources holds the whole table; a phone holding
		// one transaction is still admitted, a flooder is not.
		g := &Guard{MaxLive: 4096}
		for i := range 4096 {
			g.Hold(netip.AddrFrom4([4]byte{10, 1, 0, byte(i % 64)}))
		}
		phone := netip.MustParseAddr("10.0.0.7")
		release := g.Hold(phone)
		if !g.admit(phone) {
			t.Error("the phone with one transaction was refused")
		}
		if g.admit(netip.MustParseAddr("10.1.0.3")) {
			t.Error("a flooder holding its share was admitted")
		}
		release()
		release()
		if g.Live.Load() != 4096 {
			t.Errorf("Live %d after a double release, want 4096", g.Live.Load())
		}
		// Alone, one source never holds more than a quarter of the table.
		g = &Guard{MaxLive: 4096}
		for range 1024 {
			g.Hold(phone)
		}
		if g.admit(phone) {
			t.Error("one source was admitted beyond a quarter of the table")
		}
	})
	t.Run("malformed", func(t *testing.T) {
		g := &Guard{ServerName: "test"}
		c := &scriptConn{in: []datagram{{garbage, src}}}
		if got := reads(g, c); len(got) != 0 {
			t.Errorf("a malformed request reached sipgo: %q", got)
		}
		if g.Malformed.Load() != 1 || len(c.out) != 1 {
			t.Fatalf("Malformed = %d, %d answers; want 1 and one 400", g.Malformed.Load(), len(c.out))
		}
		if a := c.out[0]; !strings.HasPrefix(a.data, "SIP/2.0 400 ") || a.addr != src || !strings.Contains(a.data, "Server: test\r\n") {
			t.Errorf("answer to %v: %q", a.addr, a.data)
		}
	})
}

// TestGuardAnswered: a retransmission of an answered non-INVITE request
// gets the recorded final response again without reaching sipgo (RFC
// 3261 §17.2.2, the Completed state), from the same source only and only
// within the record's life; responses pass over the source's rate.
func TestGuardAnswered(t *testing.T) {
	src := netip.MustParseAddrPort("10.0.0.5:5060")
	other := netip.MustParseAddrPort("10.0.0.6:5060")
	opt := strings.Replace(strings.Replace(guardInvite, "INVITE sip", "OPTIONS sip", 1), "1 INVITE", "1 OPTIONS", 1)
	req, err := sip.ParseMessage([]byte(opt))
	if err != nil {
		t.Fatal(err)
	}
	res := sip.NewResponseFromRequest(req.(*sip.Request), 200, "OK", nil)

	g := &Guard{Limiter: NewRateLimiter(1, 3, 16)}
	g.Answered(req.(*sip.Request), src, res, src)
	if g.Answers() != 1 {
		t.Fatalf("%d records, want 1", g.Answers())
	}
	c := &scriptConn{in: []datagram{{opt, src}, {opt, other}, {guardInvite, src},
		{"SIP/2.0 200 OK\r\n\r\n", src}, {"SIP/2.0 200 OK\r\n\r\n", src}}}
	got := reads(g, c)
	if len(got) != 4 || !strings.HasPrefix(got[0], "OPTIONS ") || !strings.HasPrefix(got[1], "INVITE ") {
		t.Errorf("passed %q, want the OPTIONS of the other source, the INVITE and both responses", got)
	}
	if g.Retransmissions.Load() != 1 || len(c.out) != 1 || c.out[0].addr != src || c.out[0].data != res.String() {
		t.Errorf("%d retransmissions answered, out %v; want the 200 once to %v", g.Retransmissions.Load(), c.out, src)
	}
	if g.RateLimited.Load() != 0 {
		t.Errorf("RateLimited = %d: responses counted against the source's rate", g.RateLimited.Load())
	}

	// Expired records are neither used nor kept.
	g = &Guard{AnswerLife: time.Second}
	g.Answered(req.(*sip.Request), src, res, src)
	g.Sweep(time.Now().Add(2 * time.Second))
	if g.Answers() != 0 {
		t.Errorf("%d records after they expired, want 0", g.Answers())
	}
	// The table is bounded.
	g = &Guard{MaxAnswered: 8}
	for i := range 20 {
		r := strings.Replace(opt, "branch=z9hG4bK1", fmt.Sprintf("branch=z9hG4bKx%d", i), 1)
		m, _ := sip.ParseMessage([]byte(r))
		g.Answered(m.(*sip.Request), src, res, src)
	}
	if g.Answers() != 8 {
		t.Errorf("%d records, want the bound 8", g.Answers())
	}
}

// TestGuardHandsParsedMessages: the guard parses each request it passes
// (for the 400 and the retransmission records) and hands that message to
// sipgo's UDP transport (sip.MessageReader), which must not parse it again
// nor see it change when the read buffer is reused.
func TestGuardHandsParsedMessages(t *testing.T) {
	src := netip.MustParseAddrPort("10.0.0.5:5060")
	invite := strings.Replace(guardInvite, "Content-Length: 0\r\n\r\n", "Content-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n", 1)
	bye := strings.Replace(strings.Replace(guardInvite, "INVITE sip", "BYE sip", 1), "1 INVITE", "2 BYE", 1)
	bye = strings.Replace(bye, "Call-ID: c1", "Call-ID: c2", 1)
	c := &scriptConn{in: []datagram{{invite, src}, {"SIP/2.0 200 OK\r\n\r\n", src}, {"\r\n\r\n", src}, {bye, src}}}
	mr, ok := (&Guard{}).Conn(c).(sip.MessageReader)
	if !ok {
		t.Fatal("the guard's conn is no sip.MessageReader: sipgo parses every request twice")
	}
	buf := make([]byte, 2048)
	var msgs []sip.Message
	for {
		n, _, msg, err := mr.ReadMessageFrom(buf)
		if err != nil {
			break
		}
		if msg == nil && !strings.HasPrefix(string(buf[:n]), "SIP/2.0") && string(buf[:n]) != "\r\n\r\n" {
			t.Errorf("request %q read without its message", buf[:n])
		}
		msgs = append(msgs, msg)
	}
	if len(msgs) != 4 || msgs[1] != nil || msgs[2] != nil {
		t.Fatalf("messages %v: want the INVITE, nothing for the response and the keep-alive, the BYE", msgs)
	}
	inv, ok := msgs[0].(*sip.Request)
	// The BYE was read into the same buffer after the INVITE.
	if !ok || !inv.IsInvite() || inv.CallID().Value() != "c1" || string(inv.Body()) != "v=0\n" {
		t.Errorf("the INVITE changed with the buffer: %v", msgs[0])
	}
	if r, ok := msgs[3].(*sip.Request); !ok || r.Method != sip.BYE || r.CallID().Value() != "c2" {
		t.Errorf("BYE read as %v", msgs[3])
	}
}

// parsedConn is a sip.MessageReader whose one datagram is bytes no parser
// accepts, handed out with msg: sipgo serves msg only if it takes the
// message instead of parsing the bytes. Later reads wait for done.
type parsedConn struct {
	scriptConn
	msg  sip.Message
	done chan struct{}
}

func (c *parsedConn) ReadMessageFrom(b []byte) (int, net.Addr, sip.Message, error) {
	if c.msg == nil {
		<-c.done
		return 0, nil, nil, net.ErrClosed
	}
	msg := c.msg
	c.msg = nil
	return copy(b, "not SIP at all"), net.UDPAddrFromAddrPort(netip.MustParseAddrPort("10.0.0.5:5060")), msg, nil
}

func (c *parsedConn) LocalAddr() net.Addr {
	return net.UDPAddrFromAddrPort(netip.MustParseAddrPort("10.0.0.1:5060"))
}

func (c *parsedConn) Close() error { return nil }

// TestSipgoTakesParsedMessages checks the sipgo side of the hook
// (third_party/sipgo PATCHED.md): ServeUDP hands a MessageReader's message
// to the handler, with the datagram's source, and answers through the conn.
func TestSipgoTakesParsedMessages(t *testing.T) {
	msg, err := sip.ParseMessage([]byte(guardInvite))
	if err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.DiscardHandler)
	ua, err := sipgo.NewUA(sipgo.WithUserAgentTransactionLayerOptions(sip.WithTransactionLayerLogger(quiet)),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(quiet)))
	if err != nil {
		t.Fatal(err)
	}
	defer ua.Close()
	srv, err := sipgo.NewServer(ua, sipgo.WithServerLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *sip.Request, 1)
	srv.OnInvite(func(req *sip.Request, tx sip.ServerTransaction) {
		got <- req
		tx.Terminate()
	})
	c := &parsedConn{msg: msg, done: make(chan struct{})}
	served := make(chan error, 1)
	go func() { served <- srv.ServeUDP(c) }()
	select {
	case req := <-got:
		if req != msg {
			t.Errorf("the handler got another request than the conn's message")
		}
		if req.Source() != "10.0.0.5:5060" || req.Transport() != "UDP" {
			t.Errorf("source %q transport %q, want the datagram's source over UDP", req.Source(), req.Transport())
		}
	case <-time.After(10 * time.Second):
		t.Error("the conn's message never reached the handler")
	}
	close(c.done)
	<-served
}

// fastConn is a scriptConn with the allocation-free read and write
// (AddrPortConn); its ReadFrom and WriteTo must not be used.
type fastConn struct{ scriptConn }

func (c *fastConn) ReadFrom([]byte) (int, net.Addr, error) { panic("ReadFrom on an AddrPortConn") }
func (c *fastConn) WriteTo([]byte, net.Addr) (int, error)  { panic("WriteTo on an AddrPortConn") }

func (c *fastConn) ReadFromUDPAddrPort(b []byte) (int, netip.AddrPort, error) {
	n, a, err := c.scriptConn.ReadFrom(b)
	if err != nil {
		return n, netip.AddrPort{}, err
	}
	ap := a.(*net.UDPAddr).AddrPort()
	// As a dual-stack socket reports an IPv4 source.
	return n, netip.AddrPortFrom(netip.AddrFrom16(ap.Addr().As16()), ap.Port()), nil
}

func (c *fastConn) WriteToUDPAddrPort(b []byte, to netip.AddrPort) (int, error) {
	return c.scriptConn.WriteTo(b, net.UDPAddrFromAddrPort(to))
}

// TestGuardAddrPortConn: on a conn with the allocation-free read and write
// (a *net.UDPConn, memnet's, the mesh's), the guard uses them, with the
// source unmapped as AddrPortOf does.
func TestGuardAddrPortConn(t *testing.T) {
	src := netip.MustParseAddrPort("10.0.0.5:5060")
	c := &fastConn{scriptConn{in: []datagram{{guardInvite, src}}}}
	pc := (&Guard{}).Conn(c)
	buf := make([]byte, 2048)
	n, addr, err := pc.ReadFrom(buf)
	if err != nil || string(buf[:n]) != guardInvite || addr.String() != src.String() {
		t.Fatalf("read %q from %v, %v", buf[:n], addr, err)
	}
	// sipgo's addresses: IPv4 as 16-byte IPs.
	if _, err := pc.WriteTo([]byte("x"), &net.UDPAddr{IP: net.ParseIP("10.0.0.6"), Port: 5062}); err != nil {
		t.Fatal(err)
	}
	if len(c.out) != 1 || c.out[0].addr != netip.MustParseAddrPort("10.0.0.6:5062") {
		t.Errorf("written %v, want one datagram to 10.0.0.6:5062", c.out)
	}
}
