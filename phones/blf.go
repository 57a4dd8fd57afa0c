package phones

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/sipmesh/sipmesh/sipnet"
)

// The busy lamp field: the dialog event package (RFC 4235) over
// SUBSCRIBE/NOTIFY (RFC 6665), so that a desk phone's BLF key for 202
// lights while 202 is in a call, wherever 202 and the watcher are.
//
// Who notifies. A phone's calls all pass through the node it registered
// with (its outbound proxy), so that node knows the phone's dialogs: the
// SIP service reports them (BLFService.SetState: early on a provisional
// answer, confirmed on the 2xx, terminated on the BYE or a failure). That
// node is the notifier for the extension: a SUBSCRIBE for 202 from a
// watcher on another node is routed by the watcher's node to 202's node
// (package proxy), with Record-Route as for any dialog-creating request,
// so the NOTIFYs go back through the watcher's node to its LAN.
//
// A subscription (RFC 6665 §4.2.1) gets 200 with its Expires, then at once
// a NOTIFY with the full state (§4.2.1.2), and another on every change of
// the extension's dialogs; each NOTIFY's dialog-info document has a
// version one above the previous one (RFC 4235 §4.1). The subscriber
// refreshes it with a SUBSCRIBE in its dialog; it ends with Expires 0, a
// 481 to a NOTIFY, or at its expiry (§4.1.2: a final NOTIFY with
// Subscription-State terminated;reason=timeout). Durations are clamped to
// blfMaxExpires and refused under blfMinExpires (423, Min-Expires). Bounded:
// BLFConfig.Max subscriptions, MaxPerSource from one address (a LAN phone
// or a watcher's node), MaxPerWatcher of one watcher from there (503 with
// Retry-After beyond), and blfMaxDialogs dialogs kept per extension.

// BLF defaults.
const (
	DefaultBLFSubscriptions = 256
	DefaultBLFPerSource     = 128  // half: another node still gets a share
	DefaultBLFPerWatcher    = 16   // BLF keys of one phone
	blfDefaultExpires       = 3600 // RFC 4235 §3.2
	blfMaxExpires           = 3600
	blfMinExpires           = 60
	blfMaxDialogs           = 8    // per extension
	blfMaxExtensions        = 4096 // extensions with dialogs kept
	// blfLinger keeps a terminated dialog in the documents for a while, so
	// every watcher's next NOTIFY shows it ended.
	blfLinger = 5 * time.Second
	// DialogInfoType is the dialog package's body type (RFC 4235 §4.1).
	DialogInfoType = "application/dialog-info+xml"
)

// Dialog states of RFC 4235 §3.7.1 that the service reports.
const (
	DialogEarly      = "early"
	DialogConfirmed  = "confirmed"
	DialogTerminated = "terminated"
)

// BLFConfig configures the busy lamp field.
type BLFConfig struct {
	Host ConfHost // required
	// Local reports whether ext is registered through this node, which
	// then notifies for it (required).
	Local        func(ctx context.Context, ext string) bool
	Max          int // subscriptions (default DefaultBLFSubscriptions)
	MaxPerSource int // from one source address: a LAN phone or a node (default DefaultBLFPerSource)
	// MaxPerWatcher bounds those of one watcher (its From URI) from one
	// source (default DefaultBLFPerWatcher).
	MaxPerWatcher int
	Logger        *slog.Logger
}

// BLFService keeps a node's dialog subscriptions and its phones' dialogs.
type BLFService struct {
	cfg BLFConfig
	h   ConfHost
	log *slog.Logger

	mu      sync.Mutex
	subs    map[string]*blfSub            // by Call-ID
	dialogs map[string]map[string]*dlgRec // by extension, then Call-ID
}

// dlgRec is one dialog of a local extension.
type dlgRec struct {
	initiator bool
	state     string
	ended     time.Time
}

