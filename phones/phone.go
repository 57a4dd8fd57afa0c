package phones

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/sipmesh/sipmesh/netx"
	"github.com/sipmesh/sipmesh/sipnet"
)

// Settings are what a desk phone learns from provisioning (DHCP option 120
// gives the SIP server, RFC 3361; the caller resolves it to an address) and
// from its own configuration.
type Settings struct {
	// User is the extension ("201"): the user part of the AOR
	// sip:User@Domain and the digest username.
	User     string
	Password string
	// Domain is the SIP domain (default "mesh").
	Domain string
	// Server is the registrar and outbound proxy. Every request outside a
	// dialog goes there; invalid means none: the phone can only call SIP
	// URIs with an IP literal host, peer to peer.
	Server      netip.AddrPort
	DisplayName string
	// LocalAddr is the phone's LAN address: its SIP socket, its Contact and
	// its RTP socket bind to it. Required (an unspecified address would
	// make Contact meaningless).
	LocalAddr netip.Addr
	// SIPPort is the local SIP port (default 5060; 0 is not allowed: the
	// Contact must name a fixed port).
	SIPPort uint16
	// ToneHz is the frequency of the tone the phone sends in every call.
	ToneHz float64
	// ToneAmplitude is its peak, full scale 1.0 (default 0.5). A party
	// line sums every member's voice, so its tests use quiet tones.
	ToneAmplitude float64
	// Transport is "udp" (the only one supported; default).
	Transport string
	// Expires is the registration lifetime asked for (default 600 s).
	Expires time.Duration
	// MaxCalls bounds concurrent calls; beyond it incoming INVITEs get 486
	// and Dial fails (default 4).
	MaxCalls int
}

// AnswerMode is what a phone does with an incoming call once it has rung
// for Policy.RingDelay.
type AnswerMode int

// Answer modes.
const (
	AutoAnswer AnswerMode = iota // answer with 200 and SDP
	AutoReject                   // answer with Policy.RejectCode
	Manual                       // wait for Call.Answer or Call.Reject
)

// Policy is the phone's incoming call behaviour.
type Policy struct {
	Mode AnswerMode
	// RingDelay is how long the phone rings (after sending 180) before it
	// acts on Mode (default 0: at once).
	RingDelay time.Duration
	// RejectCode is the final status of AutoReject (default 486).
	RejectCode int
	// ExpectHz is the tone the callers of this phone are expected to send
	// (learned out of band); Call.HeardRemote checks it.
	ExpectHz float64
}

// Config configures a Phone.
type Config struct {
	Settings
	Policy Policy
	// Network opens the SIP and RTP sockets (memnet in tests and the demo,
	// netx.Kernel on a host).
	Network netx.Network
	Logger  *slog.Logger
	// Now is the clock of the call timers reported (setup time, post-dial
	// delay); nil means time.Now. SIP's own timers are sipgo's and use the
	// time package, so tests run the phone under testing/synctest.
	Now func() time.Time
}

// Errors.
var (
	// ErrClosed is returned by operations on a phone whose Run returned.
	ErrClosed = errors.New("phones: phone closed")
	// ErrTooManyCalls is returned by Dial when MaxCalls calls are up.
	ErrTooManyCalls = errors.New("phones: too many calls")

	errDuplicate = errors.New("phones: duplicate Call-ID")
)

// StatusError is a SIP final response that ended a request: a failed call
// (404, 480, 486, 487, 408 ...) or registration.
type StatusError struct {
	Method string
	Code   int
	Reason string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("phones: %s: %d %s", e.Method, e.Code, e.Reason)
}

