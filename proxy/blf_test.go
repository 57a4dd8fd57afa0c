package proxy

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/phones"
)

// subscribeDialog is a watcher's SUBSCRIBE for ext's dialogs (RFC 4235).
func subscribeDialog(p *tphone, ruri, callID, toTag string, cseq, expires int, routes []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "SUBSCRIBE %s SIP/2.0\r\n%sMax-Forwards: 70\r\nFrom: <sip:%s@mesh>;tag=w%s\r\n", ruri, p.via(), p.ext, p.ext)
	to := "<sip:202@mesh>"
	if toTag != "" {
		to += ";tag=" + toTag
	}
	fmt.Fprintf(&b, "To: %s\r\nCall-ID: %s\r\nCSeq: %d SUBSCRIBE\r\n", to, callID, cseq)
	for _, r := range routes {
		fmt.Fprintf(&b, "Route: %s\r\n", r)
	}
	fmt.Fprintf(&b, "Contact: <sip:%s@%s>\r\nEvent: dialog\r\nAccept: application/dialog-info+xml\r\nExpires: %d\r\nContent-Length: 0\r\n\r\n",
		p.ext, p.addr, expires)
	return b.String()
}

var (
	dialogState = regexp.MustCompile(`<state>([a-z]+)</state>`)
	docVersion  = regexp.MustCompile(`version="([0-9]+)"`)
)

// notified answers a NOTIFY and returns its dialog states, document
// version and Subscription-State.
func notified(t *testing.T, p *tphone, n *sip.Request) (states []string, version, subState string) {
	t.Helper()
	if ev := n.GetHeader("Event"); ev == nil || ev.Value() != "dialog" {
		t.Errorf("NOTIFY without Event: dialog:\n%s", n)
	}
	if ct := n.GetHeader("Content-Type"); ct == nil || ct.Value() != phones.DialogInfoType {
		t.Errorf("NOTIFY body type %v, want %s", ct, phones.DialogInfoType)
	}
	for _, m := range dialogState.FindAllStringSubmatch(string(n.Body()), -1) {
		states = append(states, m[1])
	}
	if m := docVersion.FindStringSubmatch(string(n.Body())); m != nil {
		version = m[1]
	}
	if h := n.GetHeader("Subscription-State"); h != nil {
		subState = h.Value()
	}
	p.answer(n, 200, "OK", "w"+p.ext, "")
	return states, version, subState
}

// answerAndNotify returns the final answer to a SUBSCRIBE and the NOTIFY
// that follows it, whichever arrives first (the NOTIFY left unanswered).
func answerAndNotify(p *tphone) (*sip.Response, *sip.Request) {
	var res *sip.Response
	var n *sip.Request
	for res == nil || n == nil {
		switch v := p.recv().(type) {
		case *sip.Response:
			if v.StatusCode != 100 {
				res = v
			}
		case *sip.Request:
			n = v
		}
	}
	return res, n
}

