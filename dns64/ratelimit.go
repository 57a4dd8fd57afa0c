package dns64

import (
	"net/netip"
	"sync"
	"time"
)

// limiter is a per-source token bucket with a bounded table, so a flood
// from many (possibly spoofed) sources cannot grow memory: when the table
// is full and no idle entry can be reclaimed, unknown sources share one
// overflow bucket and compete with each other, not with known clients.
type limiter struct {
	rate  float64 // tokens per second
	burst float64
	max   int
	now   func() time.Time

	mu        sync.Mutex
	buckets   map[netip.Addr]*bucket
	overflow  bucket
	lastSweep time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

// Per-source defaults of Config.Rate and Config.Burst: queries per second.
// A ceiling above what a node answers from one address (issue 12: one
// PC core replays some 60,000 to 80,000 a second in `make bench-peers`;
// at 20,000, SIP's ceiling, the limit and not the node set what dnsperf
// measured), so a client alone — a LAN's caching resolver, a load
// generator — is served at what the node can do, while a flood beyond
// that is dropped before anything else is spent on it. What one source
// can make the node do besides replays is bounded apart: MaxInflight
// look-ups, ForwardRate upstream.
const (
	DefaultRate  = 200000
	DefaultBurst = 200000
)

// newLimiter limits each source to rate queries per second (≤ 0: no
// limit) with bursts of burst, remembering at most max sources.
func newLimiter(rate float64, burst, max int, now func() time.Time) *limiter {
	if rate < 0 {
		rate = 0
	}
	return &limiter{rate: rate, burst: float64(burst), max: max, now: now,
		buckets: make(map[netip.Addr]*bucket), overflow: bucket{tokens: float64(burst)}}
}

// allow takes one token from src's bucket and reports whether there was
// one. A zero rate disables limiting.
func (l *limiter) allow(src netip.Addr) bool {
	if l.rate == 0 {
		return true
	}
	return l.allowAt(src, l.now())
}

// allowAt is allow at time now: a batch of queries read at once takes
// the time once.
func (l *limiter) allowAt(src netip.Addr, now time.Time) bool {
	if l.rate == 0 {
		return true
	}
	src = src.Unmap().WithZone("")
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[src]
	if !ok {
		// Sweeping costs O(max); at most once a second, so a flood of
		// new sources cannot make every packet pay for it.
		if len(l.buckets) >= l.max && now.Sub(l.lastSweep) >= time.Second {
			l.lastSweep = now
			l.sweepLocked(now)
		}
		if len(l.buckets) >= l.max {
			return l.takeLocked(&l.overflow, now)
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[src] = b
	}
	return l.takeLocked(b, now)
}

func (l *limiter) takeLocked(b *bucket, now time.Time) bool {
	return b.take(now, l.rate, l.burst)
}

// take refills b at rate up to burst and takes one token if there is one.
func (b *bucket) take(now time.Time, rate, burst float64) bool {
	if el := now.Sub(b.last).Seconds(); el > 0 {
		b.tokens = min(burst, b.tokens+el*rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// sweepLocked forgets sources whose bucket has refilled: forgetting them
// changes nothing, a new bucket starts full.
func (l *limiter) sweepLocked(now time.Time) {
	for a, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.burst {
			delete(l.buckets, a)
		}
	}
}

func (l *limiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}
