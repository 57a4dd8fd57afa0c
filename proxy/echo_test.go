package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/phones"
)

// withEcho gives every node of a rig the echo test, its media on the
// node's LAN address.
func withEcho(m **meshRig, max int) func(*SIPServiceConfig) {
	return func(c *SIPServiceConfig) {
		lan := c.LANAddr.Addr()
		c.MaxEchoSessions = max
		c.EchoListen = func(ctx context.Context) (net.PacketConn, error) {
			// Node i's host is "nodei", its LAN address 10.i.0.1.
			h := (*m).nw.Host(fmt.Sprintf("node%d", lan.As4()[1]))
			return h.ListenPacket(ctx, "udp", netip.AddrPortFrom(lan, 0).String())
		}
	}
}

// simPhone starts a simulated phone (phones.Phone) on a node's LAN.
func (m *meshRig) simPhone(node int, ext string, last byte, tone float64) *phones.Phone {
	m.t.Helper()
	nd := m.nodes[node-1]
	ip := netip.AddrFrom4([4]byte{10, byte(node), 0, last})
	h := m.nw.AddHost(fmt.Sprintf("sim-%s-%d", ext, last))
	nd.lan.Attach(h.AddInterface("eth0", 1500, netip.PrefixFrom(ip, 24)))
	p, err := phones.New(phones.Config{Settings: phones.Settings{User: ext, Password: "secret" + ext,
		Server: netip.AddrPortFrom(nd.lanIP, 5060), LocalAddr: ip, ToneHz: tone}, Network: h})
	if err != nil {
		m.t.Fatal(err)
	}
	m.wg.Go(func() { p.Run(m.ctx) })
	return p
}

// TestEchoTest: a phone calling 3246 (or "echo") is answered by its own
// node and hears its own tone; the session ends with the caller's BYE.
func TestEchoTest(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		var m *meshRig
		m = newMeshRig(t, 2, withEcho(&m, 0))
		p := m.simPhone(1, "201", 20, 700)
		synctest.Wait()
		for _, target := range []string{"3246", "echo", "sip:3246@sipserver.mesh"} {
			c, err := p.Call(m.ctx, target, phones.CallOptions{})
			if err != nil {
				t.Fatalf("call %s: %v", target, err)
			}
			time.Sleep(time.Second) // fake time: a second of audio
			if !c.Heard(700) {
				t.Errorf("call %s: the caller does not hear its own tone echoed (%+v)", target, c.Stats())
			}
			if c.Heard(1000) {
				t.Errorf("call %s: hears a tone nobody sent", target)
			}
			if n := m.nodes[0].svc.EchoSessions(); n != 1 {
				t.Errorf("call %s: %d echo sessions on node 1, want 1", target, n)
			}
			if st := m.nodes[0].svc.Stats(); st.Proxied != 0 {
				t.Errorf("call %s: the echo test was proxied (%d requests)", target, st.Proxied)
			}
			if err := c.Hangup(m.ctx); err != nil || c.Err() != nil {
				t.Fatalf("call %s: hangup: %v, %v", target, err, c.Err())
			}
			synctest.Wait()
			if n := m.nodes[0].svc.EchoSessions(); n != 0 {
				t.Errorf("call %s: %d echo sessions left after BYE", target, n)
			}
		}
	})
}

