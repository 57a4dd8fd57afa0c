package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/memnet"
	"github.com/sipmesh/sipmesh/phones"
	"github.com/sipmesh/sipmesh/registrar"
	"github.com/sipmesh/sipmesh/sipalg"
	"github.com/sipmesh/sipmesh/sipnet"
	"github.com/sipmesh/sipmesh/ssr"
)

// meshRig is a few gateway nodes on the in-memory network: each with a
// LAN segment of IPv4 phones (10.N.0.0/24, node 10.N.0.1) and an address
// on one shared IPv6 mesh segment (fd00::N), sharing a MemLocation that
// stands in for the DHT.
type meshRig struct {
	t      testing.TB
	nw     *memnet.Network
	mesh   *memnet.Link
	loc    *registrar.MemLocation
	accts  *registrar.MemAccounts
	nodes  []*meshNode
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type meshNode struct {
	id     ssr.NodeID
	host   *memnet.Host
	lan    *memnet.Link
	lanIP  netip.Addr
	meshIP netip.Addr
	svc    *SIPService
	reg    *registrar.Registrar
	relay  *sipalg.Relay
	// kill stops the node's services at once, as if it lost power.
	kill context.CancelFunc
}

func nodeID(i int) ssr.NodeID { return ssr.NodeID(0x1000 + i) }

func meshIP(i int) netip.Addr { return netip.MustParseAddr(fmt.Sprintf("fd00::%d", i)) }

// rigMTU is the MTU of the rig's interfaces. memnet does not fragment,
// as the kernel does for UDP; a test of large messages raises it.
var rigMTU = 1500

func newMeshRig(t testing.TB, n int, mod ...func(*SIPServiceConfig)) *meshRig {
	t.Helper()
	return newMeshRigWith(t, n, nil, mod...)
}

// newMeshRigWith is newMeshRig with nodeMod called first on each node's
// configuration, with the node (its host: sockets of its own).
func newMeshRigWith(t testing.TB, n int, nodeMod func(*meshRig, *meshNode, *SIPServiceConfig), mod ...func(*SIPServiceConfig)) *meshRig {
	t.Helper()
	m := &meshRig{t: t, nw: memnet.New(memnet.Config{Seed: 7}), loc: registrar.NewMemLocation(),
		accts: newTestAccounts(t, append([]string{"201", "202", "203", "204"}, roomExts()...)...)}
	m.mesh = m.nw.NewSegment("mesh", memnet.LinkConfig{Delay: 5 * time.Millisecond})
	m.ctx, m.cancel = context.WithCancel(context.Background())
	for i := 1; i <= n; i++ {
		nd := &meshNode{id: nodeID(i), host: m.nw.AddHost(fmt.Sprintf("node%d", i)),
			lanIP: netip.MustParseAddr(fmt.Sprintf("10.%d.0.1", i)), meshIP: meshIP(i)}
		nd.lan = m.nw.NewSegment(fmt.Sprintf("lan%d", i), memnet.LinkConfig{Delay: time.Millisecond})
		nd.lan.Attach(nd.host.AddInterface("lan0", rigMTU, netip.PrefixFrom(nd.lanIP, 24)))
		m.mesh.Attach(nd.host.AddInterface("mesh0", rigMTU, netip.PrefixFrom(nd.meshIP, 64)))
		reg, err := registrar.NewRegistrar(registrar.RegistrarConfig{Node: nd.id, Locations: m.loc, Accounts: m.accts,
			Addrs: []netip.Addr{nd.lanIP, nd.meshIP}, Rate: -1, NonceLifetime: 24 * time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		nd.relay, err = sipalg.NewRelay(sipalg.Config{
			A: sipalg.SideConfig{Name: "lan", Addr: nd.lanIP, Listen: sipalg.NetworkListener(nd.host, nd.lanIP), PortMin: 20000, PortMax: 20199},
			B: sipalg.SideConfig{Name: "mesh", Addr: nd.meshIP, Listen: sipalg.NetworkListener(nd.host, nd.meshIP), PortMin: 30000, PortMax: 30199},
		})
		if err != nil {
			t.Fatal(err)
		}
		lanAP := netip.AddrPortFrom(nd.lanIP, 5060)
		meshAP := netip.AddrPortFrom(nd.meshIP, 5060)
		lanPC, err := nd.host.ListenPacket(m.ctx, "udp", lanAP.String())
		if err != nil {
			t.Fatal(err)
		}
		meshPC, err := nd.host.ListenPacket(m.ctx, "udp", meshAP.String())
		if err != nil {
			t.Fatal(err)
		}
		lanTCP, err := nd.host.Listen(m.ctx, "tcp", lanAP.String())
		if err != nil {
			t.Fatal(err)
		}
		cfg := SIPServiceConfig{Node: nd.id, LANAddr: lanAP, MeshAddr: meshAP, LANUDP: lanPC, MeshUDP: meshPC, LANTCP: lanTCP,
			Registrar: reg, Locations: m.loc, Accounts: m.accts, Relay: nd.relay,
			NodeSIPAddr: func(id ssr.NodeID) netip.AddrPort {
				return netip.AddrPortFrom(meshIP(int(id-0x1000)), 5060)
			},
			LANPrefix: netip.PrefixFrom(nd.lanIP, 24).Masked(),
			Rate:      -1}
		if testing.Verbose() && os.Getenv("SIPLOG") != "" {
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", i)
		}
		if nodeMod != nil {
			nodeMod(m, nd, &cfg)
		}
		for _, f := range mod {
			f(&cfg)
		}
		nd.reg = reg
		nd.svc, err = NewSIPService(cfg)
		if err != nil {
			t.Fatal(err)
		}
		var nctx context.Context
		nctx, nd.kill = context.WithCancel(m.ctx)
		m.wg.Go(func() { nd.relay.Run(nctx) })
		m.wg.Go(func() {
			if err := nd.svc.Run(nctx); err != nil {
				t.Errorf("node %d: %v", i, err)
			}
		})
		m.nodes = append(m.nodes, nd)
	}
	t.Cleanup(m.stop)
	return m
}

func (m *meshRig) stop() {
	m.cancel()
	m.wg.Wait()
}

// tphone is a test phone speaking raw SIP over UDP on a node's LAN, so
// the test sees (and asserts) every message as it is on the wire.
type tphone struct {
	t     testing.TB
	ext   string
	node  *meshNode
	addr  netip.AddrPort
	host  *memnet.Host
	pc    net.PacketConn
	in    chan sip.Message
	seq   int
	media *phones.MediaEndpoint
	// chal is the registrar's challenge of the phone's REGISTER, whose
	// nonce the phone reuses (nc counts) for Proxy-Authorization.
	chal *digest.Challenge
	nc   int
	regs int // registrations so far: each one a Call-ID of its own
}

func (m *meshRig) phone(node int, ext string, last byte) *tphone {
	m.t.Helper()
	nd := m.nodes[node-1]
	ip := netip.AddrFrom4([4]byte{10, byte(node), 0, last})
	return m.peer(nd, nd.lan, netip.PrefixFrom(ip, 24), ext, "phone-"+ext+fmt.Sprint(last))
}

// peer is a raw SIP peer at prefix's address on seg (a phone on a LAN,
// or a host on the mesh segment) that talks to node nd.
func (m *meshRig) peer(nd *meshNode, seg *memnet.Link, prefix netip.Prefix, ext, name string) *tphone {
	m.t.Helper()
	h := m.nw.AddHost(name)
	seg.Attach(h.AddInterface("eth0", rigMTU, prefix))
	p := &tphone{t: m.t, ext: ext, node: nd, addr: netip.AddrPortFrom(prefix.Addr(), 5060), host: h, in: make(chan sip.Message, 64)}
	var err error
	if p.pc, err = h.ListenPacket(m.ctx, "udp", p.addr.String()); err != nil {
		m.t.Fatal(err)
	}
	m.wg.Go(func() {
		buf := make([]byte, 65535)
		for {
			n, _, err := p.pc.ReadFrom(buf)
			if err != nil {
				return
			}
			msg, err := sip.ParseMessage(append([]byte(nil), buf[:n]...))
			if err != nil {
				m.t.Errorf("%s got unparsable %q: %v", ext, buf[:n], err)
				continue
			}
			select {
			case p.in <- msg:
			default:
				m.t.Errorf("%s: inbox full", ext)
			}
		}
	})
	context.AfterFunc(m.ctx, func() { p.pc.Close() })
	return p
}

func (p *tphone) server() netip.AddrPort { return netip.AddrPortFrom(p.node.lanIP, 5060) }

func (p *tphone) sendTo(to netip.AddrPort, raw string) {
	p.t.Helper()
	raw = p.withAuth(raw)
	if _, err := p.pc.WriteTo([]byte(raw), net.UDPAddrFromAddrPort(to)); err != nil {
		p.t.Fatal(err)
	}
}

// withAuth adds Proxy-Authorization to an out-of-dialog request of a
// registered phone (RFC 3261 §22.3, answered ahead of the 407 the proxy
// would send), as a phone that cached the realm's nonce does.
func (p *tphone) withAuth(raw string) string {
	p.t.Helper()
	line, rest, _ := strings.Cut(raw, "\r\n")
	parts := strings.Fields(line)
	if p.chal == nil || len(parts) != 3 || strings.HasPrefix(line, "SIP/") || strings.Contains(raw, "\r\nProxy-Authorization:") {
		return raw
	}
	switch parts[0] {
	case "REGISTER", "ACK", "CANCEL":
		return raw
	}
	hdrs, _, _ := strings.Cut(rest, "\r\n\r\n")
	for _, h := range strings.Split(hdrs, "\r\n") {
		if (strings.HasPrefix(h, "To:") || strings.HasPrefix(h, "t:")) && strings.Contains(h, ";tag=") {
			return raw
		}
	}
	p.nc++
	cred, err := digest.Digest(p.chal, digest.Options{Method: parts[0], URI: parts[1], Username: p.ext,
		Password: "secret" + p.ext, Count: p.nc, Cnonce: "0a4f113b"})
	if err != nil {
		p.t.Fatal(err)
	}
	return line + "\r\nProxy-Authorization: " + cred.String() + "\r\n" + rest
}

func (p *tphone) recv() sip.Message {
	p.t.Helper()
	select {
	case m := <-p.in:
		return m
	case <-time.After(5 * time.Minute): // fake time (synctest)
		p.t.Fatalf("%s: nothing received", p.ext)
		return nil
	}
}

// response returns the next response other than 100 Trying.
func (p *tphone) response() *sip.Response {
	p.t.Helper()
	for {
		m := p.recv()
		if res, ok := m.(*sip.Response); ok {
			if res.StatusCode == 100 {
				continue
			}
			return res
		}
		p.t.Fatalf("%s: want a response, got\n%s", p.ext, m)
	}
}

func (p *tphone) request(method sip.RequestMethod) *sip.Request {
	p.t.Helper()
	for {
		m := p.recv()
		if req, ok := m.(*sip.Request); ok && req.Method == method {
			return req
		}
		if res, ok := m.(*sip.Response); ok && res.StatusCode == 100 {
			continue
		}
		p.t.Fatalf("%s: want %s, got\n%s", p.ext, method, m)
	}
}

// quiet checks nothing but retransmissions arrives for d.
func (p *tphone) quiet(d time.Duration) {
	p.t.Helper()
	select {
	case m := <-p.in:
		p.t.Fatalf("%s: unexpected\n%s", p.ext, m)
	case <-time.After(d):
	}
}

func (p *tphone) via() string {
	p.seq++
	return fmt.Sprintf("Via: SIP/2.0/UDP %s;branch=z9hG4bK%s-%d;rport\r\n", p.addr, p.ext, p.seq)
}

// register registers the phone with digest authentication.
func (p *tphone) register() {
	p.t.Helper()
	build := func(cseq int, auth string) string {
		s := "REGISTER sip:mesh SIP/2.0\r\n" + p.via() +
			"Max-Forwards: 70\r\n" +
			fmt.Sprintf("From: <sip:%s@mesh>;tag=reg%s\r\nTo: <sip:%s@mesh>\r\n", p.ext, p.ext, p.ext) +
			fmt.Sprintf("Call-ID: reg-%s-%s-%d\r\nCSeq: %d REGISTER\r\n", p.ext, p.addr.Addr(), p.regs, cseq) +
			fmt.Sprintf("Contact: <sip:%s@%s>\r\nExpires: 3600\r\n", p.ext, p.addr)
		if auth != "" {
			s += "Authorization: " + auth + "\r\n"
		}
		return s + "Content-Length: 0\r\n\r\n"
	}
	p.regs++
	p.sendTo(p.server(), build(1, ""))
	res := p.response()
	wantStatus(p.t, res, 401)
	p.sendTo(p.server(), build(2, digestAuth(p.t, res, p.ext, "secret"+p.ext)))
	wantStatus(p.t, p.response(), 200)
	chal, err := digest.ParseChallenge(res.GetHeader("WWW-Authenticate").Value())
	if err != nil {
		p.t.Fatal(err)
	}
	p.chal, p.nc = chal, 1
}

func offerSDP(ap netip.AddrPort) string {
	return fmt.Sprintf("v=0\r\no=- 1001 1 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\nm=audio %d RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n",
		ap.Addr(), ap.Addr(), ap.Port())
}

// invite sends an INVITE for target with an SDP offer for media at
// mediaAddr and returns its raw text's identifying parts.
type call struct {
	callID, fromTag, branch string
	ruri                    string
	cseq                    int
	raw                     string
}

func (p *tphone) invite(ruri string, media netip.AddrPort, extra string) *call {
	c := p.buildInvite(ruri, media, extra)
	p.sendTo(p.server(), c.raw)
	return c
}

func (p *tphone) buildInvite(ruri string, media netip.AddrPort, extra string) *call {
	p.seq++
	c := &call{callID: fmt.Sprintf("call-%s-%d", p.ext, p.seq), fromTag: "from" + p.ext, ruri: ruri, cseq: 1,
		branch: fmt.Sprintf("z9hG4bK%s-inv%d", p.ext, p.seq)}
	body := offerSDP(media)
	c.raw = fmt.Sprintf("INVITE %s SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=%s;rport\r\n", ruri, p.addr, c.branch) +
		"Max-Forwards: 70\r\n" +
		fmt.Sprintf("From: <sip:%s@mesh>;tag=%s\r\nTo: <%s>\r\n", p.ext, c.fromTag, ruri) +
		fmt.Sprintf("Call-ID: %s\r\nCSeq: 1 INVITE\r\n", c.callID) +
		fmt.Sprintf("Contact: <sip:%s@%s>\r\n", p.ext, p.addr) + extra +
		fmt.Sprintf("Content-Type: application/sdp\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	return c
}

// cancel sends the CANCEL of an INVITE (same branch, RFC 3261 §9.1).
func (p *tphone) cancel(c *call) {
	p.sendTo(p.server(), fmt.Sprintf("CANCEL %s SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=%s;rport\r\n", c.ruri, p.addr, c.branch)+
		"Max-Forwards: 70\r\n"+
		fmt.Sprintf("From: <sip:%s@mesh>;tag=%s\r\nTo: <%s>\r\n", p.ext, c.fromTag, c.ruri)+
		fmt.Sprintf("Call-ID: %s\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n", c.callID))
}

// ackNon2xx acknowledges a final non-2xx response hop by hop (§17.1.1.3).
func (p *tphone) ackNon2xx(c *call, res *sip.Response) {
	p.sendTo(p.server(), fmt.Sprintf("ACK %s SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=%s;rport\r\n", c.ruri, p.addr, c.branch)+
		"Max-Forwards: 70\r\n"+
		fmt.Sprintf("From: <sip:%s@mesh>;tag=%s\r\n%s\r\n", p.ext, c.fromTag, res.To().String())+
		fmt.Sprintf("Call-ID: %s\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n", c.callID))
}

// answer sends a response to req from this phone with To tag tag.
func (p *tphone) answer(req *sip.Request, code int, reason, tag, body string) {
	p.t.Helper()
	res := sip.NewResponseFromRequest(req, code, reason, nil)
	if to := res.To(); to != nil && code > 100 {
		to.Params.Add("tag", tag)
	}
	if code > 100 && code < 300 && req.IsInvite() {
		res.AppendHeader(sip.NewHeader("Contact", fmt.Sprintf("<sip:%s@%s>", p.ext, p.addr)))
	}
	if body != "" {
		res.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
		res.SetBody([]byte(body))
	}
	src, err := netip.ParseAddrPort(req.Source())
	if v := req.Via(); err != nil && v != nil {
		// A parsed message's Source is its Via's host:port, without the
		// brackets of an IPv6 address.
		var a netip.Addr
		if a, err = netip.ParseAddr(strings.Trim(v.Host, "[]")); err == nil {
			src = netip.AddrPortFrom(a, uint16(v.Port))
		}
	}
	if err != nil {
		p.t.Fatal(err)
	}
	p.sendTo(src, res.String())
}

// inDialog sends a request of a dialog: to the first Route of routes, or
// to the contact when there is none (RFC 3261 §12.2.1.1).
func (p *tphone) inDialog(method, ruri, from, to, callID string, cseq int, routes []string) {
	p.t.Helper()
	p.inDialogBody(method, ruri, from, to, callID, cseq, routes, "")
}

func (p *tphone) inDialogBody(method, ruri, from, to, callID string, cseq int, routes []string, body string) {
	p.t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s SIP/2.0\r\n%sMax-Forwards: 70\r\nFrom: %s\r\nTo: %s\r\nCall-ID: %s\r\nCSeq: %d %s\r\n",
		method, ruri, p.via(), from, to, callID, cseq, method)
	for _, r := range routes {
		fmt.Fprintf(&b, "Route: %s\r\n", r)
	}
	if body != "" {
		fmt.Fprintf(&b, "Contact: <sip:%s@%s>\r\nContent-Type: application/sdp\r\n", p.ext, p.addr)
	}
	fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n%s", len(body), body)
	p.inDialogRaw(b.String(), ruri, routes)
}

// inDialogRaw sends the request raw of a dialog to the first Route of
// routes, or to ruri when there is none.
func (p *tphone) inDialogRaw(raw, ruri string, routes []string) {
	p.t.Helper()
	dst := ruri
	if len(routes) > 0 {
		dst = strings.Trim(routes[0], "<>")
	}
	var u sip.Uri
	if err := sip.ParseUri(dst, &u); err != nil {
		p.t.Fatal(err)
	}
	ap, err := sipnet.URIAddr(&u)
	if err != nil {
		p.t.Fatalf("next hop %q is not an address", dst)
	}
	p.sendTo(ap, raw)
}

// digestAuth answers the first challenge of a 401 (RFC 7616 §3.4).
func digestAuth(t testing.TB, res *sip.Response, user, password string) string {
	t.Helper()
	h := res.GetHeader("WWW-Authenticate")
	if h == nil {
		t.Fatalf("no challenge in\n%s", res)
	}
	chal, err := digest.ParseChallenge(h.Value())
	if err != nil {
		t.Fatal(err)
	}
	cred, err := digest.Digest(chal, digest.Options{Method: "REGISTER", URI: "sip:mesh", Username: user, Password: password, Count: 1, Cnonce: "0a4f113b"})
	if err != nil {
		t.Fatal(err)
	}
	return cred.String()
}

func wantStatus(t testing.TB, res *sip.Response, code int) {
	t.Helper()
	if res == nil || res.StatusCode != code {
		t.Fatalf("got %v, want %d", res, code)
	}
}

// setHeader replaces the value of the first header line called name.
func setHeader(raw, name, value string) string {
	i := strings.Index(raw, "\r\n"+name+": ")
	if i < 0 {
		panic("no " + name)
	}
	i += len(name) + 4
	j := strings.Index(raw[i:], "\r\n")
	return raw[:i] + value + raw[i+j:]
}

func headerValues(m interface{ GetHeaders(string) []sip.Header }, name string) []string {
	var out []string
	for _, h := range m.GetHeaders(name) {
		out = append(out, h.Value())
	}
	return out
}

// untagged drops the Record-Route tag parameter (routecheck.go) from
// Record-Route values, which differs per node start and dialog.
func untagged(rr []string) []string {
	out := make([]string, len(rr))
	for i, v := range rr {
		if j := strings.Index(v, ";"+rrParam+"="); j >= 0 {
			k := strings.IndexAny(v[j+1:], ";>")
			v = v[:j] + v[j+1+k:]
		}
		out[i] = v
	}
	return out
}

func reversed(s []string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[len(s)-1-i] = v
	}
	return out
}

func contactURI(m interface{ GetHeader(string) sip.Header }) string {
	v := m.GetHeader("Contact").Value()
	return v[strings.Index(v, "<")+1 : strings.Index(v, ">")]
}

func sdpOf(t testing.TB, body []byte) sipalg.Stream {
	t.Helper()
	d, err := sipalg.Parse(body)
	if err != nil || len(d.Streams) != 1 {
		t.Fatalf("SDP %v:\n%s", err, body)
	}
	return d.Streams[0]
}

// mediaEP starts a G.711 endpoint with a tone on the phone's host.
func (m *meshRig) mediaEP(p *tphone, port uint16, tone float64) *phones.MediaEndpoint {
	m.t.Helper()
	c, err := p.host.ListenPacket(m.ctx, "udp", netip.AddrPortFrom(p.addr.Addr(), port).String())
	if err != nil {
		m.t.Fatal(err)
	}
	ep, err := phones.NewMediaEndpoint(phones.MediaConfig{Conn: c, ToneHz: tone})
	if err != nil {
		m.t.Fatal(err)
	}
	return ep
}

func inRelayRange(port uint16, side sipalg.Side) bool {
	if side == sipalg.SideA {
		return port >= 20000 && port <= 20199
	}
	return port >= 30000 && port <= 30199
}

// TestProxyCallAcrossNodes: 201 on node 1 calls 202 on node 2 through
// both proxies: 180/200/ACK/BYE follow the double Record-Route, each phone
// sees SDP of its own family pointing at its node's relay, the mesh leg is
// IPv6 only, and tones cross both relays in both directions.
func TestProxyCallAcrossNodes(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		m := newMeshRig(t, 2)
		a, b := m.phone(1, "201", 10), m.phone(2, "202", 10)
		a.register()
		b.register()
		ea, eb := m.mediaEP(a, 4000, 440), m.mediaEP(b, 4000, 1000)

		c := a.invite("sip:202@mesh", ea.Local(), "")
		inv := b.request(sip.INVITE)
		if got := inv.Recipient.String(); got != "sip:202@10.2.0.10:5060" {
			t.Errorf("Request-URI at the callee %s, want its contact", got)
		}
		wantRR := []string{"<sip:10.2.0.1:5060;lr>", "<sip:[fd00::2]:5060;lr>", "<sip:[fd00::1]:5060;lr>", "<sip:10.1.0.1:5060;lr>"}
		if got := untagged(headerValues(inv, "Record-Route")); strings.Join(got, ",") != strings.Join(wantRR, ",") {
			t.Errorf("Record-Route at the callee\n%v, want\n%v", got, wantRR)
		}
		if got := len(inv.GetHeaders("Via")); got != 3 {
			t.Errorf("%d Vias at the callee, want 3", got)
		}
		if mf := inv.MaxForwards().Val(); mf != 68 {
			t.Errorf("Max-Forwards %d at the callee, want 68", mf)
		}
		offer := sdpOf(t, inv.Body())
		if offer.Addr != m.nodes[1].lanIP || !inRelayRange(offer.Port, sipalg.SideA) {
			t.Errorf("offer at the callee points at %v, want node 2's LAN relay", offer.RTP())
		}
		if !strings.Contains(string(inv.Body()), "c=IN IP4 10.2.0.1\r\n") || !strings.Contains(string(inv.Body()), "o=- 1001 1 IN IP4 10.2.0.1\r\n") {
			t.Errorf("offer at the callee:\n%s", inv.Body())
		}
		eb.SetRemote(offer.RTP())

		b.answer(inv, 180, "Ringing", "tag202", "")
		ring := a.response()
		wantStatus(t, ring, 180)
		if got := headerValues(ring, "Record-Route"); len(got) != 4 {
			t.Errorf("180 carries Record-Route %v", got)
		}
		b.answer(inv, 200, "OK", "tag202", offerSDP(eb.Local()))
		ok := a.response()
		wantStatus(t, ok, 200)
		ans := sdpOf(t, ok.Body())
		if ans.Addr != m.nodes[0].lanIP || !inRelayRange(ans.Port, sipalg.SideA) || !strings.Contains(string(ok.Body()), "c=IN IP4 10.1.0.1\r\n") {
			t.Errorf("answer at the caller:\n%s", ok.Body())
		}
		ea.SetRemote(ans.RTP())

		// ACK for the 2xx: along the route set, to the callee's contact.
		routes := reversed(headerValues(ok, "Record-Route"))
		from := fmt.Sprintf("<sip:201@mesh>;tag=%s", c.fromTag)
		to := ok.To().Value()
		a.inDialog("ACK", contactURI(ok), from, to, c.callID, 1, routes)
		ack := b.request(sip.ACK)
		if got := ack.Recipient.String(); got != "sip:202@10.2.0.10:5060" {
			t.Errorf("ACK Request-URI %s", got)
		}
		if len(ack.GetHeaders("Route")) != 0 {
			t.Errorf("ACK still has Route %v", headerValues(ack, "Route"))
		}

		// The mesh leg is IPv6 on both nodes.
		for i, nd := range m.nodes {
			leg := nd.svc.findLeg(c.callID, c.fromTag)
			if leg == nil || len(leg.sessions()) != 1 {
				t.Fatalf("node %d: no media state for the call", i+1)
			}
			s := leg.sessions()[0]
			if p := s.StreamPlan(sipalg.SideB); !p.Addr.Is6() || !inRelayRange(p.Port, sipalg.SideB) {
				t.Errorf("node %d mesh side %+v", i+1, p)
			}
		}

		// Audio, both ways, through both relays.
		mctx, mcancel := context.WithCancel(m.ctx)
		var mwg sync.WaitGroup
		mwg.Go(func() { ea.Run(mctx) })
		mwg.Go(func() { eb.Run(mctx) })
		time.Sleep(2 * time.Second)
		mcancel()
		mwg.Wait()
		t.Logf("201 %+v\n202 %+v", ea.Stats(), eb.Stats())
		if !ea.Heard(1000) || !eb.Heard(440) {
			t.Errorf("two-way audio: 201 heard 202 %v, 202 heard 201 %v", ea.Heard(1000), eb.Heard(440))
		}
		for i, nd := range m.nodes {
			if cs := nd.svc.Calls(); len(cs) != 1 || cs[0].CallID != c.callID || !cs[0].Answered || len(cs[0].Streams) != 1 || cs[0].Streams[0].B.MOS < 4 {
				t.Errorf("node %d calls: %+v", i+1, cs)
			}
			st := nd.svc.findLeg(c.callID, c.fromTag).sessions()[0].Stats()
			if !st.B.Latched || !st.B.Peer.Addr().Is6() || st.B.Packets < 50 || st.A.Packets < 50 {
				t.Errorf("node %d relay: %+v", i+1, st)
			}
		}

		// Re-INVITE from the callee (hold): it follows the route set, and
		// the caller sees its node's relay with the o= version bumped
		// (RFC 3264 §8) because the description changed.
		hold := strings.Replace(offerSDP(eb.Local()), "a=sendrecv", "a=sendonly", 1)
		hold = strings.Replace(hold, "o=- 1001 1 ", "o=- 1001 2 ", 1)
		b.inDialogBody("INVITE", contactURI(inv), "<sip:202@mesh>;tag=tag202", inv.From().Value(), c.callID, 5,
			headerValues(inv, "Record-Route"), hold)
		reinv := a.request(sip.INVITE)
		if got := reinv.Recipient.String(); got != "sip:201@10.1.0.10:5060" {
			t.Errorf("re-INVITE Request-URI %s", got)
		}
		body := string(reinv.Body())
		if !strings.Contains(body, "o=- 1001 2 IN IP4 10.1.0.1\r\n") || !strings.Contains(body, "c=IN IP4 10.1.0.1\r\n") ||
			!strings.Contains(body, "a=sendonly") || sdpOf(t, reinv.Body()).Port != ans.Port {
			t.Errorf("re-INVITE at the caller:\n%s", body)
		}
		a.answer(reinv, 200, "OK", c.fromTag, offerSDP(ea.Local()))
		reok := b.response()
		wantStatus(t, reok, 200)
		if got := sdpOf(t, reok.Body()); got.RTP() != offer.RTP() {
			t.Errorf("re-INVITE answer at the callee points at %v, was %v", got.RTP(), offer.RTP())
		}
		b.inDialog("ACK", contactURI(inv), "<sip:202@mesh>;tag=tag202", inv.From().Value(), c.callID, 5, headerValues(inv, "Record-Route"))
		a.request(sip.ACK)

		// BYE from the callee: along the Record-Route in order.
		b.inDialog("BYE", contactURI(inv), "<sip:202@mesh>;tag=tag202", inv.From().Value(), c.callID, 1, headerValues(inv, "Record-Route"))
		bye := a.request(sip.BYE)
		if got := bye.Recipient.String(); got != "sip:201@10.1.0.10:5060" {
			t.Errorf("BYE Request-URI %s", got)
		}
		a.answer(bye, 200, "OK", c.fromTag, "")
		wantStatus(t, b.response(), 200)
		for i, nd := range m.nodes {

			if st := nd.svc.Stats(); st.Calls != 0 || nd.relay.Sessions() != 0 {
				t.Errorf("node %d after BYE: %d calls, %d relay sessions", i+1, st.Calls, nd.relay.Sessions())
			}
		}
	})
}

