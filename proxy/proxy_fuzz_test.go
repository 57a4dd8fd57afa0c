package proxy

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/emiago/sipgo/sip"
	"github.com/sipmesh/sipmesh/memnet"
	"github.com/sipmesh/sipmesh/registrar"
	"github.com/sipmesh/sipmesh/ssr"
)

// fakeServerTx records what the proxy answers, for driving the request
// handler without sipgo's transaction layer.
type fakeServerTx struct {
	mu   sync.Mutex
	res  []*sip.Response
	done chan struct{}
}

func (f *fakeServerTx) Terminate()                         {}
func (f *fakeServerTx) OnTerminate(sip.FnTxTerminate) bool { return true }
func (f *fakeServerTx) Done() <-chan struct{}              { return f.done }
func (f *fakeServerTx) Err() error                         { return nil }
func (f *fakeServerTx) Acks() <-chan *sip.Request          { return nil }
func (f *fakeServerTx) OnCancel(sip.FnTxCancel) bool       { return true }
func (f *fakeServerTx) responses() []*sip.Response         { f.mu.Lock(); defer f.mu.Unlock(); return f.res }
func (f *fakeServerTx) Respond(r *sip.Response) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.res = append(f.res, r)
	return nil
}

// newHandlerService is a service whose handler can be called directly:
// its sockets exist but are not served, so nothing it forwards leaves.
func newHandlerService(t testing.TB) *SIPService {
	nw := memnet.New(memnet.Config{})
	h := nw.AddHost("node")
	seg := nw.NewSegment("lan", memnet.LinkConfig{})
	seg.Attach(h.AddInterface("lan0", 1500, netip.MustParsePrefix("10.1.0.1/24")))
	seg.Attach(h.AddInterface("mesh0", 1500, netip.MustParsePrefix("fd00::1/64")))
	ctx := context.Background()
	lan, err := h.ListenPacket(ctx, "udp", "10.1.0.1:5060")
	if err != nil {
		t.Fatal(err)
	}
	mesh, err := h.ListenPacket(ctx, "udp", "[fd00::1]:5060")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lan.Close(); mesh.Close() })
	loc, accts := registrar.NewMemLocation(), newTestAccounts(t, "201", "202")
	reg, err := registrar.NewRegistrar(registrar.RegistrarConfig{Node: 1, Locations: loc, Accounts: accts, Rate: -1})
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewSIPService(SIPServiceConfig{Node: 1, LANAddr: netip.MustParseAddrPort("10.1.0.1:5060"),
		MeshAddr: netip.MustParseAddrPort("[fd00::1]:5060"), LANUDP: lan, MeshUDP: mesh,
		Registrar: reg, Locations: loc, Accounts: accts, Forwards: &registrar.MemForwards{},
		NodeSIPAddr: func(id ssr.NodeID) netip.AddrPort { return netip.MustParseAddrPort("[fd00::2]:5060") }})
	if err != nil {
		t.Fatal(err)
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	t.Cleanup(s.cancel)
	return s
}

