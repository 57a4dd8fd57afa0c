package proxy

import (
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"github.com/emiago/sipgo/sip"
)

// TestProxyByeAnswerRetransmissionAbsorbed: the proxy ends a non-INVITE
// client transaction at its final response instead of keeping it for
// Timer K; a retransmission of that response (RFC 3261 §17.1.2.2) is
// still absorbed, not sent upstream a second time.
func TestProxyByeAnswerRetransmissionAbsorbed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newMeshRig(t, 1)
		a, b := m.phone(1, "201", 10), m.phone(1, "202", 20)
		a.register()
		b.register()
		c := a.invite("sip:202@mesh", netip.MustParseAddrPort("10.1.0.10:4000"), "")
		inv := b.request(sip.INVITE)
		b.answer(inv, 200, "OK", "tag202", "")
		ok := a.response()
		wantStatus(t, ok, 200)
		routes := reversed(headerValues(ok, "Record-Route"))
		from := "<sip:201@mesh>;tag=" + c.fromTag
		a.inDialog("ACK", contactURI(ok), from, ok.To().Value(), c.callID, 1, routes)
		b.request(sip.ACK)
		a.inDialog("BYE", contactURI(ok), from, ok.To().Value(), c.callID, 2, routes)
		bye := b.request(sip.BYE)
		b.answer(bye, 200, "OK", "tag202", "")
		wantStatus(t, a.response(), 200)
		b.answer(bye, 200, "OK", "tag202", "") // retransmitted
		a.quiet(10 * time.Second)
	})
}
