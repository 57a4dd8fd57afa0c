package phones

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/sipmesh/sipmesh/sipalg"
	"github.com/sipmesh/sipmesh/sipnet"
)

// Direction tells who placed a call.
type Direction int

// Directions.
const (
	Outgoing Direction = iota
	Incoming
)

// State is where a call is in its life.
type State int

// Call states.
const (
	Calling     State = iota // INVITE sent, nothing but 100 back
	Ringing                  // 180/183 received (outgoing) or sent (incoming)
	Established              // 2xx sent or received
	Ended                    // hung up, rejected, cancelled or failed
)

func (s State) String() string {
	return [...]string{"calling", "ringing", "established", "ended"}[s]
}

// CallOptions tune one outgoing call.
type CallOptions struct {
	// ExpectHz is the callee's tone, learned out of band; HeardRemote
	// checks it.
	ExpectHz float64
	// SDPAttributes are extra attribute lines ("a=candidate:…", without
	// CRLF) appended to the offer's media description (RFC 4566 §5.13):
	// what ICE candidates and many codecs add to a real phone's INVITE,
	// for tests of large requests.
	SDPAttributes []string
}

// Call is one call of a phone, outgoing or incoming.
type Call struct {
	p        *Phone
	dir      Direction
	id       string // Call-ID
	expectHz float64
	media    *MediaEndpoint

	// Dialog state (RFC 3261 §12); set before the call goroutine or the
	// handler starts and changed only by it, except where noted.
	localURI, remoteURI sip.Uri
	localTag, remoteTag string
	remoteTarget        sip.Uri
	routeSet            []sip.Uri
	localSeq            uint32
	invite              *sip.Request // our INVITE (outgoing) or theirs (incoming)
	localSDP            []byte
	answerOnce          sync.Once
	answered, ended     chan struct{}
	ringingDone         chan struct{}
	ringOnce            sync.Once

	hangupCh chan struct{} // local hangup or cancel request
	hangOnce sync.Once
	byeCh    chan struct{} // BYE received
	byeOnce  sync.Once
	decide   chan int // manual answer (200) or reject (code)

	mu       sync.Mutex
	state    State
	status   int
	reason   string
	err      error
	started  time.Time // INVITE sent or received
	ringAt   time.Time // first 18x
	answerAt time.Time // 2xx
	endAt    time.Time
	ackSeq   uint32        // CSeq of the INVITE whose 2xx awaits ACK
	ackWait  chan struct{} // closed by that ACK
	mediaEnd context.CancelFunc
	mediaWG  sync.WaitGroup
}

func randUint32() uint32 { return rand.Uint32() }

func newCall(p *Phone, dir Direction, id string, expect float64) *Call {
	return &Call{p: p, dir: dir, id: id, expectHz: expect,
		answered: make(chan struct{}), ended: make(chan struct{}),
		ringingDone: make(chan struct{}), hangupCh: make(chan struct{}), byeCh: make(chan struct{}),
		decide: make(chan int, 1), started: p.now()}
}

// ID returns the call's Call-ID.
func (c *Call) ID() string { return c.id }

// Direction tells whether the phone placed or received the call.
func (c *Call) Direction() Direction { return c.dir }

// Remote returns the other party's URI (To of our INVITE, From of theirs).
func (c *Call) Remote() string { return c.remoteURI.String() }

// State returns the call's state.
func (c *Call) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// Status is the final status of the INVITE: 200 once answered, the error
// code of a failed call, 0 while none.
func (c *Call) Status() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.status
}

// SetupTime is INVITE sent → 2xx received (outgoing) or INVITE received →
// 2xx sent (incoming); 0 if not answered.
func (c *Call) SetupTime() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.answerAt.IsZero() {
		return 0
	}
	return c.answerAt.Sub(c.started)
}

// PostDialDelay is INVITE sent → first 180/183 (ITU-T E.721's post-dial
// delay); 0 if the call never rang.
func (c *Call) PostDialDelay() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ringAt.IsZero() {
		return 0
	}
	return c.ringAt.Sub(c.started)
}