// TestProxyFinalResponses: the answers a caller gets when no phone
// answers: 404 for an extension without an account, 480 for one with no
// binding, 486 relayed from the callee, 483 for Max-Forwards 0, 400 for
// malformed INVITEs, 416 for a non-SIP Request-URI.
func TestProxyFinalResponses(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		m := newMeshRig(t, 2)
		a, b := m.phone(1, "201", 10), m.phone(2, "202", 10)
		a.register()
		b.register()
		media := netip.MustParseAddrPort("10.1.0.10:4000")

		c := a.invite("sip:999@mesh", media, "")
		res := a.response()
		wantStatus(t, res, 404)
		a.ackNon2xx(c, res)

		c = a.invite("sip:203@sipserver.mesh", media, "")
		res = a.response()
		wantStatus(t, res, 480)
		a.ackNon2xx(c, res)

		// A bare extension at the node's address is the mesh domain too.
		c = a.invite("sip:202@10.1.0.1", media, "")
		inv := b.request(sip.INVITE)
		b.answer(inv, 486, "Busy Here", "busy", "")
		// The proxy at node 2 acknowledges the 486 hop by hop.
		if ack := b.request(sip.ACK); ack.CSeq().SeqNo != inv.CSeq().SeqNo {
			t.Errorf("ACK of 486: %s", ack)
		}
		res = a.response()
		wantStatus(t, res, 486)
		a.ackNon2xx(c, res)

		// Max-Forwards 0: 483 from node 1, nothing reaches the callee.
		c = a.buildInvite("sip:202@mesh", media, "")
		a.sendTo(a.server(), setHeader(c.raw, "Max-Forwards", "0"))
		res = a.response()
		wantStatus(t, res, 483)
		a.ackNon2xx(c, res)

		// Max-Forwards 1: node 1 forwards with 0, node 2 answers 483.
		c = a.buildInvite("sip:202@mesh", media, "")
		a.sendTo(a.server(), setHeader(c.raw, "Max-Forwards", "1"))
		res = a.response()
		wantStatus(t, res, 483)
		a.ackNon2xx(c, res)

		// A request that comes back carrying a Via of ours with the loop
		// hash it would get now is a loop (RFC 3261 §16.3 step 4): 482.
		c = a.buildInvite("sip:202@mesh", media, "")
		parsed, err := sip.ParseMessage([]byte(c.raw))
		if err != nil {
			t.Fatal(err)
		}
		ours := "Via: SIP/2.0/UDP [fd00::1]:5060;branch=z9hG4bKsm" + loopHash(parsed.(*sip.Request)) + ".0a0b0c\r\n"
		a.sendTo(a.server(), strings.Replace(c.raw, "Max-Forwards: 70\r\n", ours+"Max-Forwards: 70\r\n", 1))
		res = a.response()
		wantStatus(t, res, 482)
		a.ackNon2xx(c, res)

		// Malformed: shorter than its Content-Length (answered before sipgo), CSeq method
		// not the request's, no SIP URI.
		c = a.buildInvite("sip:202@mesh", media, "")
		a.sendTo(a.server(), setHeader(c.raw, "Content-Length", "999"))
		res = a.response()
		wantStatus(t, res, 400)
		if !strings.Contains(res.Reason, "Bad Request") || res.CallID() == nil || string(*res.CallID()) != c.callID {
			t.Errorf("400 for an unparsable INVITE:\n%s", res)
		}
		c = a.buildInvite("sip:202@mesh", media, "")
		a.sendTo(a.server(), setHeader(c.raw, "CSeq", "1 OPTIONS"))
		res = a.response()
		wantStatus(t, res, 400)
		c = a.buildInvite("sip:202@mesh", media, "")
		a.sendTo(a.server(), strings.Replace(c.raw, "INVITE sip:202@mesh SIP/2.0", "INVITE tel:202 SIP/2.0", 1))
		res = a.response()
		wantStatus(t, res, 416)

		b.quiet(time.Second)
		for i, nd := range m.nodes {
			if st := nd.svc.Stats(); st.Calls != 0 || nd.relay.Sessions() != 0 {
				t.Errorf("node %d: %d calls, %d relay sessions left", i+1, st.Calls, nd.relay.Sessions())
			}
		}
	})
}

