package registrar

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/sipmesh/sipmesh/internal/ratelog"
	"github.com/sipmesh/sipmesh/sipnet"
	"github.com/sipmesh/sipmesh/ssr"
)

// The registrar of the "mesh" domain (RFC 3261 §10.3) on one node.
//
// It uses sipgo's parser and message types but not its transaction layer:
// sipgo starts a goroutine for every request and keeps every non-INVITE
// server transaction for Timer J (32 s, ~5 KB each), and it drops
// unparsable requests without an answer. Here the UDP and TCP loops
// (sipserver.go) rate-limit each source before parsing, run a fixed set of
// worker goroutines, answer malformed requests with 400 and a reason, and
// absorb retransmissions with a bounded cache of final responses (RFC 3261
// §17.2.2 behaviour for non-INVITE server transactions). Every structure
// a peer can grow is bounded.

// Registrar defaults.
const (
	DefaultMinExpires     = 60
	DefaultMaxExpires     = 3600
	DefaultDefaultExpires = 3600
	DefaultMaxContacts    = 10
	DefaultRate           = sipnet.DefaultSourceRate // requests per second per source address: a ceiling (sipnet.Guard's doc)
	DefaultBurst          = sipnet.DefaultSourceBurst
	DefaultRateSources    = 4096
	DefaultWorkers        = 16
	DefaultMaxTxCache     = 8192
	DefaultMaxTCPConns    = 256
	// txLifetime is Timer J for UDP: 64·T1 (RFC 3261 §17.2.2), how long a
	// final response is kept for retransmitted requests.
	txLifetime = 32 * time.Second
)

// RegistrarConfig configures a Registrar. Zero values take the defaults.
type RegistrarConfig struct {
	Node      ssr.NodeID    // this node: the writer of its binding records
	Locations LocationStore // required
	Accounts  Accounts      // required

	// Domains are accepted in the Request-URI and To of a REGISTER, besides
	// "mesh" and "sipserver.mesh"; Addrs are the node's own addresses, also
	// accepted (a phone configured with the node's IP as registrar). All of
	// them name the one domain "mesh": AORs are stored as sip:USER@mesh.
	Domains []string
	Addrs   []netip.Addr

	MinExpires, MaxExpires, DefaultExpires int // seconds
	MaxContacts                            int // per AOR
	NonceLifetime                          time.Duration

	// Rate and Burst are the per-source token bucket (requests/s); Rate < 0
	// disables the limit. RateSources bounds the bucket table.
	Rate        float64
	Burst       int
	RateSources int
	Workers     int // goroutines reading each UDP socket
	MaxTxCache  int // final responses kept for retransmissions
	MaxTCPConns int

	// ViaPortReplies sends UDP answers to a request without rport to the
	// Via port at the source address (RFC 3261 §18.2.2 literally). The
	// default answers every request to its source address and port, as
	// with rport (RFC 3581): that is what reaches a phone behind NAT, and
	// the phones on a node's LAN send from their listening port anyway.
	ViaPortReplies bool

	// Algorithms are the digest algorithms a 401 offers, one
	// WWW-Authenticate each, in this order; default SHA-256 then MD5 (RFC
	// 8760 §2.4: order of preference). Credentials of either are accepted
	// whatever is offered. Legacy UAs need ["MD5"]: sipsak 0.9.8 reads
	// only the first challenge and knows only MD5, and baresip 1.0.0 with
	// libre 1.1.0 (Debian 12) fails on any non-MD5 challenge ("Register:
	// Function not implemented").
	Algorithms []string

	ServerName string           // Server header; default "sipmesh"
	Now        func() time.Time // default time.Now
	Logger     *slog.Logger

	// noAuth skips digest authentication: only for tests that feed
	// third-party messages (RFC 4475) and check binding semantics.
	noAuth bool
}

