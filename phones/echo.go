package phones

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/sipmesh/sipmesh/sipalg"
	"github.com/sipmesh/sipmesh/sipnet"
)

// The echo test. A phone on this node's LAN that calls 3246 ("ECHO" on a
// keypad) or the name "echo" in the mesh domain is answered by the node
// itself: a small UAS (RFC 3261 §8.2, §13.3) that answers the INVITE with
// 200 and an SDP answer (RFC 3264 §6) pointing at an echo media endpoint
// on the node's LAN address, which sends every G.711 frame it receives
// back to the caller as an RTP stream of its own. It is answered by the
// caller's own node on purpose: it tests the phone, its cable and the
// node's SIP service, without the mesh in the way, and needs no account
// and no DHT lookup. A call to 3246 arriving over the mesh is not an echo
// test (it would be another node's); it is routed like any extension.
//
// The node's SIP service (package proxy) hands the echo test its requests
// and lends it what a UAS needs of a SIP stack, through EchoHost; the echo
// test knows nothing of the proxy or the registrar.
//
// Sessions are bounded (EchoConfig.Max; more callers hear 486 Busy Here),
// end on the caller's BYE, on the service stopping, and on their own after
// EchoIdle without RTP or echoMaxDuration, with a BYE of ours
// (RFC 3261 §15.1.1).

// EchoExtension is the echo test's extension.
const EchoExtension = "3246"

// Echo test defaults and bounds.
const (
	DefaultMaxEchoSessions = 8
	EchoIdle               = 30 * time.Second
	echoMaxDuration        = time.Hour
)

// EchoHost is what the echo test needs of the SIP service that hands it
// its requests.
type EchoHost interface {
	// Context ends when the service stops; sessions end with it.
	Context() context.Context
	// Go runs f on a goroutine the service waits for when it stops. It
	// reports false, without running f, while the service is stopping.
	Go(f func()) bool
	// Respond builds a response of the node's own to req (Via with
	// received and rport, a To tag, Server).
	Respond(req *sip.Request, code int, reason string) *sip.Response
	// Check validates req as RFC 3261 §8.2 requires of any request: 0
	// when it is fine, else the status and reason to answer (and the
	// service counts it as malformed).
	Check(req *sip.Request) (int, string)
	// OurHost reports whether a URI host names this node or the mesh
	// domain; OurRoute whether a Route URI names this node.
	OurHost(host string) bool
	OurRoute(u *sip.Uri) bool
	// LANAddr is the address of the service's LAN socket: the echo
	// test's Contact, Via and media address.
	LANAddr() netip.AddrPort
	// Request sends req from the LAN socket on a client transaction.
	Request(ctx context.Context, req *sip.Request) (sip.ClientTransaction, error)
}

// EchoConfig configures the echo test.
type EchoConfig struct {
	Host EchoHost // required
	// Listen opens a media socket on the LAN address (required).
	Listen func(context.Context) (net.PacketConn, error)
	Max    int // sessions at once (default DefaultMaxEchoSessions)
	Logger *slog.Logger
}

// EchoService answers the echo test for a node's SIP service.
type EchoService struct {
	h      EchoHost
	log    *slog.Logger
	listen func(context.Context) (net.PacketConn, error)
	max    int

	mu       sync.Mutex
	sessions map[string]*echoSession // by Call-ID
}

// echoSession is one echo call: its dialog (RFC 3261 §12.1.1, UAS side)
// and its media.
type echoSession struct {
	uasDialog
	e      *EchoService
	answer []byte         // our SDP answer
	conn   net.PacketConn // the media socket (the endpoint closes it when it runs)
	media  *MediaEndpoint
	cancel context.CancelFunc
	maxDur time.Duration // echoMaxDuration, or an announcement's length

	ended   chan struct{} // we hang up
	endOnce sync.Once
}

// NewEchoService prepares the echo test; the host hands it requests
// (Handle) while it serves.
func NewEchoService(cfg EchoConfig) (*EchoService, error) {
	if cfg.Host == nil || cfg.Listen == nil {
		return nil, errors.New("echo test: Host and Listen are required")
	}
	if cfg.Max <= 0 {
		cfg.Max = DefaultMaxEchoSessions
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &EchoService{h: cfg.Host, log: log, listen: cfg.Listen, max: cfg.Max, sessions: make(map[string]*echoSession)}, nil
}

// Sessions returns how many echo test calls are up.
func (e *EchoService) Sessions() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.sessions)
}