// Duration is answer → end (or now while established).
func (c *Call) Duration() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.answerAt.IsZero():
		return 0
	case c.endAt.IsZero():
		return c.p.now().Sub(c.answerAt)
	}
	return c.endAt.Sub(c.answerAt)
}

// Answered is closed when the call is established.
func (c *Call) Answered() <-chan struct{} { return c.answered }

// Done is closed when the call has ended and its media stopped.
func (c *Call) Done() <-chan struct{} { return c.ended }

// RingingDone is closed when an incoming call stops ringing: answered,
// rejected, or cancelled by the caller.
func (c *Call) RingingDone() <-chan struct{} { return c.ringingDone }

// IsRinging reports an incoming call that rings now.
func (c *Call) IsRinging() bool {
	select {
	case <-c.ringingDone:
		return false
	default:
		return c.dir == Incoming && c.State() == Ringing
	}
}

// Err is why the call ended: nil after a normal hangup by either side, a
// *StatusError for a failed or cancelled INVITE, else what went wrong.
func (c *Call) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Heard reports whether the last second of received audio carries a tone
// at hz.
func (c *Call) Heard(hz float64) bool {
	if c.media == nil {
		return false
	}
	return c.media.Heard(hz)
}

// Level returns the power of the tone at hz in the last second of
// received audio (full scale 1.0; a sine of amplitude A gives A²/2); it
// picks one voice out of a party line's mix (Detector.Level).
func (c *Call) Level(hz float64) float64 {
	if c.media == nil {
		return 0
	}
	return c.media.Level(hz)
}

// FrameLevel is Level averaged frame by frame, robust to lost packets
// (Detector.FrameLevel).
func (c *Call) FrameLevel(hz float64) float64 {
	if c.media == nil {
		return 0
	}
	return c.media.FrameLevel(hz)
}

// HeardRemote reports whether the call receives the remote side's tone
// (CallOptions.ExpectHz or Policy.ExpectHz).
func (c *Call) HeardRemote() bool { return c.expectHz > 0 && c.Heard(c.expectHz) }

// Stats returns the call's media counters and the E-model estimate of the
// received stream (R, MOS).
func (c *Call) Stats() MediaStats {
	if c.media == nil {
		return MediaStats{}
	}
	return c.media.Stats()
}

// LocalMedia is the call's RTP address (in its SDP).
func (c *Call) LocalMedia() netip.AddrPort {
	if c.media == nil {
		return netip.AddrPort{}
	}
	return c.media.Local()
}

// Wait waits until the call is answered (nil) or ends (its Err). If ctx
// ends first it cancels the call (CANCEL, RFC 3261 §9.1) and waits for it
// to end.
func (c *Call) Wait(ctx context.Context) error {
	select {
	case <-c.answered:
		return nil
	case <-c.ended:
		return c.Err()
	case <-ctx.Done():
	}
	c.Cancel()
	select {
	case <-c.answered:
		return nil
	case <-c.ended:
		return c.Err()
	}
}

// Cancel gives up an outgoing call before it is answered (CANCEL; the
// callee answers 487). On an answered call it hangs up. It does not wait;
// see Done.
func (c *Call) Cancel() { c.hangOnce.Do(func() { close(c.hangupCh) }) }

// Hangup ends the call (BYE, or CANCEL before an answer) and waits until it
// has ended or ctx ends.
func (c *Call) Hangup(ctx context.Context) error {
	c.Cancel()
	select {
	case <-c.ended:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Answer answers a ringing incoming call (any Policy mode).
func (c *Call) Answer() { c.decideOnce(200) }

// Reject answers a ringing incoming call with a final error status.
func (c *Call) Reject(code int) {
	if code < 300 || code > 699 {
		code = 603
	}
	c.decideOnce(code)
}

func (c *Call) decideOnce(code int) {
	select {
	case c.decide <- code:
	default:
	}
}

func (c *Call) setState(s State) {
	c.mu.Lock()
	c.state = s
	c.mu.Unlock()
}

func (c *Call) stopRinging() { c.ringOnce.Do(func() { close(c.ringingDone) }) }

func (c *Call) remoteBye() { c.byeOnce.Do(func() { close(c.byeCh) }) }

// expectAck returns a channel the ACK for our 2xx to the INVITE with
// CSeq seq will close.
func (c *Call) expectAck(seq uint32) <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan struct{})
	c.ackSeq, c.ackWait = seq, ch
	return ch
}

