package phones_test

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/phones"
)

// rawProxy is a scripted SIP peer on a plain socket: the test reads what
// a phone sends it and writes the answers by hand, to check the headers
// and where in-dialog requests go.
type rawProxy struct {
	t    *testing.T
	conn net.PacketConn
	addr netip.AddrPort
	p    *sip.Parser
}

func newRawProxy(r *rig, ip string) *rawProxy {
	h := r.host("proxy", ip)
	addr := netip.AddrPortFrom(netip.MustParseAddr(ip), 5060)
	conn, err := h.ListenPacket(r.ctx, "udp", addr.String())
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { conn.Close() })
	return &rawProxy{t: r.t, conn: conn, addr: addr, p: sip.NewParser()}
}

// next returns the next message that is not a provisional response or a
// retransmission of method skip.
func (x *rawProxy) next(want string) (sip.Message, net.Addr) {
	x.t.Helper()
	buf := make([]byte, 65535)
	for range 50 {
		x.conn.SetReadDeadline(time.Now().Add(40 * time.Second))
		n, from, err := x.conn.ReadFrom(buf)
		if err != nil {
			x.t.Fatalf("waiting for %s: %v", want, err)
		}
		m, err := x.p.ParseSIP(buf[:n])
		if err != nil {
			x.t.Fatalf("unparsable: %v\n%s", err, buf[:n])
		}
		switch m := m.(type) {
		case *sip.Request:
			if string(m.Method) == want {
				return m, from
			}
		case *sip.Response:
			if fmt.Sprint(m.StatusCode) == want {
				return m, from
			}
		}
	}
	x.t.Fatalf("no %s", want)
	return nil, nil
}

func (x *rawProxy) send(m sip.Message, to net.Addr) {
	x.t.Helper()
	if _, err := x.conn.WriteTo([]byte(m.String()), to); err != nil {
		x.t.Fatal(err)
	}
}

func sdpAt(ip string, port int) []byte {
	return fmt.Appendf(nil, "v=0\r\no=- 1 1 IN IP4 %[1]s\r\ns=-\r\nc=IN IP4 %[1]s\r\nt=0 0\r\nm=audio %[2]d RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n", ip, port)
}

func checkRouted(t *testing.T, req *sip.Request, ruri, route string) {
	t.Helper()
	if req.Recipient.String() != ruri {
		t.Errorf("%s Request-URI %s, want %s", req.Method, req.Recipient.String(), ruri)
	}
	if r := req.Route(); r == nil || r.Value() != route {
		t.Errorf("%s Route %v, want %s", req.Method, r, route)
	}
}

// TestRecordRoute: behind a record-routing proxy, a phone sends the ACK
// for 2xx and its BYE to the proxy with the route set in Route and the
// remote target as Request-URI (RFC 3261 §12.2.1.1), as caller (route set
// reversed from the 2xx) and as callee (from the INVITE).
func TestRecordRoute(t *testing.T) {
	const route = "<sip:192.168.1.30:5060;lr>"
	t.Run("caller", func(t *testing.T) {
		leakcheck.Check(t)
		synctest.Test(t, func(t *testing.T) {
			r := newRig(t, 0)
			x := newRawProxy(r, "192.168.1.30")
			a := r.phone("201", "192.168.1.10", toneA, phones.Policy{}, x.addr)
			c, err := a.Dial(r.ctx, "202", phones.CallOptions{})
			if err != nil {
				t.Fatal(err)
			}
			m, from := x.next("INVITE")
			inv := m.(*sip.Request)
			if inv.Recipient.String() != "sip:202@mesh" || inv.Contact().Address.String() != "sip:201@192.168.1.10:5060" {
				t.Errorf("INVITE %s, Contact %s", inv.Recipient.String(), inv.Contact().Address.String())
			}
			if v := inv.Via(); !v.Params.Has("rport") {
				t.Errorf("Via without rport: %s", v.Value())
			}
			res := sip.NewResponseFromRequest(inv, 200, "OK", sdpAt("192.168.1.30", 40000))
			res.AppendHeader(sip.NewHeader("Record-Route", route))
			res.AppendHeader(sip.NewHeader("Contact", "<sip:202@192.168.1.41:5060>"))
			res.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
			x.send(res, from)
			<-c.Answered()

			m, _ = x.next("ACK")
			checkRouted(t, m.(*sip.Request), "sip:202@192.168.1.41:5060", route)
			go c.Hangup(r.ctx)
			m, from = x.next("BYE")
			bye := m.(*sip.Request)
			checkRouted(t, bye, "sip:202@192.168.1.41:5060", route)
			if bye.CSeq().SeqNo != inv.CSeq().SeqNo+1 || bye.CallID().Value() != inv.CallID().Value() {
				t.Errorf("BYE CSeq %d Call-ID %s after INVITE %d %s", bye.CSeq().SeqNo, bye.CallID().Value(), inv.CSeq().SeqNo, inv.CallID().Value())
			}
			x.send(sip.NewResponseFromRequest(bye, 200, "OK", nil), from)
			<-c.Done()
			if c.Err() != nil {
				t.Error(c.Err())
			}
		})
	})
	t.Run("callee", func(t *testing.T) {
		leakcheck.Check(t)
		synctest.Test(t, func(t *testing.T) {
			r := newRig(t, 0)
			x := newRawProxy(r, "192.168.1.30")
			b := r.phone("202", "192.168.1.11", toneB, phones.Policy{}, x.addr)
			body := sdpAt("192.168.1.30", 40000)
			inv := fmt.Sprintf("INVITE sip:202@192.168.1.11:5060 SIP/2.0\r\n"+
				"Via: SIP/2.0/UDP 192.168.1.30:5060;branch=z9hG4bK-rr-1\r\n"+
				"Record-Route: %s\r\nFrom: <sip:999@mesh>;tag=caller1\r\nTo: <sip:202@mesh>\r\n"+
				"Call-ID: rr-test-1\r\nCSeq: 7 INVITE\r\nContact: <sip:999@192.168.1.40:5060>\r\nMax-Forwards: 69\r\n"+
				"Content-Type: application/sdp\r\nContent-Length: %d\r\n\r\n%s", route, len(body), body)
			phone := net.UDPAddrFromAddrPort(b.Local())
			if _, err := x.conn.WriteTo([]byte(inv), phone); err != nil {
				t.Fatal(err)
			}
			m, _ := x.next("200")
			ok := m.(*sip.Response)
			if rr := ok.GetHeader("Record-Route"); rr == nil || rr.Value() != route {
				t.Errorf("200 Record-Route %v", rr)
			}
			tag, _ := ok.To().Params.Get("tag")
			ack := fmt.Sprintf("ACK sip:202@192.168.1.11:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.30:5060;branch=z9hG4bK-rr-2\r\n"+
				"From: <sip:999@mesh>;tag=caller1\r\nTo: <sip:202@mesh>;tag=%s\r\nCall-ID: rr-test-1\r\nCSeq: 7 ACK\r\n"+
				"Max-Forwards: 69\r\nContent-Length: 0\r\n\r\n", tag)
			if _, err := x.conn.WriteTo([]byte(ack), phone); err != nil {
				t.Fatal(err)
			}
			in := <-b.Incoming()
			<-in.Answered()
			time.Sleep(time.Second)
			if n := in.Stats().Sent; n < 40 {
				t.Errorf("callee sent %d RTP packets", n)
			}
			go in.Hangup(r.ctx)
			m, from := x.next("BYE")
			bye := m.(*sip.Request)
			checkRouted(t, bye, "sip:999@192.168.1.40:5060", route)
			if ft, _ := bye.From().Params.Get("tag"); ft != tag {
				t.Errorf("BYE From tag %q, want %q", ft, tag)
			}
			if tt, _ := bye.To().Params.Get("tag"); tt != "caller1" {
				t.Errorf("BYE To tag %q", tt)
			}
			x.send(sip.NewResponseFromRequest(bye, 200, "OK", nil), from)
			<-in.Done()
			if in.Err() != nil {
				t.Error(in.Err())
			}
		})
	})
}