// TestProxyCancel: a CANCEL before the answer gets 200 and the INVITE 487
// at the caller, and the ringing callee on the far node gets its CANCEL at
// once (not after a transaction timer); the media state is dropped.
func TestProxyCancel(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		m := newMeshRig(t, 2)
		a, b := m.phone(1, "201", 10), m.phone(2, "202", 10)
		a.register()
		b.register()
		c := a.invite("sip:202@mesh", netip.MustParseAddrPort("10.1.0.10:4000"), "")
		inv := b.request(sip.INVITE)
		b.answer(inv, 180, "Ringing", "tag202", "")
		wantStatus(t, a.response(), 180)
		if n := m.nodes[0].relay.Sessions() + m.nodes[1].relay.Sessions(); n != 2 {
			t.Errorf("%d relay sessions while ringing, want one per node", n)
		}

		start := time.Now()
		a.cancel(c)
		var got []int
		for range 2 {
			res := a.response()
			got = append(got, res.StatusCode)
			if res.StatusCode == 487 {
				a.ackNon2xx(c, res)
			}
		}
		if fmt.Sprint(got) != "[200 487]" && fmt.Sprint(got) != "[487 200]" {
			t.Errorf("caller got %v, want 200 (CANCEL) and 487 (INVITE)", got)
		}
		cancel := b.request(sip.CANCEL)
		if d := time.Since(start); d > 100*time.Millisecond {
			t.Errorf("callee's CANCEL after %v", d)
		}
		if cancel.Via().Value() != inv.Via().Value() || cancel.CSeq().SeqNo != inv.CSeq().SeqNo {
			t.Errorf("CANCEL does not match the INVITE:\n%s", cancel)
		}
		b.answer(cancel, 200, "OK", "tag202", "")
		b.answer(inv, 487, "Request Terminated", "tag202", "")
		b.request(sip.ACK)
		time.Sleep(time.Second) // fake time: messages in flight land
		for i, nd := range m.nodes {
			if st := nd.svc.Stats(); st.Calls != 0 || nd.relay.Sessions() != 0 {
				t.Errorf("node %d after CANCEL: %d calls, %d relay sessions", i+1, st.Calls, nd.relay.Sessions())
			}
		}
		a.quiet(10 * time.Second)
		b.quiet(10 * time.Second)
	})
}

