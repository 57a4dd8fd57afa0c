package proxy

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/sipmesh/sipmesh/registrar"
	"github.com/sipmesh/sipmesh/sipnet"
	"github.com/sipmesh/sipmesh/ssr"
	"github.com/sipmesh/sipmesh/uplink"
)

// The stateful proxy of the mesh domain (RFC 3261 §16).
//
// Routing. A request whose Request-URI names the mesh domain
// (sip:202@mesh, sip:202@sipserver.mesh, or an extension at one of the
// node's own addresses) is looked up in the location store and forked in
// parallel to every live binding (§16.5–16.7). A binding taken by this
// node is reached at the address its REGISTER came from (the flow,
// RFC 3581/5626) over the LAN socket. A binding of another node is
// reached through that node: the request goes over the mesh socket to
// NodeSIPAddr(node), with the Request-URI set to the phone's contact and a
// Route naming that node whose user part is a flow token (RFC 5626 §5.3
// style) carrying the phone's source address and transport. The far node
// pops its own Route, sees the token and delivers to the flow without a
// second lookup, so a stale binding can never bounce a call between nodes.
//
// Record-Route (§16.6 step 4) on every node, with the address of each
// socket the request crosses: two entries when it enters on the LAN and
// leaves on the mesh or the other way round (double record-routing, RFC
// 5658 §4), so every hop of the route set is reachable in its own address
// family. In-dialog requests (ACK, BYE, re-INVITE, UPDATE, INFO, MESSAGE,
// …) follow the route set: each node pops the entries that are its own
// (§16.4) and forwards to the next Route, or, when none is left, to the
// Request-URI, which is then the contact of a phone on its own LAN. So an
// IPv4 contact is only ever used by the node on that phone's LAN.
//
// Non-ACK requests are proxied statefully on sipgo transactions; the ACK
// of a 2xx (its own transaction, §13.2.2.4) is forwarded statelessly.

// lookupTimeout is the INVITE's budget for its account and location
// lookups: the caller has its 100 Trying and hears silence, Timer B (32 s,
// RFC 3261 §17.1.1.2) is far, and the DHT retries a lost read within it
// (its attempts go to whichever node owns the key by then, a replica once
// the ring has repaired around a dead owner). After that: 503.
const lookupTimeout = 10 * time.Second

// target is where one branch goes.
type target struct {
	uri       sip.Uri
	dst       netip.AddrPort
	transport string           // "UDP" or "TCP"
	route     *sip.RouteHeader // pushed on top: the flow token for another node
	trunk     bool             // the gateway's SIP provider: its challenges are answered (uplink.go)
	gateway   bool             // an Internet gateway: another is tried if it stays silent (uplink.go)
	next      []uplink.Target  // the domain's further servers, tried in turn on failure (RFC 3263 §4.3)
}

// branch is one client transaction of a proxied request.
type branch struct {
	req  *sip.Request
	out  *sock
	tx   sip.ClientTransaction
	err  error // could not be sent
	timC *time.Timer

	provisional  bool
	cancelWanted bool
	cancelSent   bool
	timedOut     bool // Timer C fired after a provisional: its 487 reads as 408
	final        *sip.Response
	local        bool            // final was generated here (no Via of ours to pop)
	trunk        bool            // to the gateway's provider (uplink.go)
	authed       bool            // sent again with the trunk's credentials
	gateway      bool            // to an Internet gateway (uplink.go)
	next         []uplink.Target // the located domain's further servers (uplink.go)
	silent       bool            // the gateway did not answer in gatewayTry
	tryT         *time.Timer     // fires gatewayTry after the send
}

type brEvent struct {
	b      *branch // nil: the no-answer timer of call forwarding (or the hunt timer) fired
	res    *sip.Response
	err    error
	timerC bool
	silent bool // a gateway's gatewayTry passed without an answer
	hunt   bool // the hunt group's member timer fired (groups.go)
}

// proxyTx proxies one request (one server transaction).
type proxyTx struct {
	s   *SIPService
	req *sip.Request
	tx  sip.ServerTransaction
	in  *sock
	src netip.AddrPort
	// hash is loopHash(req) as received, once made (loop): the branch
	// of every request sent on.
	hash string

	upDest    string
	leg       *callLeg
	branches  []*branch
	events    chan brEvent
	done      chan struct{}
	cancelUp  chan struct{}
	cancelOne sync.Once
	finalSent bool
	cancelled bool
	fw        forwardState // call forwarding on busy and no answer (forward.go)
	hunt      *huntState   // the hunt group being rung (groups.go)
}

// noBuild is a sipgo request option that leaves the request as built
// here: with no option, sipgo would fill in headers of its own.
func noBuild(*sipgo.Client, *sip.Request) error { return nil }

// reply answers the request with a response of our own.
func (p *proxyTx) reply(code int, reason string) {
	res := p.s.respond(p.req, code, reason)
	if code == 503 { // a store that could not answer: try again soon (§21.5.4)
		res.AppendHeader(sip.NewHeader("Retry-After", "5"))
	}
	if p.upDest != "" {
		res.SetDestination(p.upDest)
	}
	p.tx.Respond(res)
}

