package uplink

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/sipmesh/sipmesh/sipnet"
)

// Trunk timing (RFC 3261 §10.2.4 leaves the refresh point to the client;
// RFC 5626 §4.5 gives the back-off after failures).
const (
	DefaultTrunkExpires = time.Hour
	backoffBase         = 30 * time.Second // RFC 5626 §4.5 base-time (all flows failed)
	backoffMax          = 30 * time.Minute // RFC 5626 §4.5 max-time
	unregisterFor       = 5 * time.Second  // how long a stopping trunk tries to remove its binding
)

// Client sends a request and returns its final response; *sipgo.Client
// is one (the gateway's client on its uplink).
type Client interface {
	Do(ctx context.Context, req *sip.Request, opts ...sipgo.ClientRequestOption) (*sip.Response, error)
	DoDigestAuth(ctx context.Context, req *sip.Request, res *sip.Response, auth sipgo.DigestAuth) (*sip.Response, error)
}

// TrunkConfig is one provider account of a gateway.
type TrunkConfig struct {
	// Name names the trunk in logs and status ("provider").
	Name string
	// Registrar is the Request-URI of the REGISTERs (RFC 3261 §10.2:
	// the provider's domain, "sip:sip.provider.example").
	Registrar sip.Uri
	// AOR is the account's address of record (To and From).
	AOR sip.Uri
	// Username and Password answer the provider's digest challenges
	// (RFC 3261 §22). They are never logged.
	Username, Password string
	// Contact is where the provider sends calls for the account: the
	// gateway's public address on its uplink.
	Contact sip.Uri
	// Expires is the lifetime asked for; default DefaultTrunkExpires.
	Expires time.Duration
	Client  Client
	// Locator finds the registrar's servers (RFC 3263) when its host is a
	// name; the targets are tried in order (§4.3). Nil sends to the
	// Request-URI as sipgo resolves it (an IP literal).
	Locator *Locator
	Logger  *slog.Logger
	// Rand jitters the back-off; nil is the global source.
	Rand *rand.Rand
}

// TrunkStatus is what `sipmesh status` shows of a trunk.
type TrunkStatus struct {
	Name       string    `json:"name"`
	Registered bool      `json:"registered"`
	Expires    time.Time `json:"expires,omitzero"`
	Target     string    `json:"target,omitempty"`
	Failures   int       `json:"failures"`
	LastError  string    `json:"last_error,omitempty"`
	NextTry    time.Time `json:"next_try,omitzero"`
}

// Trunk keeps a gateway registered with a SIP provider (RFC 3261 §10):
// it registers, refreshes before the binding expires, backs off
// exponentially after failures (RFC 5626 §4.5), takes a provider's
// Min-Expires after 423 (§10.3 step 7), and removes the binding when it
// stops.
type Trunk struct {
	cfg     TrunkConfig
	log     *slog.Logger
	callID  string
	cseq    uint32
	fromTag string

	// wake makes Run register at once (SetContactHost).
	wake chan struct{}

	mu      sync.Mutex
	status  TrunkStatus
	contact sip.Uri // TrunkConfig.Contact, its host changed by SetContactHost
}

// NewTrunk checks cfg and returns a trunk; Run registers it.
func NewTrunk(cfg TrunkConfig) (*Trunk, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("uplink: trunk needs a Client")
	case cfg.Registrar.Host == "" || cfg.AOR.Host == "" || cfg.Contact.Host == "":
		return nil, errors.New("uplink: trunk needs Registrar, AOR and Contact URIs")
	}
	cfg.Expires = cmp.Or(cfg.Expires, DefaultTrunkExpires)
	cfg.Name = cmp.Or(cfg.Name, cfg.AOR.Host)
	log := cmp.Or(cfg.Logger, slog.New(slog.DiscardHandler)).With("trunk", cfg.Name)
	return &Trunk{cfg: cfg, log: log, callID: sip.GenerateTagN(16) + "@sipmesh",
		fromTag: sip.GenerateTagN(10), status: TrunkStatus{Name: cfg.Name}, wake: make(chan struct{}, 1),
		contact: *cfg.Contact.Clone()}, nil
}

