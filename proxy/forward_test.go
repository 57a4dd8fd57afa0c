package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"github.com/icholy/digest"
	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/phones"
	"github.com/sipmesh/sipmesh/registrar"
)

func withForwards(f registrar.ForwardStore) func(*SIPServiceConfig) {
	return func(c *SIPServiceConfig) { c.Forwards = f }
}

// callStatus places a call and returns its final status (200 when
// answered, then hung up).
func callStatus(t *testing.T, ctx context.Context, p *phones.Phone, target string) int {
	t.Helper()
	c, err := p.Call(ctx, target, phones.CallOptions{})
	var se *phones.StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	if err != nil {
		t.Fatalf("call %s: %v", target, err)
	}
	c.Hangup(ctx)
	return 200
}

// TestCallForwarding: *72 sets an unconditional forward (confirmed by a
// tone and our BYE), the next call to the extension rings the target on
// another node, a loop A→B→A is refused with 482, *73 clears it, a
// forward on unreachable applies only without a binding, and a phone
// cannot set a forward for an extension it did not register.
func TestCallForwarding(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		var m *meshRig
		fw := &registrar.MemForwards{}
		m = newMeshRig(t, 3, withEcho(&m, 0), withForwards(fw))
		p201 := m.simPhone(1, "201", 20, 700)
		p202 := m.simPhone(2, "202", 20, 800)
		p203 := m.simPhone(3, "203", 20, 900)
		for _, p := range []*phones.Phone{p201, p202, p203} {
			if err := p.Register(m.ctx); err != nil {
				t.Fatal(err)
			}
		}
		ctx := m.ctx

		// *72203 from 202: confirmed with a tone, then the node hangs up.
		c, err := p202.Call(ctx, "*72203", phones.CallOptions{})
		if err != nil {
			t.Fatalf("*72203: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
		if !c.Heard(confirmHz) {
			t.Errorf("*72: no confirmation tone")
		}
		select {
		case <-c.Done():
		case <-time.After(3 * time.Second):
			t.Errorf("*72: the node did not hang up after its confirmation")
			c.Hangup(ctx)
		}
		if f, _ := fw.Forward(ctx, "202"); f.Always != "203" {
			t.Fatalf("after *72203: forward of 202 = %+v", f)
		}

		// A call to 202 rings 203 on node 3.
		c, err = p201.Call(ctx, "202", phones.CallOptions{})
		if err != nil {
			t.Fatalf("call 202 forwarded: %v", err)
		}
		time.Sleep(time.Second)
		if !c.Heard(900) || c.Heard(800) {
			t.Errorf("call to 202 forwarded to 203: hears 203 %v, 202 %v", c.Heard(900), c.Heard(800))
		}
		c.Hangup(ctx)

		// 203 forwards back to 202: a loop, refused.
		if code := callStatus(t, ctx, p203, "*72202"); code != 200 {
			t.Fatalf("*72202 from 203: %d", code)
		}
		time.Sleep(2 * time.Second)
		if code := callStatus(t, ctx, p201, "202"); code != 482 {
			t.Errorf("call into the loop 202→203→202: %d, want 482", code)
		}

		// *73 clears: 202 rings itself again.
		callStatus(t, ctx, p203, "*73")
		callStatus(t, ctx, p202, "*73")
		time.Sleep(2 * time.Second)
		if f, _ := fw.Forward(ctx, "202"); f.Always != "" {
			t.Errorf("after *73: %+v", f)
		}
		c, err = p201.Call(ctx, "202", phones.CallOptions{})
		if err != nil {
			t.Fatalf("call 202 after *73: %v", err)
		}
		time.Sleep(time.Second)
		if !c.Heard(800) {
			t.Errorf("after *73 the call does not reach 202")
		}
		c.Hangup(ctx)

		// Unreachable: 204 has an account but no phone.
		fw.SetForward(ctx, registrar.Forward{Ext: "204", Unreachable: "203", Updated: time.Now()})
		c, err = p201.Call(ctx, "204", phones.CallOptions{})
		if err != nil {
			t.Fatalf("call 204 (unreachable, forwarded to 203): %v", err)
		}
		time.Sleep(time.Second)
		if !c.Heard(900) {
			t.Errorf("call to unreachable 204 does not reach 203")
		}
		c.Hangup(ctx)

		// Bad codes: no number, no such extension, not one's own phone.
		if code := callStatus(t, ctx, p201, "*72"); code != 484 {
			t.Errorf("*72 without a number: %d, want 484", code)
		}
		if code := callStatus(t, ctx, p201, "*72299"); code != 404 {
			t.Errorf("*72 to no extension: %d, want 404", code)
		}
		// 202's credentials from another address than 202's phone: the
		// LAN check passes (407, then the right password), the feature
		// code does not (only the registered phone sets its forward).
		raw := m.phone(1, "202", 21)
		inv := raw.invite("sip:*72201@mesh", netip.MustParseAddrPort("10.1.0.21:4000"), "")
		res := raw.response()
		wantStatus(t, res, 407)
		raw.ackNon2xx(inv, res)
		chal, err := digest.ParseChallenge(res.GetHeader("Proxy-Authenticate").Value())
		if err != nil {
			t.Fatal(err)
		}
		raw.chal, raw.nc = chal, 0
		inv = raw.invite("sip:*72201@mesh", netip.MustParseAddrPort("10.1.0.21:4000"), "")
		res = raw.response()
		wantStatus(t, res, 403)
		raw.ackNon2xx(inv, res)
		time.Sleep(time.Second)
		synctest.Wait()
	})
}