func (c *Call) acked(seq uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ackWait != nil && seq == c.ackSeq {
		close(c.ackWait)
		c.ackWait = nil
	}
}

// matches checks an in-dialog request's tags against the dialog (RFC 3261
// §12.2.2): their From tag is our remote tag, their To tag our local tag.
func (c *Call) matches(req *sip.Request) bool {
	from, to := req.From(), req.To()
	if from == nil || to == nil {
		return false
	}
	ft, _ := from.Params.Get("tag")
	tt, _ := to.Params.Get("tag")
	c.mu.Lock()
	defer c.mu.Unlock()
	return ft == c.remoteTag && tt == c.localTag
}

// startMedia points the endpoint at the peer's RTP address and starts it.
func (c *Call) startMedia(remote netip.AddrPort) {
	c.media.SetRemote(remote)
	ctx, cancel := context.WithCancel(context.Background())
	c.mu.Lock()
	c.mediaEnd = cancel
	c.mu.Unlock()
	c.mediaWG.Go(func() {
		if err := c.media.Run(ctx); err != nil {
			c.p.log.Warn("media", "call", c.id, "err", err)
		}
	})
}

// finish ends the call: stops media, records why, forgets it.
func (c *Call) finish(status int, reason string, err error) {
	c.mu.Lock()
	if c.status == 0 || status >= 300 {
		c.status, c.reason = status, reason
	}
	if c.err == nil {
		c.err = err
	}
	c.state = Ended
	c.endAt = c.p.now()
	end := c.mediaEnd
	c.mu.Unlock()
	c.stopRinging()
	if end != nil {
		end()
	} else if c.media != nil {
		c.media.conn.Close() // never started: close its socket
	}
	c.mediaWG.Wait()
	c.p.forget(c)
	close(c.ended)
}

func (c *Call) markAnswered() {
	c.mu.Lock()
	c.state, c.status, c.reason = Established, 200, "OK"
	c.answerAt = c.p.now()
	c.mu.Unlock()
	c.answerOnce.Do(func() { close(c.answered) })
}

// newMedia opens the call's RTP socket on the phone's LAN address.
func (p *Phone) newMedia() (*MediaEndpoint, error) {
	conn, err := p.cfg.Network.ListenPacket(context.Background(), "udp", netip.AddrPortFrom(p.cfg.LocalAddr, 0).String())
	if err != nil {
		return nil, fmt.Errorf("phones: RTP socket: %w", err)
	}
	m, err := NewMediaEndpoint(MediaConfig{Conn: conn, ToneHz: p.cfg.ToneHz, Amplitude: p.cfg.ToneAmplitude})
	if err != nil {
		conn.Close()
		return nil, err
	}
	return m, nil
}

// sdp describes the call's media: PCMU/8000 (RFC 3551 §6) and, if offered
// or we offer, telephone-event (RFC 4733) (RFC 4566, RFC 3264).
func (p *Phone) sdp(media netip.AddrPort, sessID uint32, dtmf bool) []byte {
	typ := "IP4"
	if media.Addr().Is6() {
		typ = "IP6"
	}
	fmts, extra := "0", ""
	if dtmf {
		fmts, extra = "0 101", "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n"
	}
	return fmt.Appendf(nil, "v=0\r\no=%s %d 1 IN %s %s\r\ns=sipmesh phone\r\nc=IN %s %s\r\nt=0 0\r\n"+
		"m=audio %d RTP/AVP %s\r\na=rtpmap:0 PCMU/8000\r\n%sa=ptime:20\r\na=sendrecv\r\n",
		p.cfg.User, sessID, typ, media.Addr(), typ, media.Addr(), media.Port(), fmts, extra)
}