// blfSub is one subscription: its dialog (we are the UAS) and notifier.
type blfSub struct {
	uasDialog
	ext     string
	watcher string // its From URI
	mesh    bool
	expires time.Time // guarded by BLFService.mu
	version uint32    // guarded by BLFService.mu
	kick    chan struct{}
	stop    chan string // the reason to end with
}

// NewBLFService prepares the busy lamp field.
func NewBLFService(cfg BLFConfig) (*BLFService, error) {
	if cfg.Host == nil || cfg.Local == nil {
		return nil, errors.New("busy lamp field: Host and Local are required")
	}
	if cfg.Max <= 0 {
		cfg.Max = DefaultBLFSubscriptions
	}
	if cfg.MaxPerSource <= 0 {
		cfg.MaxPerSource = DefaultBLFPerSource
	}
	if cfg.MaxPerWatcher <= 0 {
		cfg.MaxPerWatcher = DefaultBLFPerWatcher
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &BLFService{cfg: cfg, h: cfg.Host, log: log, subs: make(map[string]*blfSub),
		dialogs: make(map[string]map[string]*dlgRec)}, nil
}

// Subscriptions returns how many subscriptions are live.
func (b *BLFService) Subscriptions() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.subs)
}

// SetState records that the dialog callID of local extension ext is in
// state (DialogEarly, DialogConfirmed, DialogTerminated); initiator: ext
// placed the call. The extension's watchers are notified.
func (b *BLFService) SetState(ext, callID string, initiator bool, state string) {
	now := time.Now()
	b.mu.Lock()
	ds := b.dialogs[ext]
	d := ds[callID]
	switch {
	case d == nil && state == DialogTerminated:
		b.mu.Unlock()
		return // never seen: nothing to end
	case d == nil:
		if ds == nil {
			if len(b.dialogs) >= blfMaxExtensions {
				b.mu.Unlock()
				return
			}
			ds = make(map[string]*dlgRec)
			b.dialogs[ext] = ds
		}
		prune(ds, now)
		if len(ds) >= blfMaxDialogs {
			b.mu.Unlock()
			return
		}
		d = &dlgRec{initiator: initiator}
		ds[callID] = d
	case d.state == DialogTerminated || d.state == state || (d.state == DialogConfirmed && state == DialogEarly):
		b.mu.Unlock()
		return // states only move forward (RFC 4235 §3.7.1)
	}
	d.state = state
	if state == DialogTerminated {
		d.ended = now
	}
	var kick []*blfSub
	for _, s := range b.subs {
		if s.ext == ext {
			kick = append(kick, s)
		}
	}
	b.mu.Unlock()
	for _, s := range kick {
		s.notifyLater()
	}
}

// EndCall marks every dialog with callID terminated (a BYE went by).
func (b *BLFService) EndCall(callID string) {
	b.mu.Lock()
	var exts []string
	for ext, ds := range b.dialogs {
		if d := ds[callID]; d != nil && d.state != DialogTerminated {
			exts = append(exts, ext)
		}
	}
	b.mu.Unlock()
	for _, ext := range exts {
		b.SetState(ext, callID, false, DialogTerminated)
	}
}

// prune drops dialogs that ended more than blfLinger ago.
func prune(ds map[string]*dlgRec, now time.Time) {
	for id, d := range ds {
		if d.state == DialogTerminated && now.Sub(d.ended) > blfLinger {
			delete(ds, id)
		}
	}
}

func (s *blfSub) notifyLater() {
	select {
	case s.kick <- struct{}{}:
	default: // one is pending: it will carry the newest state
	}
}

