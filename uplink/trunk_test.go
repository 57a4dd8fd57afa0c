package uplink

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/miekg/dns"

	"github.com/sipmesh/sipmesh/internal/kamailio"
	"github.com/sipmesh/sipmesh/internal/leakcheck"
)

// fakeRegistrar is a Client that answers REGISTERs by script, recording
// what it got, for the trunk's state machine in virtual time.
type fakeRegistrar struct {
	mu     sync.Mutex
	reqs   []*sip.Request
	answer func(n int, req *sip.Request, authed bool) *sip.Response
}

func (f *fakeRegistrar) Do(ctx context.Context, req *sip.Request, _ ...sipgo.ClientRequestOption) (*sip.Response, error) {
	return f.handle(req, false), nil
}

func (f *fakeRegistrar) DoDigestAuth(ctx context.Context, req *sip.Request, res *sip.Response, auth sipgo.DigestAuth) (*sip.Response, error) {
	req.CSeq().SeqNo++ // as sipgo does
	return f.handle(req, auth.Password == "right"), nil
}

func (f *fakeRegistrar) handle(req *sip.Request, authed bool) *sip.Response {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reqs = append(f.reqs, req.Clone())
	return f.answer(len(f.reqs), req, authed)
}

func (f *fakeRegistrar) sent() []*sip.Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*sip.Request(nil), f.reqs...)
}

func mustURI(s string) sip.Uri {
	var u sip.Uri
	if err := sip.ParseUri(s, &u); err != nil {
		panic(err)
	}
	return u
}

func testTrunk(t *testing.T, c Client, password string) *Trunk {
	tr, err := NewTrunk(TrunkConfig{Name: "prov", Registrar: mustURI("sip:192.0.2.1"), AOR: mustURI("sip:5550100@prov.example"),
		Username: "5550100", Password: password, Contact: mustURI("sip:gw@198.51.100.2:5060"), Expires: time.Hour,
		Client: c, Rand: rand.New(rand.NewPCG(1, 1))})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func expiresOf(r *sip.Request) int {
	n, _ := strconv.Atoi(r.GetHeader("Expires").Value())
	return n
}

// TestTrunkRefresh: challenge answered, the granted lifetime taken from
// the Contact, a refresh at half of it with the same Call-ID and a higher
// CSeq, and the binding removed (Expires: 0) when the trunk stops.
func TestTrunkRefresh(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeRegistrar{answer: func(n int, req *sip.Request, authed bool) *sip.Response {
			if !authed {
				return sip.NewResponseFromRequest(req, 401, "Unauthorized", nil)
			}
			res := sip.NewResponseFromRequest(req, 200, "OK", nil)
			c := req.Contact().Clone()
			c.Params.Add("expires", strconv.Itoa(min(expiresOf(req), 600)))
			res.AppendHeader(c)
			return res
		}}
		tr := testTrunk(t, f, "right")
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		start := time.Now()
		go func() { done <- tr.Run(ctx) }()
		synctest.Wait()
		st := tr.Status()
		if !st.Registered || st.Expires.Sub(start) != 600*time.Second || st.NextTry.Sub(start) != 300*time.Second {
			t.Fatalf("after the first REGISTER: %+v", st)
		}
		time.Sleep(301 * time.Second)
		synctest.Wait()
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		reqs := f.sent()
		// REGISTER, authed REGISTER; refresh: REGISTER, authed; unregister: REGISTER, authed.
		if len(reqs) != 6 {
			t.Fatalf("%d REGISTERs, want 6", len(reqs))
		}
		var seqs []uint32
		for _, r := range reqs {
			if r.CallID().Value() != reqs[0].CallID().Value() {
				t.Fatal("Call-ID changed between REGISTERs (RFC 3261 §10.2.4)")
			}
			seqs = append(seqs, r.CSeq().SeqNo)
		}
		for i := 1; i < len(seqs); i++ {
			if seqs[i] <= seqs[i-1] {
				t.Fatalf("CSeq not increasing: %v", seqs)
			}
		}
		if expiresOf(reqs[3]) != 3600 || expiresOf(reqs[5]) != 0 {
			t.Fatalf("Expires asked: refresh %d, stop %d", expiresOf(reqs[3]), expiresOf(reqs[5]))
		}
		if tr.Status().Registered {
			t.Fatal("registered after stop")
		}
	})
}