// audio picks the PCMU audio stream of a session description (RFC 3264
// §6: the answer's stream for our offer, or an offer we can take).
func audio(body []byte) (s sipalg.Stream, dtmf bool, err error) {
	if len(body) == 0 {
		return s, false, errors.New("no SDP")
	}
	d, err := sipalg.Parse(body)
	if err != nil {
		return s, false, err
	}
	for _, st := range d.Streams {
		if st.Media != "audio" || st.Rejected() || !strings.HasPrefix(st.Proto, "RTP/AVP") {
			continue
		}
		pcmu := false
		for _, f := range st.Formats {
			if f == "0" {
				pcmu = true
			}
		}
		if !pcmu || !st.Addr.IsValid() {
			continue
		}
		for _, m := range st.RTPMaps {
			if strings.EqualFold(m.Encoding, "telephone-event") && m.PayloadType == 101 {
				dtmf = true
			}
		}
		return st, dtmf, nil
	}
	return s, false, errors.New("no PCMU audio stream")
}

// Dial places a call to target: an extension or user ("202", sent as
// sip:202@Domain to Settings.Server) or a SIP URI ("sip:202@192.168.1.11",
// sent to Settings.Server if set, else straight to its host, which must be
// an IP literal). It returns once the INVITE is sent; see Wait, Answered
// and Done.
func (p *Phone) Dial(ctx context.Context, target string, opts CallOptions) (*Call, error) {
	ruri, dest, err := p.target(target)
	if err != nil {
		return nil, err
	}
	c := newCall(p, Outgoing, sip.GenerateTagN(16)+"@"+p.cfg.LocalAddr.String(), opts.ExpectHz)
	c.localURI, c.localTag = p.aor, sip.GenerateTagN(10)
	c.remoteURI = sip.Uri{Scheme: "sip", User: ruri.User, Host: ruri.Host, Port: ruri.Port}
	c.localSeq = 1 + randUint32()%0x7fff
	if c.media, err = p.newMedia(); err != nil {
		return nil, err
	}
	if err := p.admit(c); err != nil {
		c.media.conn.Close()
		return nil, err
	}
	c.localSDP = p.sdp(c.media.Local(), randUint32()>>1, true)
	for _, a := range opts.SDPAttributes {
		c.localSDP = append(append(c.localSDP, a...), "\r\n"...)
	}

	req := sip.NewRequest(sip.INVITE, ruri)
	req.AppendHeader(p.via())
	req.AppendHeader(&sip.FromHeader{DisplayName: p.cfg.DisplayName, Address: c.localURI,
		Params: sipnet.TagParams(c.localTag)})
	req.AppendHeader(&sip.ToHeader{Address: c.remoteURI, Params: sip.NewParams()})
	cid := sip.CallIDHeader(c.id)
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: c.localSeq, MethodName: sip.INVITE})
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(&mf)
	req.AppendHeader(p.contactHeader())
	req.AppendHeader(sip.NewHeader("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS"))
	req.AppendHeader(sip.NewHeader("User-Agent", "sipmesh-phone"))
	ct := sip.ContentTypeHeader("application/sdp")
	req.AppendHeader(&ct)
	req.SetBody(c.localSDP)
	c.invite = req

	tx, err := p.send(req, dest)
	if err != nil {
		c.finish(0, "", fmt.Errorf("phones: INVITE: %w", err))
		p.wg.Done()
		return nil, err
	}
	go func() {
		defer p.wg.Done()
		c.runUAC(tx, dest)
	}()
	return c, nil
}

// Call places a call (see Dial) and waits until it is answered or fails;
// a failure is a *StatusError with the final status (404, 480, 486, 487
// after ctx ends, 408 ...). The Call is returned in both cases.
func (p *Phone) Call(ctx context.Context, target string, opts CallOptions) (*Call, error) {
	c, err := p.Dial(ctx, target, opts)
	if err != nil {
		return nil, err
	}
	return c, c.Wait(ctx)
}