// FuzzProxyHandle feeds parsed requests of any shape to the proxy's
// handler: whatever sipgo's parser accepts must get a well-formed answer
// or be dropped, never crash the node.
func FuzzProxyHandle(f *testing.F) {
	for _, seed := range []string{
		"INVITE sip:202@mesh SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.0.10:5060;branch=z9hG4bK1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:201@mesh>;tag=a\r\nTo: <sip:202@mesh>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContact: <sip:201@10.1.0.10>\r\nContent-Type: application/sdp\r\nContent-Length: 60\r\n\r\nv=0\r\no=- 1 1 IN IP4 10.1.0.10\r\ns=-\r\nc=IN IP4 10.1.0.10\r\nt=0 0\r\n",
		"INVITE sip:202@10.1.0.20 SIP/2.0\r\nVia: SIP/2.0/UDP [fd00::2]:5060;branch=z9hG4bK2\r\nRoute: <sip:smf-udp-0a01000a13c4@[fd00::1]:5060;lr>\r\nMax-Forwards: 3\r\nFrom: <sip:201@mesh>;tag=a\r\nTo: <sip:202@mesh>\r\nCall-ID: c2\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
		"ACK sip:202@10.1.0.20 SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.0.10;branch=z9hG4bK3\r\nRoute: <sip:10.1.0.1;lr>\r\nRoute: <sip:[fd00::2];lr>\r\nFrom: <sip:201@mesh>;tag=a\r\nTo: <sip:202@mesh>;tag=b\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
		"BYE sip:201@10.1.0.10 SIP/2.0\r\nVia: SIP/2.0/UDP [fd00::2]:5060;branch=z9hG4bK4\r\nRoute: <sip:[fd00::1]:5060;lr>\r\nRoute: <sip:10.1.0.1:5060;lr>\r\nMax-Forwards: 69\r\nFrom: <sip:202@mesh>;tag=b\r\nTo: <sip:201@mesh>;tag=a\r\nCall-ID: c1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
		"OPTIONS sip:10.1.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.0.10;branch=z9hG4bK5\r\nMax-Forwards: 0\r\nFrom: <sip:201@mesh>;tag=a\r\nTo: <sip:10.1.0.1>\r\nCall-ID: c5\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
		// TestSIPStress's first find: an INVITE whose To header a bit flip
		// renamed reached the *72/*73 feature code, which read To().
		"INVITE sip:202@10.1.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.0.10:5060;branch=z9hG4bK7;rport\r\nMax-Forwards: 70\r\n)rom: <sip:201@mesh>;tag=a\r\n?o: <sip:202@mesh>\r\nCall-ID: c7\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
		"MESSAGE sip:999@mesh SIP/2.0\r\nVia: SIP/2.0/TCP 10.1.0.10;branch=z9hG4bK6\r\nProxy-Require: foo\r\nFrom: <sip:201@mesh>;tag=a\r\nTo: <sip:999@mesh>\r\nCall-ID: c6\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n",
	} {
		f.Add([]byte(seed))
	}
	s := newHandlerService(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		msg, err := sip.ParseMessage(data)
		if err != nil {
			return
		}
		req, ok := msg.(*sip.Request)
		if !ok {
			return
		}
		req.SetSource("10.1.0.10:5060")
		if req.Via() != nil && strings.EqualFold(req.Via().Transport, "TCP") {
			req.SetTransport("TCP")
		} else {
			req.SetTransport("UDP")
		}
		tx := &fakeServerTx{done: make(chan struct{})}
		s.handle(req, tx)
		// The answer echoes the request's headers (RFC 3261 §8.2.6.2), so
		// garbage in is garbage out there; its status line and framing
		// must be sound.
		for _, res := range tx.responses() {
			out := res.String()
			if res.StatusCode < 100 || res.StatusCode > 699 || !strings.HasPrefix(out, "SIP/2.0 ") ||
				strings.ContainsAny(res.Reason, "\r\n") || !strings.HasSuffix(out, "\r\n\r\n") {
				t.Fatalf("bad answer:\n%q", out)
			}
		}
	})
}

// TestMalformedINVITEFromLAN: an INVITE from a LAN phone without To and
// From (a bit flip renamed them; found by cmd/sipmesh's TestSIPStress,
// where it killed the node) gets 400, not a nil dereference in the
// feature codes.
func TestMalformedINVITEFromLAN(t *testing.T) {
	s := newHandlerService(t)
	for _, raw := range []string{
		"INVITE sip:202@10.1.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.0.10:5060;branch=z9hG4bK7;rport\r\nMax-Forwards: 70\r\n)rom: <sip:201@mesh>;tag=a\r\n?o: <sip:202@mesh>\r\nCall-ID: c7\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
		"INVITE sip:*72203@10.1.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.0.10:5060;branch=z9hG4bK8;rport\r\nMax-Forwards: 70\r\nFrom: <sip:201@mesh>;tag=a\r\nCall-ID: c8\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
	} {
		msg, err := sip.ParseMessage([]byte(raw))
		if err != nil {
			t.Fatal(err)
		}
		req := msg.(*sip.Request)
		req.SetSource("10.1.0.10:5060")
		req.SetTransport("UDP")
		tx := &fakeServerTx{done: make(chan struct{})}
		s.handle(req, tx)
		res := tx.responses()
		if len(res) != 1 || res[0].StatusCode != 400 {
			t.Fatalf("answers %v to a request without To, want one 400", res)
		}
	}
}