// RegistrarStats are counters since start.
type RegistrarStats struct {
	Received      uint64 `json:"received"`       // datagrams and stream messages read
	RateLimited   uint64 `json:"rate_limited"`   // dropped by the per-source limit
	Malformed     uint64 `json:"malformed"`      // answered 400 or dropped as unparsable
	Retransmitted uint64 `json:"retransmitted"`  // answered from the response cache
	Challenged    uint64 `json:"challenged"`     // 401 sent
	Forbidden     uint64 `json:"forbidden"`      // 403 sent
	LockedOut     uint64 `json:"locked_out"`     // 503 sent: failed authentications backing off
	Registered    uint64 `json:"registered"`     // successful REGISTERs (incl. fetches and removals)
	StoreErrors   uint64 `json:"store_errors"`   // location or account store failed
	TxCached      int    `json:"tx_cached"`      // responses in the cache now
	NoncesTracked int    `json:"nonces_tracked"` // nonces with a recorded nc
	RateSources   int    `json:"rate_sources"`   // source buckets now
}

// Registrar answers REGISTER for the mesh domain. Create it with
// NewRegistrar, then serve sockets with ServeUDP and ServeTCP (or feed
// parsed requests to HandleRequest from another SIP stack).
type Registrar struct {
	cfg     RegistrarConfig
	log     *slog.Logger
	domains map[string]bool
	nonces  *nonceMinter
	limiter *sipnet.RateLimiter
	txc     *txCache
	locks   [64]sync.Mutex // per-AOR stripes: one writer of a record at a time
	peerLog *slog.Logger   // peer-caused lines: rate-limited, truncated (ratelog)
	tagSeq  atomic.Uint64
	guard   *authGuard // back-off of failed authentications

	received, rateLimited, malformed, retransmitted atomic.Uint64
	challenged, forbidden, registered, storeErrors  atomic.Uint64
	lockedOutN                                      atomic.Uint64
}

// NewRegistrar checks cfg and returns a registrar.
func NewRegistrar(cfg RegistrarConfig) (*Registrar, error) {
	if cfg.Locations == nil || cfg.Accounts == nil {
		return nil, errors.New("registrar: Locations and Accounts are required")
	}
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&cfg.MinExpires, DefaultMinExpires)
	def(&cfg.MaxExpires, DefaultMaxExpires)
	def(&cfg.DefaultExpires, DefaultDefaultExpires)
	def(&cfg.MaxContacts, DefaultMaxContacts)
	def(&cfg.Burst, DefaultBurst)
	def(&cfg.RateSources, DefaultRateSources)
	def(&cfg.Workers, DefaultWorkers)
	def(&cfg.MaxTxCache, DefaultMaxTxCache)
	def(&cfg.MaxTCPConns, DefaultMaxTCPConns)
	if cfg.Rate == 0 {
		cfg.Rate = DefaultRate
	}
	if cfg.NonceLifetime == 0 {
		cfg.NonceLifetime = DefaultNonceLifetime
	}
	if cfg.MinExpires < 0 || cfg.MaxExpires < cfg.MinExpires || cfg.DefaultExpires < cfg.MinExpires || cfg.DefaultExpires > cfg.MaxExpires {
		return nil, fmt.Errorf("registrar: expires limits: want 0 <= min (%d) <= default (%d) <= max (%d)", cfg.MinExpires, cfg.DefaultExpires, cfg.MaxExpires)
	}
	if len(cfg.Algorithms) == 0 {
		cfg.Algorithms = []string{"SHA-256", "MD5"}
	}
	for _, a := range cfg.Algorithms {
		if a != "SHA-256" && a != "MD5" {
			return nil, fmt.Errorf("registrar: digest algorithm %q: want SHA-256 or MD5", a)
		}
	}
	if cfg.ServerName == "" {
		cfg.ServerName = "sipmesh"
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Registrar{
		cfg:     cfg,
		log:     log.With("component", "gateway.registrar"),
		domains: map[string]bool{"mesh": true, "sipserver.mesh": true},
		nonces:  newNonceMinter(cfg.NonceLifetime),
		txc:     newTxCache(cfg.MaxTxCache),
		guard:   newAuthGuard(authGuardEntries),
	}
	r.peerLog = slog.New(ratelog.New(r.log.Handler(), ratelog.Options{Now: cfg.Now}))
	var seed [8]byte
	rand.Read(seed[:])
	r.tagSeq.Store(binary.LittleEndian.Uint64(seed[:]))
	if cfg.Rate > 0 {
		r.limiter = sipnet.NewRateLimiter(cfg.Rate, cfg.Burst, cfg.RateSources)
	}
	for _, d := range cfg.Domains {
		r.domains[canonHost(d)] = true
	}
	for _, a := range cfg.Addrs {
		r.domains[a.Unmap().WithZone("").String()] = true
	}
	return r, nil
}

