package proxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/memnet"
	"github.com/sipmesh/sipmesh/sipalg"
	"github.com/sipmesh/sipmesh/uplink"
)

// internetServer is a SIP server on the gateway's uplink segment that
// speaks TCP only: every message it reads goes to in, with the
// connection it came on, to answer on.
type internetServer struct {
	t       testing.TB
	addr    netip.AddrPort
	in      chan tcpMsg
	accepts atomic.Int32
	mu      sync.Mutex
	conns   []net.Conn
}

type tcpMsg struct {
	msg  sip.Message
	conn net.Conn
}

func (m *meshRig) internetServer(h *memnet.Host, addr netip.AddrPort) *internetServer {
	m.t.Helper()
	ln, err := h.Listen(m.ctx, "tcp", addr.String())
	if err != nil {
		m.t.Fatal(err)
	}
	srv := &internetServer{t: m.t, addr: addr, in: make(chan tcpMsg, 16)}
	context.AfterFunc(m.ctx, func() {
		ln.Close()
		srv.mu.Lock()
		for _, c := range srv.conns {
			c.Close()
		}
		srv.mu.Unlock()
	})
	m.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			srv.accepts.Add(1)
			srv.mu.Lock()
			srv.conns = append(srv.conns, c)
			srv.mu.Unlock()
			m.wg.Go(func() {
				ps := sip.NewParser().NewSIPStream()
				defer ps.Close()
				buf := make([]byte, 8192)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					ps.Write(buf[:n])
					for {
						msg, _, err := ps.ParseNext()
						if err != nil {
							break
						}
						srv.in <- tcpMsg{msg: msg, conn: c}
					}
				}
			})
		}
	})
	return srv
}

// request returns the next request (responses other than 100 are an
// error) and the connection it came on.
func (s *internetServer) request(method sip.RequestMethod) (*sip.Request, net.Conn) {
	s.t.Helper()
	for {
		select {
		case m := <-s.in:
			if req, ok := m.msg.(*sip.Request); ok && req.Method == method {
				return req, m.conn
			}
			if res, ok := m.msg.(*sip.Response); ok && res.StatusCode == 100 {
				continue
			}
			s.t.Fatalf("Internet server: want %s, got\n%s", method, m.msg)
		case <-time.After(time.Minute):
			s.t.Fatalf("Internet server: no %s", method)
		}
		return nil, nil
	}
}

// answer sends a response to req on c, with To tag and Contact over TCP.
func (s *internetServer) answer(c net.Conn, req *sip.Request, code int, body string) {
	s.t.Helper()
	res := sip.NewResponseFromRequest(req, code, "", nil)
	if code > 100 {
		res.To().Params.Add("tag", "bobtag")
	}
	if code >= 200 && code < 300 && req.IsInvite() {
		res.AppendHeader(sip.NewHeader("Contact", fmt.Sprintf("<sip:bob@%s;transport=tcp>", s.addr)))
	}
	if body != "" {
		res.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
		res.SetBody([]byte(body))
	}
	if _, err := c.Write([]byte(res.String())); err != nil {
		s.t.Fatal(err)
	}
}

// uplinkRig is a meshRig whose node 1 is a gateway: its LAN segment is
// the Internet, where locate finds the servers; node 2's phones' calls
// for other domains go to node 1's mesh socket (Outbound).
func newUplinkRig(t *testing.T, locate func(ctx context.Context, u *sip.Uri) ([]uplink.Target, error), dial bool) *meshRig {
	var m *meshRig
	gw := netip.AddrPortFrom(meshIP(1), 5060)
	m = newMeshRig(t, 2, func(c *SIPServiceConfig) {
		if c.Node != nodeID(1) {
			c.Outbound = func(context.Context, *sip.Request) (netip.AddrPort, error) { return gw, nil }
			return
		}
		c.Uplink = &UplinkConfig{Locate: locate, Domain: "voice.example.org"}
		c.Domains = []string{"voice.example.org"}
		if dial {
			c.Uplink.Dial = func(ctx context.Context, network, address string) (net.Conn, error) {
				return m.nodes[0].host.Dial(ctx, network, address)
			}
		}
	})
	return m
}