func (p *proxyTx) run() {
	s, req := p.s, p.req
	if !registrar.Answerable(req) {
		s.malformed.Add(1)
		return // no response can be addressed (RFC 3261 §18.2.1)
	}
	if strings.EqualFold(req.Transport(), "UDP") && p.src.IsValid() {
		// Answer where the request came from (RFC 3581 behaviour for
		// everyone, as the registrar does): what reaches a phone behind
		// NAT, and the LAN phones send from their listening port anyway.
		p.upDest = p.src.String()
	}
	if code, reason := registrar.CheckRequest(req); code != 0 {
		s.malformed.Add(1)
		p.reply(code, reason)
		return
	}
	switch strings.ToLower(req.Recipient.Scheme) {
	case "sip", "sips":
	default:
		p.reply(416, "Unsupported URI Scheme") // RFC 3261 §16.3 step 2
		return
	}
	forUs := s.ourHost(req.Recipient.Host) && req.Recipient.User == "" && req.Route() == nil
	if forUs && req.Method == sip.OPTIONS {
		// An OPTIONS to the node itself (phones use it as a keep-alive):
		// answered whatever its Max-Forwards (RFC 3261 §16.3 step 3).
		res := s.respond(req, 200, "OK")
		res.AppendHeader(sip.NewHeader("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, UPDATE, INFO, MESSAGE, PRACK, REFER, SUBSCRIBE, NOTIFY"))
		res.AppendHeader(sip.NewHeader("Accept", "application/sdp"))
		if p.upDest != "" {
			res.SetDestination(p.upDest)
		}
		p.tx.Respond(res)
		return
	}
	if mf := req.MaxForwards(); mf != nil && mf.Val() <= 0 {
		p.reply(483, "Too Many Hops") // §16.3 step 3
		return
	}
	if s.looped(req) {
		p.reply(482, "Loop Detected") // §16.3 step 4, RFC 5393 §4.2
		return
	}
	if h := req.GetHeader("Proxy-Require"); h != nil {
		// §16.3 step 5: we support no extension a proxy may be required to.
		res := s.respond(req, 420, "Bad Extension")
		res.AppendHeader(sip.NewHeader("Unsupported", sipnet.SanitizeReason(h.Value())))
		p.tx.Respond(res)
		return
	}
	invite := req.IsInvite()
	if invite {
		// §16.2: a stateful proxy answers an INVITE with 100 at once, so
		// the upstream stops retransmitting over the radio links.
		trying := s.respond(req, 100, "Trying")
		if p.upDest != "" {
			trying.SetDestination(p.upDest)
		}
		p.tx.Respond(trying)
	}

	base := req.Clone()
	fixVia(base, p.src)
	if p.in == s.lan {
		// Credentials for the mesh realm end here (RFC 3261 §22.3): the
		// next hops are nodes and phones, which need not see them.
		base.RemoveHeader("Proxy-Authorization")
	}
	recorded, flow := s.popRoutes(base, p.in)
	if s.isLAN(p.in) && s.trunkCall(base, p.src) {
		// The provider calls the trunk's Contact; the DID is in To
		// (uplink.go).
		base.Recipient.User = base.To().Address.User
	}
	var targets []target
	if flow != nil {
		targets = []target{*flow}
	} else if t, ok, code, reason := s.nextHop(base, recorded, p.in); code != 0 {
		p.reply(code, reason)
		return
	} else if ok {
		targets = []target{t}
	} else {
		var code int
		var reason string
		if targets, code, reason = p.lookupForward(base); code != 0 {
			p.reply(code, reason)
			return
		}
	}

	// The ALG state of the dialog, if it has some.
	callID := string(*req.CallID())
	fromTag, _ := req.From().Params.Get("tag")
	toTag, _ := req.To().Params.Get("tag")
	p.leg = s.findLeg(callID, fromTag, toTag)

	// Build every branch first: an ALG failure answers the request before
	// anything is sent.
	rr := toTag == "" && recordRoutes(req.Method)
	for _, t := range targets {
		r, out, err := p.build(base, t, rr, callID, fromTag)
		if err != nil {
			code, reason := 500, "Server Internal Error"
			switch {
			case errors.Is(err, errCallsFull), errors.Is(err, errRelayFull):
				code, reason = 503, "Service Unavailable (media relay full)"
			case errors.Is(err, errBadSDP):
				code, reason = 400, "Bad Request ("+sipnet.SanitizeReason(err.Error())+")"
			}
			s.peerLog.Info("cannot forward", "call_id", callID, "err", err)
			p.reply(code, reason)
			p.endLegIfUnanswered(invite)
			return
		}
		if n := messageSize(r); n > sipnet.MaxMessage {
			// RFC 3261 §21.5.14: too large to send on (the UDP of the LAN
			// and the mesh's frames, sipnet.MaxMessage), so not 500.
			s.peerLog.Info("request too large to forward", "call_id", callID, "bytes", n)
			p.reply(513, "Message Too Large")
			p.endLegIfUnanswered(invite)
			return
		}
		p.branches = append(p.branches, &branch{req: r, out: out, trunk: t.trunk, gateway: t.gateway, next: t.next})
	}

	p.events = make(chan brEvent, 2*len(p.branches)+2)
	p.done = make(chan struct{})
	defer close(p.done)
	p.cancelUp = make(chan struct{})
	if invite {
		if !p.tx.OnCancel(func(*sip.Request) { p.cancelOne.Do(func() { close(p.cancelUp) }) }) {
			p.cancelOne.Do(func() { close(p.cancelUp) })
		}
	}
	for _, b := range p.branches {
		p.start(b, invite)
	}
	p.armNoAnswer(invite)
	p.armHunt(invite)
	p.loop(invite)
	for p.trunkAuthOnFailure() || p.gatewayRetryOnFailure(base, callID, fromTag) || p.huntOnFailure(base, callID, fromTag) || p.divertOnFailure(base, invite, callID, fromTag) {
		p.loop(invite)
	}
	if p.hunt != nil && p.hunt.timer != nil {
		p.hunt.timer.Stop()
	}

	for _, b := range p.branches {
		if b.timC != nil {
			b.timC.Stop()
		}
		if b.tryT != nil {
			b.tryT.Stop()
		}
	}
	if !p.finalSent && !p.cancelled && s.ctx.Err() == nil {
		p.sendBest()
	}
	p.blfDone() // blf.go
	switch {
	case req.Method == sip.BYE:
		// RFC 3261 §15: the BYE ends the dialog and its media.
		if p.leg != nil {
			s.endLeg(p.leg)
		}
	default:
		p.endLegIfUnanswered(invite)
	}
}