// Sweep drops the nonces and cached answers expired at now. Both tables
// otherwise expire only as new requests come, so the node that owns the
// registrar calls it now and then: what a burst of load left is freed
// when the load ends, not at the next REGISTER.
func (r *Registrar) Sweep(now time.Time) {
	r.nonces.sweep(now)
	r.txc.sweep(now)
}

// Stats returns the counters.
func (r *Registrar) Stats() RegistrarStats {
	s := RegistrarStats{
		Received: r.received.Load(), RateLimited: r.rateLimited.Load(),
		Malformed: r.malformed.Load(), Retransmitted: r.retransmitted.Load(), Challenged: r.challenged.Load(),
		Forbidden: r.forbidden.Load(), LockedOut: r.lockedOutN.Load(), Registered: r.registered.Load(), StoreErrors: r.storeErrors.Load(),
		TxCached: r.txc.len(), NoncesTracked: r.nonces.tracked(),
	}
	if r.limiter != nil {
		s.RateSources = r.limiter.Size()
	}
	return s
}

// canonHost lower-cases a host and writes IP literals (with or without
// brackets) in netip's canonical form.
func canonHost(h string) string {
	h = strings.ToLower(strings.TrimSuffix(h, "."))
	if a, err := netip.ParseAddr(strings.Trim(h, "[]")); err == nil {
		return a.Unmap().WithZone("").String()
	}
	return h
}

// ourDomain reports whether a URI host names the mesh domain.
func (r *Registrar) ourDomain(host string) bool { return r.domains[canonHost(host)] }

// AOR returns the canonical address-of-record of user: sip:USER@mesh.
func AOR(user string) string { return "sip:" + user + "@" + Realm }

// HandleRequest answers one parsed request that arrived from src over
// transport ("udp" or "tcp"). It returns nil when nothing is to be sent
// (ACK). It is safe for concurrent use; callers that serve their own
// sockets must apply their own retransmission handling.
func (r *Registrar) HandleRequest(ctx context.Context, req *sip.Request, src netip.AddrPort, transport string) *sip.Response {
	return r.handle(ctx, req, src, transport, false)
}

// handle is HandleRequest; rawChecked says the caller already verified
// that the raw header lines hold no bare CR or LF (see bareCRLF), which
// saves serialising the echoed headers again.
func (r *Registrar) handle(ctx context.Context, req *sip.Request, src netip.AddrPort, transport string, rawChecked bool) *sip.Response {
	if req.IsAck() {
		return nil
	}
	req.SetSource(src.String())
	if !answerable(req) || !rawChecked && !echoSafe(req) {
		// No response can be addressed without a usable Via (RFC 3261
		// §18.2.2), nor echo unsafe headers: drop.
		r.malformed.Add(1)
		r.logBad(src, "request without a usable Via")
		return nil
	}
	var rh reqHeaders
	if code, reason := checkRequest(req, &rh); code != 0 {
		r.malformed.Add(1)
		r.logBad(src, reason)
		return r.response(req, code, reason)
	}
	switch strings.ToLower(req.Recipient.Scheme) {
	case "sip", "sips", "tel":
	default:
		// RFC 3261 §8.2.2.1 (RFC 4475 §3.3.2, §3.3.3).
		return r.response(req, 416, "Unsupported URI Scheme")
	}
	if tags := unsupportedRequire(rh.require); tags != "" {
		// RFC 3261 §8.2.2.3: we implement no extension a client may require
		// except outbound (RFC 5626), which the registrar honours.
		res := r.response(req, 420, "Bad Extension")
		res.AppendHeader(sip.NewHeader("Unsupported", tags))
		return res
	}
	switch req.Method {
	case sip.REGISTER:
		return r.register(ctx, req, &rh, src, transport)
	case sip.OPTIONS:
		res := r.response(req, 200, "OK")
		res.AppendHeader(sip.NewHeader("Allow", "REGISTER, OPTIONS"))
		res.AppendHeader(sip.NewHeader("Accept", "application/sdp"))
		return res
	case sip.INVITE, sip.BYE, sip.CANCEL, sip.SUBSCRIBE, sip.NOTIFY, sip.MESSAGE, sip.INFO,
		sip.PRACK, sip.UPDATE, sip.REFER, sip.PUBLISH:
		res := r.response(req, 405, "Method Not Allowed")
		res.AppendHeader(sip.NewHeader("Allow", "REGISTER, OPTIONS"))
		return res
	default:
		// RFC 3261 §8.2.1: an unknown method gets 501 (RFC 4475 §3.1.1.2).
		return r.response(req, 501, "Not Implemented")
	}
}