// Handle takes a SUBSCRIBE for the dialog package: a new one for an
// extension registered here, or one in a subscription's dialog. It reports
// whether it took req.
func (b *BLFService) Handle(req *sip.Request, tx sip.ServerTransaction, fromMesh bool, src netip.AddrPort) bool {
	if req.Method != sip.SUBSCRIBE || !IsDialogEvent(req) {
		return false
	}
	cid, to := req.CallID(), req.To()
	if cid == nil || to == nil || req.From() == nil {
		return false
	}
	if toTag, _ := to.Params.Get("tag"); toTag != "" {
		b.mu.Lock()
		s := b.subs[cid.Value()]
		b.mu.Unlock()
		if s == nil || s.localTag != toTag {
			return false
		}
		b.refresh(s, req, tx, src)
		return true
	}
	ext := req.Recipient.User
	if ext == "" || !b.h.OurHost(req.Recipient.Host) {
		return false
	}
	for _, h := range req.GetHeaders("Route") {
		if rt, ok := h.(*sip.RouteHeader); !ok || !b.h.OurRoute(&rt.Address) {
			return false
		}
	}
	ctx, cancel := context.WithTimeout(b.h.Context(), storeTimeout)
	local := b.cfg.Local(ctx, ext)
	cancel()
	if !local {
		return false // the host routes it to the extension's node
	}
	b.subscribe(ext, req, tx, fromMesh, src)
	return true
}

// IsDialogEvent reports whether req's Event header names the dialog
// package (RFC 6665 §8.2.1: the token before any parameter).
func IsDialogEvent(req *sip.Request) bool {
	h := req.GetHeader("Event")
	if h == nil {
		return false
	}
	ev, _, _ := strings.Cut(h.Value(), ";")
	return strings.EqualFold(strings.TrimSpace(ev), "dialog")
}

func (b *BLFService) replyCode(req *sip.Request, tx sip.ServerTransaction, src netip.AddrPort, code int, reason string) {
	featureReply(b.log, req, tx, src, b.h.Respond(req, code, reason))
}

// expiresOf is the duration req asks for, clamped (RFC 6665 §4.2.1.1);
// ok is false when it is under the minimum and not 0 (423).
func expiresOf(req *sip.Request) (sec int, ok bool) {
	sec = blfDefaultExpires
	if h := req.GetHeader("Expires"); h != nil {
		n, err := strconv.Atoi(strings.TrimSpace(h.Value()))
		if err != nil || n < 0 {
			n = blfDefaultExpires
		}
		sec = n
	}
	if sec > 0 && sec < blfMinExpires {
		return sec, false
	}
	return min(sec, blfMaxExpires), true
}

// expires is expiresOf(req), answering 423 with Min-Expires when it is
// too brief.
func (b *BLFService) expires(req *sip.Request, tx sip.ServerTransaction, src netip.AddrPort) (int, bool) {
	sec, ok := expiresOf(req)
	if !ok {
		res := b.h.Respond(req, 423, "Interval Too Brief")
		res.AppendHeader(sip.NewHeader("Min-Expires", strconv.Itoa(blfMinExpires)))
		featureReply(b.log, req, tx, src, res)
	}
	return sec, ok
}

// acceptsDialogInfo reports whether req's Accept (if any) takes our body
// (RFC 6665 §4.2.1: 406 otherwise).
func acceptsDialogInfo(req *sip.Request) bool {
	hs := req.GetHeaders("Accept")
	if len(hs) == 0 {
		return true
	}
	for _, h := range hs {
		for _, t := range strings.Split(h.Value(), ",") {
			t, _, _ = strings.Cut(t, ";")
			switch strings.ToLower(strings.TrimSpace(t)) {
			case DialogInfoType, "application/*", "*/*":
				return true
			}
		}
	}
	return false
}