// TestProxyFork: 202 is registered from two phones, one on the caller's
// node and one on another node. Both ring; the remote one answers first
// and wins, the local one gets CANCEL. The local branch's SDP is not
// rewritten (same LAN, no family change); the remote one's is.
func TestProxyFork(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		m := newMeshRig(t, 2)
		a := m.phone(1, "201", 10)
		local, remote := m.phone(1, "202", 20), m.phone(2, "202", 30)
		a.register()
		local.register()
		remote.register()
		media := netip.MustParseAddrPort("10.1.0.10:4000")
		c := a.invite("sip:202@mesh", media, "")
		li, ri := local.request(sip.INVITE), remote.request(sip.INVITE)
		if got := sdpOf(t, li.Body()).RTP(); got != media {
			t.Errorf("local branch SDP points at %v, want the caller's %v untouched", got, media)
		}
		if got := untagged(headerValues(li, "Record-Route")); len(got) != 1 || got[0] != "<sip:10.1.0.1:5060;lr>" {
			t.Errorf("local branch Record-Route %v", got)
		}
		if got := sdpOf(t, ri.Body()); got.Addr != m.nodes[1].lanIP {
			t.Errorf("remote branch SDP points at %v", got.RTP())
		}
		local.answer(li, 180, "Ringing", "local", "")
		remote.answer(ri, 180, "Ringing", "remote", "")
		wantStatus(t, a.response(), 180)
		wantStatus(t, a.response(), 180)
		remote.answer(ri, 200, "OK", "remote", offerSDP(netip.MustParseAddrPort("10.2.0.30:4000")))
		ok := a.response()
		wantStatus(t, ok, 200)
		if tag, _ := ok.To().Params.Get("tag"); tag != "remote" {
			t.Errorf("200 from %q", tag)
		}
		if got := sdpOf(t, ok.Body()); got.Addr != m.nodes[0].lanIP {
			t.Errorf("answer at the caller points at %v", got.RTP())
		}
		cancel := local.request(sip.CANCEL)
		local.answer(cancel, 200, "OK", "local", "")
		local.answer(li, 487, "Request Terminated", "local", "")
		local.request(sip.ACK)
		// The 487 of the losing branch is not forwarded: the call has its 2xx.
		a.inDialog("ACK", contactURI(ok), fmt.Sprintf("<sip:201@mesh>;tag=%s", c.fromTag), ok.To().Value(), c.callID, 1, reversed(headerValues(ok, "Record-Route")))
		remote.request(sip.ACK)
		a.quiet(5 * time.Second)
		// Caller hangs up.
		a.inDialog("BYE", contactURI(ok), fmt.Sprintf("<sip:201@mesh>;tag=%s", c.fromTag), ok.To().Value(), c.callID, 2, reversed(headerValues(ok, "Record-Route")))
		bye := remote.request(sip.BYE)
		remote.answer(bye, 200, "OK", "remote", "")
		wantStatus(t, a.response(), 200)
		time.Sleep(time.Second) // fake time: messages in flight land
		for i, nd := range m.nodes {
			if st := nd.svc.Stats(); st.Calls != 0 || nd.relay.Sessions() != 0 {
				t.Errorf("node %d after BYE: %d calls, %d relay sessions", i+1, st.Calls, nd.relay.Sessions())
			}
		}
	})
}