// target turns a dial string into a Request-URI and where to send it.
func (p *Phone) target(t string) (sip.Uri, netip.AddrPort, error) {
	var u sip.Uri
	if strings.HasPrefix(t, "sip:") {
		if err := sip.ParseUri(t, &u); err != nil {
			return u, netip.AddrPort{}, fmt.Errorf("phones: target %q: %w", t, err)
		}
	} else {
		if t == "" || strings.ContainsAny(t, "@:;<> ") {
			return u, netip.AddrPort{}, fmt.Errorf("phones: target %q is neither a user nor a sip: URI", t)
		}
		u = sip.Uri{Scheme: "sip", User: t, Host: p.cfg.Domain}
	}
	if p.cfg.Server.IsValid() {
		return u, p.cfg.Server, nil
	}
	dest, err := sipnet.URIAddr(&u)
	if err != nil {
		return u, dest, fmt.Errorf("phones: %w (the phone does no DNS)", err)
	}
	return u, dest, nil
}

// runUAC drives an outgoing INVITE (RFC 3261 §13.2.2) to its answer or
// failure, then the established call.
func (c *Call) runUAC(tx sip.ClientTransaction, dest netip.AddrPort) {
	p := c.p
	var (
		auth        int
		provisional bool // CANCEL is allowed only after one (§9.1)
		cancelling  bool
		cancelSent  bool
		hangup      = c.hangupCh
		stopping    = c.p.base.Done()
		cancelWait  <-chan time.Time
	)
	sendCancel := func() {
		if cancelSent || !provisional {
			return
		}
		cancelSent = true
		c.sendCancel(dest)
		// If the callee never answers the CANCEL's INVITE with a final
		// response, give up after 64*T1 (§9.1).
		cancelWait = time.After(64 * sip.T1)
	}
	for {
		select {
		case res := <-tx.Responses():
			code := res.StatusCode
			switch {
			case code < 200:
				provisional = true
				if code == 180 || code == 183 {
					c.mu.Lock()
					if c.ringAt.IsZero() {
						c.ringAt = p.now()
					}
					c.state = Ringing
					c.mu.Unlock()
				}
				if cancelling {
					sendCancel()
				}
			case code < 300:
				if !c.onAnswer(tx, res) {
					return
				}
				if cancelling { // answered as the CANCEL went out
					c.hangup(p.base.Err() != nil)
					return
				}
				c.established()
				return
			case (code == 401 || code == 407) && auth < maxAuthTries && p.cfg.Password != "" && !cancelling:
				auth++
				tx.Terminate()
				if err := p.authorize(c.invite, res); err != nil {
					c.finish(code, res.Reason, &StatusError{Method: "INVITE", Code: code, Reason: res.Reason})
					return
				}
				c.mu.Lock()
				c.localSeq = c.invite.CSeq().SeqNo
				c.mu.Unlock()
				var err error
				if tx, err = p.send(c.invite, dest); err != nil {
					c.finish(0, "", fmt.Errorf("phones: INVITE: %w", err))
					return
				}
			default:
				// sipgo's INVITE client transaction ACKs non-2xx itself
				// (§17.1.1.3).
				tx.Terminate()
				c.finish(code, res.Reason, &StatusError{Method: "INVITE", Code: code, Reason: res.Reason})
				return
			}
		case <-tx.Done():
			// Timer B or a transport error: §8.1.3.1 treats it as 408.
			c.finish(408, "Request Timeout", &StatusError{Method: "INVITE", Code: 408, Reason: "Request Timeout"})
			return
		case <-hangup:
			hangup, cancelling = nil, true
			sendCancel()
		case <-stopping:
			if !provisional {
				tx.Terminate()
				c.finish(0, "", ErrClosed)
				return
			}
			stopping, cancelling = nil, true // a closed channel would spin the loop
			sendCancel()
		case <-cancelWait:
			tx.Terminate()
			c.finish(487, "Request Terminated", &StatusError{Method: "INVITE", Code: 487, Reason: "Request Terminated"})
			return
		}
	}
}