// answerable reports whether a response to req can be addressed: a Via
// that names a SIP transport and host.
func answerable(req *sip.Request) bool {
	v := req.Via()
	return v != nil && v.ProtocolName == "SIP" && v.ProtocolVersion != "" && v.Transport != "" && v.Host != ""
}

// echoSafe reports whether the headers a response copies from the
// request (RFC 3261 §8.2.6.2) serialize without a CR or LF of their own:
// sipgo's parser can leave a bare LF inside a value, and echoing it would
// break the response's framing (header injection).
func echoSafe(req *sip.Request) bool {
	// One pass over the headers, each serialized into a scanner instead of
	// a string per header: this runs on every request.
	var sc crlfScanner
	for _, h := range req.Headers() {
		switch sip.HeaderToLower(h.Name()) {
		case "via", "from", "to", "call-id", "cseq":
			h.StringWrite(&sc)
			if sc.found {
				return false
			}
		}
	}
	return true
}

// crlfScanner is an io.StringWriter that only notes whether a CR or LF
// was written.
type crlfScanner struct{ found bool }

func (c *crlfScanner) WriteString(s string) (int, error) {
	if strings.ContainsAny(s, "\r\n") {
		c.found = true
	}
	return len(s), nil
}

// reqHeaders are the headers of a request the registrar reads, collected
// in one pass by checkRequest.
type reqHeaders struct {
	contacts           []sip.Header
	expires            sip.Header
	auth               []string
	require, supported []string
	userAgent          string
}

// checkRequest validates what RFC 3261 §8.2 and §16.3 require of any
// request, after sipgo parsed it. It returns 0 when the request is fine.
func checkRequest(req *sip.Request, rh *reqHeaders) (int, string) {
	// One pass over the headers counts the ones RFC 3261 §8.1.1 requires
	// and those that may appear once (§7.3.1, RFC 4475 §3.3.8), and
	// collects the ones the registrar reads (sipgo's GetHeader scans all
	// headers for each name).
	names := [...]string{"Via", "From", "To", "Call-ID", "CSeq", "Max-Forwards", "Content-Length", "Expires"}
	var count [len(names)]int
	for _, h := range req.Headers() {
		n := h.Name()
		for i, want := range names {
			if len(n) == len(want) && strings.EqualFold(n, want) {
				count[i]++
				break
			}
		}
		switch {
		case strings.EqualFold(n, "Contact"):
			rh.contacts = append(rh.contacts, h)
		case strings.EqualFold(n, "Expires"):
			rh.expires = h
		case strings.EqualFold(n, "Authorization"):
			rh.auth = append(rh.auth, h.Value())
		case strings.EqualFold(n, "Require"):
			rh.require = append(rh.require, h.Value())
		case strings.EqualFold(n, "Supported"), n == "k":
			rh.supported = append(rh.supported, h.Value())
		case strings.EqualFold(n, "User-Agent"):
			rh.userAgent = h.Value()
		}
	}
	for i := range 5 {
		if count[i] == 0 {
			return 400, "Bad Request (missing " + names[i] + " header)"
		}
	}
	for i := 1; i < len(names); i++ {
		if count[i] > 1 {
			return 400, "Bad Request (more than one " + names[i] + " header)"
		}
	}
	if req.SipVersion != "SIP/2.0" {
		return 505, "Version Not Supported"
	}
	// sipgo upper-cases the request method but not the CSeq method.
	if cseq := req.CSeq(); !strings.EqualFold(string(cseq.MethodName), string(req.Method)) {
		return 400, "Bad Request (CSeq method does not match request method)"
	}
	if req.CallID() == nil || *req.CallID() == "" {
		return 400, "Bad Request (empty Call-ID)"
	}
	if v := req.Via(); v == nil || v.Host == "" {
		return 400, "Bad Request (malformed Via header)"
	}
	return 0, ""
}