// TestTrunkMinExpires: a 423 with Min-Expires is answered by asking for
// that lifetime (RFC 3261 §10.3 step 7).
// TestTrunkContactChange: a gateway behind NAT whose public address
// changed registers the new Contact at once, not at the next refresh;
// the same host again sends nothing.
func TestTrunkContactChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeRegistrar{answer: func(n int, req *sip.Request, authed bool) *sip.Response {
			res := sip.NewResponseFromRequest(req, 200, "OK", nil)
			c := req.Contact().Clone()
			c.Params.Add("expires", "600")
			res.AppendHeader(c)
			return res
		}}
		tr := testTrunk(t, f, "right")
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- tr.Run(ctx) }()
		synctest.Wait()
		tr.SetContactHost("198.51.100.2") // the same: nothing to do
		synctest.Wait()
		if n := len(f.sent()); n != 1 {
			t.Fatalf("%d REGISTERs after the first and an unchanged host, want 1", n)
		}
		start := time.Now()
		tr.SetContactHost("203.0.113.9")
		synctest.Wait()
		reqs := f.sent()
		if len(reqs) != 2 || reqs[1].Contact().Address.Host != "203.0.113.9" || time.Since(start) != 0 {
			t.Fatalf("after the change: %d REGISTERs, the last with Contact %v; want 2, the new host, at once", len(reqs), reqs[len(reqs)-1].Contact())
		}
		if st := tr.Status(); !st.Registered || st.Expires.Sub(start) != 600*time.Second {
			t.Errorf("status after the new Contact: %+v", st)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if last := f.sent()[len(f.sent())-1]; expiresOf(last) != 0 || last.Contact().Address.Host != "203.0.113.9" {
			t.Errorf("the last REGISTER removes %v with Expires %d, want the new Contact with 0", last.Contact(), expiresOf(last))
		}
	})
}

func TestTrunkMinExpires(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeRegistrar{answer: func(n int, req *sip.Request, _ bool) *sip.Response {
			if expiresOf(req) > 0 && expiresOf(req) < 7200 {
				res := sip.NewResponseFromRequest(req, 423, "Interval Too Brief", nil)
				res.AppendHeader(sip.NewHeader("Min-Expires", "7200"))
				return res
			}
			return sip.NewResponseFromRequest(req, 200, "OK", nil)
		}}
		tr := testTrunk(t, f, "right")
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- tr.Run(ctx) }()
		synctest.Wait()
		st := tr.Status()
		cancel()
		<-done
		if reqs := f.sent(); len(reqs) < 2 || expiresOf(reqs[1]) != 7200 || !st.Registered || st.NextTry.Sub(st.Expires) != -3600*time.Second {
			t.Fatalf("after 423: %+v, %d requests", st, len(reqs))
		}
	})
}

// TestTrunkBackoff: wrong credentials and a dead provider are retried
// after RFC 5626 §4.5's exponential back-off (30 s · 2^(n−1), 50–100 %,
// at most 30 min), and a success resets it.
func TestTrunkBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var down sync.Mutex
		failing := true
		f := &fakeRegistrar{answer: func(n int, req *sip.Request, authed bool) *sip.Response {
			down.Lock()
			defer down.Unlock()
			if failing {
				return sip.NewResponseFromRequest(req, 401, "Unauthorized", nil)
			}
			return sip.NewResponseFromRequest(req, 200, "OK", nil)
		}}
		tr := testTrunk(t, f, "wrong")
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := make(chan error)
		go func() { done <- tr.Run(ctx) }()
		for n := 1; n <= 8; n++ {
			synctest.Wait()
			st := tr.Status()
			wait := time.Until(st.NextTry)
			ceil := min(30*time.Minute, 30*time.Second<<(n-1))
			if st.Registered || st.Failures != n || wait < ceil/2 || wait > ceil || !strings.Contains(st.LastError, "credentials refused") {
				t.Fatalf("failure %d: wait %v (ceiling %v), %+v", n, wait, ceil, st)
			}
			if strings.Contains(st.LastError, "wrong") {
				t.Fatal("the password is in the status")
			}
			time.Sleep(wait)
		}
		down.Lock()
		failing = false
		down.Unlock()
		tr.cfg.Password = "right"
		time.Sleep(30 * time.Minute)
		synctest.Wait()
		if st := tr.Status(); !st.Registered || st.Failures != 0 || st.LastError != "" {
			t.Fatalf("after recovery: %+v", st)
		}
		cancel()
		<-done
	})
}

