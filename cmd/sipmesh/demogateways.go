//go:build !router

package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
	"github.com/sipmesh/sipmesh/gateway"
	"github.com/sipmesh/sipmesh/phones"
)

// The demo's Internet (`sipmesh demo --gateways N`, issue 14): gateway
// nodes with an uplink on an emulated Internet segment, where a DNS
// server (198.51.100.53, the gateways' dns-upstream) serves example.net
// as RFC 3263 finds it (NAPTR → SRV → A) and bob@example.net is its SIP
// server and callee; carol@example.net calls the mesh's public domain
// voice.example.org, which DNS would point at every gateway.

// Call directions in the report.
const (
	dirMesh     = "mesh"
	dirOutbound = "outbound"
	dirInbound  = "inbound"
)

// Addresses on the emulated Internet (198.51.100.0/24; gateway node i
// is 198.51.100.i+1, demomesh.go).
var (
	internetDNSAddr = netip.MustParseAddr("198.51.100.53")
	demoBobAddr     = netip.MustParseAddr("198.51.100.254")
)

// demoCarolAddr is the address of carol's phone that calls through
// gateway k: one phone per gateway, each sending to its gateway as a
// caller's RFC 3263 client sends to one of voice.example.org's servers.
func demoCarolAddr(k int) netip.Addr { return netip.AddrFrom4([4]byte{198, 51, 100, byte(253 - k)}) }

// maxDemoGateways bounds --gateways: each takes a node and a carol.
const maxDemoGateways = 8

// demoGatewayNodes picks n gateway nodes of the topology adj: those with
// the fewest radio links (leaves where there are: a gateway at the edge
// of a community mesh, and one no other node's route crosses, so that
// killing it, as --kill-gateway does, cuts no route but its own), the
// last first; never node 1, which holds the administrator's key the
// demo's later accounts are signed with, nor a node whose uplink address
// would be the resolver's.
func demoGatewayNodes(adj [][]int, n int) []int {
	var cand []int
	for i := len(adj) - 1; i > 0; i-- {
		if netip.AddrFrom4([4]byte{198, 51, 100, byte(i + 1)}) != internetDNSAddr {
			cand = append(cand, i)
		}
	}
	slices.SortStableFunc(cand, func(a, b int) int { return len(adj[a]) - len(adj[b]) })
	return cand[:min(n, len(cand))]
}

// startInternetDNS serves example.net's SIP location records on the
// Internet segment at internetDNSAddr:53 until the mesh stops:
// sip.example.net is server; with deadFirst the first SRV target (priority 10) is an address
// where no server answers, the server the second (priority 20).
func (m *telMesh) startInternetDNS(server netip.Addr, deadFirst bool) error {
	h := m.nw.AddHost("dns")
	m.inet.Attach(h.AddInterface("eth0", 1500, netip.PrefixFrom(internetDNSAddr, 24)))
	conn, err := h.ListenPacket(m.ctx, "udp4", netip.AddrPortFrom(internetDNSAddr, 53).String())
	if err != nil {
		return err
	}
	rrs := map[uint16]map[string][]string{
		dns.TypeNAPTR: {"example.net.": {`example.net. 60 IN NAPTR 10 10 "S" "SIP+D2U" "" _sip._udp.example.net.`}},
		dns.TypeSRV:   {"_sip._udp.example.net.": {"_sip._udp.example.net. 60 IN SRV 10 10 5060 sip.example.net."}},
		dns.TypeA:     {"sip.example.net.": {"sip.example.net. 60 IN A " + server.String()}},
	}
	if deadFirst {
		rrs[dns.TypeSRV]["_sip._udp.example.net."] = []string{
			"_sip._udp.example.net. 60 IN SRV 10 10 5060 dead.example.net.",
			"_sip._udp.example.net. 60 IN SRV 20 10 5060 sip.example.net."}
		rrs[dns.TypeA]["dead.example.net."] = []string{"dead.example.net. 60 IN A 198.51.100.30"}
	}
	answers := map[uint16]map[string][]dns.RR{}
	for t, names := range rrs {
		answers[t] = map[string][]dns.RR{}
		for name, texts := range names {
			for _, s := range texts {
				rr, err := dns.NewRR(s)
				if err != nil {
					conn.Close()
					return err
				}
				answers[t][name] = append(answers[t][name], rr)
			}
		}
	}
	stop := context.AfterFunc(m.ctx, func() { conn.Close() })
	m.wg.Go(func() {
		defer stop()
		buf := make([]byte, 1500)
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			var q dns.Msg
			if q.Unpack(buf[:n]) != nil || len(q.Question) != 1 {
				continue
			}
			res := new(dns.Msg)
			res.SetReply(&q)
			qq := q.Question[0]
			res.Answer = answers[qq.Qtype][strings.ToLower(qq.Name)]
			b, err := res.Pack()
			if err == nil {
				conn.WriteTo(b, from)
			}
		}
	})
	return nil
}