// endLegIfUnanswered drops the ALG state of an initial INVITE that got no
// 2xx (failed, cancelled, timed out).
func (p *proxyTx) endLegIfUnanswered(invite bool) {
	if !invite || p.leg == nil {
		return
	}
	if toTag, _ := p.req.To().Params.Get("tag"); toTag != "" {
		return // a re-INVITE that failed leaves the call as it was (§14.1)
	}
	if !p.leg.isAnswered() {
		p.s.endLeg(p.leg)
	}
}

// recordRoutes reports the methods that create dialogs, whose initial
// requests we record-route (RFC 3261 §12.1, RFC 6665 §4.1, RFC 3515).
func recordRoutes(m sip.RequestMethod) bool {
	switch m {
	case sip.INVITE, sip.SUBSCRIBE, sip.REFER, sip.NOTIFY:
		return true
	}
	return false
}

// fixVia adds received (RFC 3261 §18.2.1) and fills rport (RFC 3581 §4)
// in the top Via of the request being forwarded, so responses find their
// way back to the source.
func fixVia(r *sip.Request, src netip.AddrPort) {
	v := r.Via()
	if v == nil || !src.IsValid() {
		return
	}
	if rp, ok := v.Params.Get("rport"); ok && rp == "" {
		v.Params.Remove("rport")
		v.Params.Remove("received")
		v.Params.Add("rport", strconv.Itoa(int(src.Port())))
		v.Params.Add("received", src.Addr().String())
		return
	}
	if registrar.CanonHost(v.Host) != src.Addr().String() && !v.Params.Has("received") {
		v.Params.Add("received", src.Addr().String())
	}
}

// lookup turns an extension into targets (RFC 3261 §16.5): 404 without an
// account, 480 without a live binding.
func (p *proxyTx) lookup(ext string) ([]target, int, string) {
	s := p.s
	if ts, code, reason, ok := p.featureTargets(ext); ok {
		return ts, code, reason
	}
	if ext == "" || registrar.ValidExt(ext) != nil {
		return nil, 404, "Not Found"
	}
	// The stores are the DHT: bound the wait, the caller is listening to
	// silence meanwhile.
	ctx, cancel := context.WithTimeout(s.ctx, lookupTimeout)
	defer cancel()
	if _, err := s.cfg.Accounts.Account(ctx, ext); err != nil {
		if errors.Is(err, registrar.ErrNoAccount) {
			return nil, 404, "Not Found"
		}
		s.log.Warn("account lookup failed", "ext", ext, "err", err)
		return nil, 503, "Service Unavailable (account store unavailable)"
	}
	all, err := s.cfg.Locations.Bindings(ctx, registrar.AOR(ext))
	if err != nil {
		if len(all) == 0 {
			s.log.Warn("location lookup failed", "ext", ext, "err", err)
			return nil, 503, "Service Unavailable (location store unavailable)"
		}
		// The phones registered with this node are known without the
		// DHT: ring them rather than refuse the call.
		s.log.Warn("location lookup failed; trying this node's own bindings", "ext", ext, "err", err)
	}
	bs := registrar.MergeBindings(all, time.Now())
	// Highest q first (RFC 3261 §16.6); all are tried in parallel anyway.
	slices.SortStableFunc(bs, func(a, b registrar.Binding) int { return int(b.Q) - int(a.Q) })
	var ts []target
	for _, b := range bs {
		if len(ts) == maxForks {
			break
		}
		var u sip.Uri
		if err := sip.ParseUri(b.Contact, &u); err != nil || u.Host == "" {
			continue
		}
		// On a gateway's Internet side, the node's own bindings are its
		// phones service's (LocalPeer), reached over the mesh like any
		// node's (uplink.go).
		if b.Node == s.cfg.Node && s.cfg.Uplink == nil {
			dst := b.Source
			if !dst.IsValid() {
				var err error
				if dst, err = sipnet.URIAddr(&u); err != nil {
					continue
				}
			}
			if !s.dstAllowed(dst) {
				continue // a contact naming loopback or the node itself
			}
			tr := "UDP"
			if strings.EqualFold(b.Transport, "tcp") {
				tr = "TCP"
			}
			ts = append(ts, target{uri: u, dst: dst, transport: tr})
			continue
		}
		na := s.cfg.NodeSIPAddr(b.Node)
		if !na.IsValid() || na == s.cfg.MeshAddr || !b.Source.IsValid() {
			continue
		}
		ts = append(ts, target{uri: u, dst: na, transport: "UDP", route: &sip.RouteHeader{Address: sip.Uri{
			Scheme: "sip", User: flowToken(b.Source, b.Transport), Host: sipnet.URIHost(na.Addr()), Port: int(na.Port()),
			UriParams: sip.HeaderParams{{K: "lr"}},
		}}})
	}
	if len(ts) == 0 {
		return nil, 480, "Temporarily Unavailable"
	}
	return ts, 0, ""
}