// TestUplinkTCP: a domain whose servers speak TCP only (RFC 3263 §4.1:
// NAPTR/SRV offer SIP+D2T). The gateway's Internet side connects to the
// first located server, which refuses, and goes on to the next (§4.3);
// the INVITE leaves with Via transport TCP and a Record-Route with
// ;transport=tcp for the uplink besides the mesh one (RFC 5658 double
// record-routing: both the socket and the transport change). The ACK and
// BYE of the dialog reuse the connection; after the server closes it, a
// re-INVITE opens a new one. The relay anchors the media at the uplink.
func TestUplinkTCP(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		refused := netip.MustParseAddrPort("10.1.0.60:5060")
		good := netip.MustParseAddrPort("10.1.0.61:5060")
		locate := func(ctx context.Context, u *sip.Uri) ([]uplink.Target, error) {
			return []uplink.Target{{Transport: "TCP", Addr: refused, Host: "a.example.net"},
				{Transport: "TCP", Addr: good, Host: "b.example.net"}}, nil
		}
		m := newUplinkRig(t, locate, true)
		gw := m.nodes[0]
		// A host at the first address with nothing listening: connection
		// refused.
		deadHost := m.nw.AddHost("dead-server")
		gw.lan.Attach(deadHost.AddInterface("eth0", rigMTU, netip.PrefixFrom(refused.Addr(), 24)))
		srvHost := m.nw.AddHost("tcp-server")
		gw.lan.Attach(srvHost.AddInterface("eth0", rigMTU, netip.PrefixFrom(good.Addr(), 24)))
		srv := m.internetServer(srvHost, good)

		a := m.phone(2, "201", 10)
		a.register()
		c := a.invite("sip:bob@example.net", netip.MustParseAddrPort("10.2.0.10:4000"), "")
		inv, conn := srv.request(sip.INVITE)
		if v := inv.Via(); v.Transport != "TCP" || v.Host != "10.1.0.1" || v.Port != 5060 {
			t.Errorf("Via at the server %s, want TCP from the uplink address", v.Value())
		}
		if got := inv.Recipient.String(); got != "sip:bob@example.net" {
			t.Errorf("Request-URI %s, want it unchanged", got)
		}
		rr := untagged(headerValues(inv, "Record-Route"))
		if len(rr) < 2 || rr[0] != "<sip:10.1.0.1:5060;transport=tcp;lr>" || rr[1] != "<sip:[fd00::1]:5060;lr>" {
			t.Errorf("Record-Route at the server %v, want the uplink with transport=tcp, then the gateway's mesh side", rr)
		}
		offer := sdpOf(t, inv.Body())
		if offer.Addr != gw.lanIP || !inRelayRange(offer.Port, sipalg.SideA) {
			t.Errorf("offer at the server points at %v, want the gateway's uplink relay", offer.RTP())
		}
		srv.answer(conn, inv, 200, offerSDP(netip.MustParseAddrPort("10.1.0.61:7000")))
		ok := a.response()
		wantStatus(t, ok, 200)

		routes := reversed(headerValues(ok, "Record-Route"))
		from := fmt.Sprintf("<sip:201@mesh>;tag=%s", c.fromTag)
		to := ok.To().Value()
		a.inDialog("ACK", contactURI(ok), from, to, c.callID, 1, routes)
		ack, ackConn := srv.request(sip.ACK)
		if ackConn != conn || ack.Via().Transport != "TCP" {
			t.Error("ACK did not come on the INVITE's connection")
		}
		if st := gw.svc.Stats(); st.TCPOpen != 1 {
			t.Errorf("gateway tcp_open %d, want 1", st.TCPOpen)
		}

		// The server closes the connection; the next request of the
		// dialog opens another (the Record-Route and Contact say TCP).
		conn.Close()
		synctest.Wait()
		a.inDialog("BYE", contactURI(ok), from, to, c.callID, 2, routes)
		bye, byeConn := srv.request(sip.BYE)
		if byeConn == conn {
			t.Error("BYE on the closed connection")
		}
		srv.answer(byeConn, bye, 200, "")
		wantStatus(t, a.response(), 200)
		if n := srv.accepts.Load(); n != 2 {
			t.Errorf("server accepted %d connections, want 2 (one per connection needed)", n)
		}
	})
}