// internetPhone starts a simulated phone on the emulated Internet at
// addr (set's LocalAddr is filled in); it runs until the mesh stops.
func (m *telMesh) internetPhone(name string, addr netip.Addr, set phones.Settings, pol phones.Policy) (*phones.Phone, error) {
	h := m.nw.AddHost(name)
	m.inet.Attach(h.AddInterface("eth0", 1500, netip.PrefixFrom(addr, 24)))
	set.LocalAddr = addr
	p, err := phones.New(phones.Config{Settings: set, Policy: pol, Network: h})
	if err != nil {
		return nil, err
	}
	m.wg.Go(func() { p.Run(m.ctx) })
	return p, nil
}

// demoInternet is the demo's Internet side: bob, the callee at
// example.net, and carol, the caller of the mesh's public domain, one
// phone per gateway.
type demoInternet struct {
	gws    []int // the gateway nodes
	bob    *phones.Phone
	bobHz  float64
	carol  []*phones.Phone // carol[k] sends to gateway gws[k]
	carHz  float64
	killed map[int]bool
}

// startInternet starts the DNS server, bob and the carols; bob's and
// carol's tones are hzBob and hzCarol.
func (m *telMesh) startInternet(hzBob, hzCarol float64) (*demoInternet, error) {
	in := &demoInternet{gws: m.cfg.Gateways, bobHz: hzBob, carHz: hzCarol, killed: map[int]bool{}}
	if err := m.startInternetDNS(demoBobAddr, false); err != nil {
		return nil, err
	}
	var err error
	in.bob, err = m.internetPhone("bob", demoBobAddr, phones.Settings{User: "bob", Domain: "example.net", ToneHz: hzBob,
		ToneAmplitude: demoToneAmplitude, MaxCalls: 16}, phones.Policy{Mode: phones.AutoAnswer, RingDelay: 100 * time.Millisecond})
	if err != nil {
		return nil, err
	}
	for k, g := range in.gws {
		gw := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(g + 1)}), 5060)
		c, err := m.internetPhone(fmt.Sprintf("carol%d", k+1), demoCarolAddr(k), phones.Settings{User: "carol", Domain: "example.net",
			Server: gw, ToneHz: hzCarol, ToneAmplitude: demoToneAmplitude}, phones.Policy{})
		if err != nil {
			return nil, err
		}
		in.carol = append(in.carol, c)
	}
	return in, nil
}

