package proxy

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"testing/synctest"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/sipnet"
)

// padded returns an INVITE of c with SDP attributes added until the
// request is about size bytes (what video codecs and ICE candidates do).
func padded(raw string, size int) string {
	head, body, _ := strings.Cut(raw, "\r\n\r\n")
	var pad strings.Builder
	for i := 0; len(raw)+pad.Len() < size; i++ {
		fmt.Fprintf(&pad, "a=candidate:%d 1 UDP 2130706431 10.1.0.10 %d typ host generation 0 network-id 1 network-cost 10\r\n", i, 5000+i)
	}
	body += pad.String()
	return setHeader(head+"\r\n\r\n", "Content-Length", fmt.Sprint(len(body))) + body
}

// TestLargeRequests (issue 11, finding 9): an INVITE of 8 KB crosses the
// mesh and is answered; one beyond what the node sends (sipnet.MaxMessage)
// gets 513, over UDP and over TCP (70 KB), never 500 or silence.
func TestLargeRequests(t *testing.T) {
	leakcheck.Check(t)
	rigMTU = 65536 // memnet does not fragment UDP as the kernel does
	t.Cleanup(func() { rigMTU = 1500 })
	synctest.Test(t, func(t *testing.T) {
		m := newMeshRig(t, 2)
		a, b := m.phone(1, "201", 10), m.phone(2, "202", 10)
		a.register()
		b.register()

		c := a.buildInvite("sip:202@mesh", netip.MustParseAddrPort("10.1.0.10:4000"), "")
		a.sendTo(a.server(), padded(c.raw, 8192))
		inv := b.request(sip.INVITE)
		if n := len(inv.String()); n < 8192 {
			t.Errorf("INVITE of %d bytes at the callee, want 8 KB", n)
		}
		b.answer(inv, 200, "OK", "big", offerSDP(netip.MustParseAddrPort("10.2.0.10:4000")))
		wantStatus(t, a.response(), 200)

		c = a.buildInvite("sip:202@mesh", netip.MustParseAddrPort("10.1.0.10:4000"), "")
		a.sendTo(a.server(), padded(c.raw, sipnet.MaxMessage+1024))
		res := a.response()
		wantStatus(t, res, 513)
		a.ackNon2xx(c, res)

		// 70 KB over TCP.
		tp := m.tcpPhone(1, "203", 40)
		reg := fmt.Sprintf("REGISTER sip:mesh SIP/2.0\r\nVia: SIP/2.0/TCP %s;branch=z9hG4bKbig1\r\nMax-Forwards: 70\r\n"+
			"From: <sip:203@mesh>;tag=b1\r\nTo: <sip:203@mesh>\r\nCall-ID: big-reg\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n", tp.addr)
		tp.conn.Write([]byte(reg))
		chalRes := tp.recv().(*sip.Response)
		wantStatus(t, chalRes, 401)
		chal, err := digest.ParseChallenge(chalRes.GetHeader("WWW-Authenticate").Value())
		if err != nil {
			t.Fatal(err)
		}
		cred, err := digest.Digest(chal, digest.Options{Method: "INVITE", URI: "sip:202@mesh", Username: "203", Password: "secret203", Count: 1, Cnonce: "x"})
		if err != nil {
			t.Fatal(err)
		}
		big := fmt.Sprintf("INVITE sip:202@mesh SIP/2.0\r\nVia: SIP/2.0/TCP %s;branch=z9hG4bKbig2\r\nMax-Forwards: 70\r\n"+
			"From: <sip:203@mesh>;tag=b2\r\nTo: <sip:202@mesh>\r\nCall-ID: big-inv\r\nCSeq: 1 INVITE\r\nContact: <sip:203@%s;transport=tcp>\r\n"+
			"Proxy-Authorization: %s\r\nContent-Type: application/sdp\r\nContent-Length: 0\r\n\r\n%s", tp.addr, tp.addr, cred.String(), offerSDP(netip.MustParseAddrPort("10.1.0.40:4000")))
		big = padded(big, 70*1024)
		tp.conn.Write([]byte(big))
		for {
			res := tp.recv().(*sip.Response)
			if res.StatusCode == 100 {
				continue
			}
			wantStatus(t, res, 513)
			break
		}
	})
}
