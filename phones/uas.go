package phones

import (
	"errors"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
)

// onInvite answers an INVITE: a re-INVITE inside one of our dialogs, or a
// new call (RFC 3261 §13.3). sipgo terminates the server transaction when
// the handler returns, so the handler blocks while the phone rings
// (libraries.md §1 pitfall 5), and goes on to run the call.
func (p *Phone) onInvite(req *sip.Request, tx sip.ServerTransaction) {
	if to := req.To(); to != nil && to.Params.Has("tag") {
		p.onReinvite(req, tx)
		return
	}
	from, cid := req.From(), req.CallID()
	if from == nil || cid == nil || req.CSeq() == nil || req.Contact() == nil {
		p.respond(tx, req, 400, "Bad Request", nil, "")
		return
	}
	offer, dtmf, err := audio(req.Body())
	if err != nil {
		// §13.3.1: an offer we cannot take is 488 (RFC 3264 §6).
		p.respond(tx, req, 488, "Not Acceptable Here", nil, "")
		return
	}
	c := newCall(p, Incoming, cid.Value(), p.cfg.Policy.ExpectHz)
	c.invite = req
	c.localURI, c.remoteURI = req.To().Address, from.Address
	c.localTag = sip.GenerateTagN(10)
	c.remoteTag, _ = from.Params.Get("tag")
	c.remoteTarget = req.Contact().Address
	// The UAS route set is Record-Route in order (§12.1.1).
	for _, h := range req.GetHeaders("Record-Route") {
		if rr, ok := h.(*sip.RecordRouteHeader); ok {
			c.routeSet = append(c.routeSet, rr.Address)
		}
	}
	c.localSeq = 1 + randUint32()%0x7fff
	if c.media, err = p.newMedia(); err != nil {
		p.log.Warn("incoming call", "err", err)
		p.respond(tx, req, 500, "Server Internal Error", nil, "")
		return
	}
	if err := p.admit(c); err != nil {
		c.media.conn.Close()
		switch {
		case errors.Is(err, ErrTooManyCalls):
			p.respond(tx, req, 486, "Busy Here", nil, "")
		case errors.Is(err, errDuplicate):
			// The same call again on another branch: a merged request
			// (§8.2.2.2).
			p.respond(tx, req, 482, "Loop Detected", nil, "")
		default:
			p.respond(tx, req, 503, "Service Unavailable", nil, "")
		}
		return
	}
	defer p.wg.Done()
	c.localSDP = p.sdp(c.media.Local(), randUint32()>>1, dtmf)

	cancelled := make(chan struct{})
	var once sync.Once
	if !tx.OnCancel(func(*sip.Request) { once.Do(func() { close(cancelled) }) }) {
		c.finish(487, "Request Terminated", &StatusError{Method: "INVITE", Code: 487, Reason: "Request Terminated"})
		return
	}
	p.respond(tx, req, 180, "Ringing", nil, c.localTag)
	c.mu.Lock()
	c.state, c.ringAt = Ringing, p.now()
	c.mu.Unlock()
	select {
	case p.incoming <- c:
	default:
	}

	code := 0
	var ring <-chan time.Time
	if p.cfg.Policy.Mode != Manual {
		t := time.NewTimer(p.cfg.Policy.RingDelay)
		defer t.Stop()
		ring = t.C
	}
	select {
	case <-ring:
		code = 200
		if p.cfg.Policy.Mode == AutoReject {
			code = p.cfg.Policy.RejectCode
		}
	case code = <-c.decide:
	case <-cancelled:
		// sipgo has answered 200 to the CANCEL and 487 to the INVITE.
		c.finish(487, "Request Terminated", &StatusError{Method: "INVITE", Code: 487, Reason: "Request Terminated"})
		return
	case <-tx.Done():
		c.finish(0, "", errors.New("phones: INVITE transaction ended while ringing"))
		return
	case <-p.base.Done():
		p.respond(tx, req, 480, "Temporarily Unavailable", nil, c.localTag)
		c.finish(480, "Temporarily Unavailable", ErrClosed)
		return
	}
	c.stopRinging()
	if code != 200 {
		reason := reasonPhrase(code)
		p.respond(tx, req, code, reason, nil, c.localTag)
		c.finish(code, reason, &StatusError{Method: "INVITE", Code: code, Reason: reason})
		return
	}
	ok := p.answer(c, req, tx, c.localSDP, c.expectAck(req.CSeq().SeqNo))
	c.markAnswered()
	c.startMedia(offer.RTP())
	if !ok {
		c.hangup(false)
		return
	}
	c.established()
}

// answer sends the 2xx to an INVITE and, as the UAS core must (§13.3.1.4),
// retransmits it from T1 doubling to T2 until the ACK arrives, for at most
// 64*T1. It reports whether the ACK came.
func (p *Phone) answer(c *Call, req *sip.Request, tx sip.ServerTransaction, sdp []byte, ack <-chan struct{}) bool {
	res := p.response(req, 200, "OK", sdp, c.localTag)
	if err := tx.Respond(res); err != nil {
		p.log.Debug("respond 200", "err", err)
	}
	interval := sip.T1
	deadline := time.NewTimer(64 * sip.T1)
	defer deadline.Stop()
	for {
		t := time.NewTimer(interval)
		select {
		case <-ack:
			t.Stop()
			return true
		case <-c.byeCh: // the ACK was lost, the BYE was not
			t.Stop()
			return true
		case <-c.hangupCh:
			t.Stop()
			return true // hang up with BYE from the established state
		case <-p.base.Done():
			t.Stop()
			return true
		case <-deadline.C:
			t.Stop()
			p.log.Warn("no ACK for 2xx", "call", c.id)
			return false
		case <-t.C:
		}
		// sipgo sends 2xx passed to an Accepted transaction (RFC 6026 §7.1).
		if err := tx.Respond(res); err != nil {
			p.log.Debug("retransmit 200", "err", err)
		}
		interval = min(2*interval, sip.T2)
	}
}

// onReinvite answers a re-INVITE in an established dialog with the same
// SDP (RFC 3264 §8: an unchanged description keeps its version) and
// points media at the new offer's address. Hold is not modelled.
func (p *Phone) onReinvite(req *sip.Request, tx sip.ServerTransaction) {
	c := p.call(req)
	if c == nil || !c.matches(req) {
		p.respond(tx, req, 481, "Call/Transaction Does Not Exist", nil, "")
		return
	}
	if c.State() != Established {
		// §14.2: a re-INVITE during our own pending INVITE gets 491; one
		// before the ACK 500 with Retry-After.
		p.respond(tx, req, 491, "Request Pending", nil, "")
		return
	}
	if len(req.Body()) > 0 {
		offer, _, err := audio(req.Body())
		if err != nil {
			p.respond(tx, req, 488, "Not Acceptable Here", nil, "")
			return
		}
		c.media.SetRemote(offer.RTP())
	}
	if ct := req.Contact(); ct != nil {
		c.mu.Lock()
		c.remoteTarget = ct.Address // target refresh (§12.2.2)
		c.mu.Unlock()
	}
	p.answer(c, req, tx, c.localSDP, c.expectAck(req.CSeq().SeqNo))
}