// sendCancel sends CANCEL for our INVITE: same Request-URI, top Via, Call-ID,
// From, To, CSeq number and Route (RFC 3261 §9.1). Its response does not
// matter; the INVITE's 487 does.
func (c *Call) sendCancel(dest netip.AddrPort) {
	inv := c.invite
	req := sip.NewRequest(sip.CANCEL, *inv.Recipient.Clone())
	req.AppendHeader(sip.HeaderClone(inv.Via()))
	for _, h := range inv.GetHeaders("Route") {
		req.AppendHeader(sip.HeaderClone(h))
	}
	req.AppendHeader(sip.HeaderClone(inv.From()))
	req.AppendHeader(sip.HeaderClone(inv.To()))
	req.AppendHeader(sip.HeaderClone(inv.CallID()))
	req.AppendHeader(&sip.CSeqHeader{SeqNo: inv.CSeq().SeqNo, MethodName: sip.CANCEL})
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(&mf)
	req.SetBody(nil)
	tx, err := c.p.send(req, dest)
	if err != nil {
		c.p.log.Warn("CANCEL", "call", c.id, "err", err)
		return
	}
	c.p.drain(tx)
}

// drain reads a client transaction we don't wait for until it ends, so
// sipgo's transaction goroutine never blocks on its response channel.
func (p *Phone) drain(tx sip.ClientTransaction) {
	if !p.enter() {
		tx.Terminate()
		return
	}
	go func() {
		defer p.wg.Done()
		defer tx.Terminate()
		t := time.NewTimer(64 * sip.T1)
		defer t.Stop()
		for {
			select {
			case res := <-tx.Responses():
				if res.StatusCode >= 200 {
					return
				}
			case <-tx.Done():
				return
			case <-t.C:
				return
			}
		}
	}()
}

// onAnswer takes a 2xx to our INVITE: builds the dialog (§12.1.2), ACKs
// (§13.2.2.4) and starts media. It returns false if the call failed.
func (c *Call) onAnswer(tx sip.ClientTransaction, res *sip.Response) bool {
	c.mu.Lock()
	if to := res.To(); to != nil {
		c.remoteTag, _ = to.Params.Get("tag")
	}
	c.remoteTarget = c.invite.Recipient
	if ct := res.Contact(); ct != nil {
		c.remoteTarget = ct.Address
	}
	c.routeSet = nil
	rr := res.GetHeaders("Record-Route")
	for i := len(rr) - 1; i >= 0; i-- {
		if h, ok := rr[i].(*sip.RecordRouteHeader); ok {
			c.routeSet = append(c.routeSet, h.Address)
		}
	}
	c.mu.Unlock()

	ack, err := c.inDialog(sip.ACK, c.localSeq)
	if err == nil {
		err = c.p.cli.WriteRequest(ack.Clone(), prebuilt)
	}
	if err != nil {
		tx.Terminate()
		c.finish(0, "", fmt.Errorf("phones: ACK: %w", err))
		return false
	}
	// The 2xx is retransmitted until our ACK arrives (§13.3.1.4); sipgo's
	// transaction stays in Accepted (RFC 6026) and hands us each copy.
	tx.OnRetransmission(func(*sip.Response) {
		if err := c.p.cli.WriteRequest(ack.Clone(), prebuilt); err != nil {
			c.p.log.Debug("ACK retransmission", "err", err)
		}
	})
	c.markAnswered()
	st, _, err := audio(res.Body())
	if err != nil {
		c.p.log.Warn("answer without usable SDP", "call", c.id, "err", err)
		c.hangup(false)
		return false
	}
	c.startMedia(st.RTP())
	return true
}

