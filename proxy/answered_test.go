package proxy

import (
	"fmt"
	"net"
	"testing"
	"testing/synctest"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/sipmesh/sipmesh/internal/leakcheck"
)

// TestProxyAnsweredRecords (issue 12): server transactions end at their
// final response and client INVITE transactions at their 2xx; the small
// records left in their place answer what the transactions were kept
// for. A callee's retransmitted 200 reaches the caller again across two
// nodes (RFC 3261 §16.7 step 5), the caller's retransmitted INVITE is
// absorbed (RFC 6026 §7.1), a retransmitted OPTIONS gets its 200 again
// without reaching the proxy (RFC 3261 §17.2.2), and no transaction stays
// live; the records expire after Timer J.
func TestProxyAnsweredRecords(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		m := newMeshRig(t, 2)
		a, b := m.phone(1, "201", 10), m.phone(2, "202", 10)
		a.register()
		b.register()
		ea, eb := m.mediaEP(a, 4000, 440), m.mediaEP(b, 4000, 1000)

		c := a.invite("sip:202@mesh", ea.Local(), "")
		inv := b.request(sip.INVITE)
		b.answer(inv, 200, "OK", "tag202", offerSDP(eb.Local()))
		ok := a.response()
		wantStatus(t, ok, 200)
		synctest.Wait()
		for i, nd := range m.nodes {
			if st := nd.svc.Stats(); st.Transactions != 0 || st.Answered == 0 {
				t.Errorf("node %d after the 200: %d live transactions, %d records; want 0 and some", i+1, st.Transactions, st.Answered)
			}
		}

		// The callee retransmits its 200 (no ACK yet, RFC 3261 §13.3.1.4).
		b.answer(inv, 200, "OK", "tag202", offerSDP(eb.Local()))
		again := a.response()
		wantStatus(t, again, 200)
		if again.String() != ok.String() {
			t.Errorf("retransmitted 200 at the caller\n%s\nwant the first one\n%s", again, ok)
		}
		// The caller retransmits its INVITE: absorbed, the callee sees
		// nothing and the caller gets no new answer.
		a.sendTo(a.server(), c.raw)
		b.quiet(2 * time.Second)
		a.quiet(time.Second)

		// An OPTIONS to the node, sent twice: the second gets the same
		// 200 from the record, and the proxy sees one request.
		opt := fmt.Sprintf("OPTIONS sip:10.1.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bKopt1;rport\r\nMax-Forwards: 70\r\n"+
			"From: <sip:201@mesh>;tag=o1\r\nTo: <sip:10.1.0.1>\r\nCall-ID: opt-rec\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n", a.addr)
		svc := m.nodes[0].svc
		before := svc.Stats()
		for range 2 {
			if _, err := a.pc.WriteTo([]byte(opt), net.UDPAddrFromAddrPort(a.server())); err != nil {
				t.Fatal(err)
			}
			res := a.response()
			wantStatus(t, res, 200)
			if string(*res.CallID()) != "opt-rec" {
				t.Errorf("answer to the OPTIONS:\n%s", res)
			}
		}
		after := svc.Stats()
		if after.Requests != before.Requests+1 || after.Retransmissions < before.Retransmissions+1 {
			t.Errorf("stats before %+v, after %+v: want one request handled and one retransmission answered", before, after)
		}

		// Timer J later, the records are gone (the janitor sweeps them).
		time.Sleep(45 * time.Second)
		for i, nd := range m.nodes {
			if st := nd.svc.Stats(); st.Answered != 0 || st.Transactions != 0 {
				t.Errorf("node %d 45 s later: %d records, %d live transactions; want none", i+1, st.Answered, st.Transactions)
			}
		}
	})
}