// TestUplinkTCPFailover: when no located server takes a connection, the
// gateway answers 503 (RFC 3263 §4.3: every one failed), at once, not
// after Timer B, which the caller's node passes on as 500 (RFC 3261
// §16.7 step 6); without Dial, TCP-only servers leave nothing to try:
// 404.
func TestUplinkTCPFailover(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		locate := func(ctx context.Context, u *sip.Uri) ([]uplink.Target, error) {
			return []uplink.Target{{Transport: "TCP", Addr: netip.MustParseAddrPort("10.1.0.60:5060")},
				{Transport: "TCP", Addr: netip.MustParseAddrPort("10.1.0.62:5060")}}, nil
		}
		m := newUplinkRig(t, locate, true)
		for i, last := range []byte{60, 62} {
			h := m.nw.AddHost(fmt.Sprint("dead", i))
			m.nodes[0].lan.Attach(h.AddInterface("eth0", rigMTU, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, 0, last}), 24)))
		}
		a := m.phone(2, "201", 10)
		a.register()
		start := time.Now()
		a.invite("sip:bob@example.net", netip.MustParseAddrPort("10.2.0.10:4000"), "")
		wantStatus(t, a.response(), 500)
		if d := time.Since(start); d > time.Second {
			t.Errorf("503 after %v, want at once (refused connections)", d)
		}
	})
	synctest.Test(t, func(t *testing.T) {
		locate := func(ctx context.Context, u *sip.Uri) ([]uplink.Target, error) {
			return []uplink.Target{{Transport: "TCP", Addr: netip.MustParseAddrPort("10.1.0.61:5060")}}, nil
		}
		m := newUplinkRig(t, locate, false)
		a := m.phone(2, "201", 10)
		a.register()
		a.invite("sip:bob@example.net", netip.MustParseAddrPort("10.2.0.10:4000"), "")
		wantStatus(t, a.response(), 404)
	})
}

// TestUplinkInboundTCP: a caller on the Internet connects to the gateway
// over TCP and calls sip:201@voice.example.org (the mesh's public
// domain): the INVITE reaches the phone over the mesh, and the answer
// comes back on the caller's connection, with the gateway's uplink
// Record-Route saying transport=tcp; a request for another domain over
// TCP gets 403 like over UDP.
func TestUplinkInboundTCP(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		m := newUplinkRig(t, func(context.Context, *sip.Uri) ([]uplink.Target, error) { return nil, uplink.ErrNotFound }, true)
		a := m.phone(2, "201", 10)
		a.register()
		caller := m.tcpPhone(1, "bob", 70)
		inv := func(ruri, callID string) string {
			body := offerSDP(netip.MustParseAddrPort("10.1.0.70:9000"))
			return fmt.Sprintf("INVITE %s SIP/2.0\r\nVia: SIP/2.0/TCP %s;branch=z9hG4bK%s\r\n", ruri, caller.addr, callID) +
				"Max-Forwards: 70\r\nFrom: <sip:bob@example.net>;tag=b1\r\n" +
				fmt.Sprintf("To: <%s>\r\nCall-ID: %s\r\nCSeq: 1 INVITE\r\nContact: <sip:bob@%s;transport=tcp>\r\n", ruri, callID, caller.addr) +
				fmt.Sprintf("Content-Type: application/sdp\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		}
		caller.conn.Write([]byte(inv("sip:x@other.example", "foreign")))
		wantStatus(t, caller.recv().(*sip.Response), 403)

		caller.conn.Write([]byte(inv("sip:201@voice.example.org", "inbound")))
		got := a.request(sip.INVITE)
		rr := untagged(headerValues(got, "Record-Route"))
		if n := len(rr); n < 2 || rr[n-1] != "<sip:10.1.0.1:5060;transport=tcp;lr>" || rr[n-2] != "<sip:[fd00::1]:5060;lr>" {
			t.Errorf("Record-Route at the phone %v: want the gateway's uplink side with transport=tcp last", rr)
		}
		a.answer(got, 200, "OK", "t201", offerSDP(netip.MustParseAddrPort("10.2.0.10:4000")))
		res := caller.recv().(*sip.Response)
		wantStatus(t, res, 200)
		if !strings.Contains(string(res.Body()), "c=IN IP4 10.1.0.1\r\n") {
			t.Errorf("answer at the caller names no uplink relay:\n%s", res.Body())
		}
	})
}