// isEchoTarget reports whether the Request-URI names the echo test in
// the mesh domain (or at this node), with no Route other than our own.
func (e *EchoService) isEchoTarget(req *sip.Request) bool {
	ru := &req.Recipient
	if ru.User != EchoExtension && !strings.EqualFold(ru.User, "echo") {
		return false
	}
	if !e.h.OurHost(ru.Host) {
		return false
	}
	for _, h := range req.GetHeaders("Route") {
		rt, ok := h.(*sip.RouteHeader)
		if !ok || !e.h.OurRoute(&rt.Address) {
			return false
		}
	}
	return true
}

// Handle takes the requests of the echo test: a new INVITE to it that
// came in on the LAN socket (fromLAN), and the in-dialog requests of its
// sessions. It reports whether it took req; the host handles the others.
// The host passes only requests a response can be addressed to (a Via
// with a transport and host).
func (e *EchoService) Handle(req *sip.Request, tx sip.ServerTransaction, fromLAN bool, src netip.AddrPort) bool {
	cid := req.CallID()
	to := req.To()
	if cid == nil || to == nil {
		return false
	}
	if toTag, _ := to.Params.Get("tag"); toTag != "" {
		e.mu.Lock()
		sess := e.sessions[cid.Value()]
		e.mu.Unlock()
		if sess == nil || sess.localTag != toTag {
			return false
		}
		e.inDialog(sess, req, tx, src)
		return true
	}
	if req.Method != sip.INVITE || !fromLAN || !e.isEchoTarget(req) {
		return false
	}
	e.invite(req, tx, src, 0, echoMaxDuration)
	return true
}

func (e *EchoService) reply(req *sip.Request, tx sip.ServerTransaction, src netip.AddrPort, res *sip.Response) {
	featureReply(e.log, req, tx, src, res)
}

func (e *EchoService) replyCode(req *sip.Request, tx sip.ServerTransaction, src netip.AddrPort, code int, reason string) {
	e.reply(req, tx, src, e.h.Respond(req, code, reason))
}

// invite answers a new call to the echo test and, once the caller ACKs
// our 2xx, leaves the session running on its own goroutine.
func (e *EchoService) invite(req *sip.Request, tx sip.ServerTransaction, src netip.AddrPort, tone float64, dur time.Duration) {
	if code, reason := e.h.Check(req); code != 0 {
		e.replyCode(req, tx, src, code, reason)
		return
	}
	if req.Contact() == nil {
		e.replyCode(req, tx, src, 400, "Bad Request (INVITE without Contact)") // §8.1.1.8
		return
	}
	idx, pt, err := echoStream(req.Body())
	if err != nil {
		// §13.3.1.3 and RFC 3264 §6: an offer we cannot take.
		e.replyCode(req, tx, src, 488, "Not Acceptable Here ("+sipnet.SanitizeReason(err.Error())+")")
		return
	}
	cid := req.CallID().Value()
	e.mu.Lock()
	_, dup := e.sessions[cid]
	full := len(e.sessions) >= e.max
	if !dup && !full {
		e.sessions[cid] = nil // reserved while the media socket opens
	}
	e.mu.Unlock()
	switch {
	case dup:
		e.replyCode(req, tx, src, 482, "Loop Detected") // a merged request (§8.2.2.2)
		return
	case full:
		e.replyCode(req, tx, src, 486, "Busy Here (echo test in use)")
		return
	}
	sess, res, err := e.newSession(req, src, idx, pt, tone)
	if err != nil {
		e.mu.Lock()
		delete(e.sessions, cid)
		e.mu.Unlock()
		e.log.Warn("echo test: cannot answer", "call_id", cid, "err", err)
		e.replyCode(req, tx, src, 503, "Service Unavailable (echo test)")
		return
	}
	ctx, cancel := context.WithCancel(e.h.Context())
	sess.cancel, sess.maxDur = cancel, dur
	e.mu.Lock()
	e.sessions[cid] = sess
	e.mu.Unlock()
	if !e.h.Go(func() { e.run(ctx, sess) }) {
		cancel()
		sess.conn.Close()
		e.forget(sess)
		e.replyCode(req, tx, src, 503, "Service Unavailable (shutting down)")
		return
	}
	e.log.Info("echo test answered", "call_id", cid, "caller", req.From().Address.String(), "media", sess.media.Local())
	if !e.answer(ctx, req, tx, src, res, sess) {
		e.log.Info("echo test: no ACK for our 2xx", "call_id", cid)
		sess.end()
	}
}