// nextHop routes a request that needs no lookup: by its next Route, or
// by an IP-literal Request-URI, both only on a route set this node
// recorded (recorded: its own tagged Route was popped) and only to a
// destination dstAllowed accepts (RFC 3261 §16.4, §26; routecheck.go).
// ok is false when the Request-URI names the mesh domain (lookup); a
// non-zero code is the answer.
func (s *SIPService) nextHop(r *sip.Request, recorded bool, in *sock) (t target, ok bool, code int, reason string) {
	if rt := r.Route(); rt != nil {
		if !recorded {
			return t, false, 403, "Forbidden (Route not recorded by this node)"
		}
		dst, err := sipnet.URIAddr(&rt.Address)
		if err != nil {
			return t, false, 404, "Not Found (Route is not an IP address)"
		}
		if !s.dstAllowed(dst) {
			return t, false, 403, "Forbidden (Route names no node or phone of this mesh)"
		}
		return target{uri: r.Recipient, dst: dst, transport: uriTransport(&rt.Address)}, true, 0, ""
	}
	if t, ok, code, reason := s.toTrunk(r, in); ok || code != 0 {
		return t, ok, code, reason // a number by the dial prefix (uplink.go)
	}
	ru := &r.Recipient
	if s.ourHost(ru.Host) {
		if ru.User == "" {
			return t, false, 404, "Not Found (no user in Request-URI)"
		}
		return t, false, 0, ""
	}
	if recorded {
		if dst, err := sipnet.URIAddr(ru); err == nil {
			if !s.dstAllowed(dst) {
				return t, false, 403, "Forbidden (Request-URI names no node or phone of this mesh)"
			}
			return target{uri: r.Recipient, dst: dst, transport: uriTransport(ru)}, true, 0, ""
		}
	}
	// Other domains are the Internet gateway's business (uplink.go): a
	// request outside a dialog from a LAN phone goes to the gateway, one
	// from the mesh at a gateway goes out of its uplink. An in-dialog
	// request outside a route set we recorded is nobody's.
	if toTag, _ := r.To().Params.Get("tag"); toTag == "" && r.Method != sip.ACK {
		if t, ok, code, reason := s.toInternet(r, in); ok || code != 0 {
			return t, ok, code, reason
		}
	}
	return t, false, 404, "Not Found (domain not served here)"
}

// popRoutes removes the Route entries naming this node from the top of
// r (RFC 3261 §16.4; both of a double record-route, RFC 5658). recorded
// reports that one of them carried this node's Record-Route tag for the
// dialog (routecheck.go). A flow token in one that came in over the mesh
// is returned as the target.
func (s *SIPService) popRoutes(r *sip.Request, in *sock) (recorded bool, flow *target) {
	callID := ""
	if c := r.CallID(); c != nil {
		callID = string(*c)
	}
	for range 3 {
		rt := r.Route()
		if rt == nil || !s.ourRoute(&rt.Address) {
			break
		}
		if in == s.mesh && strings.HasPrefix(rt.Address.User, flowPrefix) && flow == nil {
			if ap, tr, ok := parseFlowToken(rt.Address.User); ok && s.flowAllowed(ap) {
				flow = &target{dst: ap, transport: tr}
			}
		}
		if s.recordedRoute(&rt.Address, callID) {
			recorded = true
		}
		r.RemoveHeader("Route")
	}
	if flow != nil {
		flow.uri = r.Recipient
	}
	return recorded, flow
}

// ourRoute reports whether a Route URI names this node: one of its
// socket addresses (with our port or none) or the mesh domain.
func (s *SIPService) ourRoute(u *sip.Uri) bool {
	h := registrar.CanonHost(u.Host)
	for _, sk := range s.socks() {
		if sk.names(h, 0) {
			return sk.names(h, u.Port)
		}
	}
	return s.domains[h] && !isIPLiteral(h)
}

func isIPLiteral(h string) bool {
	_, err := netip.ParseAddr(h)
	return err == nil
}

func (s *SIPService) flowAllowed(ap netip.AddrPort) bool {
	if !ap.IsValid() || ap.Port() == 0 || ap.Addr().IsUnspecified() || ap.Addr().IsMulticast() {
		return false
	}
	if s.cfg.LANPrefix.IsValid() && !s.cfg.LANPrefix.Contains(ap.Addr()) {
		return false
	}
	return ap.Addr() != s.lan.addr.Addr() && ap.Addr() != s.mesh.addr.Addr()
}

// The flow token: "smf-" transport "-" hex of the address and port.
const flowPrefix = "smf-"

func flowToken(ap netip.AddrPort, transport string) string {
	b, _ := ap.MarshalBinary()
	tr := "udp"
	if strings.EqualFold(transport, "tcp") {
		tr = "tcp"
	}
	return flowPrefix + tr + "-" + hex.EncodeToString(b)
}

func parseFlowToken(s string) (netip.AddrPort, string, bool) {
	rest, ok := strings.CutPrefix(s, flowPrefix)
	if !ok {
		return netip.AddrPort{}, "", false
	}
	tr, h, ok := strings.Cut(rest, "-")
	if !ok || (tr != "udp" && tr != "tcp") {
		return netip.AddrPort{}, "", false
	}
	b, err := hex.DecodeString(h)
	if err != nil {
		return netip.AddrPort{}, "", false
	}
	var ap netip.AddrPort
	if ap.UnmarshalBinary(b) != nil || !ap.Addr().IsValid() || ap.Port() == 0 {
		return netip.AddrPort{}, "", false
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), strings.ToUpper(tr), true
}

func uriTransport(u *sip.Uri) string {
	if t, ok := u.UriParams.Get("transport"); ok && strings.EqualFold(t, "tcp") {
		return "TCP"
	}
	return "UDP"
}

