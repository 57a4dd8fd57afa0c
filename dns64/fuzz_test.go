package dns64

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// fuzzSeeds are query/upstream-answer pairs: the cases of the memnet tests
// as wire bytes.
func fuzzSeeds(t testing.TB) [][2][]byte {
	pack := func(m *dns.Msg) []byte {
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	up := newUpstream(t)
	answer := func(name string, qtype uint16) []byte {
		w := &captureWriter{}
		up.ServeDNS(w, question(name, qtype))
		return pack(w.m)
	}
	edns := question("big.node1.mesh.", dns.TypeAAAA)
	edns.SetEdns0(4096, true)
	ptr := reverseName6(netip.MustParseAddr("64:ff9b::808:808"))
	return [][2][]byte{
		{pack(question("sipserver.mesh.", dns.TypeA)), nil},
		{pack(question("mesh.", dns.TypeNAPTR)), nil},
		{pack(question("nosuch.mesh.", dns.TypeANY)), nil},
		{pack(edns), nil},
		{pack(question("v4only.example.", dns.TypeAAAA)), answer("v4only.example.", dns.TypeA)},
		{pack(question("alias.example.", dns.TypeAAAA)), answer("alias.example.", dns.TypeA)},
		{pack(question("mixed.example.", dns.TypeAAAA)), answer("mixed.example.", dns.TypeAAAA)},
		{pack(question("nosuch.example.", dns.TypeAAAA)), answer("nosuch.example.", dns.TypeAAAA)},
		{pack(question(ptr, dns.TypePTR)), answer("10.100.51.198.in-addr.arpa.", dns.TypePTR)},
		{[]byte{0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 7, 'e', 'x'}, []byte{1, 2, 3}},
	}
}

type captureWriter struct {
	dns.ResponseWriter
	m *dns.Msg
}

func (w *captureWriter) WriteMsg(m *dns.Msg) error { w.m = m; return nil }
func (w *captureWriter) RemoteAddr() net.Addr      { return &net.UDPAddr{} }

// FuzzServer feeds arbitrary query bytes through the path the miekg server
// takes (header check, unpack) into respond, with arbitrary bytes as every
// upstream answer, so the DNS64 logic sees hostile upstream data too. The
// reply must pack, parse back and, over UDP, fit the size the query
// allows.
func FuzzServer(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s[0], s[1])
	}
	s, err := New(Config{
		Network:   newTestHost(),
		Listen:    []Listen{{Addr: nodeV4}},
		Zone:      testZone,
		Upstreams: []netip.AddrPort{netip.AddrPortFrom(upV4, 53)},
		CacheSize: -1, // each input on its own
		// Without a cap: the fuzzer's millions of look-ups would all get
		// SERVFAIL after the first few hundred and explore nothing else.
		ForwardRate: -1,
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, query, upstreamAnswer []byte) {
		s.exchangeHook = func(_ context.Context, q *dns.Msg) (*dns.Msg, error) {
			r := new(dns.Msg)
			if err := r.Unpack(upstreamAnswer); err != nil {
				return nil, errors.New("bad upstream bytes")
			}
			return r, nil
		}
		req := new(dns.Msg)
		if len(query) < 12 {
			return // the miekg server drops runts
		}
		if err := req.Unpack(query); err != nil {
			return // the miekg server answers FORMERR itself (TestMalformed)
		}
		if dns.DefaultMsgAcceptFunc(dnsHeader(req)) != dns.MsgAccept {
			return
		}
		for _, tcp := range []bool{false, true} {
			m := s.respond(context.Background(), req.Copy(), []netip.Addr{nodeV4}, tcp)
			b, err := m.Pack()
			if err != nil {
				t.Fatalf("reply does not pack: %v\n%v", err, m)
			}
			limit := 512
			if opt := req.IsEdns0(); opt != nil {
				limit = max(512, min(int(opt.UDPSize()), 1232))
			}
			if !tcp && len(b) > limit {
				t.Fatalf("UDP reply of %d bytes, limit %d", len(b), limit)
			}
			if m.Id != req.Id || !m.Response {
				t.Fatalf("reply header %+v", m.MsgHdr)
			}
			// What the client receives parses back (a stub must be able
			// to read every answer), with the question echoed.
			var back dns.Msg
			if err := back.Unpack(b); err != nil {
				t.Fatalf("reply does not parse: %v\n%v", err, m)
			}
			if len(back.Question) != len(req.Question) {
				t.Fatalf("reply has %d questions, query %d", len(back.Question), len(req.Question))
			}
		}
	})
}