// subscribe answers a new subscription and starts its notifier.
func (b *BLFService) subscribe(ext string, req *sip.Request, tx sip.ServerTransaction, mesh bool, src netip.AddrPort) {
	if code, reason := b.h.Check(req); code != 0 {
		b.replyCode(req, tx, src, code, reason)
		return
	}
	if req.Contact() == nil {
		b.replyCode(req, tx, src, 400, "Bad Request (SUBSCRIBE without Contact)") // RFC 6665 §4.1.2.1
		return
	}
	if !acceptsDialogInfo(req) {
		b.replyCode(req, tx, src, 406, "Not Acceptable")
		return
	}
	sec, ok := b.expires(req, tx, src)
	if !ok {
		return
	}
	cid := req.CallID().Value()
	b.mu.Lock()
	_, dup := b.subs[cid]
	perSrc, perWatcher := 0, 0
	watcher := req.From().Address.String()
	for _, s := range b.subs {
		if s.src.Addr() == src.Addr() {
			perSrc++
			if s.watcher == watcher {
				perWatcher++
			}
		}
	}
	full := len(b.subs) >= b.cfg.Max || perSrc >= b.cfg.MaxPerSource || perWatcher >= b.cfg.MaxPerWatcher
	b.mu.Unlock()
	switch {
	case dup:
		b.replyCode(req, tx, src, 482, "Loop Detected")
		return
	case full:
		res := b.h.Respond(req, 503, "Service Unavailable (too many subscriptions)")
		res.AppendHeader(sip.NewHeader("Retry-After", "60"))
		featureReply(b.log, req, tx, src, res)
		return
	}
	res := b.h.Respond(req, 200, "OK")
	s := &blfSub{uasDialog: newUASDialog(req, res, src), ext: ext, mesh: mesh, watcher: watcher,
		kick: make(chan struct{}, 1), stop: make(chan string, 1), expires: time.Now().Add(time.Duration(sec) * time.Second)}
	for _, h := range req.GetHeaders("Record-Route") {
		res.AppendHeader(h)
	}
	b.contact(req, res, s)
	res.AppendHeader(sip.NewHeader("Expires", strconv.Itoa(sec)))
	b.mu.Lock()
	b.subs[cid] = s
	b.mu.Unlock()
	if !b.h.Go(func() { b.run(s) }) {
		b.forget(s)
		b.replyCode(req, tx, src, 503, "Service Unavailable (shutting down)")
		return
	}
	featureReply(b.log, req, tx, src, res)
	if sec == 0 {
		s.end("timeout") // a fetch (RFC 6665 §4.4.3): one NOTIFY, terminated
	}
	b.log.Info("busy lamp field: subscribed", "ext", ext, "watcher", req.From().Address.String(), "expires", sec)
}

// contact adds our Contact, on the socket the subscription came in on.
func (b *BLFService) contact(req *sip.Request, msg sip.Message, s *blfSub) {
	a := b.h.LANAddr()
	if s.mesh {
		a = b.h.MeshAddr()
	}
	u := sip.Uri{Scheme: "sip", User: s.ext, Host: sipnet.URIHost(a.Addr()), Port: int(a.Port())}
	if strings.EqualFold(req.Transport(), "TCP") {
		u.UriParams = sip.HeaderParams{{K: "transport", V: "tcp"}}
	}
	msg.AppendHeader(&sip.ContactHeader{Address: u})
}

// refresh answers a SUBSCRIBE in a subscription's dialog: a new duration,
// or 0 to end it (RFC 6665 §4.1.2.2, §4.1.2.3).
func (b *BLFService) refresh(s *blfSub, req *sip.Request, tx sip.ServerTransaction, src netip.AddrPort) {
	if !s.fromPeer(req) {
		b.replyCode(req, tx, src, 481, "Call/Transaction Does Not Exist")
		return
	}
	sec, ok := b.expires(req, tx, src)
	if !ok {
		return
	}
	b.mu.Lock()
	s.expires = time.Now().Add(time.Duration(sec) * time.Second)
	b.mu.Unlock()
	res := b.h.Respond(req, 200, "OK")
	b.contact(req, res, s)
	res.AppendHeader(sip.NewHeader("Expires", strconv.Itoa(sec)))
	featureReply(b.log, req, tx, src, res)
	if sec == 0 {
		s.end("timeout")
	} else {
		s.notifyLater() // §4.2.1.2: a refresh is answered with a NOTIFY too
	}
}