// waitGateways waits until every phone node of ps can choose a gateway
// and every gateway serves its Internet side.
func (m *telMesh) waitGateways(ctx context.Context, ps []*meshPhone) error {
	for {
		ready := true
		for _, g := range m.cfg.Gateways {
			ready = ready && m.nodes[g].UplinkSIP() != nil
		}
		for _, p := range ps {
			if _, err := m.nodes[p.Node].ChooseGateway(ctx, gateway.KindURI); err != nil {
				ready = false
			}
		}
		if ready {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.New("demo: the phones' nodes know no gateway after 60 s")
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// proxied is each gateway's count of requests its Internet side sent on:
// the one that grew during a call is the gateway the call went through.
func (m *telMesh) proxied() []uint64 {
	out := make([]uint64, len(m.cfg.Gateways))
	for k, g := range m.cfg.Gateways {
		if s := m.nodes[g].UplinkSIP(); s != nil {
			out[k] = s.Stats().Proxied
		}
	}
	return out
}

// usedGateway names the gateway whose count grew from before to after
// ("" when none did).
func (m *telMesh) usedGateway(before, after []uint64) string {
	for k := range before {
		if after[k] > before[k] {
			return nodeName(m.cfg.Gateways[k])
		}
	}
	return ""
}

// gatewayRing is how long carol gives a gateway to ring the callee before
// she tries the next of voice.example.org's servers (RFC 3263 §4.3), as
// the mesh's nodes give a gateway to answer (proxy's gatewayTry).
const gatewayRing = 2 * time.Second

// outboundCall: mesh phone a calls sip:bob@example.net through the
// gateway its node chooses.
func (m *telMesh) outboundCall(ctx context.Context, in *demoInternet, a *meshPhone, hold time.Duration) callResult {
	r := callResult{From: a.Ext, To: "bob@example.net", FromNode: nodeName(a.Node), ToNode: "internet", Direction: dirOutbound}
	before := m.proxied()
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := a.Call(cctx, "sip:bob@example.net", phones.CallOptions{ExpectHz: in.bobHz})
	r.Gateway = m.usedGateway(before, m.proxied())
	m.gatewayHops(&r, a.Node)
	return judgeCall(ctx, cctx, r, c, err, in.bob, a.Hz, hold)
}

// inboundCall: carol calls sip:EXT@voice.example.org for mesh phone b,
// through the first live gateway from k on, as a caller tries the
// servers DNS names for the domain in turn.
func (m *telMesh) inboundCall(ctx context.Context, in *demoInternet, b *meshPhone, k int, hold time.Duration) callResult {
	r := callResult{From: "carol@example.net", To: b.Ext, FromNode: "internet", ToNode: nodeName(b.Node), Direction: dirInbound}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var c *phones.Call
	err := errors.New("no gateway rang")
	for try := range in.gws {
		gk := (k + try) % len(in.gws)
		before := m.proxied()
		c, err = in.carol[gk].Dial(cctx, "sip:"+b.Ext+"@voice.example.org", phones.CallOptions{ExpectHz: b.Hz})
		if err != nil {
			continue
		}
		rang := false
		tctx, tcancel := context.WithTimeout(cctx, gatewayRing)
		for !rang && tctx.Err() == nil {
			select {
			case <-c.Done():
			case <-tctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
			rang = c.State() != phones.Calling
			if c.Err() != nil {
				break
			}
		}
		tcancel()
		if !rang {
			c.Cancel()
			err = fmt.Errorf("gateway %s did not ring the phone within %v", nodeName(in.gws[gk]), gatewayRing)
			continue
		}
		err = c.Wait(cctx)
		if g := m.usedGateway(before, m.proxied()); g != "" {
			r.Gateway = g
		} else {
			r.Gateway = nodeName(in.gws[gk])
		}
		break
	}
	m.gatewayHops(&r, b.Node)
	return judgeCall(ctx, cctx, r, c, err, b.Phone, in.carHz, hold)
}

// gatewayHops sets r.Hops to the mesh hops between the phone's node and
// the gateway r went through.
func (m *telMesh) gatewayHops(r *callResult, node int) {
	for _, g := range m.cfg.Gateways {
		if nodeName(g) == r.Gateway {
			r.Hops = m.hops(node, g)
		}
	}
}

// judgeCall waits until each side of an answered call c hears the
// other's tone and at least hold has passed (or demoAudioWait), records
// the quality, and hangs up. callee is the called phone, callerHz the
// caller's tone; err is the call's setup error.
func judgeCall(ctx, cctx context.Context, r callResult, c *phones.Call, err error, callee *phones.Phone, callerHz float64, hold time.Duration) callResult {
	if !r.setUp(c, err) {
		return r
	}
	defer func() {
		hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		c.Hangup(hctx)
	}()
	var bc *phones.Call
	answered := time.Now()
	awaitAudio(cctx, &r, c, answered, hold, false, func() (bool, bool, *phones.Call) {
		if bc == nil {
			if i := slices.IndexFunc(callee.Calls(), func(x *phones.Call) bool { return x.ID() == c.ID() }); i >= 0 {
				bc = callee.Calls()[i]
			}
		}
		return bc != nil && bc.Heard(callerHz), c.HeardRemote(), bc
	})
	return r
}

// gatewayCalls places calls (sequential: which gateway each used is
// measured) alternately out of the mesh and into it, calls of each; with
// kill, the first gateway is killed halfway, as a power cut would.
func (m *telMesh) gatewayCalls(ctx context.Context, in *demoInternet, live []*meshPhone, calls int, kill bool, hold time.Duration, plog *demoLog) (out []callResult, killed string) {
	for i := range 2 * calls {
		if ctx.Err() != nil {
			break
		}
		if kill && i == calls {
			g := in.gws[0]
			m.kill(g)
			in.killed[g] = true
			killed = nodeName(g)
			plog.printf("gateway %s killed: the next calls go through the other", nodeName(g))
		}
		if killed != "" {
			// The killed node's phones went with it.
			live = slices.DeleteFunc(slices.Clone(live), func(p *meshPhone) bool { return in.killed[p.Node] })
			if len(live) == 0 {
				break
			}
		}
		p := live[(i/2)%len(live)]
		var r callResult
		if i%2 == 0 {
			r = m.outboundCall(ctx, in, p, hold)
		} else {
			r = m.inboundCall(ctx, in, p, i/2, hold)
		}
		switch {
		case ctx.Err() != nil:
		case r.Error != "":
			plog.printf("  %s → %s (%s): %s", r.From, r.To, r.Direction, r.Error)
		default:
			plog.printf("  %s → %s (%s through %s): answered in %.0f ms, audio %s/%s, MOS %.2f", r.From, r.To, r.Direction,
				r.Gateway, r.SetupMs, yesNo(r.AudioAB), yesNo(r.AudioBA), r.MOS)
		}
		out = append(out, r)
	}
	return out, killed
}
