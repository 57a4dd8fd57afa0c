package registrar

import (
	"net/netip"
	"sync"
	"time"

	"github.com/sipmesh/sipmesh/sipnet"
)

// Back-off of failed digest authentications (fail2ban style; what
// Kamailio's pike and htable do for a SIP server): a wrong password is
// never answered faster than the policy allows, so a password list costs
// hours, not seconds, and memory stays bounded whatever the sources.
//
// Three counters of failures, each forgiving a few and then locking for
// a period that doubles with every further failure (capped):
//   - per (source, account): the guesser at one address for one account;
//   - per source: one address spraying many accounts;
//   - per account: many addresses guessing one account. This lock spares
//     the sources that authenticated as that account before (a known
//     device, kept in a table only a right password writes), so an
//     attacker elsewhere cannot lock the legitimate phone out.
//
// While a lock holds, credentials for it are not checked at all: the
// answer is 503 with Retry-After (RFC 3261 §21.5.4), the same for a right
// and a wrong password. Sources are keyed as the rate limiter keys them
// (an IPv6 /64 is one source). Every table is a bounded LRU.

// Back-off policy.
const (
	pairFree, srcFree, acctFree = 5, 20, 20 // failures before a lock
	lockBase                    = time.Second
	pairMaxLock, srcMaxLock     = time.Hour, time.Hour
	acctMaxLock                 = 15 * time.Minute
	failForget                  = 24 * time.Hour // state idle this long is reset
	authGuardEntries            = 4096           // per table
)

// failState is the failures of one key and the lock they earned.
type failState struct {
	fails int
	last  time.Time
	until time.Time
}

type pairKey struct {
	src  netip.Addr
	user string
}

// authGuard holds the failure tables.
type authGuard struct {
	mu   sync.Mutex
	pair *sipnet.LRU[pairKey, failState]
	src  *sipnet.LRU[netip.Addr, failState]
	acct *sipnet.LRU[string, failState]
	// known are the sources that authenticated as an account (the time of
	// the last success): only a right password adds one, so a flood
	// cannot evict the legitimate phone's entry.
	known *sipnet.LRU[pairKey, time.Time]
}

func newAuthGuard(entries int) *authGuard {
	return &authGuard{pair: sipnet.NewLRU[pairKey, failState](entries), src: sipnet.NewLRU[netip.Addr, failState](entries),
		acct: sipnet.NewLRU[string, failState](entries), known: sipnet.NewLRU[pairKey, time.Time](entries)}
}

// userKey bounds the account name an attacker chooses.
func userKey(user string) string {
	if len(user) > 64 {
		return user[:64]
	}
	return user
}

// locked returns how long credentials of user from src must wait before
// they are checked; 0: check them now.
func (g *authGuard) locked(src netip.Addr, user string, now time.Time) time.Duration {
	src, user = sipnet.RateKey(src), userKey(user)
	g.mu.Lock()
	defer g.mu.Unlock()
	var wait time.Duration
	see := func(f *failState) {
		if f != nil && f.until.After(now) {
			wait = max(wait, f.until.Sub(now))
		}
	}
	f, _ := g.pair.Get(pairKey{src, user}, false)
	see(f)
	f, _ = g.src.Get(src, false)
	see(f)
	if k, _ := g.known.Get(pairKey{src, user}, false); k == nil {
		f, _ = g.acct.Get(user, false)
		see(f)
	}
	return wait
}

// failed records a wrong password (or unknown user) of user from src.
func (g *authGuard) failed(src netip.Addr, user string, now time.Time) {
	src, user = sipnet.RateKey(src), userKey(user)
	g.mu.Lock()
	defer g.mu.Unlock()
	f, _ := g.pair.Get(pairKey{src, user}, true)
	bump(f, now, pairFree, pairMaxLock)
	f, _ = g.src.Get(src, true)
	bump(f, now, srcFree, srcMaxLock)
	f, _ = g.acct.Get(user, true)
	bump(f, now, acctFree, acctMaxLock)
}

// succeeded records a right password: the pair's failures are forgiven
// and src becomes a known device of user.
func (g *authGuard) succeeded(src netip.Addr, user string, now time.Time) {
	src, user = sipnet.RateKey(src), userKey(user)
	g.mu.Lock()
	defer g.mu.Unlock()
	if f, _ := g.pair.Get(pairKey{src, user}, false); f != nil {
		*f = failState{}
	}
	k, _ := g.known.Get(pairKey{src, user}, true)
	*k = now
}

// bump counts a failure and sets the lock it earns: none for the first
// free ones, then lockBase doubling per failure, at most maxLock.
func bump(f *failState, now time.Time, free int, maxLock time.Duration) {
	if now.Sub(f.last) > failForget {
		*f = failState{}
	}
	f.fails++
	f.last = now
	if f.fails <= free {
		return
	}
	d := maxLock
	if n := f.fails - free - 1; n < 32 && lockBase<<n < maxLock {
		d = lockBase << n
	}
	f.until = now.Add(d)
}
