package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
	"github.com/sipmesh/sipmesh/registrar"
	"github.com/sipmesh/sipmesh/uplink"
)

// Calls to and from the SIP Internet (issue 14).
//
// On a node with phones, a LAN phone's request outside a dialog whose
// Request-URI is in another domain than the mesh's (sip:bob@example.net)
// is authenticated like every request (407) and then sent over the mesh
// to the gateway SIPServiceConfig.Outbound chooses, Request-URI
// unchanged, with the SDP rewritten to the node's mesh side as for any
// call that leaves over the mesh.
//
// On a gateway, a second SIPService is the Internet side
// (SIPServiceConfig.Uplink): its "LAN" socket is on the uplink (IPv4;
// with a global IPv6 address a second one there, SIPServiceConfig.LAN6Addr)
// and its mesh socket on the gateway port of the node's mesh address. A
// request outside a dialog arriving on that mesh socket — only mesh nodes
// reach it — for a domain not the mesh's is located by RFC 3263
// (UplinkConfig.Locate: NAPTR, SRV, A/AAAA) and sent from the uplink,
// over UDP or over TCP (UplinkConfig.Dial, uplinktcp.go), with the
// uplink address in Via and Record-Route (double record-routing, RFC 5658)
// — behind a NAT router the public one there and in the SDP
// (SIPServiceConfig.LANPublic) — and the media anchored on the gateway's relay between its mesh side and
// its uplink side, which latches the far end's real source (symmetric RTP,
// RFC 4961) so far ends behind NAT work. In-dialog requests follow the
// recorded route set both ways, as everywhere.
//
// Inbound: an INVITE (or MESSAGE) from the Internet for sip:EXT@domain,
// the mesh's public domain (UplinkConfig.Domain, config key sip-domain,
// which the operator points at the gateway in DNS), is looked up in the
// location service like a call from another node, and sent over the mesh
// to the node each binding was registered through, with its flow token
// (even when that node is the gateway itself: its phones' service is
// SIPServiceConfig.LocalPeer). An unknown extension gets 404.
//
// A call the gateway's SIP provider delivers to the trunk's registered
// Contact (UplinkConfig.TrunkUser, from the provider's server only) is for
// the number in its To header, a DID: the dial plan's aliases map it to an
// extension (`sipmesh did set 5550100 201`), and it goes on like the
// above.
//
// The gateway is never an open relay: any other request outside a dialog
// that comes from the Internet side is refused with 403, one answer for
// every user and domain (REGISTER, OPTIONS and SUBSCRIBE too, so that
// probing it with sipvicious svwar, which registers by default, tells
// nothing about which extensions exist). Only in-dialog requests on a
// route set the gateway recorded pass (routecheck.go).

// UplinkConfig is a gateway's Internet side.
type UplinkConfig struct {
	// Locate finds the servers of a SIP URI outside the mesh, in the
	// order to try them (uplink.Locator.Locate, RFC 3263 §4).
	Locate func(ctx context.Context, u *sip.Uri) ([]uplink.Target, error)
	// Domain is the mesh's public SIP domain (config key sip-domain): an
	// INVITE or MESSAGE from the Internet for sip:EXT@Domain is routed to
	// the extension's phones over the mesh, as a call from another node
	// is (an unknown extension gets 404). Empty: no inbound calls.
	Domain string
	// TrunkUser is the gateway's account at its SIP provider, the user
	// of the Contact it registers (uplink.Trunk): a call the provider
	// delivers there (RFC 3261 §10) is for the number in its To header,
	// a DID, which the dial plan's aliases map to an extension
	// (`sipmesh did`). TrunkSource reports whether a source address is
	// the provider's (the server the trunk registered with); only
	// those are taken. Empty: no trunk.
	TrunkUser   string
	TrunkSource func(netip.Addr) bool
	// TrunkPrefix is the dial prefix (config key dial-prefix): a request
	// from the mesh for sip:<prefix><digits>@mesh goes to the provider
	// as sip:<digits>@TrunkHost, to the server the trunk registered with
	// (TrunkTarget; false: not registered, 503). A 401 or 407 from the
	// provider is answered once with TrunkPassword for TrunkUser (RFC
	// 3261 §22.2, §22.3), as the provider's account holder would.
	TrunkPrefix   string
	TrunkHost     string
	TrunkTarget   func() (netip.AddrPort, bool)
	TrunkPassword string
	// Dial opens a TCP connection from the uplink (netx.Network.Dial):
	// to a located server whose NAPTR/SRV records offer TCP (RFC 3263
	// §4.1), or a route set's hop with ;transport=tcp, when no
	// connection to it is open (uplinktcp.go). Nil: the Internet side
	// sends over UDP only, TCP targets are skipped.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
}

