package proxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
	"github.com/sipmesh/sipmesh/internal/leakcheck"
)

// flooder sends raw requests from its own address on a node's LAN and
// discards what comes back.
func (m *meshRig) flooder(node int, last byte) net.PacketConn {
	m.t.Helper()
	nd := m.nodes[node-1]
	ip := netip.AddrFrom4([4]byte{10, byte(node), 0, 100 + last}) // last ≤ 150
	h := m.nw.AddHost(fmt.Sprintf("flood-%d-%d", node, last))
	nd.lan.Attach(h.AddInterface("eth0", rigMTU, netip.PrefixFrom(ip, 24)))
	pc, err := h.ListenPacket(m.ctx, "udp", netip.AddrPortFrom(ip, 5060).String())
	if err != nil {
		m.t.Fatal(err)
	}
	m.wg.Go(func() {
		buf := make([]byte, 65535)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
		}
	})
	context.AfterFunc(m.ctx, func() { pc.Close() })
	return pc
}

// TestFloodFairShare (issue 11, finding 2): during a REGISTER flood with
// wrong passwords from 64 LAN addresses and an INVITE flood to
// nonexistent extensions (720 requests/s for 60 s, where a table of 256
// transactions kept 32 s each holds 8/s), phones with the right password
// register and call every time (every 5 s, 12 times).
func TestFloodFairShare(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		m := newMeshRig(t, 2, func(c *SIPServiceConfig) { c.MaxTransactions = 256 })
		lan := netip.AddrPortFrom(m.nodes[0].lanIP, 5060)
		b := m.phone(2, "202", 10)
		b.register()

		// A nonce of node 1 for the wrong passwords (the flooders' 401).
		x := m.phone(1, "204", 9)
		x.sendTo(lan, "REGISTER sip:mesh SIP/2.0\r\n"+x.via()+"Max-Forwards: 70\r\nFrom: <sip:204@mesh>;tag=x\r\nTo: <sip:204@mesh>\r\nCall-ID: x\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n")
		chal, err := digest.ParseChallenge(x.response().GetHeader("WWW-Authenticate").Value())
		if err != nil {
			t.Fatal(err)
		}

		a := m.phone(1, "201", 10)
		a.register() // before the flood: a known device of 201

		ctx, stop := context.WithCancel(m.ctx)
		var wg sync.WaitGroup
		sent := 0
		var mu sync.Mutex
		for i := range 72 {
			pc := m.flooder(1, byte(i+1))
			wg.Go(func() {
				for n := 0; ctx.Err() == nil; n++ {
					var raw string
					via := fmt.Sprintf("Via: SIP/2.0/UDP %s;branch=z9hG4bKfl%d-%d;rport\r\n", pc.LocalAddr(), i, n)
					if i < 64 { // wrong passwords (a nonce of this node, any response)
						raw = "REGISTER sip:mesh SIP/2.0\r\n" + via + "Max-Forwards: 70\r\nFrom: <sip:201@mesh>;tag=f\r\nTo: <sip:201@mesh>\r\n" +
							fmt.Sprintf("Call-ID: flood-%d\r\nCSeq: %d REGISTER\r\nContact: <sip:201@%s>\r\n", i, n+1, pc.LocalAddr()) +
							"Authorization: Digest username=\"201\", realm=\"mesh\", nonce=\"" + chal.Nonce + "\", uri=\"sip:mesh\", response=\"00000000000000000000000000000000\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"f\"\r\n" +
							"Content-Length: 0\r\n\r\n"
					} else { // INVITEs to extensions that do not exist
						raw = fmt.Sprintf("INVITE sip:9%04d@mesh SIP/2.0\r\n", n%10000) + via + "Max-Forwards: 70\r\nFrom: <sip:666@mesh>;tag=f\r\n" +
							fmt.Sprintf("To: <sip:9%04d@mesh>\r\nCall-ID: inv-%d-%d\r\nCSeq: 1 INVITE\r\nContact: <sip:666@%s>\r\nContent-Length: 0\r\n\r\n", n%10000, i, n, pc.LocalAddr())
					}
					pc.WriteTo([]byte(raw), net.UDPAddrFromAddrPort(lan))
					mu.Lock()
					sent++
					mu.Unlock()
					time.Sleep(100 * time.Millisecond) // 10/s per source: 720/s in all
				}
			})
		}
		const rounds = 12 // 60 s of flood
		for round := range rounds {
			time.Sleep(5 * time.Second)
			a.register()
			c := a.invite("sip:202@mesh", netip.AddrPortFrom(a.addr.Addr(), uint16(4000+2*round)), "")
			inv := b.request(sip.INVITE)
			b.answer(inv, 200, "OK", fmt.Sprintf("t%d", round), offerSDP(netip.MustParseAddrPort("10.2.0.10:4000")))
			ok := a.response()
			wantStatus(t, ok, 200)
			from := fmt.Sprintf("<sip:201@mesh>;tag=%s", c.fromTag)
			routes := reversed(headerValues(ok, "Record-Route"))
			a.inDialog("ACK", contactURI(ok), from, ok.To().Value(), c.callID, 1, routes)
			b.request(sip.ACK)
			a.inDialog("BYE", contactURI(ok), from, ok.To().Value(), c.callID, 2, routes)
			b.answer(b.request(sip.BYE), 200, "OK", fmt.Sprintf("t%d", round), "")
			wantStatus(t, a.response(), 200)
		}
		st := m.nodes[0].svc.Stats()
		rs := m.nodes[0].reg.Stats()
		stop()
		wg.Wait()
		mu.Lock()
		t.Logf("flood of %d requests in %d s (virtual), 720/s against a table of 256 transactions: node 1 SIP %+v, registrar %+v; the phones registered and called %d of %d times",
			sent, 5*rounds, st, rs, rounds, rounds)
		if rs.Forbidden+rs.LockedOut == 0 || rs.Challenged < 100 {
			t.Errorf("the flood did not reach the node: %+v", rs)
		}
		mu.Unlock()
	})
}