func unsupportedRequire(require []string) string {
	var bad []string
	for _, h := range require {
		for _, tag := range strings.Split(h, ",") {
			tag = strings.TrimSpace(tag)
			if tag != "" && !strings.EqualFold(tag, "outbound") {
				bad = append(bad, tag)
			}
		}
	}
	return strings.Join(bad, ", ")
}

// response builds a reply to req (RFC 3261 §8.2.6.2: Via, From, To with
// our tag, Call-ID, CSeq copied) with the Via fixes of RFC 3261 §18.2.1
// (received) and RFC 3581 (rport). It does what sipgo's
// NewResponseFromRequest does without its per-response UUID (a
// crypto/rand read) and with received also when rport is absent.
func (r *Registrar) response(req *sip.Request, code int, reason string) *sip.Response {
	res := sip.NewResponse(code, reason)
	res.SipVersion = "SIP/2.0" // never echo a request's "SIP/7.0"
	src, srcErr := netip.ParseAddrPort(req.Source())
	top := true
	for _, h := range req.Headers() {
		via, ok := h.(*sip.ViaHeader)
		if !ok {
			continue
		}
		if top && srcErr == nil {
			// The response must not alias the request's Via: clone it.
			v := via.Clone()
			if rp, ok := v.Params.Get("rport"); ok && rp == "" {
				v.Params.Remove("rport")
				v.Params.Add("rport", strconv.Itoa(int(src.Port())))
				v.Params.Remove("received")
				v.Params.Add("received", src.Addr().String())
			} else if canonHost(v.Host) != src.Addr().Unmap().String() && !v.Params.Has("received") {
				v.Params.Add("received", src.Addr().String())
			}
			via = v
		}
		top = false
		res.AppendHeader(via)
	}
	if h := req.From(); h != nil {
		res.AppendHeader(h)
	}
	if h := req.To(); h != nil {
		to := &sip.ToHeader{DisplayName: h.DisplayName, Address: h.Address, Params: h.Params.Clone()}
		if !to.Params.Has("tag") && code != 100 {
			to.Params.Add("tag", r.toTag())
		}
		res.AppendHeader(to)
	}
	if h := req.CallID(); h != nil {
		res.AppendHeader(h)
	}
	if h := req.CSeq(); h != nil {
		res.AppendHeader(h)
	}
	res.AppendHeader(sip.NewHeader("Server", r.cfg.ServerName))
	res.SetBody(nil) // Content-Length: 0
	return res
}

// toTag returns a fresh To tag: unique per response of this registrar,
// unguessable from outside (it starts at a random value), no syscall.
func (r *Registrar) toTag() string {
	return strconv.FormatUint(r.tagSeq.Add(0x9e3779b97f4a7c15), 36)
}

// logBad logs a peer's error through peerLog (rate-limited per source and
// in total, values truncated), so a flood of garbage does not become a
// flood of log lines.
func (r *Registrar) logBad(src netip.AddrPort, reason string) {
	r.peerLog.Info("bad request", "src", src.Addr(), "reason", reason, "malformed_total", r.malformed.Load())
}

// contactReq is one Contact of a REGISTER, checked.
type contactReq struct {
	uri      string
	q        int16
	expires  int // seconds; 0 removes
	instance string
	regID    uint32
}

func (c *contactReq) key() string {
	b := Binding{Contact: c.uri, Instance: c.instance, RegID: c.regID}
	return b.key()
}