// newUplink6Rig is a meshRig whose node 1 is a gateway with an IPv6
// uplink address gw6 on its LAN segment (the Internet) besides its IPv4
// one, and the relay of that address; node 2's calls for other domains
// go to node 1.
func newUplink6Rig(t *testing.T, gw6 netip.Addr, locate func(ctx context.Context, u *sip.Uri) ([]uplink.Target, error)) (*meshRig, *sipalg.Relay) {
	var relay6 *sipalg.Relay
	m := newMeshRigWith(t, 2, func(m *meshRig, nd *meshNode, c *SIPServiceConfig) {
		if nd.id != nodeID(1) {
			c.Outbound = func(context.Context, *sip.Request) (netip.AddrPort, error) {
				return netip.AddrPortFrom(meshIP(1), 5060), nil
			}
			return
		}
		nd.lan.Attach(nd.host.AddInterface("lan6", rigMTU, netip.PrefixFrom(gw6, 64)))
		ap := netip.AddrPortFrom(gw6, 5060)
		pc, err := nd.host.ListenPacket(m.ctx, "udp", ap.String())
		if err != nil {
			t.Fatal(err)
		}
		relay6, err = sipalg.NewRelay(sipalg.Config{
			A: sipalg.SideConfig{Name: "uplink6", Addr: gw6, Listen: sipalg.NetworkListener(nd.host, gw6), PortMin: 20000, PortMax: 20199, LatchAny: true},
			B: sipalg.SideConfig{Name: "mesh", Addr: nd.meshIP, Listen: sipalg.NetworkListener(nd.host, nd.meshIP), PortMin: 30200, PortMax: 30399},
		})
		if err != nil {
			t.Fatal(err)
		}
		m.wg.Go(func() { relay6.Run(m.ctx) })
		c.Uplink = &UplinkConfig{Locate: locate, Domain: "voice.example.org"}
		c.Domains = []string{"voice.example.org"}
		c.LAN6Addr, c.LAN6UDP, c.Relay6 = ap, pc, relay6
	})
	return m, relay6
}

// TestUplinkIPv6: a gateway whose uplink has a global IPv6 address
// (LAN6Addr) reaches a server located by AAAA only (RFC 3263 §4.2) from
// there: Via, Record-Route and the SDP name its IPv6 address (c=IN IP6,
// RFC 4566 §5.7; media through Relay6), the caller on its IPv4 LAN sees
// IPv4 as before, tones cross both ways; the BYE follows the route set
// back out over IPv6.
func TestUplinkIPv6(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		gw6 := netip.MustParseAddr("2001:db8:1::1")
		far := netip.MustParseAddrPort("[2001:db8:1::61]:5060")
		locate := func(ctx context.Context, u *sip.Uri) ([]uplink.Target, error) {
			return []uplink.Target{{Transport: "UDP", Addr: far, Host: "v6.example.net"}}, nil
		}
		m, relay6 := newUplink6Rig(t, gw6, locate)
		a := m.phone(2, "201", 10)
		a.register()
		bob := m.peer(m.nodes[0], m.nodes[0].lan, netip.PrefixFrom(far.Addr(), 64), "bob", "bob6")
		ea := m.mediaEP(a, 4000, 440)
		eb := m.mediaEP(bob, 4000, 1000)

		c := a.invite("sip:bob@v6.example.net", ea.Local(), "")
		inv := bob.request(sip.INVITE)
		if v := inv.Via(); v.Host != "2001:db8:1::1" || v.Port != 5060 {
			t.Errorf("Via at the far end %s, want the uplink's IPv6 address", v.Value())
		}
		rr := untagged(headerValues(inv, "Record-Route"))
		if len(rr) < 2 || rr[0] != "<sip:[2001:db8:1::1]:5060;lr>" || rr[1] != "<sip:[fd00::1]:5060;lr>" {
			t.Errorf("Record-Route at the far end %v", rr)
		}
		offer := sdpOf(t, inv.Body())
		if offer.Addr != gw6 || !strings.Contains(string(inv.Body()), "c=IN IP6 2001:db8:1::1\r\n") {
			t.Errorf("offer at the far end:\n%s", inv.Body())
		}
		eb.SetRemote(offer.RTP())
		bob.answer(inv, 200, "OK", "bobtag", strings.ReplaceAll(offerSDP(eb.Local()), "IN IP4", "IN IP6"))
		ok := a.response()
		wantStatus(t, ok, 200)
		ans := sdpOf(t, ok.Body())
		if ans.Addr != m.nodes[1].lanIP {
			t.Errorf("answer at the caller:\n%s", ok.Body())
		}
		ea.SetRemote(ans.RTP())
		routes := reversed(headerValues(ok, "Record-Route"))
		from := fmt.Sprintf("<sip:201@mesh>;tag=%s", c.fromTag)
		a.inDialog("ACK", contactURI(ok), from, ok.To().Value(), c.callID, 1, routes)
		bob.request(sip.ACK)

		mctx, mcancel := context.WithCancel(m.ctx)
		var mwg sync.WaitGroup
		mwg.Go(func() { ea.Run(mctx) })
		mwg.Go(func() { eb.Run(mctx) })
		time.Sleep(2 * time.Second)
		mcancel()
		mwg.Wait()
		if !ea.Heard(1000) || !eb.Heard(440) {
			t.Errorf("two-way audio: 201 heard the far end %v, the far end heard 201 %v", ea.Heard(1000), eb.Heard(440))
		}
		if relay6.Sessions() != 1 || m.nodes[0].relay.Sessions() != 0 {
			t.Errorf("gateway relays: IPv6 %d sessions, IPv4 %d; want the call on the IPv6 one", relay6.Sessions(), m.nodes[0].relay.Sessions())
		}

		a.inDialog("BYE", contactURI(ok), from, ok.To().Value(), c.callID, 2, routes)
		bye := bob.request(sip.BYE)
		bob.answer(bye, 200, "OK", "bobtag", "")
		wantStatus(t, a.response(), 200)
	})
}