// SetContactHost changes the host of the Contact the trunk registers: a
// gateway behind a NAT router whose public address changed (its STUN
// mapping names another) registers the new Contact at once, as RFC 3261
// §10.2.1 lets a client add one at any time, so that the provider's
// calls find the gateway again. The old binding is not removed: the
// provider's calls to it go nowhere until it expires.
func (t *Trunk) SetContactHost(host string) {
	t.mu.Lock()
	changed := host != "" && host != t.contact.Host
	if changed {
		t.contact.Host = host
	}
	t.mu.Unlock()
	if changed {
		t.log.Info("trunk contact changed, registering it", "host", host)
		select {
		case t.wake <- struct{}{}:
		default:
		}
	}
}

// contactURI is the Contact registered now.
func (t *Trunk) contactURI() sip.Uri {
	t.mu.Lock()
	defer t.mu.Unlock()
	return *t.contact.Clone()
}

// Status returns the trunk's registration state.
func (t *Trunk) Status() TrunkStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.status
	if s.Registered && !time.Now().Before(s.Expires) {
		s.Registered = false
	}
	return s
}

// Run keeps the trunk registered until ctx ends, then removes the
// binding (Expires: 0, RFC 3261 §10.2.2) and returns nil.
func (t *Trunk) Run(ctx context.Context) error {
	failures := 0
	for {
		granted, target, err := t.register(ctx, t.cfg.Expires)
		if ctx.Err() != nil {
			break
		}
		var wait time.Duration
		now := time.Now()
		t.mu.Lock()
		if err == nil {
			failures = 0
			// Half the lifetime: a lost refresh and its retries (Timer F,
			// 32 s) still end before the binding does.
			wait = max(granted/2, time.Second)
			t.status.Registered, t.status.Expires, t.status.Target, t.status.LastError = true, now.Add(granted), target, ""
			t.log.Debug("trunk registered", "expires", granted, "target", target)
		} else {
			failures++
			wait = t.backoff(failures)
			t.status.LastError = err.Error()
			t.log.Warn("trunk registration failed", "err", err, "failures", failures, "retry_in", wait.Round(time.Second))
		}
		t.status.Failures, t.status.NextTry = failures, now.Add(wait)
		t.mu.Unlock()
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
		case <-timer.C:
		case <-t.wake: // a new Contact (SetContactHost)
			timer.Stop()
		}
		if ctx.Err() != nil {
			break
		}
	}
	t.mu.Lock()
	was := t.status.Registered
	t.status.Registered = false
	t.mu.Unlock()
	if was {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), unregisterFor)
		defer cancel()
		if _, _, err := t.register(uctx, 0); err != nil {
			t.log.Info("trunk unregister failed", "err", err)
		}
	}
	return nil
}

// backoff is RFC 5626 §4.5's wait after n consecutive failures:
// min(max-time, base-time · 2^(n−1)), then a random 50–100 % of it.
func (t *Trunk) backoff(n int) time.Duration {
	w := backoffMax
	if n < 16 {
		w = min(backoffMax, backoffBase<<(n-1))
	}
	f := 0.5
	if t.cfg.Rand != nil {
		f += t.cfg.Rand.Float64() / 2
	} else {
		f += rand.Float64() / 2
	}
	return time.Duration(float64(w) * f)
}

// errAuth is a challenge answered with credentials and challenged again
// (not stale): the username or password is wrong.
var errAuth = errors.New("credentials refused")

// register sends one REGISTER asking for expires (0 removes the binding)
// to the registrar's targets in order, answering a digest challenge and
// one 423, and returns the lifetime granted and the target that took it.
func (t *Trunk) register(ctx context.Context, expires time.Duration) (time.Duration, string, error) {
	targets := []string{""}
	if l := t.cfg.Locator; l != nil {
		ts, err := l.Locate(ctx, &t.cfg.Registrar)
		if err != nil {
			return 0, "", err
		}
		targets = targets[:0]
		for _, x := range ts {
			// UDP only: the calls the provider delivers come to the
			// Contact's UDP port, and the calls the gateway sends through
			// the trunk go to the target over UDP (proxy's toTrunk); a
			// registration over TCP would need the connection kept open
			// for both (RFC 5626), which the trunk does not do.
			if x.Transport == "UDP" {
				targets = append(targets, x.Transport+" "+x.Addr.String())
			}
		}
		if len(targets) == 0 {
			return 0, "", fmt.Errorf("%w: %s: no server over UDP", ErrNotFound, t.cfg.Registrar.Host)
		}
	}
	var errs []error
	for _, target := range targets {
		granted, err := t.registerAt(ctx, target, expires)
		if err == nil {
			return granted, target, nil
		}
		errs = append(errs, err)
		// RFC 3263 §4.3: the next server after a transport failure or a
		// 503; an answer that refuses the account is the provider's word.
		var se *statusError
		if ctx.Err() != nil || errors.Is(err, errAuth) || errors.As(err, &se) && se.code != 503 && se.code != 408 {
			break
		}
	}
	return 0, "", errors.Join(errs...)
}