// Phone is a simulated SIP desk phone (RFC 3261 UA) on sipgo: it
// registers, places and answers calls, and sends and detects G.711 tones.
type Phone struct {
	cfg   Config
	log   *slog.Logger
	now   func() time.Time
	ua    *sipgo.UserAgent
	srv   *sipgo.Server
	cli   *sipgo.Client
	conn  net.PacketConn
	local netip.AddrPort
	laddr sip.Addr
	aor   sip.Uri
	// base ends when Run is told to stop; calls and the registration
	// refresher watch it.
	base context.Context
	stop context.CancelFunc

	mu       sync.Mutex
	closing  bool
	ran      bool
	calls    map[string]*Call // by Call-ID
	wg       sync.WaitGroup   // handlers, call goroutines, refresher
	incoming chan *Call
	inbox    chan Message

	regMu     sync.Mutex // serialises REGISTER transactions
	regCallID string
	regSeq    uint32
	regState  struct {
		sync.Mutex
		registered bool
		expires    time.Time
		cancel     context.CancelFunc
		done       chan struct{}
	}
}

// New checks cfg and opens the phone's SIP socket; Run serves it.
func New(cfg Config) (*Phone, error) {
	if cfg.Network == nil {
		return nil, errors.New("phones: Config.Network is nil")
	}
	if cfg.User == "" {
		return nil, errors.New("phones: Settings.User is empty")
	}
	if !cfg.LocalAddr.IsValid() || cfg.LocalAddr.IsUnspecified() {
		return nil, fmt.Errorf("phones: Settings.LocalAddr %v is not a unicast address", cfg.LocalAddr)
	}
	if cfg.Transport == "" {
		cfg.Transport = "udp"
	}
	if !strings.EqualFold(cfg.Transport, "udp") {
		return nil, fmt.Errorf("phones: Settings.Transport %q: only udp is supported", cfg.Transport)
	}
	if cfg.Server.IsValid() && (cfg.Server.Port() == 0 || cfg.Server.Addr().IsUnspecified()) {
		return nil, fmt.Errorf("phones: Settings.Server %v is not a host and port", cfg.Server)
	}
	if cfg.Domain == "" {
		cfg.Domain = "mesh"
	}
	if cfg.SIPPort == 0 {
		cfg.SIPPort = 5060
	}
	if cfg.Expires <= 0 {
		cfg.Expires = 600 * time.Second
	}
	if cfg.MaxCalls <= 0 {
		cfg.MaxCalls = 4
	}
	if cfg.Policy.RejectCode == 0 {
		cfg.Policy.RejectCode = 486
	}
	if c := cfg.Policy.RejectCode; c < 300 || c > 699 {
		return nil, fmt.Errorf("phones: Policy.RejectCode %d is not a final error status", c)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger.With("component", "phone", "user", cfg.User)

	local := netip.AddrPortFrom(cfg.LocalAddr, cfg.SIPPort)
	conn, err := cfg.Network.ListenPacket(context.Background(), "udp", local.String())
	if err != nil {
		return nil, fmt.Errorf("phones: SIP socket: %w", err)
	}
	// sipgo finds its listener for outgoing requests by the string form of
	// LocalAddr; without a match it would open a kernel socket
	// (libraries.md §1 pitfall 2).
	if conn.LocalAddr().String() != local.String() {
		conn.Close()
		return nil, fmt.Errorf("phones: SIP socket bound to %v, want %v", conn.LocalAddr(), local)
	}
	ua, err := sipgo.NewUA(
		sipgo.WithUserAgent("sipmesh-phone"),
		sipgo.WithUserAgentHostname(sipnet.URIHost(cfg.LocalAddr)),
		sipgo.WithUserAgentTransactionLayerOptions(sip.WithTransactionLayerLogger(log),
			// A retransmitted final response after its transaction ended
			// (RFC 3261 §17.1.1.2) is normal under loss; without this
			// handler sipgo reports it on the global slog logger at Info.
			sip.WithTransactionLayerUnhandledResponseHandler(func(r *sip.Response) {
				log.Debug("response without a transaction", "msg", r.Short())
			})),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(log)),
		// The phone never resolves names (targets and Server are IP
		// literals); if sipgo ever tried, it must not ask the host's DNS.
		sipgo.WithUserAgentDNSResolver(sipnet.NoDNS("phones")),
	)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("phones: %w", err)
	}
	// Put the socket in sipgo's connection pool now: ServeUDP adds it only
	// once its goroutine runs, and a request sent before that would make
	// sipgo bind a kernel socket to Laddr (a race seen in tests: "listen
	// udp 192.168.1.10:5060: bind: cannot assign requested address").
	// Listener: true keeps sipgo from closing it; Run does.
	ua.TransportLayer().Pool("udp").Add(local.String(),
		&sip.UDPConnection{PacketConn: conn, PacketAddr: local.String(), Listener: true})
	srv, err := sipgo.NewServer(ua, sipgo.WithServerLogger(log))
	if err != nil {
		conn.Close()
		ua.Close()
		return nil, fmt.Errorf("phones: %w", err)
	}
	cli, err := sipgo.NewClient(ua, sipgo.WithClientLogger(log))
	if err != nil {
		conn.Close()
		ua.Close()
		return nil, fmt.Errorf("phones: %w", err)
	}
	p := &Phone{
		cfg: cfg, log: log, now: cfg.Now, ua: ua, srv: srv, cli: cli, conn: conn, local: local,
		laddr:     sip.Addr{IP: net.IP(cfg.LocalAddr.AsSlice()), Port: int(cfg.SIPPort)},
		aor:       sip.Uri{Scheme: "sip", User: cfg.User, Host: cfg.Domain},
		calls:     make(map[string]*Call),
		incoming:  make(chan *Call, cfg.MaxCalls),
		inbox:     make(chan Message, maxMessages),
		regCallID: sip.GenerateTagN(16) + "@" + cfg.LocalAddr.String(),
		regSeq:    uint32(1 + randUint32()%0x7fff),
	}
	p.base, p.stop = context.WithCancel(context.Background())
	srv.OnInvite(p.handler(p.onInvite))
	srv.OnAck(p.handler(p.onAck))
	srv.OnBye(p.handler(p.onBye))
	srv.OnCancel(p.handler(p.onCancel))
	srv.OnOptions(p.handler(p.onOptions))
	srv.OnMessage(p.handler(p.onMessage))
	return p, nil
}