// TestUplinkIPv6Inbound: a caller on the IPv6 Internet calls
// sip:201@voice.example.org at the gateway's IPv6 address: the INVITE
// reaches the phone over the mesh with the gateway's IPv6 Record-Route,
// the caller's answer names the IPv6 relay (c=IN IP6); a request for
// another domain gets 403 there as over IPv4.
func TestUplinkIPv6Inbound(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		gw6 := netip.MustParseAddr("2001:db8:1::1")
		m, relay6 := newUplink6Rig(t, gw6, func(context.Context, *sip.Uri) ([]uplink.Target, error) { return nil, uplink.ErrNotFound })
		a := m.phone(2, "201", 10)
		a.register()
		carol := m.peer(m.nodes[0], m.nodes[0].lan, netip.MustParsePrefix("2001:db8:1::70/64"), "carol", "carol6")
		gw := netip.AddrPortFrom(gw6, 5060)
		inv := func(ruri, callID string) string {
			body := strings.ReplaceAll(offerSDP(netip.MustParseAddrPort("[2001:db8:1::70]:9000")), "IN IP4", "IN IP6")
			return fmt.Sprintf("INVITE %s SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8:1::70]:5060;branch=z9hG4bK%s;rport\r\n", ruri, callID) +
				"Max-Forwards: 70\r\nFrom: <sip:carol@example.net>;tag=c1\r\n" +
				fmt.Sprintf("To: <%s>\r\nCall-ID: %s\r\nCSeq: 1 INVITE\r\nContact: <sip:carol@[2001:db8:1::70]:5060>\r\n", ruri, callID) +
				fmt.Sprintf("Content-Type: application/sdp\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		}
		carol.sendTo(gw, inv("sip:x@other.example", "foreign6"))
		wantStatus(t, carol.response(), 403)

		carol.sendTo(gw, inv("sip:201@voice.example.org", "inbound6"))
		got := a.request(sip.INVITE)
		rr := untagged(headerValues(got, "Record-Route"))
		if n := len(rr); n < 2 || rr[n-1] != "<sip:[2001:db8:1::1]:5060;lr>" || rr[n-2] != "<sip:[fd00::1]:5060;lr>" {
			t.Errorf("Record-Route at the phone %v: want the gateway's IPv6 uplink side last", rr)
		}
		if offer := sdpOf(t, got.Body()); offer.Addr != m.nodes[1].lanIP {
			t.Errorf("offer at the phone:\n%s", got.Body())
		}
		a.answer(got, 200, "OK", "t201", offerSDP(netip.MustParseAddrPort("10.2.0.10:4000")))
		res := carol.response()
		wantStatus(t, res, 200)
		if !strings.Contains(string(res.Body()), "c=IN IP6 2001:db8:1::1\r\n") {
			t.Errorf("answer at the caller names no IPv6 relay:\n%s", res.Body())
		}
		if relay6.Sessions() != 1 || m.nodes[0].relay.Sessions() != 0 {
			t.Errorf("gateway relays: IPv6 %d sessions, IPv4 %d; want the call on the IPv6 one", relay6.Sessions(), m.nodes[0].relay.Sessions())
		}
	})
}