// newSession opens the session's media and builds the 2xx with our SDP
// answer, our Contact and the Record-Route of the INVITE (§12.1.1).
func (e *EchoService) newSession(req *sip.Request, src netip.AddrPort, idx int, pt uint8, tone float64) (*echoSession, *sip.Response, error) {
	d, _ := sipalg.Parse(req.Body()) // echoStream parsed it already
	st := d.Streams[idx]
	conn, err := e.listen(e.h.Context())
	if err != nil {
		return nil, nil, fmt.Errorf("media socket: %w", err)
	}
	remote := st.RTP()
	if st.Hold() || !remote.Addr().IsValid() {
		remote = netip.AddrPort{} // echo to wherever the frames come from
	}
	media, err := NewMediaEndpoint(MediaConfig{Conn: conn, Remote: remote, PayloadType: pt, Echo: tone == 0, ToneHz: tone})
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	res := e.h.Respond(req, 200, "OK")
	sess := &echoSession{uasDialog: newUASDialog(req, res, src), e: e, conn: conn, media: media, ended: make(chan struct{})}
	sess.answer = echoAnswer(d, idx, pt, e.h.LANAddr().Addr(), media.Local().Port(), "sipmesh echo test")
	for _, h := range req.GetHeaders("Record-Route") {
		res.AppendHeader(h)
	}
	e.dialogHeaders(req, res, sess, true)
	return sess, res, nil
}

// dialogHeaders adds our Contact (the node's LAN address, where the
// caller sends its in-dialog requests) and, if sdp, the answer.
func (e *EchoService) dialogHeaders(req *sip.Request, res *sip.Response, sess *echoSession, sdp bool) {
	lan := e.h.LANAddr()
	u := sip.Uri{Scheme: "sip", User: EchoExtension, Host: sipnet.URIHost(lan.Addr()), Port: int(lan.Port())}
	if strings.EqualFold(req.Transport(), "TCP") {
		u.UriParams = sip.HeaderParams{{K: "transport", V: "tcp"}}
	}
	res.AppendHeader(&sip.ContactHeader{Address: u})
	res.AppendHeader(sip.NewHeader("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO"))
	if sdp {
		ct := sip.ContentTypeHeader("application/sdp")
		res.AppendHeader(&ct)
		res.SetBody(sess.answer)
	}
}

// answer sends the 2xx and waits for its ACK (uasDialog.await2xxAck).
func (e *EchoService) answer(ctx context.Context, req *sip.Request, tx sip.ServerTransaction, src netip.AddrPort, res *sip.Response, sess *echoSession) bool {
	e.reply(req, tx, src, res)
	return sess.await2xxAck(ctx, nil, func() { e.reply(req, tx, src, res) })
}

// inDialog answers a request inside an echo session's dialog.
func (e *EchoService) inDialog(sess *echoSession, req *sip.Request, tx sip.ServerTransaction, src netip.AddrPort) {
	sess.uasDialog.inDialog(req, func(code int, reason string) { e.replyCode(req, tx, src, code, reason) },
		sess.media.SetRemote, func() {
			res := e.h.Respond(req, 200, "OK")
			e.dialogHeaders(req, res, sess, true)
			e.reply(req, tx, src, res)
		})
}