// TestBadRequests: requests a phone cannot take get the RFC 3261 answer,
// and garbage does not stop it.
func TestBadRequests(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 0)
		x := newRawProxy(r, "192.168.1.30")
		b := r.phone("202", "192.168.1.11", toneB, phones.Policy{Mode: phones.Manual}, x.addr)
		phone := net.UDPAddrFromAddrPort(b.Local())
		n := 0
		req := func(method, callID, extra string, body []byte) {
			n++
			s := fmt.Sprintf("%[1]s sip:202@192.168.1.11:5060 SIP/2.0\r\n"+
				"Via: SIP/2.0/UDP 192.168.1.30:5060;branch=z9hG4bK-bad-%[2]d\r\n"+
				"From: <sip:999@mesh>;tag=t%[2]d\r\nTo: <sip:202@mesh>\r\nCall-ID: %[3]s\r\nCSeq: 1 %[1]s\r\n"+
				"Max-Forwards: 70\r\n%[4]sContent-Length: %[5]d\r\n\r\n%[6]s", method, n, callID, extra, len(body), body)
			if _, err := x.conn.WriteTo([]byte(s), phone); err != nil {
				t.Fatal(err)
			}
		}
		const contact = "Contact: <sip:999@192.168.1.40:5060>\r\nContent-Type: application/sdp\r\n"
		expect := func(code, what string) {
			t.Helper()
			m, _ := x.next(code)
			if m == nil {
				t.Errorf("%s: no %s", what, code)
			}
		}

		pcma := []byte("v=0\r\no=- 1 1 IN IP4 192.168.1.30\r\ns=-\r\nc=IN IP4 192.168.1.30\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8\r\n")
		req("INVITE", "bad-1", contact, pcma)
		expect("488", "PCMA-only offer")
		req("INVITE", "bad-2", contact, []byte("not sdp at all"))
		expect("488", "garbage SDP")
		req("INVITE", "bad-3", "Content-Type: application/sdp\r\n", sdpAt("192.168.1.30", 4000))
		expect("400", "INVITE without Contact")
		if _, err := x.conn.WriteTo([]byte("\x00\x01garbage\r\n\r\nINVITE"), phone); err != nil {
			t.Fatal(err)
		}
		req("BYE", "no-such-call", "", nil)
		expect("481", "BYE outside a dialog")
		req("CANCEL", "no-such-call", "", nil)
		expect("481", "unmatched CANCEL")
		req("INVITE", "dup", contact, sdpAt("192.168.1.30", 4000))
		in := <-b.Incoming()
		req("INVITE", "dup", contact, sdpAt("192.168.1.30", 4000))
		expect("482", "merged request")
		req("OPTIONS", "opt", "", nil)
		expect("200", "OPTIONS")
		in.Reject(603)
		expect("603", "rejected call")
		<-in.Done()
		if statusOf(in.Err()) != 603 {
			t.Errorf("rejected call: %v", in.Err())
		}
	})
}