// policyPhone starts a registered simulated phone with an answer policy.
func (m *meshRig) policyPhone(node int, ext string, last byte, tone float64, pol phones.Policy) *phones.Phone {
	m.t.Helper()
	nd := m.nodes[node-1]
	ip := netip.AddrFrom4([4]byte{10, byte(node), 0, last})
	h := m.nw.AddHost(fmt.Sprintf("pol-%s-%d", ext, last))
	nd.lan.Attach(h.AddInterface("eth0", 1500, netip.PrefixFrom(ip, 24)))
	p, err := phones.New(phones.Config{Settings: phones.Settings{User: ext, Password: "secret" + ext,
		Server: netip.AddrPortFrom(nd.lanIP, 5060), LocalAddr: ip, ToneHz: tone}, Policy: pol, Network: h})
	if err != nil {
		m.t.Fatal(err)
	}
	m.wg.Go(func() { p.Run(m.ctx) })
	if err := p.Register(m.ctx); err != nil {
		m.t.Fatal(err)
	}
	return p
}

// TestCallForwardingBusyNoAnswer: a busy extension's call goes to its
// busy target; one that rings unanswered for NoAnswerAfter is cancelled
// and the call goes to its no-answer target; a busy target that loops
// back is refused with 482.
func TestCallForwardingBusyNoAnswer(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		fw := &registrar.MemForwards{}
		m := newMeshRig(t, 3, withForwards(fw))
		ctx := m.ctx
		caller := m.simPhone(1, "201", 20, 700)
		m.policyPhone(2, "202", 20, 800, phones.Policy{Mode: phones.AutoReject, RejectCode: 486})
		p204 := m.policyPhone(2, "204", 21, 1000, phones.Policy{Mode: phones.Manual})
		m.policyPhone(3, "203", 20, 900, phones.Policy{})
		now := time.Now()
		fw.SetForward(ctx, registrar.Forward{Ext: "202", Busy: "203", Updated: now})
		fw.SetForward(ctx, registrar.Forward{Ext: "204", NoAnswer: "203", NoAnswerAfter: 5 * time.Second, Updated: now})

		c, err := caller.Call(ctx, "202", phones.CallOptions{})
		if err != nil {
			t.Fatalf("call to busy 202: %v", err)
		}
		time.Sleep(time.Second)
		if !c.Heard(900) {
			t.Errorf("the call to busy 202 does not reach 203")
		}
		c.Hangup(ctx)

		start := time.Now()
		c, err = caller.Call(ctx, "204", phones.CallOptions{})
		if err != nil {
			t.Fatalf("call to unanswered 204: %v", err)
		}
		if d := time.Since(start); d < 5*time.Second || d > 6*time.Second {
			t.Errorf("forwarded on no answer after %v, want 5 s", d)
		}
		select {
		case in := <-p204.Incoming():
			<-in.Done()
			if in.Status() != 487 {
				t.Errorf("204's ringing ended with %d, want 487", in.Status())
			}
		default:
			t.Errorf("204 never rang")
		}
		time.Sleep(time.Second)
		if !c.Heard(900) {
			t.Errorf("the call to unanswered 204 does not reach 203")
		}
		c.Hangup(ctx)

		// 202 busy-forwards to 204, which forwards back to 202: the loop
		// is stopped with 482.
		fw.SetForward(ctx, registrar.Forward{Ext: "202", Busy: "204", Updated: now})
		fw.SetForward(ctx, registrar.Forward{Ext: "204", Always: "202", Updated: now})
		if code := callStatus(t, ctx, caller, "202"); code != 482 {
			t.Errorf("busy forward into a loop: %d, want 482", code)
		}
	})
}