// TestTrunkKamailio registers a trunk with a real provider — Kamailio
// from Debian with digest authentication (testdata/kamailio, user
// u5550100, password pw5550100) — then shows the binding works: a
// MESSAGE sent to the account through Kamailio reaches the gateway's
// Contact. After the trunk stops, Kamailio no longer finds it (404).
// Wrong credentials leave the trunk unregistered with the reason.
func TestTrunkKamailio(t *testing.T) {
	leakcheck.Check(t)
	kam := kamailio.Start(t, "../testdata/kamailio/kamailio.cfg", "WITH_AUTH")
	port := kamailio.FreeUDPPort(t)
	gw := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
	ua, err := sipgo.NewUA(sipgo.WithUserAgent("sipmesh-gw-test"))
	if err != nil {
		t.Fatal(err)
	}
	defer ua.Close()
	srv, err := sipgo.NewServer(ua)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 4)
	srv.OnMessage(func(req *sip.Request, tx sip.ServerTransaction) {
		tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
		got <- string(req.Body())
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	listening := make(chan struct{})
	srvDone := make(chan struct{})
	go func() {
		defer close(srvDone)
		srv.ListenAndServe(context.WithValue(ctx, sipgo.ListenReadyCtxKey, sipgo.ListenReadyCtxValue(listening)), "udp", gw.String())
	}()
	defer func() { cancel(); <-srvDone }()
	<-listening
	cl, err := sipgo.NewClient(ua, sipgo.WithClientHostname("127.0.0.1"), sipgo.WithClientPort(port))
	if err != nil {
		t.Fatal(err)
	}
	newTrunk := func(password string) *Trunk {
		tr, err := NewTrunk(TrunkConfig{Name: "kamailio", Registrar: mustURI("sip:" + kam.String()),
			AOR: mustURI("sip:u5550100@127.0.0.1"), Username: "u5550100", Password: password,
			Contact: mustURI("sip:gw@" + gw.String()), Expires: 300 * time.Second, Client: cl})
		if err != nil {
			t.Fatal(err)
		}
		return tr
	}
	// message sends MESSAGE to u5550100 through Kamailio and returns the
	// final status.
	message := func(body string) int {
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(kam))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "MESSAGE sip:u5550100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bK%s;rport\r\nMax-Forwards: 70\r\nFrom: <sip:bob@example.net>;tag=b\r\nTo: <sip:u5550100@127.0.0.1>\r\nCall-ID: m-%s\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s",
			c.LocalAddr(), body, body, len(body), body)
		buf := make([]byte, 4096)
		for {
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, err := c.Read(buf)
			if err != nil {
				t.Fatalf("no answer from Kamailio to MESSAGE: %v", err)
			}
			code, _ := strconv.Atoi(strings.Fields(string(buf[:n]))[1])
			if code >= 200 {
				return code
			}
		}
	}

	tr := newTrunk("pw5550100")
	tctx, tcancel := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- tr.Run(tctx) }()
	deadline := time.Now().Add(20 * time.Second)
	for !tr.Status().Registered {
		if time.Now().After(deadline) {
			t.Fatalf("trunk not registered with Kamailio: %+v", tr.Status())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("trunk status: %+v", tr.Status())
	if code := message("hello1"); code != 200 {
		t.Fatalf("MESSAGE through Kamailio to the registered trunk: %d", code)
	}
	if b := <-got; b != "hello1" {
		t.Fatalf("the gateway got %q", b)
	}
	tcancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if code := message("hello2"); code != 404 {
		t.Fatalf("MESSAGE after the trunk unregistered: %d, want 404", code)
	}

	bad := newTrunk("not-the-password")
	bctx, bcancel := context.WithCancel(ctx)
	go func() { done <- bad.Run(bctx) }()
	deadline = time.Now().Add(20 * time.Second)
	for bad.Status().Failures == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no failure with a wrong password: %+v", bad.Status())
		}
		time.Sleep(20 * time.Millisecond)
	}
	st := bad.Status()
	bcancel()
	<-done
	if st.Registered || !strings.Contains(st.LastError, "credentials refused") || strings.Contains(st.LastError, "not-the-password") {
		t.Fatalf("wrong password: %+v", st)
	}
}