// Local returns the phone's SIP address (its Contact).
func (p *Phone) Local() netip.AddrPort { return p.local }

// Contact returns the phone's Contact URI, which is where a peer sends
// INVITEs to call it directly.
func (p *Phone) Contact() string {
	u := p.contactURI()
	return u.String()
}

// AOR returns the phone's address of record, sip:User@Domain.
func (p *Phone) AOR() string { return p.aor.String() }

// Incoming delivers each incoming call when it starts ringing (buffered
// MaxCalls; a call is dropped from the channel, not refused, if nobody
// reads).
func (p *Phone) Incoming() <-chan *Call { return p.incoming }

// Calls returns the calls in progress.
func (p *Phone) Calls() []*Call {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*Call, 0, len(p.calls))
	for _, c := range p.calls {
		out = append(out, c)
	}
	return out
}

// Ringing returns how many incoming calls are ringing now.
func (p *Phone) Ringing() int {
	n := 0
	for _, c := range p.Calls() {
		if c.IsRinging() {
			n++
		}
	}
	return n
}

// Run serves the phone's SIP socket until ctx ends. Then it hangs up its
// calls (BYE, or CANCEL before an answer), waits for every goroutine it
// and its calls started, closes its sockets and returns.
func (p *Phone) Run(ctx context.Context) error {
	p.mu.Lock()
	if p.ran {
		p.mu.Unlock()
		return errors.New("phones: Run called twice")
	}
	p.ran = true
	p.mu.Unlock()

	served := make(chan error, 1)
	go func() { served <- p.srv.ServeUDP(p.conn) }()

	var err error
	select {
	case <-ctx.Done():
	case err = <-served:
		served = nil
		err = fmt.Errorf("phones: SIP socket: %w", err)
	}
	p.mu.Lock()
	p.closing = true
	p.mu.Unlock()
	p.stop()
	p.wg.Wait() // calls end with their BYE/CANCEL while the socket still serves
	p.ua.Close()
	p.conn.Close()
	if served != nil {
		<-served
	}
	return err
}