// TestProxyTimerC: a callee that rings and never answers is cancelled
// after Timer C (RFC 3261 §16.8) and the caller gets 408.
func TestProxyTimerC(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		m := newMeshRig(t, 2, func(c *SIPServiceConfig) { c.TimerC = 3*time.Minute + 10*time.Second })
		a, b := m.phone(1, "201", 10), m.phone(2, "202", 10)
		a.register()
		b.register()
		start := time.Now()
		c := a.invite("sip:202@mesh", netip.MustParseAddrPort("10.1.0.10:4000"), "")
		inv := b.request(sip.INVITE)
		b.answer(inv, 180, "Ringing", "tag202", "")
		wantStatus(t, a.response(), 180)
		// Node 1's Timer C fires first: its CANCEL reaches the callee through
		// node 2.
		cancel := b.request(sip.CANCEL)
		if d := time.Since(start); d < 3*time.Minute || d > 4*time.Minute {
			t.Errorf("CANCEL after %v, want Timer C", d)
		}
		b.answer(cancel, 200, "OK", "tag202", "")
		b.answer(inv, 487, "Request Terminated", "tag202", "")
		b.request(sip.ACK)
		res := a.response()
		wantStatus(t, res, 408)
		a.ackNon2xx(c, res)
		time.Sleep(time.Second)
		for i, nd := range m.nodes {
			if st := nd.svc.Stats(); st.Calls != 0 || nd.relay.Sessions() != 0 {
				t.Errorf("node %d: %d calls, %d relay sessions", i+1, st.Calls, nd.relay.Sessions())
			}
		}
	})
}

