package sipnet

import (
	"net/netip"
	"sync"
	"time"
)

// Default per-source ceiling of SIP requests (proxy and registrar): high
// enough that a PBX or a load generator alone on one LAN address is
// served at what the node can do (thousands of REGISTERs or calls per
// second, issue 12), low enough that one address cannot make the node
// parse without bound. Fairness among sources under load is the Guard's
// share of live transactions, not this ceiling.
const (
	DefaultSourceRate  = 20000 // requests per second per source
	DefaultSourceBurst = 20000
)

// RateLimiter is a token bucket per source IP address, with a bounded
// table: when it is full, the bucket idle the longest is reused. Sources
// that evict each other start with a full burst, so a flood from many
// addresses is bounded by the worker queue instead (and memory by the
// table size), while one noisy source is bounded here.
//
// Global IPv6 sources are keyed by their /64: one host owns a whole /64
// and could otherwise rotate addresses to escape its bucket. Link-local
// ones share fe80::/64 on every link, so they are keyed by address.
type RateLimiter struct {
	rate  float64 // tokens per second
	burst float64

	mu      sync.Mutex
	buckets *LRU[netip.Addr, bucket]
}

type bucket struct {
	tokens float64
	last   time.Time
}

// NewRateLimiter allows rate datagrams per second per source with bursts
// of burst, remembering at most max sources.
func NewRateLimiter(rate float64, burst int, max int) *RateLimiter {
	return &RateLimiter{rate: rate, burst: float64(burst), buckets: NewLRU[netip.Addr, bucket](max)}
}

// RateKey is how a source is keyed: an IPv4 address or link-local IPv6
// address by itself, a global IPv6 address by its /64.
func RateKey(a netip.Addr) netip.Addr {
	a = a.Unmap().WithZone("")
	if a.Is6() && !a.IsLinkLocalUnicast() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// Allow takes a token for src at now and reports whether there was one.
func (r *RateLimiter) Allow(src netip.Addr, now time.Time) bool {
	if r == nil || r.rate <= 0 {
		return true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	b, created := r.buckets.Get(RateKey(src), true)
	if created {
		b.tokens, b.last = r.burst, now
	} else {
		if dt := now.Sub(b.last).Seconds(); dt > 0 {
			b.tokens = min(r.burst, b.tokens+dt*r.rate)
		}
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// Size is how many sources the table holds.
func (r *RateLimiter) Size() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.buckets.Len()
}