// handler wraps a request handler so that Run waits for it, and refuses
// new requests once Run is stopping.
func (p *Phone) handler(h func(*sip.Request, sip.ServerTransaction)) sipgo.RequestHandler {
	return func(req *sip.Request, tx sip.ServerTransaction) {
		if !p.enter() {
			if !req.IsAck() {
				p.respond(tx, req, 503, "Service Unavailable", nil, "")
			}
			return
		}
		defer p.wg.Done()
		h(req, tx)
	}
}

// enter counts one more goroutine for Run to wait for, unless Run is
// stopping (WaitGroup.Add must not race with Wait at zero).
func (p *Phone) enter() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return false
	}
	p.wg.Add(1)
	return true
}

// respond sends a response to req built per RFC 3261 §8.2.6, with the
// given To tag (dialog-creating responses) and our Contact on 2xx/18x to
// INVITE.
func (p *Phone) respond(tx sip.ServerTransaction, req *sip.Request, code int, reason string, body []byte, toTag string) {
	res := p.response(req, code, reason, body, toTag)
	if err := tx.Respond(res); err != nil {
		p.log.Debug("respond", "code", code, "method", req.Method, "err", err)
	}
}

func (p *Phone) response(req *sip.Request, code int, reason string, body []byte, toTag string) *sip.Response {
	res := sip.NewResponseFromRequest(req, code, reason, body)
	if to := res.To(); to != nil && toTag != "" {
		to.Params.Add("tag", toTag)
	}
	if req.IsInvite() && code > 100 && code < 300 {
		res.AppendHeader(p.contactHeader())
	}
	if body != nil {
		ct := sip.ContentTypeHeader("application/sdp")
		res.AppendHeader(&ct)
	}
	res.AppendHeader(sip.NewHeader("User-Agent", "sipmesh-phone"))
	return res
}

func (p *Phone) contactURI() sip.Uri {
	return sip.Uri{Scheme: "sip", User: p.cfg.User, Host: sipnet.URIHost(p.cfg.LocalAddr), Port: int(p.cfg.SIPPort)}
}

func (p *Phone) contactHeader() *sip.ContactHeader {
	return &sip.ContactHeader{DisplayName: p.cfg.DisplayName, Address: p.contactURI()}
}

// via builds our Via: our LAN address, a fresh RFC 3261 branch (§8.1.1.7)
// and rport (RFC 3581) so responses come back to the port we sent from.
func (p *Phone) via() *sip.ViaHeader {
	v := &sip.ViaHeader{ProtocolName: "SIP", ProtocolVersion: "2.0", Transport: "UDP",
		Host: p.cfg.LocalAddr.String(), Port: int(p.cfg.SIPPort), Params: sip.NewParams()}
	v.Params.Add("branch", sip.GenerateBranchN(16))
	v.Params.Add("rport", "")
	return v
}

// prebuilt tells sipgo the request is complete; it must not add headers.
func prebuilt(*sipgo.Client, *sip.Request) error { return nil }

// send starts a client transaction for a request whose headers are all
// set, from our SIP socket to dest.
func (p *Phone) send(req *sip.Request, dest netip.AddrPort) (sip.ClientTransaction, error) {
	p.route(req, dest)
	// The transaction lives by its own timers (B, F), not a context: a
	// CANCEL or BYE must still go out while the phone stops.
	return p.cli.TransactionRequest(context.Background(), req, prebuilt)
}

// route fixes where req goes: from our socket (sipgo would otherwise open
// a kernel socket, libraries.md §1 pitfall 2) to an IP literal (sipgo
// would otherwise resolve with the host's DNS).
func (p *Phone) route(req *sip.Request, dest netip.AddrPort) {
	req.Laddr = p.laddr
	req.SetTransport("UDP")
	req.SetDestination(dest.String())
}