// TestProxyMessageAndOptions: an out-of-dialog MESSAGE to an AOR is
// proxied across nodes (non-INVITE, no Record-Route), and an OPTIONS to
// the node itself is answered by it.
func TestProxyMessageAndOptions(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		m := newMeshRig(t, 2)
		a, b := m.phone(1, "201", 10), m.phone(2, "202", 10)
		a.register()
		b.register()
		a.inDialog("MESSAGE", "sip:202@mesh", "<sip:201@mesh>;tag=m1", "<sip:202@mesh>", "msg-1", 1, []string{"<sip:10.1.0.1;lr>"})
		msg := b.request(sip.MESSAGE)
		if rr := msg.GetHeaders("Record-Route"); len(rr) != 0 || len(msg.GetHeaders("Route")) != 0 {
			t.Errorf("MESSAGE at the callee:\n%s", msg)
		}
		b.answer(msg, 200, "OK", "m2", "")
		wantStatus(t, a.response(), 200)

		a.inDialog("OPTIONS", "sip:10.1.0.1", "<sip:201@mesh>;tag=o1", "<sip:10.1.0.1>", "opt-1", 1, nil)
		res := a.response()
		wantStatus(t, res, 200)
		if res.GetHeader("Allow") == nil {
			t.Errorf("OPTIONS answer without Allow:\n%s", res)
		}
		b.quiet(time.Second)
	})
}

// TestSIPServiceRateLimit: datagrams over a source's rate are dropped
// before sipgo sees them.
func TestSIPServiceRateLimit(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		m := newMeshRig(t, 1, func(c *SIPServiceConfig) { c.Rate, c.Burst = 1, 3 })
		a := m.phone(1, "201", 10)
		for i := range 10 {
			a.inDialog("OPTIONS", "sip:10.1.0.1", "<sip:201@mesh>;tag=o1", "<sip:10.1.0.1>", fmt.Sprintf("opt-%d", i), 1, nil)
		}
		for range 3 {
			wantStatus(t, a.response(), 200)
		}
		a.quiet(time.Second)
		if st := m.nodes[0].svc.Stats(); st.RateLimited != 7 {
			t.Errorf("stats %+v, want 7 rate-limited", st)
		}
	})
}

func TestFlowToken(t *testing.T) {
	for _, c := range []struct {
		ap netip.AddrPort
		tr string
	}{{netip.MustParseAddrPort("10.1.0.10:5062"), "udp"}, {netip.MustParseAddrPort("[fd00::9]:5060"), "tcp"}} {
		tok := flowToken(c.ap, c.tr)
		var u sip.Uri
		if err := sip.ParseUri("sip:"+tok+"@[fd00::1]:5060;lr", &u); err != nil || u.User != tok {
			t.Errorf("token %q in a URI: %v %q", tok, err, u.User)
		}
		ap, tr, ok := parseFlowToken(tok)
		if !ok || ap != c.ap || tr != strings.ToUpper(c.tr) {
			t.Errorf("%q → %v %s %v", tok, ap, tr, ok)
		}
	}
	for _, bad := range []string{"", "smf-", "smf-udp-", "smf-sctp-0a01000a13c6", "smf-udp-zz", "smf-udp-0a01"} {
		if _, _, ok := parseFlowToken(bad); ok {
			t.Errorf("%q accepted", bad)
		}
	}
}

// FuzzFlowToken: the flow token comes from other nodes' Route headers.
func FuzzFlowToken(f *testing.F) {
	f.Add(flowToken(netip.MustParseAddrPort("10.1.0.10:5062"), "udp"))
	f.Add("smf-tcp-")
	f.Fuzz(func(t *testing.T, s string) {
		ap, tr, ok := parseFlowToken(s)
		if !ok {
			return
		}
		if back, _, ok2 := parseFlowToken(flowToken(ap, tr)); !ok2 || back != ap {
			t.Fatalf("%q → %v does not round-trip", s, ap)
		}
	})
}

// TestSIPServiceShutdownInFlight: stopping nodes while a call rings ends
// every handler, transaction and relay session before Run returns.
func TestSIPServiceShutdownInFlight(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		m := newMeshRig(t, 2)
		a, b := m.phone(1, "201", 10), m.phone(2, "202", 10)
		a.register()
		b.register()
		a.invite("sip:202@mesh", netip.MustParseAddrPort("10.1.0.10:4000"), "")
		inv := b.request(sip.INVITE)
		b.answer(inv, 180, "Ringing", "tag202", "")
		wantStatus(t, a.response(), 180)
		m.stop()
		for i, nd := range m.nodes {
			if n := nd.relay.Sessions(); n != 0 {
				t.Errorf("node %d: %d relay sessions after Run", i+1, n)
			}
			if st := nd.svc.Stats(); st.Calls != 0 {
				t.Errorf("node %d: %+v after Run", i+1, st)
			}
		}
	})
}

// tcpPhone is a phone registered over TCP: calls reach it over the same
// connection (RFC 5626 flow), not a new one.
type tcpPhone struct {
	t    testing.TB
	conn net.Conn
	in   chan sip.Message
	addr netip.AddrPort
}

func (m *meshRig) tcpPhone(node int, ext string, last byte) *tcpPhone {
	m.t.Helper()
	nd := m.nodes[node-1]
	ip := netip.AddrFrom4([4]byte{10, byte(node), 0, last})
	h := m.nw.AddHost("tcp-phone-" + ext)
	nd.lan.Attach(h.AddInterface("eth0", rigMTU, netip.PrefixFrom(ip, 24)))
	conn, err := h.Dial(m.ctx, "tcp", netip.AddrPortFrom(nd.lanIP, 5060).String())
	if err != nil {
		m.t.Fatal(err)
	}
	ap, _ := sipnet.AddrPortOf(conn.LocalAddr())
	p := &tcpPhone{t: m.t, conn: conn, in: make(chan sip.Message, 16), addr: ap}
	m.wg.Go(func() {
		ps := sip.NewParser().NewSIPStream()
		defer ps.Close()
		buf := make([]byte, 8192)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			ps.Write(buf[:n])
			for {
				msg, _, err := ps.ParseNext()
				if err != nil {
					break
				}
				p.in <- msg
			}
		}
	})
	context.AfterFunc(m.ctx, func() { conn.Close() })
	return p
}

func (p *tcpPhone) recv() sip.Message {
	p.t.Helper()
	for {
		select {
		case m := <-p.in:
			if res, ok := m.(*sip.Response); ok && res.StatusCode == 100 {
				continue
			}
			return m
		case <-time.After(time.Minute):
			p.t.Fatal("tcp phone: nothing received")
			return nil
		}
	}
}