type statusError struct {
	code   int
	reason string
}

func (e *statusError) Error() string { return strconv.Itoa(e.code) + " " + e.reason }

func (t *Trunk) registerAt(ctx context.Context, target string, expires time.Duration) (time.Duration, error) {
	for try := 0; try < 2; try++ { // a 423 once
		req := t.request(target, expires)
		res, err := t.cfg.Client.Do(ctx, req)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", cmp.Or(target, t.cfg.Registrar.Host), err)
		}
		if res.StatusCode == 401 || res.StatusCode == 407 {
			t.cseq = req.CSeq().SeqNo
			res, err = t.cfg.Client.DoDigestAuth(ctx, req, res, sipgo.DigestAuth{Username: t.cfg.Username, Password: t.cfg.Password})
			if err != nil {
				return 0, fmt.Errorf("%s: %w", cmp.Or(target, t.cfg.Registrar.Host), err)
			}
			t.cseq = req.CSeq().SeqNo // DoDigestAuth sent it with CSeq+1
			if res.StatusCode == 401 || res.StatusCode == 407 {
				return 0, fmt.Errorf("%s: %d %s: %w", cmp.Or(target, t.cfg.Registrar.Host), res.StatusCode, res.Reason, errAuth)
			}
		}
		switch {
		case res.StatusCode == 423 && try == 0 && expires > 0:
			// §10.3 step 7 / §21.4.17: ask again for at least Min-Expires.
			h := res.GetHeader("Min-Expires")
			if h == nil {
				return 0, &statusError{res.StatusCode, res.Reason}
			}
			n, err := strconv.Atoi(h.Value())
			if err != nil || n <= 0 || n > 86400 {
				return 0, &statusError{res.StatusCode, res.Reason + " (bad Min-Expires)"}
			}
			expires = time.Duration(n) * time.Second
			continue
		case !res.IsSuccess():
			return 0, &statusError{res.StatusCode, res.Reason}
		}
		if expires == 0 {
			return 0, nil
		}
		return t.granted(res, expires), nil
	}
	return 0, &statusError{423, "Interval Too Brief twice"}
}

// request builds the next REGISTER of the trunk's registration: the same
// Call-ID and increasing CSeq (RFC 3261 §10.2.4), To and From the AOR.
func (t *Trunk) request(target string, expires time.Duration) *sip.Request {
	t.cseq++
	req := sip.NewRequest(sip.REGISTER, *t.cfg.Registrar.Clone())
	req.AppendHeader(&sip.FromHeader{Address: *t.cfg.AOR.Clone(), Params: sipnet.TagParams(t.fromTag)})
	req.AppendHeader(&sip.ToHeader{Address: *t.cfg.AOR.Clone(), Params: sip.NewParams()})
	cid := sip.CallIDHeader(t.callID)
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: t.cseq, MethodName: sip.REGISTER})
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(&mf)
	req.AppendHeader(&sip.ContactHeader{Address: t.contactURI()})
	req.AppendHeader(sip.NewHeader("Expires", strconv.Itoa(int(expires/time.Second))))
	req.AppendHeader(sip.NewHeader("User-Agent", "sipmesh"))
	if target != "" {
		transport, addr, _ := strings.Cut(target, " ")
		req.SetTransport(transport)
		req.SetDestination(addr)
	}
	return req
}

// granted is the lifetime the registrar gave our Contact: its expires
// parameter in the 200's Contacts, else the Expires header, else what we
// asked (RFC 3261 §10.2.4).
func (t *Trunk) granted(res *sip.Response, asked time.Duration) time.Duration {
	ours := t.contactURI()
	for _, h := range res.GetHeaders("Contact") {
		c, ok := h.(*sip.ContactHeader)
		if !ok || c.Address.User != ours.User || c.Address.Host != ours.Host || c.Address.Port != ours.Port {
			continue
		}
		if v, ok := c.Params.Get("expires"); ok {
			if n, err := strconv.Atoi(v); err == nil && n > 0 {
				return time.Duration(n) * time.Second
			}
		}
	}
	if h := res.GetHeader("Expires"); h != nil {
		if n, err := strconv.Atoi(h.Value()); err == nil && n > 0 {
			return time.Duration(n) * time.Second
		}
	}
	return asked
}