// end stops the subscription with a final NOTIFY giving reason.
func (s *blfSub) end(reason string) {
	select {
	case s.stop <- reason:
	default:
	}
}

// run is the subscription's notifier: the first NOTIFY at once, one per
// change, the final one at expiry or end.
func (b *BLFService) run(s *blfSub) {
	defer b.forget(s)
	ctx := b.h.Context()
	s.notifyLater()
	for {
		b.mu.Lock()
		left := time.Until(s.expires)
		b.mu.Unlock()
		t := time.NewTimer(max(left, 0))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case reason := <-s.stop:
			t.Stop()
			b.notify(ctx, s, reason)
			return
		case <-t.C:
			b.mu.Lock()
			expired := !time.Now().Before(s.expires)
			b.mu.Unlock()
			if expired {
				b.notify(ctx, s, "timeout") // RFC 6665 §4.2.2
				return
			}
		case <-s.kick:
			t.Stop()
			if !b.notify(ctx, s, "") {
				return
			}
		}
	}
}

// notify sends the extension's full state; ended names the reason of a
// final NOTIFY ("" while the subscription lasts). It reports false when
// the subscriber has gone (481, RFC 6665 §4.1.3).
func (b *BLFService) notify(ctx context.Context, s *blfSub, ended string) bool {
	b.mu.Lock()
	s.version++
	version := s.version
	left := int(max(time.Until(s.expires), 0) / time.Second)
	doc := b.documentLocked(s.ext, version)
	b.mu.Unlock()
	a := b.h.LANAddr()
	if s.mesh {
		a = b.h.MeshAddr()
	}
	req := s.request(sip.NOTIFY, a, s.cseq.Add(1))
	req.AppendHeader(sip.NewHeader("Event", "dialog"))
	state := "active;expires=" + strconv.Itoa(left)
	if ended != "" {
		state = "terminated;reason=" + ended
	}
	req.AppendHeader(sip.NewHeader("Subscription-State", state))
	b.contact(s.invite, req, s)
	ct := sip.ContentTypeHeader(DialogInfoType)
	req.AppendHeader(&ct)
	req.SetBody(doc)
	tx, err := b.h.RequestOn(ctx, req, s.mesh)
	if err != nil {
		b.log.Info("busy lamp field: NOTIFY not sent", "ext", s.ext, "err", err)
		return true
	}
	defer tx.Terminate()
	for {
		select {
		case res := <-tx.Responses():
			if res.StatusCode < 200 {
				continue
			}
			if res.StatusCode == 481 {
				return false
			}
			return true
		case <-tx.Done():
			return true
		case <-ctx.Done():
			return false
		}
	}
}

// documentLocked is ext's dialog-info document (RFC 4235 §4.1), full
// state.
func (b *BLFService) documentLocked(ext string, version uint32) []byte {
	ds := b.dialogs[ext]
	prune(ds, time.Now())
	entity := "sip:" + ext + "@mesh"
	doc := fmt.Appendf(nil, "<?xml version=\"1.0\"?>\n<dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"%d\" state=\"full\" entity=\"%s\">\n",
		version, xmlEscape(entity))
	ids := make([]string, 0, len(ds))
	for id := range ds {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		d := ds[id]
		dir := "recipient"
		if d.initiator {
			dir = "initiator"
		}
		doc = fmt.Appendf(doc, "  <dialog id=\"%s\" call-id=\"%s\" direction=\"%s\"><state>%s</state></dialog>\n",
			xmlEscape(id), xmlEscape(id), dir, d.state)
	}
	return append(doc, "</dialog-info>\n"...)
}

// xmlEscape escapes s for an XML attribute.
func xmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", "\"", "&quot;", "'", "&apos;").Replace(s)
}

// forget removes a subscription.
func (b *BLFService) forget(s *blfSub) {
	b.mu.Lock()
	if b.subs[s.callID] == s {
		delete(b.subs, s.callID)
	}
	b.mu.Unlock()
}
