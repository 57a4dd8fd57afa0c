package proxy

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/sipmesh/sipmesh/registrar"
	"github.com/sipmesh/sipmesh/sipnet"
)

// Call forwarding (registrar.Forward, stored in the DHT).
//
// All four kinds, resolved by the caller's node. Unconditional
// ("always") and unreachable (no live binding) before it forks: it looks
// up the extension's forward, retargets the Request-URI (RFC 3261 §16.5),
// records the hop in a Diversion header (RFC 5806 §4: the diverting
// extension and the reason), and repeats for the new target. On busy
// (every branch failed, one with 486 or 600) and on no answer (the
// Forward's NoAnswerAfter passed without a 2xx: the branches get CANCEL)
// once the branches have answered: new branches for the target go out on
// the same server transaction (§16.6: a proxy may fork again after
// failures). Loops (A→B→A) are stopped: a target already diverted from,
// in this request or in its Diversion headers, or more than
// maxForwardDepth hops, answers 482 Loop Detected; a busy or no-answer
// target that was diverted from already lets the failure go upstream.
//
// Feature codes, dialled from a phone on this node's LAN: *72<number>
// forwards the caller's extension unconditionally to number (which must
// be an extension), *73 clears it. The caller is the From extension, and
// must be registered through this node from the address the INVITE came
// from (else 403). The node answers with a short confirmation tone and
// hangs up (phones.EchoService.Announce); a bad number gets 484 or 404.

// Feature codes and forwarding bounds.
const (
	FeatureForwardSet   = "*72"
	FeatureForwardClear = "*73"
	maxForwardDepth     = 5
	confirmHz           = 1000.0
	confirmFor          = time.Second
)

// lookupForward is lookup with the forwards of the Request-URI's
// extension applied (it retargets base), and a MESSAGE for an extension
// without a binding stored (messages.go).
func (p *proxyTx) lookupForward(base *sip.Request) ([]target, int, string) {
	ts, code, reason := p.lookupForwards(base)
	for depth := 0; code == 404 && depth < maxAliasDepth; depth++ {
		var ok bool
		if ok, code, reason = p.resolveAlias(base); !ok {
			break
		}
		ts, code, reason = p.lookupForwards(base)
	}
	if code == 480 && p.req.Method == sip.MESSAGE && p.s.cfg.Messages != nil {
		code, reason = p.storeMessage(base, base.Recipient.User)
	}
	return ts, code, reason
}

func (p *proxyTx) lookupForwards(base *sip.Request) ([]target, int, string) {
	s := p.s
	ext := base.Recipient.User
	p.fw.fwd = registrar.Forward{}
	if s.cfg.Forwards == nil || registrar.ValidExt(ext) != nil || (s.conf != nil && s.conf.IsRoom(ext)) {
		return p.lookup(ext)
	}
	if p.fw.visited == nil {
		p.fw.visited = map[string]bool{ext: true}
		for _, h := range base.GetHeaders("Diversion") {
			p.fw.depth++
			var u sip.Uri
			v := h.Value()
			if i, j := strings.IndexByte(v, '<'), strings.IndexByte(v, '>'); i >= 0 && j > i && sip.ParseUri(v[i+1:j], &u) == nil {
				p.fw.visited[u.User] = true
			}
		}
	}
	for {
		ctx, cancel := context.WithTimeout(s.ctx, lookupTimeout)
		fwd, err := s.cfg.Forwards.Forward(ctx, ext)
		cancel()
		if err != nil {
			s.log.Warn("forward lookup failed; calling the extension itself", "ext", ext, "err", err)
			return p.lookup(ext)
		}
		next, reason := fwd.Always, "unconditional"
		if next == "" {
			ts, code, why := p.lookup(ext)
			if code != 480 || fwd.Unreachable == "" {
				p.fw.fwd = fwd // busy and no answer act once the branches answer
				return ts, code, why
			}
			next, reason = fwd.Unreachable, "unavailable"
		}
		if !p.divert(base, next, reason) {
			return nil, 482, "Loop Detected (call forwarding)"
		}
		ext = next
	}
}

// divert retargets base to next (RFC 3261 §16.5) and records the hop in
// a Diversion header (RFC 5806 §4); it reports false, changing nothing,
// when next was diverted from before or the chain is too long: a loop.
func (p *proxyTx) divert(base *sip.Request, next, reason string) bool {
	ext := base.Recipient.User
	if p.fw.visited[next] || p.fw.depth >= maxForwardDepth {
		p.s.log.Info("call forwarding loop stopped", "ext", ext, "next", next, "depth", p.fw.depth)
		return false
	}
	base.AppendHeader(sip.NewHeader("Diversion",
		fmt.Sprintf("<sip:%s@%s>;reason=%s;counter=1", ext, base.Recipient.Host, reason)))
	base.Recipient.User = next
	p.fw.visited[next] = true
	p.fw.depth++
	return true
}

// forwardState is a request's call forwarding: the Forward of the
// extension its branches ring, the extensions diverted from, and the
// no-answer timer.
type forwardState struct {
	fwd      registrar.Forward
	visited  map[string]bool
	depth    int
	timer    *time.Timer
	noAnswer bool
}

// armNoAnswer starts the no-answer timer of the extension being rung:
// when it fires, the loop cancels the branches (noAnswer) and
// divertOnFailure forwards the call.
func (p *proxyTx) armNoAnswer(invite bool) {
	f := p.fw.fwd
	if !invite || f.NoAnswer == "" || f.NoAnswerAfter <= 0 {
		return
	}
	p.fw.timer = time.AfterFunc(f.NoAnswerAfter, func() { p.event(brEvent{}) })
}

