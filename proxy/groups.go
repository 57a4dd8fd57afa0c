package proxy

import (
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/sipmesh/sipmesh/registrar"
)

// Ring groups: a group extension (say 600) rings every member's phones in
// parallel, wherever they are registered; the first to answer takes the
// call and the proxy CANCELs the other branches (RFC 3261 §16.7 step 10,
// the forking of proxy.go). The groups are node configuration
// (SIPServiceConfig.RingGroups), the same on every node: a group is
// resolved by the caller's node, so every node must know it, and a
// configuration file every node carries survives the loss of any node
// without a DHT lookup on the call path; changing a group means
// reprovisioning the nodes. A member that is itself a group is skipped
// (no nesting).
//
// Hunt groups (SIPServiceConfig.HuntGroups, configured the same way) ring
// their members one after the other, in order: a member's phones ring
// until one answers, all of them fail (busy, unavailable) or the group's
// Timeout passes (their branches get CANCEL); then the next member's
// phones ring, on the same server transaction (§16.6 allows a proxy to
// fork again after failures). A member without a binding is skipped. When
// the last member fails, the best of all the answers goes upstream
// (§16.7 step 6).

// HuntGroup is a hunt group's members, in order, and how long each rings.
type HuntGroup struct {
	Members []string
	Timeout time.Duration // default DefaultHuntTimeout
}

// DefaultHuntTimeout is how long a hunt group rings one member.
const DefaultHuntTimeout = 15 * time.Second

// huntState is a request's progress through a hunt group.
type huntState struct {
	group   HuntGroup
	next    int // the next member to ring
	timer   *time.Timer
	timeout bool // the timer fired: the branches were cancelled
}

// groupTargets forks to the bindings of every member of a ring group;
// ok is false when ext is not a group.
func (p *proxyTx) groupTargets(ext string) (ts []target, code int, reason string, ok bool) {
	if hg, ok := p.s.cfg.HuntGroups[ext]; ok && len(hg.Members) > 0 && p.hunt == nil {
		if hg.Timeout <= 0 {
			hg.Timeout = DefaultHuntTimeout
		}
		p.hunt = &huntState{group: hg}
		if ts := p.huntNext(); len(ts) > 0 {
			return ts, 0, "", true
		}
		return nil, 480, "Temporarily Unavailable (no member of the group is reachable)", true
	}
	members := p.s.cfg.RingGroups[ext]
	if len(members) == 0 {
		return nil, 0, "", false
	}
	for _, m := range members {
		if p.s.isGroup(m) || registrar.ValidExt(m) != nil {
			continue
		}
		mt, code, _ := p.lookup(m)
		if code != 0 {
			continue // this member is not reachable now; the others ring
		}
		ts = append(ts, mt...)
		if len(ts) >= maxForks {
			ts = ts[:maxForks]
			break
		}
	}
	if len(ts) == 0 {
		return nil, 480, "Temporarily Unavailable (no member of the group is reachable)", true
	}
	return ts, 0, "", true
}

// isGroup reports whether ext is a ring or hunt group.
func (s *SIPService) isGroup(ext string) bool {
	_, hunt := s.cfg.HuntGroups[ext]
	return hunt || len(s.cfg.RingGroups[ext]) > 0
}

// huntNext returns the targets of the hunt's next reachable member and
// moves past it; none when no member is left.
func (p *proxyTx) huntNext() []target {
	h := p.hunt
	for h.next < len(h.group.Members) {
		m := h.group.Members[h.next]
		h.next++
		if p.s.isGroup(m) || registrar.ValidExt(m) != nil {
			continue
		}
		if ts, code, _ := p.lookup(m); code == 0 && len(ts) > 0 {
			return ts
		}
	}
	return nil
}

// armHunt starts the timer of the member being rung; when it fires, the
// loop cancels its branches (huntTimeout) and huntOnFailure rings the
// next member.
func (p *proxyTx) armHunt(invite bool) {
	if !invite || p.hunt == nil {
		return
	}
	p.hunt.timer = time.AfterFunc(p.hunt.group.Timeout, func() { p.event(brEvent{hunt: true}) })
}

// huntTimeout is the loop's side of the hunt timer.
func (p *proxyTx) huntTimeout() {
	if p.finalSent || p.cancelled {
		return
	}
	p.hunt.timeout = true
	for _, b := range p.branches {
		p.cancelBranch(b)
	}
}

// huntOnFailure rings the hunt group's next member once the branches of
// the one before failed or timed out; it reports whether new branches
// started and the loop must run again.
func (p *proxyTx) huntOnFailure(base *sip.Request, callID, fromTag string) bool {
	h := p.hunt
	if h == nil {
		return false
	}
	if h.timer != nil {
		h.timer.Stop()
		h.timer = nil
	}
	h.timeout = false
	if p.finalSent || p.cancelled || p.s.ctx.Err() != nil {
		return false
	}
	for {
		ts := p.huntNext()
		if len(ts) == 0 {
			return false
		}
		if p.startBranches(base, ts, callID, fromTag) > 0 {
			p.armHunt(true)
			return true
		}
	}
}