// TestInternetAllowed: where a gateway's Internet side may send a located
// request or open a connection: the Internet of its uplink's families,
// never itself, the mesh, loopback, link-local or multicast.
func TestInternetAllowed(t *testing.T) {
	s := &SIPService{lan: &sock{addr: netip.MustParseAddrPort("198.51.100.1:5060")}, mesh: &sock{addr: netip.MustParseAddrPort("[fd00::1]:5062")}}
	v6 := &sock{addr: netip.MustParseAddrPort("[2001:db8:1::1]:5060")}
	for _, c := range []struct {
		dst        string
		ipv4, dual bool // allowed with an IPv4 uplink, with IPv6 too
	}{
		{"203.0.113.5:5060", true, true},
		{"198.51.100.1:5060", false, false}, // itself
		{"127.0.0.1:5060", false, false},
		{"255.255.255.255:5060", false, false},
		{"203.0.113.5:0", false, false},
		{"[2001:db8:2::5]:5060", false, true},
		{"[2001:db8:1::1]:5060", false, false}, // itself
		{"[fd00::7]:5060", false, false},       // the mesh
		{"[fe80::1]:5060", false, false},
		{"[::1]:5060", false, false},
		{"[ff02::1]:5060", false, false},
	} {
		ap := netip.MustParseAddrPort(c.dst)
		s.lan6 = nil
		if got := s.internetAllowed(ap); got != c.ipv4 {
			t.Errorf("%s with an IPv4 uplink: %v, want %v", c.dst, got, c.ipv4)
		}
		s.lan6 = v6
		if got := s.internetAllowed(ap); got != c.dual {
			t.Errorf("%s with an IPv6 uplink too: %v, want %v", c.dst, got, c.dual)
		}
		if c.dual && ap.Addr().Is6() && s.sockFor(ap.Addr()) != v6 {
			t.Errorf("%s: not sent from the IPv6 uplink socket", c.dst)
		}
	}
	if s.sockFor(netip.MustParseAddr("fd00::7")) != s.mesh {
		t.Error("a mesh address is not reached over the mesh")
	}
}

// TestUplinkTCPOneConnection: two calls to a TCP server that start while
// the gateway's connection to it is being opened share it: one
// connection, both INVITEs on it.
func TestUplinkTCPOneConnection(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		good := netip.MustParseAddrPort("10.1.0.61:5060")
		locate := func(ctx context.Context, u *sip.Uri) ([]uplink.Target, error) {
			return []uplink.Target{{Transport: "TCP", Addr: good}}, nil
		}
		var dials atomic.Int32
		dialing, release := make(chan struct{}, 2), make(chan struct{})
		var m *meshRig
		m = newMeshRig(t, 2, func(c *SIPServiceConfig) {
			if c.Node != nodeID(1) {
				c.Outbound = func(context.Context, *sip.Request) (netip.AddrPort, error) {
					return netip.AddrPortFrom(meshIP(1), 5060), nil
				}
				return
			}
			c.Uplink = &UplinkConfig{Locate: locate, Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
				dials.Add(1)
				dialing <- struct{}{}
				<-release // the handshake takes a while
				return m.nodes[0].host.Dial(ctx, network, address)
			}}
		})
		srvHost := m.nw.AddHost("tcp-server")
		m.nodes[0].lan.Attach(srvHost.AddInterface("eth0", rigMTU, netip.PrefixFrom(good.Addr(), 24)))
		srv := m.internetServer(srvHost, good)
		a := m.phone(2, "201", 10)
		a.register()
		// One call after the other reaches the gateway (the phone's
		// digest nonce counts must arrive in order), the second while the
		// first one's connection is being opened.
		a.invite("sip:bob@example.net", netip.MustParseAddrPort("10.2.0.10:4000"), "")
		<-dialing
		a.invite("sip:carol@example.net", netip.MustParseAddrPort("10.2.0.10:4002"), "")
		time.Sleep(time.Second) // virtual: the INVITE crossed the mesh long ago
		if n := dials.Load(); n != 1 {
			t.Errorf("%d connections being opened to one server, want 1", n)
		}
		close(release)
		_, c1 := srv.request(sip.INVITE)
		_, c2 := srv.request(sip.INVITE)
		if n := dials.Load(); n != 1 || c1 != c2 || srv.accepts.Load() != 1 {
			t.Errorf("%d dials, %d connections accepted, same connection %v: want one for both calls", n, srv.accepts.Load(), c1 == c2)
		}
	})
}
