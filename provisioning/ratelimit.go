package provisioning

import (
	"net/netip"
	"sync"
	"time"
)

// sourceLimiter is a token bucket per source address for the HTTP server:
// any LAN host can send requests at will, and every configuration request
// costs a look-up in the account store. The table is bounded; when it is
// full the entry idle longest goes (a source that comes back starts with
// a full bucket, which costs at most one burst).
type sourceLimiter struct {
	rate  float64 // tokens per second
	burst float64
	max   int
	now   func() time.Time

	mu  sync.Mutex
	src map[netip.Addr]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newSourceLimiter(rate float64, burst, max int, now func() time.Time) *sourceLimiter {
	return &sourceLimiter{rate: rate, burst: float64(burst), max: max, now: now, src: make(map[netip.Addr]*bucket)}
}

// allow takes a token from a's bucket.
func (l *sourceLimiter) allow(a netip.Addr) bool {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.src[a]
	if b == nil {
		if len(l.src) >= l.max {
			l.evictLocked()
		}
		b = &bucket{tokens: l.burst, last: now}
		l.src[a] = b
	}
	if el := now.Sub(b.last).Seconds(); el > 0 {
		b.tokens = min(l.burst, b.tokens+el*l.rate)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// evictLocked drops the entry idle longest. O(n), with n bounded by max
// and paid only by a request from a new source while the table is full.
func (l *sourceLimiter) evictLocked() {
	var (
		oldest netip.Addr
		at     time.Time
	)
	for a, b := range l.src {
		if !oldest.IsValid() || b.last.Before(at) {
			oldest, at = a, b.last
		}
	}
	delete(l.src, oldest)
}
