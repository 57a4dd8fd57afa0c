package registrar

import (
	"context"
	"errors"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"
)

// Authorize authenticates a request a phone sends through the node's
// proxy (RFC 3261 §22.3: 407 with Proxy-Authenticate, credentials in
// Proxy-Authorization), as a PBX does for calls, messages and
// subscriptions from its phones. It returns the authenticated user, or
// the response to send instead of routing the request.
//
// The answer to a request without valid credentials depends on nothing
// the request names (Request-URI, To): no lookup happens before it, so
// probing extensions learns nothing (sipvicious svwar). A wrong password
// and an unknown user get the same 403 (Asterisk's alwaysauthreject),
// and failures back off per source and account (authguard.go). The
// authenticated user must be the one in From: a phone calls as itself.
func (r *Registrar) Authorize(ctx context.Context, req *sip.Request, src netip.AddrPort) (string, *sip.Response) {
	now := r.cfg.Now()
	var hdrs []string
	for _, h := range req.GetHeaders("Proxy-Authorization") {
		hdrs = append(hdrs, h.Value())
	}
	user := credUser(hdrs)
	if user == "" {
		return "", r.challenge(req, 407, false, now)
	}
	if res := r.lockedOut(req, src, user, now); res != nil {
		return "", res
	}
	var ap *Account
	if ValidExt(user) == nil {
		acct, err := r.cfg.Accounts.Account(ctx, user)
		switch {
		case err == nil:
			ap = &acct
		case !errors.Is(err, ErrNoAccount):
			r.storeErrors.Add(1)
			r.log.Warn("account lookup failed", "ext", user, "err", err)
			return "", r.retryLater(req, "account store unavailable")
		}
	}
	outcome, why := r.nonces.verifyDigest(hdrs, string(req.Method), user, ap, now)
	switch outcome {
	case authChallenge, authStale:
		return "", r.challenge(req, 407, outcome == authStale, now)
	case authForbidden:
		return "", r.authFailed(req, src, user, why, now)
	}
	r.guard.succeeded(src.Addr(), user, now)
	if f := req.From(); f == nil || f.Address.User != user {
		r.forbidden.Add(1)
		return "", r.response(req, 403, "Forbidden (From is not the authenticated user)")
	}
	return user, nil
}

// challenge is a 401 (REGISTER) or 407 (proxied requests) with one
// challenge per configured algorithm.
func (r *Registrar) challenge(req *sip.Request, code int, stale bool, now time.Time) *sip.Response {
	r.challenged.Add(1)
	reason, hdr := "Unauthorized", "WWW-Authenticate"
	if code == 407 {
		reason, hdr = "Proxy Authentication Required", "Proxy-Authenticate"
	}
	res := r.response(req, code, reason)
	for _, c := range r.nonces.challenges(now, stale, r.cfg.Algorithms) {
		res.AppendHeader(sip.NewHeader(hdr, c))
	}
	return res
}

// lockedOut is the 503 for credentials of user from src while a back-off
// holds (authguard.go), nil when they may be checked.
func (r *Registrar) lockedOut(req *sip.Request, src netip.AddrPort, user string, now time.Time) *sip.Response {
	wait := r.guard.locked(src.Addr(), user, now)
	if wait <= 0 {
		return nil
	}
	r.lockedOutN.Add(1)
	res := r.response(req, 503, "Service Unavailable (too many failed authentications)")
	res.AppendHeader(sip.NewHeader("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds())))))
	return res
}

// authFailed counts a failed authentication of user from src and
// answers it: one 403 whatever failed (unknown user, wrong password).
func (r *Registrar) authFailed(req *sip.Request, src netip.AddrPort, user, why string, now time.Time) *sip.Response {
	r.forbidden.Add(1)
	r.guard.failed(src.Addr(), user, now)
	r.logBad(src, string(req.Method)+" as "+truncate(user, 32)+": "+why)
	return r.response(req, 403, "Forbidden (unknown user or wrong password)")
}

// credUser is the username of the first Digest credentials for the mesh
// realm in hdrs, "" if there are none.
func credUser(hdrs []string) string {
	for _, v := range hdrs {
		if c, ok := parseDigest(v); ok && strings.EqualFold(c.realm, Realm) {
			return c.username
		}
	}
	return ""
}
