package dns64

import (
	"container/list"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// cacheKey names one upstream question; the name is lower case (RFC 4343:
// DNS names compare case-insensitively).
type cacheKey struct {
	name   string
	qtype  uint16
	qclass uint16
}

type cacheEntry struct {
	key     cacheKey
	msg     *dns.Msg // rcode, answer, authority, additional without OPT
	stored  time.Time
	expires time.Time
}

// cache holds upstream responses, bounded in entries (least recently used
// goes first) and in time (each entry lives for its TTL, capped). Negative
// answers are cached for the SOA's negative TTL (RFC 2308 §5).
type cache struct {
	max    int
	maxTTL time.Duration

	mu    sync.Mutex
	lru   list.List // of *cacheEntry, most recent at the front
	items map[cacheKey]*list.Element
}

func newCache(max int, maxTTL time.Duration) *cache {
	return &cache{max: max, maxTTL: maxTTL, items: make(map[cacheKey]*list.Element)}
}

// cacheTTL returns how long m may be cached, or 0 if it must not be.
//
// Positive answers live for the smallest TTL in the answer section (RFC
// 2181 §5.2: an RRset's TTLs are equal; across a CNAME chain the shortest
// one bounds the whole answer). Negative answers, NXDOMAIN or NODATA (RFC
// 2308 §1), live for min(SOA TTL, SOA MINIMUM) of the SOA in the authority
// section (RFC 2308 §5), and are not cached without one ("Negative responses
// without SOA records SHOULD NOT be cached"). Other RCODEs are not cached.
func cacheTTL(m *dns.Msg, qtype uint16) time.Duration {
	if m.Truncated || (m.Rcode != dns.RcodeSuccess && m.Rcode != dns.RcodeNameError) {
		return 0
	}
	ttl := uint32(1<<31 - 1)
	hasData := false
	for _, rr := range m.Answer {
		ttl = min(ttl, rr.Header().Ttl)
		if t := rr.Header().Rrtype; t == qtype || qtype == dns.TypeANY {
			hasData = true
		}
	}
	if m.Rcode == dns.RcodeNameError || !hasData {
		soa := findSOA(m.Ns)
		if soa == nil {
			return 0
		}
		ttl = min(ttl, soa.Hdr.Ttl, soa.Minttl)
	}
	return time.Duration(ttl) * time.Second
}

func findSOA(rrs []dns.RR) *dns.SOA {
	for _, rr := range rrs {
		if soa, ok := rr.(*dns.SOA); ok {
			return soa
		}
	}
	return nil
}

// put stores a copy of m under k if it is cacheable.
func (c *cache) put(k cacheKey, m *dns.Msg, now time.Time) {
	if c == nil {
		return
	}
	ttl := min(cacheTTL(m, k.qtype), c.maxTTL)
	if ttl <= 0 {
		return
	}
	stored := &dns.Msg{}
	stored.Rcode = m.Rcode
	stored.Answer = copyRRs(m.Answer)
	stored.Ns = copyRRs(m.Ns)
	for _, rr := range m.Extra {
		if rr.Header().Rrtype != dns.TypeOPT {
			stored.Extra = append(stored.Extra, dns.Copy(rr))
		}
	}
	e := &cacheEntry{key: k, msg: stored, stored: now, expires: now.Add(ttl)}

	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[k]; ok {
		el.Value = e
		c.lru.MoveToFront(el)
		return
	}
	c.items[k] = c.lru.PushFront(e)
	for c.lru.Len() > c.max {
		old := c.lru.Back()
		c.lru.Remove(old)
		delete(c.items, old.Value.(*cacheEntry).key)
	}
}

// get returns a copy of the cached response for k with every TTL lowered
// by the time it spent in the cache, or nil.
func (c *cache) get(k cacheKey, now time.Time) *dns.Msg {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	el, ok := c.items[k]
	if !ok {
		c.mu.Unlock()
		return nil
	}
	e := el.Value.(*cacheEntry)
	if !now.Before(e.expires) {
		c.lru.Remove(el)
		delete(c.items, k)
		c.mu.Unlock()
		return nil
	}
	c.lru.MoveToFront(el)
	c.mu.Unlock()

	age := uint32(now.Sub(e.stored) / time.Second)
	m := &dns.Msg{}
	m.Rcode = e.msg.Rcode
	m.Answer = agedCopy(e.msg.Answer, age)
	m.Ns = agedCopy(e.msg.Ns, age)
	m.Extra = agedCopy(e.msg.Extra, age)
	return m
}

// len returns the number of entries (tests).
func (c *cache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

func copyRRs(rrs []dns.RR) []dns.RR {
	if len(rrs) == 0 {
		return nil
	}
	out := make([]dns.RR, len(rrs))
	for i, rr := range rrs {
		out[i] = dns.Copy(rr)
	}
	return out
}

func agedCopy(rrs []dns.RR, age uint32) []dns.RR {
	out := copyRRs(rrs)
	for _, rr := range out {
		h := rr.Header()
		if h.Ttl > age {
			h.Ttl -= age
		} else {
			h.Ttl = 0
		}
	}
	return out
}