// trunkCall reports a request the provider delivers to the trunk's
// Contact, from the provider's server.
func (s *SIPService) trunkCall(req *sip.Request, src netip.AddrPort) bool {
	u := s.cfg.Uplink
	return u != nil && u.TrunkUser != "" && u.TrunkSource != nil && req.Recipient.User == u.TrunkUser &&
		s.ourHost(req.Recipient.Host) && req.Route() == nil && req.To() != nil && req.To().Address.User != "" &&
		u.TrunkSource(src.Addr().Unmap())
}

// TrunkClient returns a client that sends from the Internet side's
// socket, for the trunk's REGISTERs: their answers, and the provider's
// calls to the registered Contact, come back to that socket.
func (s *SIPService) TrunkClient() uplink.Client { return trunkClient{s} }

type trunkClient struct{ s *SIPService }

func (c trunkClient) Do(ctx context.Context, req *sip.Request, opts ...sipgo.ClientRequestOption) (*sip.Response, error) {
	c.s.lan.laddr.Copy(&req.Laddr)
	if err := c.ready(ctx, req); err != nil {
		return nil, err
	}
	return c.s.client.Do(ctx, req, opts...)
}

func (c trunkClient) DoDigestAuth(ctx context.Context, req *sip.Request, res *sip.Response, auth sipgo.DigestAuth) (*sip.Response, error) {
	c.s.lan.laddr.Copy(&req.Laddr)
	if err := c.ready(ctx, req); err != nil {
		return nil, err
	}
	return c.s.client.DoDigestAuth(ctx, req, res, auth)
}

