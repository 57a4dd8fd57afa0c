package sipnet

import (
	"net/netip"
	"sync"
	"time"
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
	max   int

	mu      sync.Mutex
	buckets map[netip.Addr]*bucket
	// lru is a doubly linked list through the buckets, most recent first.
	head, tail *bucket
}

type bucket struct {
	key        netip.Addr
	tokens     float64
	last       time.Time
	prev, next *bucket
}

// NewRateLimiter allows rate datagrams per second per source with bursts
// of burst, remembering at most max sources.
func NewRateLimiter(rate float64, burst int, max int) *RateLimiter {
	return &RateLimiter{rate: rate, burst: float64(burst), max: max, buckets: make(map[netip.Addr]*bucket)}
}

func rateKey(a netip.Addr) netip.Addr {
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
	k := rateKey(src)
	r.mu.Lock()
	defer r.mu.Unlock()
	b, ok := r.buckets[k]
	if !ok {
		if len(r.buckets) >= r.max && r.tail != nil {
			b = r.tail
			r.unlink(b)
			delete(r.buckets, b.key)
			*b = bucket{}
		} else {
			b = new(bucket)
		}
		b.key, b.tokens, b.last = k, r.burst, now
		r.buckets[k] = b
	} else {
		r.unlink(b)
		if dt := now.Sub(b.last).Seconds(); dt > 0 {
			b.tokens = min(r.burst, b.tokens+dt*r.rate)
		}
		b.last = now
	}
	r.pushFront(b)
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

func (r *RateLimiter) unlink(b *bucket) {
	if b.prev != nil {
		b.prev.next = b.next
	} else {
		r.head = b.next
	}
	if b.next != nil {
		b.next.prev = b.prev
	} else {
		r.tail = b.prev
	}
	b.prev, b.next = nil, nil
}

func (r *RateLimiter) pushFront(b *bucket) {
	b.next = r.head
	if r.head != nil {
		r.head.prev = b
	}
	r.head = b
	if r.tail == nil {
		r.tail = b
	}
}

// Size is how many sources the table holds.
func (r *RateLimiter) Size() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.buckets)
}