func TestProxyTCPFlow(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		m := newMeshRig(t, 2)
		a := m.phone(1, "201", 10)
		a.register()
		b := m.tcpPhone(2, "202", 40)
		reg := func(cseq int, auth string) string {
			s := "REGISTER sip:mesh SIP/2.0\r\n" +
				fmt.Sprintf("Via: SIP/2.0/TCP %s;branch=z9hG4bKt%d\r\n", b.addr, cseq) +
				"Max-Forwards: 70\r\nFrom: <sip:202@mesh>;tag=t1\r\nTo: <sip:202@mesh>\r\n" +
				fmt.Sprintf("Call-ID: tcp-reg\r\nCSeq: %d REGISTER\r\nContact: <sip:202@%s;transport=tcp>\r\n", cseq, b.addr)
			if auth != "" {
				s += "Authorization: " + auth + "\r\n"
			}
			return s + "Content-Length: 0\r\n\r\n"
		}
		b.conn.Write([]byte(reg(1, "")))
		res := b.recv().(*sip.Response)
		wantStatus(t, res, 401)
		b.conn.Write([]byte(reg(2, digestAuth(t, res, "202", "secret202"))))
		wantStatus(t, b.recv().(*sip.Response), 200)

		a.invite("sip:202@mesh", netip.MustParseAddrPort("10.1.0.10:4000"), "")
		inv, ok := b.recv().(*sip.Request)
		if !ok || !inv.IsInvite() || inv.Via().Transport != "TCP" {
			t.Fatalf("want the INVITE over TCP, got\n%v", inv)
		}
		if rr := untagged(headerValues(inv, "Record-Route")); len(rr) != 4 || rr[0] != "<sip:10.2.0.1:5060;transport=tcp;lr>" {
			t.Errorf("Record-Route over TCP: %v", rr)
		}
		res486 := sip.NewResponseFromRequest(inv, 486, "Busy Here", nil)
		b.conn.Write([]byte(res486.String()))
		wantStatus(t, a.response(), 486)
	})
}

// BenchmarkProxyCallSetup measures complete calls (INVITE, 200 with SDP,
// ACK, BYE, 200) placed one after the other through the proxy, on the
// in-memory network without link delay: between two phones of one node
// (no ALG), and between phones on two nodes (two proxies, relay sessions
// allocated and released on each). calls/s is the setup-and-teardown rate
// of one caller; the proxies are not saturated by it.
func BenchmarkProxyCallSetup(b *testing.B) {
	for _, tc := range []struct {
		name   string
		nodes  int
		callee int
	}{{"same-node", 1, 1}, {"two-nodes", 2, 2}} {
		b.Run(tc.name, func(b *testing.B) {
			m := newMeshRig(b, tc.nodes, func(c *SIPServiceConfig) { c.MaxTransactions = 1 << 20 })
			m.mesh.Set(memnet.LinkConfig{})
			for _, nd := range m.nodes {
				nd.lan.Set(memnet.LinkConfig{})
			}
			a, callee := m.phone(1, "201", 10), m.phone(tc.callee, "202", 20)
			a.register()
			callee.register()
			media := netip.MustParseAddrPort("10.1.0.10:4000")
			answer := offerSDP(netip.AddrPortFrom(callee.addr.Addr(), 4000))
			b.ResetTimer()
			for range b.N {
				c := a.invite("sip:202@mesh", media, "")
				inv := callee.request(sip.INVITE)
				callee.answer(inv, 200, "OK", "tag202", answer)
				ok := a.response()
				wantStatus(b, ok, 200)
				routes := reversed(headerValues(ok, "Record-Route"))
				from := "<sip:201@mesh>;tag=" + c.fromTag
				a.inDialog("ACK", contactURI(ok), from, ok.To().Value(), c.callID, 1, routes)
				callee.request(sip.ACK)
				a.inDialog("BYE", contactURI(ok), from, ok.To().Value(), c.callID, 2, routes)
				callee.answer(callee.request(sip.BYE), 200, "OK", "tag202", "")
				wantStatus(b, a.response(), 200)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
			b.StopTimer()
		})
	}
}

// TestProxyIdleCallReclaimed: a call whose BYE never comes (a phone lost
// power) loses its relay sessions to the relay's idle reclaim, and the
// proxy then drops its media state.
func TestProxyIdleCallReclaimed(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		m := newMeshRig(t, 2)
		a, b := m.phone(1, "201", 10), m.phone(2, "202", 10)
		a.register()
		b.register()
		c := a.invite("sip:202@mesh", netip.MustParseAddrPort("10.1.0.10:4000"), "")
		inv := b.request(sip.INVITE)
		b.answer(inv, 200, "OK", "tag202", offerSDP(netip.MustParseAddrPort("10.2.0.10:4000")))
		ok := a.response()
		wantStatus(t, ok, 200)
		a.inDialog("ACK", contactURI(ok), "<sip:201@mesh>;tag="+c.fromTag, ok.To().Value(), c.callID, 1, reversed(headerValues(ok, "Record-Route")))
		b.request(sip.ACK)
		if st := m.nodes[0].svc.Stats(); st.Calls != 1 {
			t.Fatalf("node 1 during the call: %+v", st)
		}
		time.Sleep(sipalg.DefaultIdleTimeout + 30*time.Second)
		for i, nd := range m.nodes {
			if st := nd.svc.Stats(); st.Calls != 0 || nd.relay.Sessions() != 0 {
				t.Errorf("node %d after the idle timeout: %d calls, %d relay sessions", i+1, st.Calls, nd.relay.Sessions())
			}
		}
	})
}

// TestProxyALGErrors: an INVITE whose SDP cannot be parsed gets 400 with
// the reason, and a call beyond the node's media capacity gets 503; in
// both cases nothing reaches the callee.
func TestProxyALGErrors(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		m := newMeshRig(t, 2, func(c *SIPServiceConfig) { c.MaxCalls = 1 })
		a, b := m.phone(1, "201", 10), m.phone(2, "202", 10)
		a.register()
		b.register()
		media := netip.MustParseAddrPort("10.1.0.10:4000")

		c := a.buildInvite("sip:202@mesh", media, "")
		i := strings.Index(c.raw, "\r\n\r\n")
		bad := "v=0\r\nx=what\r\n"
		a.sendTo(a.server(), setHeader(c.raw[:i+4], "Content-Length", fmt.Sprint(len(bad)))+bad)
		res := a.response()
		wantStatus(t, res, 400)
		if !strings.Contains(res.Reason, "SDP") {
			t.Errorf("reason %q does not name the SDP", res.Reason)
		}
		a.ackNon2xx(c, res)

		first := a.invite("sip:202@mesh", media, "")
		inv := b.request(sip.INVITE)
		b.answer(inv, 180, "Ringing", "tag202", "")
		wantStatus(t, a.response(), 180)
		c = a.invite("sip:202@mesh", media, "")
		res = a.response()
		wantStatus(t, res, 503)
		a.ackNon2xx(c, res)
		b.quiet(time.Second)

		a.cancel(first)
		for range 2 {
			if res := a.response(); res.StatusCode == 487 {
				a.ackNon2xx(first, res)
			}
		}
		b.answer(b.request(sip.CANCEL), 200, "OK", "tag202", "")
		b.answer(inv, 487, "Request Terminated", "tag202", "")
		b.request(sip.ACK)
	})
}

// sipgoPhone is a phone built on sipgo's own dialog layer, to check the
// proxy against a real UA stack's handling of route sets, CANCEL and 2xx
// retransmission.
type sipgoPhone struct {
	ext     string
	ip      netip.Addr
	server  netip.AddrPort
	cli     *sipgo.Client
	srv     *sipgo.Server
	contact sip.ContactHeader
	dcc     *sipgo.DialogClientCache
	dsc     *sipgo.DialogServerCache
}