// finalResponse waits for tx's final response. It returns a timeout or
// transport error if the transaction ends without one (Timer B/F).
func finalResponse(ctx context.Context, tx sip.ClientTransaction) (*sip.Response, error) {
	for {
		select {
		case res := <-tx.Responses():
			if res.StatusCode >= 200 {
				return res, nil
			}
		case <-tx.Done():
			if err := tx.Err(); err != nil {
				return nil, err
			}
			return nil, sip.ErrTransactionTerminated
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (p *Phone) onOptions(req *sip.Request, tx sip.ServerTransaction) {
	res := p.response(req, 200, "OK", nil, "")
	res.AppendHeader(sip.NewHeader("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS"))
	res.AppendHeader(sip.NewHeader("Accept", "application/sdp"))
	if err := tx.Respond(res); err != nil {
		p.log.Debug("respond OPTIONS", "err", err)
	}
}

// onCancel sees only CANCELs that matched no INVITE transaction (sipgo
// answers matching ones itself: 200 to the CANCEL, 487 to the INVITE, and
// calls the transaction's OnCancel); RFC 3261 §9.2 says 481.
func (p *Phone) onCancel(req *sip.Request, tx sip.ServerTransaction) {
	p.respond(tx, req, 481, "Call/Transaction Does Not Exist", nil, "")
}

func (p *Phone) onAck(req *sip.Request, _ sip.ServerTransaction) {
	if c := p.call(req); c != nil {
		c.acked(req.CSeq().SeqNo)
	}
}

func (p *Phone) onBye(req *sip.Request, tx sip.ServerTransaction) {
	c := p.call(req)
	if c == nil || !c.matches(req) {
		p.respond(tx, req, 481, "Call/Transaction Does Not Exist", nil, "")
		return
	}
	p.respond(tx, req, 200, "OK", nil, "")
	c.remoteBye()
}

// call finds the call of an in-dialog request by Call-ID.
func (p *Phone) call(req *sip.Request) *Call {
	id := req.CallID()
	if id == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls[id.Value()]
}

// admit adds c to the calls unless MaxCalls are up or Run is stopping; it
// counts c's goroutine for Run to wait for.
func (p *Phone) admit(c *Call) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return ErrClosed
	}
	if len(p.calls) >= p.cfg.MaxCalls {
		return ErrTooManyCalls
	}
	if _, dup := p.calls[c.id]; dup {
		return fmt.Errorf("%w %q", errDuplicate, c.id)
	}
	p.calls[c.id] = c
	p.wg.Add(1)
	return nil
}

func (p *Phone) forget(c *Call) {
	p.mu.Lock()
	if p.calls[c.id] == c {
		delete(p.calls, c.id)
	}
	p.mu.Unlock()
}

// expiresOf is the registration lifetime a 2xx to REGISTER grants: the
// expires parameter of our Contact, else Expires (RFC 3261 §10.2.4).
func (p *Phone) expiresOf(res *sip.Response, asked time.Duration) time.Duration {
	me := p.contactURI()
	for _, h := range res.GetHeaders("Contact") {
		c, ok := h.(*sip.ContactHeader)
		if !ok || c.Address.User != me.User || !strings.EqualFold(strings.Trim(c.Address.Host, "[]"), strings.Trim(me.Host, "[]")) {
			continue
		}
		if c.Address.Port != 0 && c.Address.Port != me.Port {
			continue
		}
		if v, ok := c.Params.Get("expires"); ok {
			if n, err := strconv.Atoi(v); err == nil && n >= 0 {
				return time.Duration(n) * time.Second
			}
		}
	}
	if h := res.GetHeader("Expires"); h != nil {
		if n, err := strconv.Atoi(strings.TrimSpace(h.Value())); err == nil && n >= 0 {
			return time.Duration(n) * time.Second
		}
	}
	return asked
}

// reasons are the reason phrases of the final statuses a phone sends
// (RFC 3261 §21).
var reasons = map[int]string{
	200: "OK", 403: "Forbidden", 404: "Not Found", 408: "Request Timeout", 480: "Temporarily Unavailable",
	481: "Call/Transaction Does Not Exist", 486: "Busy Here", 487: "Request Terminated",
	488: "Not Acceptable Here", 500: "Server Internal Error", 503: "Service Unavailable",
	600: "Busy Everywhere", 603: "Decline",
}

func reasonPhrase(code int) string {
	if r, ok := reasons[code]; ok {
		return r
	}
	return "Error"
}