// TestBusyLampField: a watcher on node 1 subscribes to 202's dialogs
// (202 on node 2); 201 on node 3 calls 202. The watcher's NOTIFYs, sent
// by 202's node through the watcher's node, show no dialog, then the
// call confirmed, then terminated after the hang-up, with rising document
// versions. Unsubscribing (Expires 0) ends the subscription with a final
// NOTIFY; a second subscription expires by itself (RFC 6665 §4.1.2) with
// terminated;reason=timeout.
func TestBusyLampField(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		m := newMeshRig(t, 3)
		w := m.phone(1, "203", 10)
		w.register()
		callee := m.simPhone(2, "202", 20, 800)
		caller := m.simPhone(3, "201", 20, 600)
		for _, p := range []*phones.Phone{callee, caller} {
			if err := p.Register(m.ctx); err != nil {
				t.Fatal(err)
			}
		}
		w.sendTo(w.server(), subscribeDialog(w, "sip:202@mesh", "blf-1", "", 1, 600, nil))
		res, first := answerAndNotify(w)
		wantStatus(t, res, 200)
		if e := res.GetHeader("Expires"); e == nil || e.Value() != "600" {
			t.Errorf("200 to SUBSCRIBE: Expires %v, want 600", e)
		}
		if first.Method != sip.NOTIFY {
			t.Fatalf("want the first NOTIFY, got\n%s", first)
		}
		states, v0, sub := notified(t, w, first)
		if len(states) != 0 || !strings.HasPrefix(sub, "active") {
			t.Errorf("first NOTIFY: states %v, Subscription-State %q; want none, active", states, sub)
		}
		if n := m.nodes[1].svc.blf.Subscriptions(); n != 1 {
			t.Errorf("node 2 keeps %d subscriptions, want 1 (it notifies for 202)", n)
		}

		c, err := caller.Call(m.ctx, "202", phones.CallOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var seen []string
		versions := []string{v0}
		await := func(want string) {
			t.Helper()
			for !slices.Contains(seen, want) {
				n := w.request(sip.NOTIFY)
				states, v, _ := notified(t, w, n)
				if len(states) != 1 {
					t.Fatalf("NOTIFY with %d dialogs, want 202's call:\n%s", len(states), n.Body())
				}
				seen, versions = append(seen, states[0]), append(versions, v)
			}
		}
		await(phones.DialogConfirmed)
		if err := c.Hangup(m.ctx); err != nil {
			t.Fatal(err)
		}
		await(phones.DialogTerminated)
		t.Logf("watcher on node 1 saw 202 (node 2) go %v, document versions %v", seen, versions)
		for i := 1; i < len(versions); i++ {
			a, _ := strconv.Atoi(versions[i-1])
			b, err := strconv.Atoi(versions[i])
			if err != nil || b <= a {
				t.Errorf("document versions %v do not rise", versions)
			}
		}

		// Unsubscribe, in the subscription's dialog: the route set is the
		// 200's Record-Route reversed (RFC 3261 §12.1.2).
		routes := reversed(headerValues(res, "Record-Route"))
		toTag, _ := res.To().Params.Get("tag")
		target := contactURI(res)
		w.inDialogRaw(subscribeDialog(w, target, "blf-1", toTag, 2, 0, routes), target, routes)
		res, final := answerAndNotify(w)
		wantStatus(t, res, 200)
		if _, _, sub := notified(t, w, final); !strings.HasPrefix(sub, "terminated") {
			t.Errorf("NOTIFY after unsubscribing: Subscription-State %q, want terminated", sub)
		}

		// A subscription that is not refreshed expires.
		w.sendTo(w.server(), subscribeDialog(w, "sip:202@mesh", "blf-2", "", 1, 60, nil))
		start := time.Now()
		res, first = answerAndNotify(w)
		wantStatus(t, res, 200)
		notified(t, w, first)
		n := w.request(sip.NOTIFY)
		if _, _, sub := notified(t, w, n); sub != "terminated;reason=timeout" || time.Since(start) < 60*time.Second {
			t.Errorf("after %v: Subscription-State %q, want terminated;reason=timeout after 60 s", time.Since(start), sub)
		}
		time.Sleep(100 * time.Millisecond) // the NOTIFY's 200 on its way back
		if n := m.nodes[1].svc.blf.Subscriptions(); n != 0 {
			t.Errorf("node 2 keeps %d subscriptions after they ended", n)
		}
	})
}

// TestBusyLampFieldBounds: one watcher gets phones.DefaultBLFPerWatcher
// subscriptions at 202's node and then 503 (500 past its own node); a duration
// under the minimum gets 423 with Min-Expires (RFC 6665 §4.2.1.1); a
// subscription to an extension registered nowhere gets 480, and one
// without credentials the proxy's 407 like any request from the LAN.
func TestBusyLampFieldBounds(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		m := newMeshRig(t, 2)
		w := m.phone(1, "203", 10)
		if err := m.simPhone(2, "202", 20, 800).Register(m.ctx); err != nil {
			t.Fatal(err)
		}
		// Without credentials: the proxy's challenge.
		w.sendTo(w.server(), subscribeDialog(w, "sip:202@mesh", "blf-noauth", "", 1, 600, nil))
		wantStatus(t, w.response(), 407)
		w.register()

		answer := func(callID string) *sip.Response {
			t.Helper()
			for {
				switch v := w.recv().(type) {
				case *sip.Response:
					if v.StatusCode != 100 && v.CallID().Value() == callID {
						return v
					}
				case *sip.Request:
					notified(t, w, v)
				}
			}
		}
		w.sendTo(w.server(), subscribeDialog(w, "sip:202@mesh", "blf-short", "", 1, 30, nil))
		res := answer("blf-short")
		wantStatus(t, res, 423)
		if h := res.GetHeader("Min-Expires"); h == nil || h.Value() != "60" {
			t.Errorf("423 with Min-Expires %v, want 60", h)
		}
		for i := range phones.DefaultBLFPerWatcher {
			id := fmt.Sprintf("blf-%d", i)
			w.sendTo(w.server(), subscribeDialog(w, "sip:202@mesh", id, "", 1, 600, nil))
			wantStatus(t, answer(id), 200)
		}
		w.sendTo(w.server(), subscribeDialog(w, "sip:202@mesh", "blf-over", "", 1, 600, nil))
		// 202's node answers 503; the watcher's node, a proxy, passes it
		// on as 500 (RFC 3261 §16.7 step 6).
		wantStatus(t, answer("blf-over"), 500)
		if n := m.nodes[1].svc.blf.Subscriptions(); n != phones.DefaultBLFPerWatcher {
			t.Errorf("node 2 keeps %d subscriptions, want %d", n, phones.DefaultBLFPerWatcher)
		}
		w.sendTo(w.server(), strings.Replace(subscribeDialog(w, "sip:204@mesh", "blf-nobody", "", 1, 600, nil),
			"To: <sip:202@mesh>", "To: <sip:204@mesh>", 1))
		wantStatus(t, answer("blf-nobody"), 480)
	})
}