func (m *meshRig) sipgoPhone(node int, ext string, last byte) *sipgoPhone {
	m.t.Helper()
	nd := m.nodes[node-1]
	ip := netip.AddrFrom4([4]byte{10, byte(node), 0, last})
	h := m.nw.AddHost("sipgo-" + ext)
	nd.lan.Attach(h.AddInterface("eth0", rigMTU, netip.PrefixFrom(ip, 24)))
	addr := netip.AddrPortFrom(ip, 5060)
	pc, err := h.ListenPacket(m.ctx, "udp", addr.String())
	if err != nil {
		m.t.Fatal(err)
	}
	quiet := slog.New(slog.DiscardHandler)
	ua, err := sipgo.NewUA(sipgo.WithUserAgent(ext), sipgo.WithUserAgentHostname(ip.String()),
		sipgo.WithUserAgentTransactionLayerOptions(sip.WithTransactionLayerLogger(quiet)),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(quiet)))
	if err != nil {
		m.t.Fatal(err)
	}
	p := &sipgoPhone{ext: ext, ip: ip, server: netip.AddrPortFrom(nd.lanIP, 5060)}
	p.srv, _ = sipgo.NewServer(ua, sipgo.WithServerLogger(quiet))
	p.cli, _ = sipgo.NewClient(ua, sipgo.WithClientLogger(quiet), sipgo.WithClientConnectionAddr(addr.String()),
		sipgo.WithClientHostname(ip.String()), sipgo.WithClientPort(5060))
	p.contact = sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: ext, Host: ip.String(), Port: 5060}}
	p.dcc = sipgo.NewDialogClientCache(p.cli, p.contact)
	p.dsc = sipgo.NewDialogServerCache(p.cli, p.contact)
	p.srv.OnAck(func(req *sip.Request, tx sip.ServerTransaction) { p.dsc.ReadAck(req, tx) })
	p.srv.OnBye(func(req *sip.Request, tx sip.ServerTransaction) {
		if p.dcc.ReadBye(req, tx) != nil {
			p.dsc.ReadBye(req, tx)
		}
	})
	m.wg.Go(func() { p.srv.ServeUDP(pc) })
	context.AfterFunc(m.ctx, func() { pc.Close(); ua.Close() })
	return p
}

func (p *sipgoPhone) register(t testing.TB, ctx context.Context) {
	t.Helper()
	req := sip.NewRequest(sip.REGISTER, sip.Uri{Scheme: "sip", Host: "mesh"})
	from := &sip.FromHeader{Address: sip.Uri{Scheme: "sip", User: p.ext, Host: "mesh"}}
	from.Params.Add("tag", "reg"+p.ext)
	req.AppendHeader(from)
	req.AppendHeader(&sip.ToHeader{Address: sip.Uri{Scheme: "sip", User: p.ext, Host: "mesh"}})
	req.AppendHeader(&p.contact)
	req.SetDestination(p.server.String())
	res, err := p.cli.Do(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode == 401 {
		if res, err = p.cli.DoDigestAuth(ctx, req, res, sipgo.DigestAuth{Username: p.ext, Password: "secret" + p.ext}); err != nil {
			t.Fatal(err)
		}
	}
	wantStatus(t, res, 200)
}

// TestProxySipgoPhones: phones on sipgo's dialog layer call each other
// across two nodes, the callee hangs up; on a clean mesh and with 10%
// loss on the mesh link, where calls still connect thanks to the
// transaction layers' retransmissions (the proxies' towards each other,
// the phones' 2xx/ACK end to end).
func TestProxySipgoPhones(t *testing.T) {
	for _, tc := range []struct {
		loss  float64
		calls int
	}{{0, 1}, {0.1, 5}} {
		t.Run(fmt.Sprintf("loss=%v", tc.loss), func(t *testing.T) {
			leakcheck.Check(t)
			synctest.Test(t, func(t *testing.T) { sipgoCalls(t, tc.loss, tc.calls) })
		})
	}
}

func sipgoCalls(t *testing.T, loss float64, calls int) {
	m := newMeshRig(t, 2)
	m.mesh.Set(memnet.LinkConfig{Delay: 5 * time.Millisecond, Loss: loss})
	ctx := m.ctx
	a, b := m.sipgoPhone(1, "201", 50), m.sipgoPhone(2, "202", 50)
	synctest.Wait() // sipgo has put the phones' sockets in its pool
	a.register(t, ctx)
	b.register(t, ctx)
	answered := make(chan *sipgo.DialogServerSession, 1)
	b.srv.OnInvite(func(req *sip.Request, tx sip.ServerTransaction) {
		ds, err := b.dsc.ReadInvite(req, tx)
		if err != nil {
			t.Error(err)
			return
		}
		if got := sdpOf(t, req.Body()); got.Addr != m.nodes[1].lanIP {
			t.Errorf("offer at the sipgo callee points at %v", got.RTP())
		}
		ds.Respond(180, "Ringing", nil)
		if err := ds.RespondSDP([]byte(offerSDP(netip.MustParseAddrPort("10.2.0.50:4000")))); err != nil {
			t.Errorf("callee: %v", err)
			return
		}
		answered <- ds
	})
	for i := range calls {
		inv := sip.NewRequest(sip.INVITE, sip.Uri{Scheme: "sip", User: "202", Host: "mesh"})
		inv.SetBody([]byte(offerSDP(netip.MustParseAddrPort("10.1.0.50:4000"))))
		inv.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
		inv.SetDestination(a.server.String())
		sess, err := a.dcc.WriteInvite(ctx, inv)
		if err != nil {
			t.Fatal(err)
		}
		if err := sess.WaitAnswer(ctx, sipgo.AnswerOptions{Username: "201", Password: "secret201"}); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if got := sdpOf(t, sess.InviteResponse.Body()); got.Addr != m.nodes[0].lanIP {
			t.Errorf("answer at the sipgo caller points at %v", got.RTP())
		}
		if err := sess.Ack(ctx); err != nil {
			t.Fatal(err)
		}
		ds := <-answered
		if err := ds.Bye(ctx); err != nil {
			t.Fatalf("call %d: callee's BYE: %v", i, err)
		}
		<-sess.Context().Done()
		sess.Close()
		ds.Close()
	}
	time.Sleep(time.Second)
	for i, nd := range m.nodes {
		if st := nd.svc.Stats(); st.Calls != 0 || nd.relay.Sessions() != 0 {
			t.Errorf("node %d after the calls: %d calls, %d relay sessions", i+1, st.Calls, nd.relay.Sessions())
		}
	}
}

// TestProxyStoreUnavailable (issue 10): a location store that cannot
// answer (a DHT read lost past the INVITE's budget) gets the caller 503
// with Retry-After, never 500.
func TestProxyStoreUnavailable(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		m := newMeshRig(t, 1, func(c *SIPServiceConfig) { c.Locations = failingStore{} })
		a := m.phone(1, "201", 10)
		// The phone cannot register (the store fails too), so it answers
		// the INVITE's 407 with credentials, as a phone does.
		c := a.invite("sip:202@mesh", netip.MustParseAddrPort("10.1.0.10:4000"), "")
		res := a.response()
		wantStatus(t, res, 407)
		a.ackNon2xx(c, res)
		chal, err := digest.ParseChallenge(res.GetHeader("Proxy-Authenticate").Value())
		if err != nil {
			t.Fatal(err)
		}
		a.chal, a.nc = chal, 0 // the nonce's first use: nc=1
		c = a.invite("sip:202@mesh", netip.MustParseAddrPort("10.1.0.10:4000"), "")
		res = a.response()
		wantStatus(t, res, 503)
		if h := res.GetHeader("Retry-After"); h == nil {
			t.Error("503 without Retry-After")
		}
		a.ackNon2xx(c, res)
	})
}

// failingStore fails every call, as a DHT without quorum would.
type failingStore struct{}

func (failingStore) Bindings(context.Context, string) ([]registrar.Binding, error) {
	return nil, fmt.Errorf("dht: no route")
}
func (failingStore) SetBindings(context.Context, string, ssr.NodeID, []registrar.Binding) error {
	return fmt.Errorf("dht: no route")
}
