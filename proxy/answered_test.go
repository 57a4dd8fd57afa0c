package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
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

// TestOneBusySourceServed (issue 12): one LAN address sending 1,000 calls
// a second (a PBX behind a port, authenticating each call as SIPp does:
// INVITE, 407, INVITE with credentials) to a callee on the same LAN that
// answers each at once is served with the default limits: every call is
// answered 200 through the proxy, none is rate-limited or shed, and the
// callee's 200s are not counted against its address. (With the old 100
// datagrams/s per source, requests and responses alike, most calls were
// dropped.)
func TestOneBusySourceServed(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		// The node's default limits (the rig turns the rate limit off).
		m := newMeshRig(t, 1, func(c *SIPServiceConfig) { c.Rate, c.Burst, c.MaxTransactions = 0, 0, 0 })
		pbx, callee := m.phone(1, "201", 10), m.phone(1, "202", 11)
		pbx.register()
		callee.register()
		const calls, perSecond = 2000, 1000
		media := netip.MustParseAddrPort("10.1.0.10:4000")
		server := net.UDPAddrFromAddrPort(pbx.server())
		byID := make(map[string]*call, calls)
		order := make([]*call, calls)
		for i := range order {
			order[i] = pbx.buildInvite("sip:202@mesh", media, "")
			byID[order[i].callID] = order[i]
		}

		stop := make(chan struct{})
		var answered, ok int
		codes := map[int]int{}
		var wg sync.WaitGroup
		wg.Go(func() { // the callee answers every INVITE 200 at once
			for {
				select {
				case msg := <-callee.in:
					if req, isReq := msg.(*sip.Request); isReq && req.IsInvite() {
						callee.answer(req, 200, "OK", "cal"+string(*req.CallID()), "")
						answered++
					}
				case <-stop:
					return
				}
			}
		})
		wg.Go(func() { // the PBX answers each 407 with credentials and counts its 200s
			for {
				select {
				case msg := <-pbx.in:
					res, isRes := msg.(*sip.Response)
					if !isRes {
						continue
					}
					codes[res.StatusCode]++
					switch c := byID[string(*res.CallID())]; {
					case res.StatusCode == 200:
						ok++
					case res.StatusCode == 407 && c != nil:
						chal, err := digest.ParseChallenge(res.GetHeader("Proxy-Authenticate").Value())
						if err != nil {
							t.Error(err)
							continue
						}
						cred, err := digest.Digest(chal, digest.Options{Method: "INVITE", URI: c.ruri, Username: "201",
							Password: "secret201", Count: 1, Cnonce: "0a4f113b"})
						if err != nil {
							t.Error(err)
							continue
						}
						raw := strings.Replace(c.raw, c.branch, c.branch+"a", 1)
						raw = strings.Replace(raw, "CSeq: 1 INVITE", "CSeq: 2 INVITE\r\nProxy-Authorization: "+cred.String(), 1)
						pbx.pc.WriteTo([]byte(raw), server)
					}
				case <-stop:
					return
				}
			}
		})
		for i, c := range order {
			pbx.pc.WriteTo([]byte(c.raw), server)
			if i%10 == 9 {
				time.Sleep(10 * time.Second / perSecond)
			}
		}
		time.Sleep(5 * time.Second) // fake time: everything in flight lands
		synctest.Wait()
		close(stop)
		wg.Wait()
		st := m.nodes[0].svc.Stats()
		if answered != calls || ok != calls || st.RateLimited != 0 || st.Overloaded != 0 {
			t.Errorf("%d calls at %d/s from one address: the callee answered %d, the PBX got %d 200s (answers %v); stats %+v",
				calls, perSecond, answered, ok, codes, st)
		}
	})
}