// looped applies the loop check of RFC 3261 §16.3 step 4 (RFC 5393
// §4.2): a Via of ours whose branch carries the hash this request would
// get now means the request came back unchanged.
func (s *SIPService) looped(req *sip.Request) bool {
	var prefix string // made for the first Via of ours: most requests have none
	for _, h := range req.GetHeaders("Via") {
		v, ok := h.(*sip.ViaHeader)
		if !ok {
			continue
		}
		host := registrar.CanonHost(v.Host)
		for _, sk := range s.socks() {
			if sk.names(host, v.Port) {
				if prefix == "" {
					prefix = "z9hG4bKsm" + loopHash(req) + "."
				}
				if b, _ := v.Params.Get("branch"); strings.HasPrefix(b, prefix) {
					return true
				}
			}
		}
	}
	return false
}

// loopHash covers what decides where a request goes (§16.6 step 8):
// Request-URI, top Route, Call-ID, tags and CSeq number: the hex of their
// 64-bit FNV-1a, hashed as they are written, without copies (computed for
// every branch of every request).
func loopHash(req *sip.Request) string {
	h := fnv64a(fnvOffset64)
	req.Recipient.StringWrite(&h)
	if rt := req.Route(); rt != nil {
		h.WriteString(rt.Value())
	}
	if c := req.CallID(); c != nil {
		h.WriteString(string(*c))
	}
	if f := req.From(); f != nil {
		t, _ := f.Params.Get("tag")
		h.WriteString("|")
		h.WriteString(t)
	}
	if to := req.To(); to != nil {
		t, _ := to.Params.Get("tag")
		h.WriteString("|")
		h.WriteString(t)
	}
	if c := req.CSeq(); c != nil {
		var n [20]byte
		h.WriteString("|")
		h.WriteString(string(strconv.AppendUint(n[:0], uint64(c.SeqNo), 10)))
	}
	var sum [8]byte
	binary.BigEndian.PutUint64(sum[:], uint64(h))
	return hex.EncodeToString(sum[:])
}

// loopHash is loopHash(p.req), made once for all branches.
func (p *proxyTx) loopHash() string {
	if p.hash == "" {
		p.hash = loopHash(p.req)
	}
	return p.hash
}

// fnv64a is the 64-bit FNV-1a hash (hash/fnv's New64a) as an
// io.StringWriter.
type fnv64a uint64

const fnvOffset64, fnvPrime64 = 14695981039346656037, 1099511628211

