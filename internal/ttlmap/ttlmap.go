// Package ttlmap is a small map whose entries expire, bounded in size:
// the shape of the short-lived caches in front of the DHT (accounts in
// registrar, .mesh answers in dns64, empty mailboxes in proxy). When
// full, a Put first drops the expired entries, then, if that was not
// enough, all of them: every user keeps only what it can look up again,
// so a clear costs look-ups, never a wrong answer, and no least-recently-
// used bookkeeping is paid on the hot path.
package ttlmap

import (
	"sync"
	"time"
)

// Map maps keys to values until their time is up; the zero value is not
// ready, use New. Safe for concurrent use.
type Map[K comparable, V any] struct {
	max int
	mu  sync.Mutex
	m   map[K]entry[V]
}

type entry[V any] struct {
	v     V
	until time.Time
}

// New returns a Map of at most max entries.
func New[K comparable, V any](max int) *Map[K, V] {
	return &Map[K, V]{max: max, m: make(map[K]entry[V])}
}

// Get returns k's value if it is still valid at now.
func (c *Map[K, V]) Get(k K, now time.Time) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[k]
	if !ok || !now.Before(e.until) {
		var zero V
		return zero, false
	}
	return e.v, true
}

// Put keeps v under k until until.
func (c *Map[K, V]) Put(k K, v V, until, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[k]; !ok && len(c.m) >= c.max {
		for key, e := range c.m {
			if !now.Before(e.until) {
				delete(c.m, key)
			}
		}
		if len(c.m) >= c.max {
			clear(c.m)
		}
	}
	c.m[k] = entry[V]{v, until}
}

// Delete forgets k.
func (c *Map[K, V]) Delete(k K) {
	c.mu.Lock()
	delete(c.m, k)
	c.mu.Unlock()
}

// Len is the number of entries held, expired ones included.
func (c *Map[K, V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