// register runs RFC 3261 §10.3 steps 1–8.
func (r *Registrar) register(ctx context.Context, req *sip.Request, rh *reqHeaders, src netip.AddrPort, transport string) *sip.Response {
	now := r.cfg.Now()
	// Step 1: the Request-URI names a domain this registrar serves.
	ruri := req.Recipient
	if s := strings.ToLower(ruri.Scheme); s != "sip" && s != "sips" {
		return r.response(req, 416, "Unsupported URI Scheme")
	}
	if !r.ourDomain(ruri.Host) {
		return r.response(req, 404, "Not Found (domain not served here)")
	}
	// Step 3: the AOR comes from To and must be a SIP URI of our domain.
	to := req.To().Address
	if s := strings.ToLower(to.Scheme); s != "sip" && s != "sips" {
		r.malformed.Add(1)
		return r.response(req, 400, "Bad Request (To is not a SIP URI)")
	}
	if !r.ourDomain(to.Host) || to.User == "" {
		return r.response(req, 404, "Not Found (address of record not in this domain)")
	}
	ext := to.User
	aor := AOR(ext)

	// Steps 2 and 4: authenticate, and only the owner changes its AOR.
	if !r.cfg.noAuth {
		if credUser(rh.auth) != "" {
			// Backing off (authguard.go): not even a lookup.
			if res := r.lockedOut(req, src, ext, now); res != nil {
				return res
			}
		}
		acct, err := r.cfg.Accounts.Account(ctx, ext)
		var ap *Account
		switch {
		case err == nil:
			ap = &acct
		case !errors.Is(err, ErrNoAccount):
			r.storeErrors.Add(1)
			r.log.Warn("account lookup failed", "ext", ext, "err", err)
			return r.retryLater(req, "account store unavailable")
		}
		outcome, why := r.nonces.verifyDigest(rh.auth, string(req.Method), ext, ap, now)
		switch outcome {
		case authChallenge, authStale:
			return r.challenge(req, 401, outcome == authStale, now)
		case authForbidden:
			r.forbidden.Add(1)
			r.guard.failed(src.Addr(), ext, now)
			r.logBad(src, "REGISTER for "+aor+": "+why)
			return r.response(req, 403, "Forbidden ("+why+")")
		}
		r.guard.succeeded(src.Addr(), ext, now)
	}

	// Step 5: Require was checked in HandleRequest. Step 6: contacts.
	contacts, wildcard, code, reason := r.parseContacts(rh)
	if code != 0 {
		if code == 400 {
			r.malformed.Add(1)
		}
		res := r.response(req, code, reason)
		if code == 423 {
			res.AppendHeader(sip.NewHeader("Min-Expires", strconv.Itoa(r.cfg.MinExpires)))
		}
		return res
	}
	callID := string(*req.CallID())
	cseq := req.CSeq().SeqNo

	lk := &r.locks[stripe(aor)]
	lk.Lock()
	defer lk.Unlock()
	all, err := r.cfg.Locations.Bindings(ctx, aor)
	if err != nil {
		r.storeErrors.Add(1)
		r.log.Warn("location lookup failed", "aor", aor, "err", err)
		return r.retryLater(req, "location store unavailable")
	}
	cur := MergeBindings(all, now)
	if !wildcard && len(contacts) == 0 {
		// Fetch (RFC 3261 §10.2.3).
		r.registered.Add(1)
		return r.ok(req, rh, cur, now)
	}

	// Step 7: Call-ID/CSeq ordering per binding, then the changes.
	curByKey := make(map[string]*Binding, len(cur))
	for i := range cur {
		curByKey[cur[i].key()] = &cur[i]
	}
	outOfOrder := func(b *Binding) bool { return b.CallID == callID && cseq <= b.CSeq }
	type change struct {
		key string
		add *Binding // nil: remove
	}
	var changes []change
	if wildcard {
		for i := range cur {
			if outOfOrder(&cur[i]) {
				return r.response(req, 500, "Server Internal Error (out-of-order CSeq)")
			}
			changes = append(changes, change{key: cur[i].key()})
		}
	} else {
		for _, c := range contacts {
			if old := curByKey[c.key()]; old != nil && outOfOrder(old) {
				return r.response(req, 500, "Server Internal Error (out-of-order CSeq)")
			}
			if c.expires == 0 {
				changes = append(changes, change{key: c.key()})
				continue
			}
			ua := truncate(rh.userAgent, 128)
			changes = append(changes, change{key: c.key(), add: &Binding{
				AOR: aor, Node: r.cfg.Node, Contact: c.uri, Q: c.q,
				Expires:  now.Add(time.Duration(c.expires) * time.Second),
				Instance: c.instance, RegID: c.regID, CallID: callID, CSeq: cseq,
				Source: src, Transport: transport, UserAgent: ua,
			}})
		}
	}

	// The node's own record: its live entries and tombstones, changed.
	var own, others []Binding
	for _, b := range all {
		switch {
		case b.Node != r.cfg.Node:
			others = append(others, b)
		case b.Expires.After(now):
			own = append(own, b)
		}
	}
	for _, ch := range changes {
		updated := now
		for _, b := range all {
			if b.key() == ch.key && !b.Updated.Before(updated) {
				// Another writer's clock is ahead: still be the newest.
				updated = b.Updated.Add(time.Millisecond)
			}
		}
		own = deleteKey(own, ch.key)
		if ch.add != nil {
			b := *ch.add
			b.Updated = updated
			own = append(own, b)
			continue
		}
		// A removal must outlive every other node's copy, or a reader
		// would fall back to that copy.
		var until time.Time
		var tomb *Binding
		for i := range others {
			o := &others[i]
			if o.key() == ch.key && !o.Removed && o.Expires.After(now) && o.Expires.After(until) {
				until, tomb = o.Expires, o
			}
		}
		if tomb != nil {
			t := *tomb
			t.Node, t.Removed, t.Expires, t.Updated = r.cfg.Node, true, until, updated
			t.CallID, t.CSeq, t.Source, t.Transport = callID, cseq, src, transport
			own = append(own, t)
		}
	}
	merged := MergeBindings(append(others[:len(others):len(others)], own...), now)
	if !wildcard && len(merged) > r.cfg.MaxContacts {
		return r.response(req, 403, fmt.Sprintf("Forbidden (at most %d contacts per address of record)", r.cfg.MaxContacts))
	}
	if len(own) > MaxBindingsPerRecord {
		return r.response(req, 403, "Forbidden (too many bindings on this node)")
	}
	if err := r.cfg.Locations.SetBindings(ctx, aor, r.cfg.Node, own); err != nil {
		r.storeErrors.Add(1)
		r.log.Warn("location update failed", "aor", aor, "err", err)
		return r.retryLater(req, "location store unavailable")
	}
	r.registered.Add(1)
	r.log.Debug("registered", "aor", aor, "contacts", len(merged), "src", src)
	return r.ok(req, rh, merged, now)
}