// fakeDNS answers from rrs, in process (no socket: usable in virtual
// time).
func fakeDNS(t *testing.T, zone string) Exchange {
	t.Helper()
	var rrs []dns.RR
	zp := dns.NewZoneParser(strings.NewReader(zone), "", "")
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		rrs = append(rrs, rr)
	}
	if err := zp.Err(); err != nil {
		t.Fatal(err)
	}
	return func(_ context.Context, q *dns.Msg) (*dns.Msg, error) {
		m := new(dns.Msg)
		m.SetReply(q)
		for _, rr := range rrs {
			if strings.EqualFold(rr.Header().Name, q.Question[0].Name) && rr.Header().Rrtype == q.Question[0].Qtype {
				m.Answer = append(m.Answer, rr)
			}
		}
		return m, nil
	}
}

// TestTrunkUDPOnly: the trunk registers over UDP only (its Contact and
// the calls through it are UDP): a provider whose NAPTR puts TCP first is
// registered with at its UDP server, and one that offers TCP only is an
// error, with no REGISTER sent anywhere.
func TestTrunkUDPOnly(t *testing.T) {
	const zone = `
prov.example.     60 IN NAPTR 10 10 "s" "SIP+D2T" "" _sip._tcp.prov.example.
prov.example.     60 IN NAPTR 20 10 "s" "SIP+D2U" "" _sip._udp.prov.example.
_sip._tcp.prov.example. 60 IN SRV 10 0 5060 tcp.prov.example.
_sip._udp.prov.example. 60 IN SRV 10 0 5060 udp.prov.example.
tcp.prov.example. 60 IN A 192.0.2.6
udp.prov.example. 60 IN A 192.0.2.17
tcponly.example.  60 IN NAPTR 10 10 "s" "SIP+D2T" "" _sip._tcp.tcponly.example.
_sip._tcp.tcponly.example. 60 IN SRV 10 0 5060 tcp.prov.example.
`
	synctest.Test(t, func(t *testing.T) {
		reg := &fakeRegistrar{answer: func(n int, req *sip.Request, authed bool) *sip.Response {
			return sip.NewResponseFromRequest(req, 200, "OK", nil)
		}}
		for _, tc := range []struct{ host, want string }{
			{"prov.example", "UDP 192.0.2.17:5060"},
			{"tcponly.example", ""},
		} {
			tr, err := NewTrunk(TrunkConfig{Name: "prov", Registrar: mustURI("sip:" + tc.host), AOR: mustURI("sip:5550100@" + tc.host),
				Username: "5550100", Password: "right", Contact: mustURI("sip:gw@198.51.100.2:5060"), Expires: time.Hour,
				Client: reg, Locator: &Locator{Exchange: fakeDNS(t, zone)}})
			if err != nil {
				t.Fatal(err)
			}
			before := len(reg.sent())
			_, target, err := tr.register(context.Background(), time.Hour)
			if tc.want == "" {
				if !errors.Is(err, ErrNotFound) || len(reg.sent()) != before {
					t.Errorf("%s: err %v, %d REGISTERs: want ErrNotFound and none", tc.host, err, len(reg.sent())-before)
				}
				continue
			}
			if err != nil || target != tc.want {
				t.Errorf("%s: registered at %q (%v), want %q", tc.host, target, err, tc.want)
			}
		}
	})
}