// inDialog builds a request inside the dialog (RFC 3261 §12.2.1.1):
// Request-URI the remote target, Route the route set (loose routing;
// a strict router first gets the remote target appended, §12.2.1.1).
func (c *Call) inDialog(method sip.RequestMethod, seq uint32) (*sip.Request, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ruri := c.remoteTarget
	routes := c.routeSet
	if len(routes) > 0 && !routes[0].UriParams.Has("lr") {
		ruri = routes[0]
		routes = append(append([]sip.Uri(nil), routes[1:]...), c.remoteTarget)
	}
	req := sip.NewRequest(method, *ruri.Clone())
	req.AppendHeader(c.p.via())
	for _, r := range routes {
		req.AppendHeader(&sip.RouteHeader{Address: *r.Clone()})
	}
	req.AppendHeader(&sip.FromHeader{DisplayName: c.p.cfg.DisplayName, Address: c.localURI,
		Params: sipnet.TagParams(c.localTag)})
	to := &sip.ToHeader{Address: c.remoteURI, Params: sip.NewParams()}
	if c.remoteTag != "" {
		to.Params.Add("tag", c.remoteTag)
	}
	req.AppendHeader(to)
	cid := sip.CallIDHeader(c.id)
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: seq, MethodName: method})
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(&mf)
	if method == sip.ACK || method == sip.INVITE {
		req.AppendHeader(c.p.contactHeader())
	}
	req.SetBody(nil)
	next := ruri
	if len(routes) > 0 {
		next = routes[0]
	}
	dest, err := sipnet.URIAddr(&next)
	if err != nil {
		return nil, fmt.Errorf("phones: %w", err)
	}
	c.p.route(req, dest)
	return req, nil
}

// established waits for either side to hang up, or the phone to stop.
func (c *Call) established() {
	select {
	case <-c.hangupCh:
		c.hangup(false)
	case <-c.byeCh:
		c.finish(200, "OK", nil)
	case <-c.p.base.Done():
		c.hangup(true)
	}
}

// hangup sends BYE (§15.1.1) and ends the call when it is answered, or
// after 64*T1 (1 s when the phone is stopping).
func (c *Call) hangup(stopping bool) {
	c.mu.Lock()
	c.localSeq++
	seq := c.localSeq
	c.mu.Unlock()
	bye, err := c.inDialog(sip.BYE, seq)
	if err != nil {
		c.finish(0, "", fmt.Errorf("phones: BYE: %w", err))
		return
	}
	tx, err := c.p.cli.TransactionRequest(context.Background(), bye, prebuilt)
	if err != nil {
		c.finish(0, "", fmt.Errorf("phones: BYE: %w", err))
		return
	}
	defer tx.Terminate()
	wait := 64 * sip.T1
	if stopping {
		wait = time.Second
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case res := <-tx.Responses():
			if res.StatusCode < 200 {
				continue
			}
		case <-tx.Done():
		case <-c.byeCh: // BYEs crossed
		case <-t.C:
		}
		c.finish(200, "OK", nil)
		return
	}
}

// Reinvite refreshes an established session with a re-INVITE carrying
// the same SDP (RFC 3261 §14.1, a session refresh), and ACKs its 2xx. It
// tests that proxies route mid-dialog INVITEs along the route set.
func (c *Call) Reinvite(ctx context.Context) error {
	if c.State() != Established {
		return errors.New("phones: re-INVITE outside an established call")
	}
	c.mu.Lock()
	c.localSeq++
	seq := c.localSeq
	c.mu.Unlock()
	req, err := c.inDialog(sip.INVITE, seq)
	if err != nil {
		return err
	}
	ct := sip.ContentTypeHeader("application/sdp")
	req.AppendHeader(&ct)
	req.SetBody(c.localSDP)
	tx, err := c.p.cli.TransactionRequest(context.Background(), req, prebuilt)
	if err != nil {
		return fmt.Errorf("phones: re-INVITE: %w", err)
	}
	defer tx.Terminate()
	res, err := finalResponse(ctx, tx)
	if err != nil {
		return fmt.Errorf("phones: re-INVITE: %w", err)
	}
	if !res.IsSuccess() {
		return &StatusError{Method: "INVITE", Code: res.StatusCode, Reason: res.Reason}
	}
	ack, err := c.inDialog(sip.ACK, seq)
	if err != nil {
		return err
	}
	if err := c.p.cli.WriteRequest(ack, prebuilt); err != nil {
		return fmt.Errorf("phones: ACK: %w", err)
	}
	if st, _, err := audio(res.Body()); err == nil {
		c.media.SetRemote(st.RTP())
	}
	return nil
}