func deleteKey(bs []Binding, key string) []Binding {
	out := bs[:0]
	for _, b := range bs {
		if b.key() != key {
			out = append(out, b)
		}
	}
	return out
}

func stripe(aor string) int {
	h := fnv.New32a()
	h.Write([]byte(aor))
	return int(h.Sum32() % 64)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// retryLater answers a request we could not serve because a store failed:
// 503 with Retry-After (RFC 3261 §21.5.4), so the phone retries soon
// rather than giving up.
func (r *Registrar) retryLater(req *sip.Request, why string) *sip.Response {
	res := r.response(req, 503, "Service Unavailable ("+why+")")
	res.AppendHeader(sip.NewHeader("Retry-After", "5"))
	return res
}

// ok is the 200 of step 8: every current binding with its remaining
// expires, plus the RFC 5626 parameters it was registered with.
func (r *Registrar) ok(req *sip.Request, rh *reqHeaders, bs []Binding, now time.Time) *sip.Response {
	res := r.response(req, 200, "OK")
	outbound := false
	for _, b := range bs {
		left := int(b.Expires.Sub(now).Round(time.Second) / time.Second)
		if left < 1 {
			left = 1
		}
		var v strings.Builder
		v.WriteString("<" + b.Contact + ">;expires=" + strconv.Itoa(left))
		if b.Q >= 0 {
			fmt.Fprintf(&v, ";q=%d.%03d", b.Q/1000, b.Q%1000)
		}
		if b.Instance != "" {
			v.WriteString(`;+sip.instance="` + b.Instance + `"`)
		}
		if b.RegID != 0 {
			v.WriteString(";reg-id=" + strconv.FormatUint(uint64(b.RegID), 10))
			outbound = true
		}
		res.AppendHeader(sip.NewHeader("Contact", v.String()))
	}
	if outbound && supports(rh.supported, "outbound") {
		// RFC 5626 §6: the registrar supports outbound and kept the flow.
		res.AppendHeader(sip.NewHeader("Require", "outbound"))
	}
	res.AppendHeader(sip.NewHeader("Date", now.UTC().Format(time.RFC1123)))
	return res
}

func supports(supported []string, tag string) bool {
	for _, h := range supported {
		for _, t := range strings.Split(h, ",") {
			if strings.EqualFold(strings.TrimSpace(t), tag) {
				return true
			}
		}
	}
	return false
}

// parseContacts reads the Contact headers and Expires of a REGISTER (RFC
// 3261 §10.3 step 6, RFC 5626 §6). A non-zero code is the answer to send.
func (r *Registrar) parseContacts(rh *reqHeaders) (cs []contactReq, wildcard bool, code int, reason string) {
	hdrExpires := r.cfg.DefaultExpires
	if h := rh.expires; h != nil {
		if v, err := strconv.ParseUint(strings.TrimSpace(h.Value()), 10, 32); err == nil {
			hdrExpires = int(min(v, 1<<31-1))
		}
		// An unparsable Expires is treated as absent (RFC 4475 §3.1.2.4).
	}
	var hs []*sip.ContactHeader
	for _, h := range rh.contacts {
		c, ok := h.(*sip.ContactHeader)
		if !ok {
			return nil, false, 400, "Bad Request (malformed Contact header)"
		}
		hs = append(hs, c)
	}
	for _, c := range hs {
		if c.Address.Wildcard {
			wildcard = true
		}
	}
	if wildcard {
		// RFC 3261 §10.2.2: "*" only alone and only with Expires: 0.
		h := rh.expires
		if len(hs) != 1 || h == nil || strings.TrimSpace(h.Value()) != "0" {
			return nil, false, 400, "Bad Request (Contact * needs Expires: 0 and no other Contact)"
		}
		return nil, true, 0, ""
	}
	seen := make(map[string]bool)
	for _, c := range hs {
		s := strings.ToLower(c.Address.Scheme)
		if s != "sip" && s != "sips" {
			return nil, false, 400, "Bad Request (Contact is not a SIP URI)"
		}
		if c.Address.Host == "" {
			return nil, false, 400, "Bad Request (Contact URI without host)"
		}
		cr := contactReq{uri: c.Address.String(), q: -1, expires: hdrExpires}
		if len(cr.uri) > 512 {
			return nil, false, 400, "Bad Request (Contact URI too long)"
		}
		if v, ok := c.Params.Get("expires"); ok {
			if e, err := strconv.ParseUint(v, 10, 32); err == nil {
				cr.expires = int(min(e, 1<<31-1))
			}
		}
		if v, ok := c.Params.Get("q"); ok {
			q, err := strconv.ParseFloat(v, 64)
			if err != nil || q < 0 || q > 1 {
				return nil, false, 400, "Bad Request (Contact q-value not in 0..1)"
			}
			cr.q = int16(q*1000 + 0.5)
		}
		if v, ok := c.Params.Get("+sip.instance"); ok {
			cr.instance = truncate(strings.Trim(v, `"<>`), 256)
			cr.instance = "<" + cr.instance + ">"
		}
		if v, ok := c.Params.Get("reg-id"); ok {
			id, err := strconv.ParseUint(v, 10, 32)
			if err != nil || id == 0 {
				return nil, false, 400, "Bad Request (reg-id not a positive integer)"
			}
			if cr.instance == "" {
				// RFC 5626 §4.2: reg-id without +sip.instance is ignored.
				id = 0
			}
			cr.regID = uint32(id)
		}
		if cr.expires != 0 && cr.expires < r.cfg.MinExpires {
			return nil, false, 423, "Interval Too Brief"
		}
		cr.expires = min(cr.expires, r.cfg.MaxExpires)
		if seen[cr.key()] {
			continue
		}
		seen[cr.key()] = true
		cs = append(cs, cr)
	}
	if len(cs) > r.cfg.MaxContacts {
		return nil, false, 403, fmt.Sprintf("Forbidden (at most %d contacts per address of record)", r.cfg.MaxContacts)
	}
	return cs, false, 0, ""
}