// dnsHeader rebuilds the wire header the miekg server's accept function
// looks at.
func dnsHeader(m *dns.Msg) dns.Header {
	var h dns.Header
	h.Id = m.Id
	h.Bits = uint16(m.Opcode&0xf) << 11
	if m.Response {
		h.Bits |= 1 << 15
	}
	h.Qdcount = uint16(len(m.Question))
	h.Ancount = uint16(len(m.Answer))
	h.Nscount = uint16(len(m.Ns))
	h.Arcount = uint16(len(m.Extra))
	return h
}

// FuzzServeUDP is the server end to end: arbitrary bytes arrive as a UDP
// datagram at a running Server (miekg's header check, unpacking and
// FORMERR path, the rate limiter's reader, respond, the reply's packing),
// with the test upstream behind it. Whatever comes back must parse, and a
// liveness query sent after it must still be answered.
func FuzzServeUDP(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s[0])
	}
	f.Add([]byte{})
	f.Add(make([]byte, 12))
	f.Add([]byte{0xab, 0xcd, 0x01, 0x00, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 1, 0, 1})

	tn := newTestNet(f)
	up := newUpstream(f)
	ctx := context.Background()
	upc, err := tn.uph.ListenPacket(ctx, "udp", "10.0.0.53:53")
	if err != nil {
		f.Fatal(err)
	}
	upl, err := tn.uph.Listen(ctx, "tcp", "10.0.0.53:53")
	if err != nil {
		f.Fatal(err)
	}
	serveMiekg(f, up, upc, upl)
	srv := startServer(f, Config{
		Network:   tn.node,
		Listen:    []Listen{{Addr: nodeV4}},
		Port:      -1,
		Zone:      testZone,
		Upstreams: []netip.AddrPort{netip.AddrPortFrom(upV4, 53)},
		Rate:      1e9, Burst: 1 << 30, // the fuzzer is one source sending fast
		ForwardRate: -1,
		Logger:      slog.New(slog.DiscardHandler),
	}, make(chan error, 1))
	to := net.UDPAddrFromAddrPort(srv.Addrs()[0])
	pc, err := tn.client.ListenPacket(ctx, "udp4", "10.0.0.2:0")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { pc.Close() })
	live := question("sipserver.mesh.", dns.TypeA)
	var liveID uint16
	buf := make([]byte, 65536)

	f.Fuzz(func(t *testing.T, b []byte) {
		// The LAN's MTU (1500) bounds a datagram; memnet refuses more.
		b = b[:min(len(b), 1400)]
		if _, err := pc.WriteTo(b, to); err != nil {
			t.Fatalf("send: %v", err)
		}
		liveID++
		live.Id = liveID
		lb, _ := live.Pack()
		if _, err := pc.WriteTo(lb, to); err != nil {
			t.Fatalf("send: %v", err)
		}
		awaitLiveness(t, pc, buf, live.Id)
	})
}

// awaitLiveness reads replies on pc until the answer to the liveness
// query id (sipserver.mesh A) arrives: the server survived the input.
// Replies to the input (none, or one) and to the liveness query arrive in
// either order; stale replies of earlier inputs whose look-ups took
// longer may arrive too. Every reply must parse.
func awaitLiveness(t *testing.T, pc net.PacketConn, buf []byte, id uint16) {
	t.Helper()
	for {
		pc.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("no answer to the liveness query after the input: %v", err)
		}
		var m dns.Msg
		if err := m.Unpack(buf[:n]); err != nil {
			t.Fatalf("reply does not parse: %v\n% x", err, buf[:n])
		}
		if m.Id == id && len(m.Question) == 1 && m.Question[0].Name == "sipserver.mesh." && m.Rcode == dns.RcodeSuccess && len(m.Answer) == 1 {
			return
		}
	}
}