func (h *fnv64a) WriteString(s string) (int, error) {
	x := *h
	for i := 0; i < len(s); i++ {
		x ^= fnv64a(s[i])
		x *= fnvPrime64
	}
	*h = x
	return len(s), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// messageSize is the length of r as sent, counted without building it.
func messageSize(r *sip.Request) int {
	var c byteCounter
	r.StringWrite(&c)
	return int(c)
}

// byteCounter is an io.StringWriter that only counts.
type byteCounter int

func (c *byteCounter) WriteString(s string) (int, error) {
	*c += byteCounter(len(s))
	return len(s), nil
}

// build makes the request of one branch (RFC 3261 §16.6) from a copy of
// base, which stays as it is for the branches started later (forwarding
// on busy, hunt groups).
func (p *proxyTx) build(base *sip.Request, t target, rr bool, callID, fromTag string) (*sip.Request, *sock, error) {
	return p.buildFrom(base.Clone(), t, rr, callID, fromTag)
}

// buildFrom makes the request of one branch out of r itself (a copy of
// the request received that nothing else uses).
func (p *proxyTx) buildFrom(r *sip.Request, t target, rr bool, callID, fromTag string) (*sip.Request, *sock, error) {
	s := p.s
	r.Recipient = *t.uri.Clone()
	if t.route != nil {
		r.PrependHeader(t.route.Clone())
	}
	// Step 3: Max-Forwards (sipgo's Clone shares the header: replace it).
	mf := sip.MaxForwardsHeader(70)
	if old := r.MaxForwards(); old != nil {
		mf = sip.MaxForwardsHeader(old.Val() - 1)
		r.ReplaceHeader(&mf)
	} else {
		r.AppendHeader(&mf)
	}
	out := s.sockFor(t.dst.Addr())
	if out == s.mesh && t.transport == "TCP" {
		t.transport = "UDP" // the mesh socket is datagrams only
	}
	if rr {
		// Step 4, with RFC 5658 §4 double record-routing when the request
		// changes sockets (and so address family) or transport.
		if out != p.in || !strings.EqualFold(t.transport, p.req.Transport()) {
			r.PrependHeader(recordRoute(p.in, strings.ToUpper(p.req.Transport()), s.rrTag(p.in.addr, callID)))
		}
		r.PrependHeader(recordRoute(out, t.transport, s.rrTag(out.addr, callID)))
	}
	// Step 8: our Via, with the loop-detection hash in the branch.
	// Behind NAT the public address (SIPServiceConfig.LANPublic), and
	// rport (RFC 3581 §3) so that responses follow the router's mapping.
	adv := out.advertised()
	via := &sip.ViaHeader{ProtocolName: "SIP", ProtocolVersion: "2.0", Transport: t.transport,
		Host: adv.Addr().WithZone("").String(), Port: int(adv.Port())}
	via.Params.Add("branch", "z9hG4bKsm"+p.loopHash()+"."+randomHex(6))
	if adv != out.addr {
		via.Params.Add("rport", "")
	}
	r.PrependHeader(via)

	if body := r.Body(); s.cfg.Relay != nil && out.side != p.in.side && isSDP(r) && len(body) > 0 {
		if p.leg == nil {
			var from, to string
			if h := p.req.From(); h != nil {
				from = partyName(h.DisplayName, h.Address)
			}
			if h := p.req.To(); h != nil {
				to = partyName(h.DisplayName, h.Address)
			}
			relay := s.cfg.Relay
			if p.in == s.lan6 || out == s.lan6 {
				relay = s.cfg.Relay6 // the far end is on the IPv6 Internet
			}
			leg, err := s.legFor(callID, fromTag, from, to, relay)
			if err != nil {
				return nil, nil, err
			}
			p.leg = leg
		}
		nb, err := p.leg.rewrite(s.ctx, body, p.in.side, out.side, out.advertised().Addr(), p.src.Addr())
		if err != nil {
			return nil, nil, err
		}
		r.SetBody(nb)
	}
	r.SetTransport(t.transport)
	r.SetDestination(t.dst.String())
	if t.transport == "UDP" {
		out.laddr.Copy(&r.Laddr)
	} else {
		r.Laddr = sip.Addr{}
	}
	return r, out, nil
}

// recordRoute is a Record-Route naming sk, with this node's tag of the
// dialog (routecheck.go).
func recordRoute(sk *sock, transport, tag string) *sip.RecordRouteHeader {
	adv := sk.advertised()
	u := sip.Uri{Scheme: "sip", Host: sipnet.URIHost(adv.Addr()), Port: int(adv.Port())}
	if strings.EqualFold(transport, "TCP") {
		u.UriParams = append(u.UriParams, sip.HeaderKV{K: "transport", V: "tcp"})
	}
	u.UriParams = append(u.UriParams, sip.HeaderKV{K: "lr"}, sip.HeaderKV{K: rrParam, V: tag})
	return &sip.RecordRouteHeader{Address: u}
}

func isSDP(m interface{ GetHeader(string) sip.Header }) bool {
	ct := m.GetHeader("Content-Type")
	return ct != nil && strings.HasPrefix(strings.ToLower(strings.TrimSpace(ct.Value())), "application/sdp")
}

// start sends one branch and pumps its responses into p.events.
func (p *proxyTx) start(b *branch, invite bool) {
	s := p.s
	b.err = s.connReady(b.req)
	if b.err == nil {
		b.tx, b.err = s.client.TransactionRequest(s.ctx, b.req, noBuild)
	}
	if b.err != nil {
		s.peerLog.Info("branch not sent", "dst", b.req.Destination(), "err", b.err)
		switch {
		case errors.Is(b.err, sip.ErrUDPMTUCongestion) || errors.Is(b.err, ssr.ErrTooBig):
			b.final, b.local = s.respond(p.req, 513, "Message Too Large"), true // RFC 3261 §21.5.14
		case b.req.Transport() == "TCP" && s.dialer == nil:
			// The phone's connection is gone: it is not reachable until
			// it registers again.
			b.final, b.local = s.respond(p.req, 480, "Temporarily Unavailable"), true
		default:
			b.final, b.local = s.respond(p.req, 503, "Service Unavailable"), true
		}
		return
	}
	s.proxied.Add(1)
	if invite {
		b.tx.OnRetransmission(func(res *sip.Response) {
			// RFC 3261 §16.7 step 5: 2xx retransmissions go upstream too.
			if res.IsSuccess() {
				p.relayUp(b, res)
			}
		})
		b.timC = time.AfterFunc(s.cfg.TimerC, func() { p.event(brEvent{b: b, timerC: true}) })
		if b.gateway || len(b.next) > 0 {
			b.tryT = time.AfterFunc(gatewayTry, func() { p.event(brEvent{b: b, silent: true}) })
		}
	}
	tx := b.tx
	if !s.goTracked(func() {
		for {
			select {
			case res := <-tx.Responses():
				p.event(brEvent{b: b, res: res})
				if res.StatusCode >= 200 {
					if !invite {
						// The Completed state of a non-INVITE client
						// transaction (Timer K, 5 s over UDP) only absorbs
						// retransmissions of the final response (RFC 3261
						// §17.1.2.2); the stray-response handler drops
						// them as well, so the transaction, its request and
						// its response go now (a BYE's 4 KB each, 5 s long,
						// for every call under load).
						tx.Terminate()
					}
					return
				}
			case <-tx.Done():
				err := tx.Err()
				if err == nil {
					err = sip.ErrTransactionTerminated
				}
				p.event(brEvent{b: b, err: err})
				return
			}
		}
	}) {
		tx.Terminate()
		b.final, b.local = s.respond(p.req, 503, "Service Unavailable"), true
	}
}

// connReady checks that sipgo has the connection a request must leave
// on: our listening UDP socket, or the TCP connection a phone registered
// over (RFC 5626 flow). Without it sipgo would open a socket of the
// operating system (libraries.md §1 pitfall 2), outside the Network we
// were given.
func (s *SIPService) connReady(r *sip.Request) error {
	key := r.Laddr.String()
	network := "udp"
	if r.Transport() == "TCP" {
		key, network = r.Destination(), "tcp"
	}
	c, err := s.ua.TransportLayer().GetConnection(network, key)
	if err != nil && network == "tcp" && s.dialer != nil {
		// A gateway's Internet side opens the connection (uplinktcp.go).
		if err = s.dialUplink(key); err == nil {
			c, err = s.ua.TransportLayer().GetConnection(network, key)
		}
	}
	if err != nil {
		return fmt.Errorf("no %s connection for %s: %w", network, key, err)
	}
	c.TryClose() // GetConnection took a reference
	return nil
}

func (p *proxyTx) event(ev brEvent) {
	select {
	case p.events <- ev:
	case <-p.done:
	}
}

// loop collects the branches' responses until each has a final one
// (RFC 3261 §16.7).
func (p *proxyTx) loop(invite bool) {
	s := p.s
	pending := 0
	for _, b := range p.branches {
		if b.final == nil {
			pending++
		}
	}
	cancelUp := p.cancelUp
	for pending > 0 {
		select {
		case <-s.ctx.Done():
			return
		case <-cancelUp:
			// §16.10: CANCEL every pending branch; sipgo already answered
			// the CANCEL with 200 and the INVITE with 487.
			cancelUp = nil
			p.cancelled = true
			for _, b := range p.branches {
				p.cancelBranch(b)
			}
		case ev := <-p.events:
			if ev.hunt {
				p.huntTimeout() // groups.go
				continue
			}
			if ev.b == nil {
				p.noAnswer() // forward.go
				continue
			}
			b := ev.b
			if s.log.Enabled(s.ctx, slog.LevelDebug) {
				st := 0
				if ev.res != nil {
					st = ev.res.StatusCode
				}
				s.log.Debug("branch event", "call_id", p.req.CallID().Value(), "dst", b.req.Destination(),
					"status", st, "err", ev.err, "timer_c", ev.timerC, "pending", pending)
			}
			if b.final != nil {
				continue
			}
			if b.tryT != nil && (ev.res != nil || ev.err != nil) {
				b.tryT.Stop() // the gateway answered (or the send failed)
			}
			switch {
			case ev.silent:
				if b.provisional {
					continue
				}
				// Not even 100 Trying: the gateway is gone (uplink.go);
				// gatewayRetryOnFailure tries another.
				b.tx.Terminate()
				b.silent = true
				b.final, b.local = s.respond(p.req, 503, "Service Unavailable (gateway silent)"), true
				pending--
			case ev.timerC:
				// §16.8: Timer C fired.
				if b.provisional {
					b.timedOut = true
					p.cancelBranch(b)
					continue
				}
				b.tx.Terminate()
				b.final, b.local = s.respond(p.req, 408, "Request Timeout"), true
				pending--
			case ev.res == nil:
				code, reason := 503, "Service Unavailable"
				if errors.Is(ev.err, sip.ErrTransactionTimeout) {
					code, reason = 408, "Request Timeout" // §16.7 step 2 / §16.8
				}
				b.final, b.local = s.respond(p.req, code, reason), true
				pending--
			case ev.res.StatusCode < 200:
				// Any provisional, 100 included, allows a CANCEL (§9.1).
				b.provisional = true
				if b.cancelWanted {
					p.cancelBranch(b)
				}
				if ev.res.StatusCode == 100 {
					continue // hop by hop (§16.7 step 5)
				}
				if b.timC != nil {
					b.timC.Reset(s.cfg.TimerC) // §16.7 step 2
				}
				if !p.finalSent && !p.cancelled {
					p.relayUp(b, ev.res)
				}
			case ev.res.IsSuccess():
				b.final = ev.res
				pending--
				if p.leg != nil && invite {
					p.leg.setAnswered()
				}
				p.relayUp(b, ev.res) // every 2xx goes upstream (§16.7 step 5)
				p.finalSent = true
				for _, o := range p.branches {
					p.cancelBranch(o) // §16.7 step 10
				}
			default:
				if b.timedOut && ev.res.StatusCode == 487 {
					b.final, b.local = s.respond(p.req, 408, "Request Timeout"), true
				} else {
					b.final = ev.res
				}
				pending--
				if ev.res.StatusCode >= 600 {
					for _, o := range p.branches {
						p.cancelBranch(o) // §16.7 step 5
					}
				}
			}
			if b.final != nil && b.timC != nil {
				b.timC.Stop()
			}
		}
	}
}

// cancelBranch sends CANCEL for a pending INVITE branch, once it has had
// a provisional response (§9.1: not before).
func (p *proxyTx) cancelBranch(b *branch) {
	if b.final != nil || b.cancelSent || b.tx == nil || !b.req.IsInvite() {
		return
	}
	b.cancelWanted = true
	if !b.provisional {
		return
	}
	b.cancelSent = true
	c := cancelRequest(b.req)
	s := p.s
	s.goTracked(func() {
		if err := s.connReady(c); err != nil {
			s.peerLog.Info("CANCEL not sent", "err", err)
			return
		}
		tx, err := s.client.TransactionRequest(s.ctx, c, noBuild)
		if err != nil {
			s.peerLog.Info("CANCEL not sent", "dst", c.Destination(), "err", err)
			return
		}
		defer tx.Terminate()
		select {
		case <-tx.Responses():
		case <-tx.Done():
		}
	})
}

// cancelRequest builds the CANCEL of a forwarded INVITE (RFC 3261 §9.1):
// same Request-URI, top Via (branch), Route, Call-ID, From, To and CSeq
// number.
func cancelRequest(inv *sip.Request) *sip.Request {
	c := sip.NewRequest(sip.CANCEL, *inv.Recipient.Clone())
	c.AppendHeader(inv.Via().Clone())
	for _, h := range inv.GetHeaders("Route") {
		if rt, ok := h.(*sip.RouteHeader); ok {
			c.AppendHeader(rt.Clone())
		}
	}
	mf := sip.MaxForwardsHeader(70)
	c.AppendHeader(&mf)
	c.AppendHeader(inv.From())
	c.AppendHeader(inv.To())
	c.AppendHeader(inv.CallID())
	c.AppendHeader(&sip.CSeqHeader{SeqNo: inv.CSeq().SeqNo, MethodName: sip.CANCEL})
	c.SetBody(nil)
	c.SetTransport(inv.Transport())
	c.SetDestination(inv.Destination())
	inv.Laddr.Copy(&c.Laddr)
	return c
}

// relayUp forwards a response of branch b upstream (§16.7 step 9): our
// Via removed, the SDP rewritten for the upstream side.
func (p *proxyTx) relayUp(b *branch, res *sip.Response) {
	p.blfResponse(b, res) // blf.go
	out := res.Clone()
	out.RemoveHeader("Via")
	if out.Via() == nil {
		return // a response that was not ours to forward
	}
	if body := out.Body(); p.leg != nil && b.out.side != p.in.side && isSDP(out) && len(body) > 0 {
		if nb, err := p.leg.rewrite(p.s.ctx, body, b.out.side, p.in.side, p.in.advertised().Addr(), netip.Addr{}); err == nil {
			out.SetBody(nb)
		} else {
			p.s.peerLog.Info("SDP of a response not rewritten", "call_id", res.CallID(), "err", err)
		}
	}
	out.SetTransport(p.req.Transport())
	if p.upDest != "" {
		out.SetDestination(p.upDest)
	} else {
		out.SetDestination(p.req.Source())
	}
	if p.cancelled && res.IsSuccess() {
		// The server transaction already answered 487; a 2xx that
		// crossed the CANCEL is still forwarded (§16.7 step 5), statelessly.
		p.s.srv.WriteResponse(out)
		p.relayed(b, res, out)
		return
	}
	if err := p.tx.Respond(out); err != nil {
		p.s.log.Debug("response not relayed", "status", res.StatusCode, "err", err)
		return
	}
	p.relayed(b, res, out)
}

// relayed ends branch b's INVITE client transaction once its 2xx res
// went upstream (as out, over UDP), leaving the guard a record of out for
// the callee's retransmissions of res (strayResponse relays them) instead
// of sipgo's whole transaction for Timer M, 32 s (RFC 6026 §7.2).
func (p *proxyTx) relayed(b *branch, res, out *sip.Response) {
	if !res.IsSuccess() || !p.req.IsInvite() || !strings.EqualFold(p.req.Transport(), "UDP") || res.Via() == nil {
		return
	}
	branch, _ := res.Via().Params.Get("branch")
	to, err := netip.ParseAddrPort(out.Destination())
	if branch == "" || err != nil {
		return
	}
	p.s.guard.Relayed(branch, out, netip.AddrPortFrom(to.Addr().Unmap(), to.Port()))
	b.tx.Terminate()
}

// sendBest forwards the best final response when no branch answered 2xx
// (§16.7 step 6): a 6xx if any, else the lowest class; 503 becomes 500.
func (p *proxyTx) sendBest() {
	var best *branch
	rank := func(b *branch) int {
		c := b.final.StatusCode
		if c >= 600 {
			return 0
		}
		return c / 100 * 1000 // lower class is better; within it, first come
	}
	for _, b := range p.branches {
		if b.final == nil {
			continue
		}
		if best == nil || rank(b) < rank(best) {
			best = b
		}
	}
	if best == nil {
		p.reply(408, "Request Timeout")
		return
	}
	code := best.final.StatusCode
	if best.local || code == 503 {
		reason := best.final.Reason
		if code == 503 {
			code, reason = 500, "Server Internal Error (next hop unavailable)"
		}
		p.reply(code, reason)
		return
	}
	p.relayUp(best, best.final)
}

// forwardACK forwards an ACK outside any transaction: the ACK of a 2xx,
// routed by its Route set (RFC 3261 §16.11 behaviour, §13.2.2.4).
func (s *SIPService) forwardACK(req *sip.Request, in *sock, src netip.AddrPort) {
	if !registrar.Answerable(req) {
		return
	}
	if code, _ := registrar.CheckRequest(req); code != 0 {
		s.malformed.Add(1)
		return // an ACK is never answered (RFC 3261 §17.2.3)
	}
	if mf := req.MaxForwards(); mf != nil && mf.Val() <= 0 {
		return
	}
	if s.looped(req) {
		return
	}
	// The ACK is changed into the request sent on in place, not copied:
	// nothing reads it after this (an ACK gets no response, RFC 3261
	// §17.2.3) but the branch's loop hash, taken before.
	p := &proxyTx{s: s, req: req, in: in, src: src, hash: loopHash(req)}
	base := req
	fixVia(base, src)
	recorded, flow := s.popRoutes(base, in)
	var t target
	if flow != nil {
		t = *flow
	} else {
		var ok bool
		if t, ok, _, _ = s.nextHop(base, recorded, in); !ok {
			return // an ACK needs no lookup: nothing to route it to
		}
	}
	callID := string(*req.CallID())
	fromTag, _ := req.From().Params.Get("tag")
	toTag, _ := req.To().Params.Get("tag")
	p.leg = s.findLeg(callID, fromTag, toTag)
	r, _, err := p.buildFrom(base, t, false, callID, fromTag) // base is this ACK's only branch
	if err != nil {
		s.peerLog.Info("ACK not forwarded", "call_id", callID, "err", err)
		return
	}
	if err := s.connReady(r); err != nil {
		s.peerLog.Info("ACK not forwarded", "call_id", callID, "err", err)
		return
	}
	if err := s.client.WriteRequest(r, noBuild); err != nil {
		s.peerLog.Info("ACK not forwarded", "call_id", callID, "dst", r.Destination(), "err", err)
		return
	}
	s.proxied.Add(1)
}

// partyName is how status shows a call's party: its URI's user part (the
// extension) or host, after the display name when there is one.
func partyName(display string, u sip.Uri) string {
	who := u.User
	if who == "" {
		who = u.Host
	}
	if display != "" {
		return display + " <" + who + ">"
	}
	return who
}