// run is a session's life: media until the caller's BYE, the service
// stopping, or the session outliving its bounds, which ends it with our BYE.
func (e *EchoService) run(ctx context.Context, sess *echoSession) {
	defer e.forget(sess)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer sess.cancel() // stops the media first
	wg.Go(func() {
		if err := sess.media.Run(ctx); err != nil {
			e.log.Warn("echo test media", "call_id", sess.callID, "err", err)
		}
	})
	check := time.NewTicker(EchoIdle / 3)
	defer check.Stop()
	maxT := time.NewTimer(sess.maxDur)
	defer maxT.Stop()
	var lastRx uint64
	lastAt := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sess.bye:
			return
		case <-sess.ended:
			e.sendBye(ctx, sess)
			return
		case <-maxT.C:
			e.log.Info("echo test: session over, hanging up", "call_id", sess.callID)
			e.sendBye(ctx, sess)
			return
		case now := <-check.C:
			if rx := sess.media.Stats().Received; rx != lastRx {
				lastRx, lastAt = rx, now
			} else if now.Sub(lastAt) >= EchoIdle {
				e.log.Info("echo test: no audio, hanging up", "call_id", sess.callID)
				e.sendBye(ctx, sess)
				return
			}
		}
	}
}

// Announce answers a LAN phone's INVITE the way the echo test does, but
// plays a tone at hz for dur and hangs up with our BYE: the confirmation
// of a feature code (package proxy: *72, *73). It takes the request
// whatever its Request-URI; the host decides it is one.
func (e *EchoService) Announce(req *sip.Request, tx sip.ServerTransaction, src netip.AddrPort, hz float64, dur time.Duration) {
	e.invite(req, tx, src, hz, dur)
}

// end asks the session to end with a BYE of ours.
func (sess *echoSession) end() { sess.endOnce.Do(func() { close(sess.ended) }) }

// sendBye ends the dialog from our side (RFC 3261 §15.1.1): an in-dialog
// request to the caller's flow, which is on our LAN (the echo test only
// answers phones there).
func (e *EchoService) sendBye(ctx context.Context, sess *echoSession) {
	tx, err := e.h.Request(ctx, sess.byeRequest(e.h.LANAddr()))
	if err != nil {
		e.log.Info("echo test: BYE not sent", "call_id", sess.callID, "err", err)
		return
	}
	awaitFinal(ctx, tx)
}

// forget removes a session from the table.
func (e *EchoService) forget(sess *echoSession) {
	e.mu.Lock()
	if e.sessions[sess.callID] == sess {
		delete(e.sessions, sess.callID)
	}
	e.mu.Unlock()
}

// echoStream picks the audio stream of an offer that the echo endpoint
// can take: RTP/AVP with PCMU or PCMA (RFC 3551 payload types 0 and 8).
// It returns the stream's index among the offer's m= lines.
func echoStream(body []byte) (int, uint8, error) {
	if len(body) == 0 {
		return 0, 0, errors.New("no SDP offer")
	}
	d, err := sipalg.Parse(body)
	if err != nil {
		return 0, 0, errors.New("bad SDP")
	}
	for i, st := range d.Streams {
		if st.Media != "audio" || st.Rejected() || st.Proto != "RTP/AVP" {
			continue
		}
		for _, f := range st.Formats {
			switch f {
			case "0":
				return i, PayloadPCMU, nil
			case "8":
				return i, PayloadPCMA, nil
			}
		}
	}
	return 0, 0, errors.New("no G.711 audio stream")
}

// echoAnswer is the SDP answer (RFC 3264 §6): one m= line per offered
// one, the chosen audio stream with the one codec at our address, every
// other stream rejected with port 0.
func echoAnswer(offer *sipalg.SDP, idx int, pt uint8, addr netip.Addr, port uint16, name string) []byte {
	codec := "PCMU/8000"
	if pt == PayloadPCMA {
		codec = "PCMA/8000"
	}
	fam := "IP4"
	if addr.Is6() {
		fam = "IP6"
	}
	b := fmt.Appendf(nil, "v=0\r\no=sipmesh %d 1 IN %s %s\r\ns=%s\r\nc=IN %s %s\r\nt=0 0\r\n",
		time.Now().UnixNano()&0x7fffffff, fam, addr, name, fam, addr)
	for i, st := range offer.Streams {
		if i != idx {
			f := "0"
			if len(st.Formats) > 0 {
				f = st.Formats[0]
			}
			b = fmt.Appendf(b, "m=%s 0 %s %s\r\n", st.Media, st.Proto, f)
			continue
		}
		b = fmt.Appendf(b, "m=audio %d RTP/AVP %d\r\na=rtpmap:%d %s\r\na=ptime:20\r\na=sendrecv\r\n", port, pt, pt, codec)
	}
	return b
}