// noAnswer is the loop's side of the no-answer timer.
func (p *proxyTx) noAnswer() {
	if p.finalSent || p.cancelled {
		return
	}
	p.fw.noAnswer = true
	for _, b := range p.branches {
		p.cancelBranch(b)
	}
}

// divertOnFailure forwards an INVITE whose branches all failed busy (486,
// 600) or were not answered in time to the extension's busy or no-answer
// target; it starts the new branches and reports whether the loop must
// run again.
func (p *proxyTx) divertOnFailure(base *sip.Request, invite bool, callID, fromTag string) bool {
	s := p.s
	if p.fw.timer != nil {
		p.fw.timer.Stop()
		p.fw.timer = nil
	}
	noAnswer := p.fw.noAnswer
	p.fw.noAnswer = false
	toTag, _ := p.req.To().Params.Get("tag")
	if !invite || toTag != "" || p.finalSent || p.cancelled || s.ctx.Err() != nil || p.fw.visited == nil {
		return false
	}
	f := p.fw.fwd
	busy := false
	for _, b := range p.branches {
		if b.final != nil && (b.final.StatusCode == 486 || b.final.StatusCode == 600) {
			busy = true
		}
	}
	var next, reason string
	switch {
	case noAnswer && f.NoAnswer != "":
		next, reason = f.NoAnswer, "no-answer"
	case busy && f.Busy != "":
		next, reason = f.Busy, "user-busy"
	default:
		return false
	}
	if !p.divert(base, next, reason) {
		return false // the busy or timeout answer goes upstream
	}
	ts, code, why := p.lookupForwards(base)
	if code != 0 {
		p.reply(code, why)
		p.finalSent = true
		return false
	}
	started := p.startBranches(base, ts, callID, fromTag)
	p.armNoAnswer(true)
	return started > 0
}

// startBranches builds and starts an INVITE branch to each of ts after
// the first ones failed (§16.6); it returns how many started.
func (p *proxyTx) startBranches(base *sip.Request, ts []target, callID, fromTag string) int {
	var started []*branch
	for _, t := range ts {
		r, out, err := p.build(base, t, true, callID, fromTag)
		if err != nil {
			p.s.log.Info("cannot forward", "call_id", callID, "err", err)
			continue
		}
		b := &branch{req: r, out: out, trunk: t.trunk, gateway: t.gateway, next: t.next}
		p.branches = append(p.branches, b)
		started = append(started, b)
	}
	for _, b := range started {
		p.start(b, true)
	}
	return len(started)
}

// featureCode answers *72<number> and *73 from a phone on the LAN; it
// reports whether req was one.
func (s *SIPService) featureCode(req *sip.Request, tx sip.ServerTransaction, in *sock, src netip.AddrPort) bool {
	if s.cfg.Forwards == nil || in != s.lan || req.Method != sip.INVITE || !s.ourHost(req.Recipient.Host) {
		return false
	}
	if code, _ := registrar.CheckRequest(req); code != 0 {
		return false // the proxy's 400
	}
	if toTag, _ := req.To().Params.Get("tag"); toTag != "" {
		return false
	}
	user := req.Recipient.User
	set := strings.HasPrefix(user, FeatureForwardSet)
	if !set && user != FeatureForwardClear {
		return false
	}
	reply := func(code int, reason string) {
		res := s.respond(req, code, reason)
		if strings.EqualFold(req.Transport(), "UDP") && src.IsValid() {
			res.SetDestination(src.String())
		}
		tx.Respond(res)
	}
	ctx, cancel := context.WithTimeout(s.ctx, lookupTimeout)
	defer cancel()
	caller := req.From().Address.User
	if !s.registeredFrom(ctx, caller, src) {
		reply(403, "Forbidden (feature codes only from the registered phone)")
		return true
	}
	fwd, err := s.cfg.Forwards.Forward(ctx, caller)
	if err != nil {
		reply(500, "Server Internal Error (forward store unavailable)")
		return true
	}
	fwd.Always = ""
	if set {
		to := strings.TrimPrefix(user, FeatureForwardSet)
		if to == "" {
			reply(484, "Address Incomplete")
			return true
		}
		if _, err := s.cfg.Accounts.Account(ctx, to); err != nil || to == caller {
			reply(404, "Not Found (no such extension to forward to)")
			return true
		}
		fwd.Always = to
	}
	fwd.Updated = time.Now()
	if err := s.cfg.Forwards.SetForward(ctx, fwd); err != nil {
		s.log.Warn("storing call forwarding failed", "ext", caller, "err", err)
		reply(500, "Server Internal Error (forward store unavailable)")
		return true
	}
	s.log.Info("call forwarding changed", "ext", caller, "always", fwd.Always)
	if s.echo == nil {
		reply(603, "Decline (done; no confirmation tone on this node)")
		return true
	}
	s.echo.Announce(req, tx, src, confirmHz, confirmFor)
	return true
}

// registeredFrom reports whether ext has a binding through this node
// whose flow is src: the phone that dialled is the one that proved the
// extension's password when it registered.
func (s *SIPService) registeredFrom(ctx context.Context, ext string, src netip.AddrPort) bool {
	for _, b := range s.localBindings(ctx, ext) {
		if b.Source == src {
			return true
		}
		var u sip.Uri
		if !b.Source.IsValid() && sip.ParseUri(b.Contact, &u) == nil {
			if ap, err := sipnet.URIAddr(&u); err == nil && ap == src {
				return true
			}
		}
	}
	return false
}