// ready waits, at most trunkReadyWait, until sipgo's transport layer
// holds the socket req leaves on. The trunk starts with the service: a
// REGISTER sent before Run's ServeUDP registered the Internet side's
// socket made sipgo open a socket of its own on the same address
// (EADDRINUSE), and the trunk's back-off then kept the gateway
// unregistered for half a minute. Past the wait the request goes as
// before (a network that names its sockets otherwise never matches).
func (c trunkClient) ready(ctx context.Context, req *sip.Request) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	deadline := time.Now().Add(trunkReadyWait)
	for c.s.connReady(req) != nil && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("the Internet side's socket is not serving: %w", ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// trunkReadyWait bounds ready: the socket is served within milliseconds
// of the service's start.
const trunkReadyWait = 2 * time.Second

// KeepAlive sends a keep-alive from the Internet side's socket to dst
// (the trunk's provider): a NAT router in front of the gateway keeps the
// socket's mapping only while packets flow (RFC 4787 REQ-5: at least 2
// minutes, often 30 s in practice), and the provider delivers calls
// through that mapping. It is the double-CRLF "ping" of RFC 5626
// §3.5.1, which a SIP server drops as the empty lines RFC 3261 §7.5 lets
// precede a message; no answer is needed, the outgoing datagram alone
// refreshes the mapping.
func (s *SIPService) KeepAlive(dst netip.AddrPort) error {
	_, err := s.cfg.LANUDP.WriteTo([]byte("\r\n\r\n"), net.UDPAddrFromAddrPort(dst))
	return err
}

// uplinkRefuses answers what the Internet side never serves and reports
// whether it did: every request outside a dialog except ACK, CANCEL
// (which match a transaction or nothing) and an OPTIONS keep-alive to
// the gateway itself.
func (s *SIPService) uplinkRefuses(req *sip.Request, tx sip.ServerTransaction, src netip.AddrPort) bool {
	switch req.Method {
	case sip.ACK, sip.CANCEL:
		return false
	}
	if !registrar.Answerable(req) {
		return false // the proxy counts it malformed, nothing can be answered
	}
	if code, _ := registrar.CheckRequest(req); code != 0 {
		return false // the proxy's 400
	}
	if tag, _ := req.To().Params.Get("tag"); tag != "" {
		return false // in a dialog: only on a route set we recorded
	}
	if req.Method == sip.OPTIONS && s.ourHost(req.Recipient.Host) && req.Recipient.User == "" && req.Route() == nil {
		return false
	}
	if (req.Method == sip.INVITE || req.Method == sip.MESSAGE) && s.trunkCall(req, src) {
		return false // from the provider to the trunk: the DID's extension
	}
	if d := s.cfg.Uplink.Domain; d != "" && (req.Method == sip.INVITE || req.Method == sip.MESSAGE) &&
		registrar.CanonHost(req.Recipient.Host) == d && req.Recipient.User != "" && req.Route() == nil {
		return false // inbound, for the mesh's own domain: looked up like any call
	}
	s.uplinkRefused.Add(1)
	res := s.respond(req, 403, "Forbidden")
	if strings.EqualFold(req.Transport(), "UDP") && src.IsValid() {
		res.SetDestination(src.String())
	}
	tx.Respond(res)
	tx.Terminate() // cheap, as for unauthenticated requests
	return true
}

// toInternet routes a request outside a dialog for a domain outside the
// mesh: from a LAN phone to the chosen gateway, from the mesh at a
// gateway out of the uplink. ok false and code 0: neither applies here.
func (s *SIPService) toInternet(r *sip.Request, in *sock) (t target, ok bool, code int, reason string) {
	ctx, cancel := context.WithTimeout(s.ctx, lookupTimeout)
	defer cancel()
	switch {
	case s.cfg.Uplink != nil && in == s.mesh && r.Route() == nil:
		targets, err := s.cfg.Uplink.Locate(ctx, &r.Recipient)
		if err != nil {
			s.peerLog.Info("cannot locate the SIP server of a request from the mesh", "host", r.Recipient.Host, "err", err)
			if errors.Is(err, uplink.ErrNotFound) {
				return t, false, 404, "Not Found (no SIP server for the domain)"
			}
			return t, false, 503, "Service Unavailable (locating the domain's SIP server failed)"
		}
		// The targets in RFC 3263's order, the first now, the next ones if
		// it fails (§4.3, nextServerOnFailure): UDP ones, and TCP ones
		// when the service can open connections (UplinkConfig.Dial).
		var ts []uplink.Target
		for _, tg := range targets {
			if (tg.Transport == "UDP" || tg.Transport == "TCP" && s.dialer != nil) &&
				s.internetAllowed(tg.Addr) && len(ts) < maxLocatedTries {
				ts = append(ts, tg)
			}
		}
		if len(ts) == 0 {
			return t, false, 404, "Not Found (no SIP server the gateway can reach for the domain)"
		}
		return target{uri: r.Recipient, dst: ts[0].Addr, transport: ts[0].Transport, next: ts[1:]}, true, 0, ""
	case s.cfg.Outbound != nil && in == s.lan && s.cfg.Uplink == nil:
		gw, err := s.cfg.Outbound(ctx, r)
		if err != nil {
			s.log.Info("no Internet gateway for a call out of the mesh", "host", r.Recipient.Host, "err", err)
			return t, false, 503, "Service Unavailable (no Internet gateway)"
		}
		return target{uri: r.Recipient, dst: gw, transport: "UDP", gateway: true}, true, 0, ""
	}
	return t, false, 0, ""
}

// internetAllowed reports an address the uplink may send a request to:
// not the gateway itself, loopback, link-local, multicast or
// unspecified, and IPv4, or IPv6 outside the mesh when the uplink has
// an IPv6 address (lan6).
func (s *SIPService) internetAllowed(ap netip.AddrPort) bool {
	a := ap.Addr().Unmap()
	if ap.Port() == 0 || a.Zone() != "" || a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsMulticast() || a.IsUnspecified() {
		return false
	}
	if a.Is6() {
		return s.lan6 != nil && a != s.lan6.addr.Addr() && !sameNet64(a, s.mesh.addr.Addr())
	}
	return a != s.lan.addr.Addr() && a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// toTrunk routes a number dialled with a dial prefix: from a LAN phone to
// the gateway whose trunk takes it, from the mesh at that gateway to its
// provider. ok false and code 0: not such a number here.
func (s *SIPService) toTrunk(r *sip.Request, in *sock) (t target, ok bool, code int, reason string) {
	toTag, _ := r.To().Params.Get("tag")
	ru := &r.Recipient
	if toTag != "" || r.Method == sip.ACK || r.Route() != nil || !s.ourHost(ru.Host) || ru.User == "" {
		return t, false, 0, ""
	}
	ctx, cancel := context.WithTimeout(s.ctx, lookupTimeout)
	defer cancel()
	switch u := s.cfg.Uplink; {
	case u != nil && in == s.mesh && u.TrunkPrefix != "" && u.TrunkTarget != nil:
		num, found := strings.CutPrefix(ru.User, u.TrunkPrefix)
		if !found || num == "" || strings.Trim(num, "0123456789") != "" {
			return t, false, 0, ""
		}
		dst, registered := u.TrunkTarget()
		if !registered {
			return t, false, 503, "Service Unavailable (trunk not registered)"
		}
		to := sip.Uri{Scheme: "sip", User: num, Host: u.TrunkHost}
		return target{uri: to, dst: dst, transport: "UDP", trunk: true}, true, 0, ""
	case s.cfg.TrunkOutbound != nil && in == s.lan && s.cfg.Uplink == nil:
		gw, isNumber, err := s.cfg.TrunkOutbound(ctx, ru.User)
		if !isNumber {
			return t, false, 0, ""
		}
		if err != nil {
			s.log.Info("no gateway with a trunk for a dialled number", "err", err)
			return t, false, 503, "Service Unavailable (no gateway with a trunk)"
		}
		return target{uri: r.Recipient, dst: gw, transport: "UDP", gateway: true}, true, 0, ""
	}
	return t, false, 0, ""
}

// trunkAuthOnFailure answers the provider's challenge of a request sent
// through the trunk: the branch that got 401 or 407 is sent again, once,
// with the trunk's credentials (RFC 3261 §22.2 for 401, §22.3 for 407)
// and a new branch ID but the same CSeq, so that the caller's ACK and
// CANCEL still match (§17.1.1.3, §9.1). It reports whether it did.
func (p *proxyTx) trunkAuthOnFailure() bool {
	u := p.s.cfg.Uplink
	if u == nil || p.finalSent || p.cancelled || p.s.ctx.Err() != nil {
		return false
	}
	for i, b := range p.branches {
		if !b.trunk || b.authed || b.local || b.final == nil || (b.final.StatusCode != 401 && b.final.StatusCode != 407) {
			continue
		}
		hdr, authz := "WWW-Authenticate", "Authorization"
		if b.final.StatusCode == 407 {
			hdr, authz = "Proxy-Authenticate", "Proxy-Authorization"
		}
		h := b.final.GetHeader(hdr)
		if h == nil {
			return false
		}
		cred, err := trunkCredentials(h.Value(), b.req.Method.String(), b.req.Recipient.Addr(), u.TrunkUser, u.TrunkPassword)
		if err != nil {
			p.s.peerLog.Info("trunk challenge not answered", "err", err)
			return false
		}
		r := b.req.Clone()
		r.RemoveHeader(authz)
		r.AppendHeader(sip.NewHeader(authz, cred))
		// Our Via (the top one) anew with a new branch: a new transaction
		// (sipgo's Clone may share headers with the old request).
		if v := r.Via(); v != nil {
			nv := v.Clone()
			nv.Params.Remove("branch")
			nv.Params.Add("branch", "z9hG4bKsm"+loopHash(p.req)+"."+randomHex(6))
			r.RemoveHeader("Via") // the first one only
			r.PrependHeader(nv)
		}
		nb := &branch{req: r, out: b.out, trunk: true, authed: true}
		p.branches[i] = nb // the challenge is answered here, never sent upstream
		p.start(nb, p.req.IsInvite())
		return true
	}
	return false
}

// gatewayTry is how long a call sent to a gateway waits for its first
// answer (the gateway's 100 Trying, sent at once: RFC 3261 §16.2) before
// the gateway counts as gone and the call tries another. Two seconds are
// many round trips across a mesh and far less than Timer B (32 s), which
// a call to a dead gateway would otherwise wait for.
const gatewayTry = 2 * time.Second

// maxGatewayTries bounds the gateways one call tries.
const maxGatewayTries = 3

// maxLocatedTries bounds the servers of a domain one request tries
// (RFC 3263 §4.3 leaves it open; every try of a silent one costs
// gatewayTry).
const maxLocatedTries = 4

// gatewayRetryOnFailure sends a call whose gateway stayed silent to the
// next gateway: the silent one is reported (GatewayFailed), so the
// choice skips it, and the request is routed again. It reports whether
// a new branch started.
func (p *proxyTx) gatewayRetryOnFailure(base *sip.Request, callID, fromTag string) bool {
	s := p.s
	if p.finalSent || p.cancelled || s.ctx.Err() != nil || !p.req.IsInvite() {
		return false
	}
	if p.nextServerOnFailure(base, callID, fromTag) {
		return true
	}
	tries, retry := 0, false
	for _, b := range p.branches {
		if b.gateway {
			tries++
			if b.silent {
				retry = true
				b.silent = false // reported once
				if s.cfg.GatewayFailed != nil {
					if dst, err := netip.ParseAddrPort(b.req.Destination()); err == nil {
						s.cfg.GatewayFailed(dst)
					}
				}
			}
		}
	}
	if !retry || tries >= maxGatewayTries {
		return false
	}
	t, ok, _, _ := s.nextHop(base, false, p.in)
	if !ok || !t.gateway {
		return false
	}
	s.log.Info("gateway silent, trying another", "call_id", callID, "next", t.dst)
	return p.startBranches(base, []target{t}, callID, fromTag) > 0
}

// trunkCredentials answers a provider's digest challenge (the value of
// its WWW- or Proxy-Authenticate header, peer bytes) for method and uri
// with the trunk's account (RFC 3261 §22.4, RFC 8760 for SHA-256).
func trunkCredentials(challenge, method, uri, user, password string) (string, error) {
	chal, err := digest.ParseChallenge(challenge)
	if err != nil {
		return "", err
	}
	cred, err := digest.Digest(chal, digest.Options{Method: method, URI: uri, Username: user, Password: password, Count: 1})
	if err != nil {
		return "", err
	}
	return cred.String(), nil
}

// nextServerOnFailure implements RFC 3263 §4.3 for a request the gateway
// located: when the server tried failed — silent for gatewayTry, no
// answer at all (a transport error or Timer B) or 503 — the next server
// of the domain gets it. It reports whether a new branch started.
func (p *proxyTx) nextServerOnFailure(base *sip.Request, callID, fromTag string) bool {
	for _, b := range p.branches {
		if len(b.next) == 0 || b.final == nil {
			continue
		}
		if !b.silent && !b.local && b.final.StatusCode != 503 {
			continue
		}
		next := b.next
		b.next, b.silent = nil, false
		p.s.peerLog.Info("SIP server failed, trying the next one of the domain", "call_id", callID,
			"failed", b.req.Destination(), "next", next[0])
		t := target{uri: *b.req.Recipient.Clone(), dst: next[0].Addr, transport: next[0].Transport, next: next[1:]}
		return p.startBranches(base, []target{t}, callID, fromTag) > 0
	}
	return false
}