// TestEchoTestBounds: sessions beyond the bound get 486, an offer without
// G.711 gets 488, a call that is never ACKed ends with our BYE, and a
// session without audio ends after phones.EchoIdle with our BYE.
func TestEchoTestBounds(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		var m *meshRig
		m = newMeshRig(t, 1, withEcho(&m, 1))
		p := m.simPhone(1, "201", 20, 700)
		raw := m.phone(1, "202", 21)
		raw.register()
		synctest.Wait()
		c, err := p.Call(m.ctx, "3246", phones.CallOptions{})
		if err != nil {
			t.Fatal(err)
		}

		// The bound: a second caller is busy.
		inv := raw.invite("sip:3246@mesh", netip.MustParseAddrPort("10.1.0.21:4000"), "")
		res := raw.response()
		wantStatus(t, res, 486)
		raw.ackNon2xx(inv, res)
		c.Hangup(m.ctx)
		synctest.Wait()

		// No G.711 in the offer.
		g722 := raw.buildInvite("sip:3246@mesh", netip.MustParseAddrPort("10.1.0.21:4000"), "")
		g722.raw = strings.ReplaceAll(g722.raw, "RTP/AVP 0\r\na=rtpmap:0 PCMU/8000", "RTP/AVP 9\r\na=rtpmap:9 G722/8000")
		raw.sendTo(raw.server(), g722.raw)
		res = raw.response()
		wantStatus(t, res, 488)
		raw.ackNon2xx(g722, res)

		// Answered but never ACKed: the node hangs up (no ACK within 64*T1,
		// or no audio for phones.EchoIdle, whichever comes first).
		inv = raw.invite("sip:3246@mesh", netip.MustParseAddrPort("10.1.0.21:4000"), "")
		res = raw.response()
		wantStatus(t, res, 200)
		if got := sdpOf(t, res.Body()); got.Addr != m.nodes[0].lanIP || got.Port == 0 {
			t.Errorf("echo answer points at %v, want the node's LAN address", got.RTP())
		}
		if got := contactURI(res); got != "sip:3246@10.1.0.1:5060" {
			t.Errorf("echo Contact %s", got)
		}
		var bye *sip.Request
		for bye == nil {
			switch msg := raw.recv().(type) {
			case *sip.Response:
				wantStatus(t, msg, 200) // retransmissions of the 2xx
			case *sip.Request:
				if msg.Method != sip.BYE {
					t.Fatalf("want BYE, got %s", msg.Method)
				}
				bye = msg
			}
		}
		if tag, _ := bye.From().Params.Get("tag"); tag != mustTag(t, res) || bye.CallID().Value() != inv.callID {
			t.Errorf("BYE outside the dialog:\n%s", bye)
		}
		raw.answer(bye, 200, "OK", "", "")
		time.Sleep(100 * time.Millisecond) // the 200 crosses the LAN
		synctest.Wait()
		if n := m.nodes[0].svc.EchoSessions(); n != 0 {
			t.Errorf("%d echo sessions after the unACKed call", n)
		}

		// Answered and ACKed, but no audio: idle timeout, BYE.
		inv = raw.invite("sip:3246@mesh", netip.MustParseAddrPort("10.1.0.21:4000"), "")
		res = raw.response()
		wantStatus(t, res, 200)
		raw.sendTo(raw.server(), fmt.Sprintf("ACK sip:3246@10.1.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bKack1;rport\r\n", raw.addr)+
			fmt.Sprintf("Max-Forwards: 70\r\nFrom: <sip:202@mesh>;tag=%s\r\n%s\r\n", inv.fromTag, res.To().String())+
			fmt.Sprintf("Call-ID: %s\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n", inv.callID))
		start := time.Now()
		bye = raw.request(sip.BYE)
		if d := time.Since(start); d < phones.EchoIdle || d > 2*phones.EchoIdle {
			t.Errorf("idle session hung up after %v, want about %v", d, phones.EchoIdle)
		}
		raw.answer(bye, 200, "OK", "", "")
		time.Sleep(100 * time.Millisecond) // the 200 crosses the LAN
		synctest.Wait()
		if n := m.nodes[0].svc.EchoSessions(); n != 0 {
			t.Errorf("%d echo sessions after the idle call", n)
		}
		if c.Err() != nil && !errors.Is(c.Err(), context.Canceled) {
			t.Errorf("first call: %v", c.Err())
		}
	})
}

func mustTag(t *testing.T, res *sip.Response) string {
	t.Helper()
	tag, ok := res.To().Params.Get("tag")
	if !ok {
		t.Fatalf("no To tag in\n%s", res)
	}
	return tag
}
