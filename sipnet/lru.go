package sipnet

// LRU is a bounded map: when it is full, the entry touched least
// recently makes room for a new one. The tables a peer can grow (rate
// buckets, failed authentications) are LRUs, so memory is bounded
// whatever the sources. It is not safe for concurrent use.
type LRU[K comparable, V any] struct {
	max        int
	m          map[K]*lruEntry[K, V]
	head, tail *lruEntry[K, V] // most recent first
}

type lruEntry[K comparable, V any] struct {
	key        K
	val        V
	prev, next *lruEntry[K, V]
}

// NewLRU returns an LRU of at most size entries (at least 1).
func NewLRU[K comparable, V any](size int) *LRU[K, V] {
	return &LRU[K, V]{max: max(size, 1), m: make(map[K]*lruEntry[K, V])}
}

// Get returns the value of k and marks it used. When k is absent it is
// added with the zero value if create is set (created reports that),
// evicting the least recently used entry if full; else Get returns nil.
func (l *LRU[K, V]) Get(k K, create bool) (v *V, created bool) {
	if e, ok := l.m[k]; ok {
		l.unlink(e)
		l.pushFront(e)
		return &e.val, false
	}
	if !create {
		return nil, false
	}
	var e *lruEntry[K, V]
	if len(l.m) >= l.max && l.tail != nil {
		e = l.tail
		l.unlink(e)
		delete(l.m, e.key)
		*e = lruEntry[K, V]{}
	} else {
		e = new(lruEntry[K, V])
	}
	e.key = k
	l.m[k] = e
	l.pushFront(e)
	return &e.val, true
}

// Len is how many entries the LRU holds.
func (l *LRU[K, V]) Len() int { return len(l.m) }

func (l *LRU[K, V]) unlink(e *lruEntry[K, V]) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		l.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		l.tail = e.prev
	}
	e.prev, e.next = nil, nil
}

func (l *LRU[K, V]) pushFront(e *lruEntry[K, V]) {
	e.next = l.head
	if l.head != nil {
		l.head.prev = e
	}
	l.head = e
	if l.tail == nil {
		l.tail = e
	}
}

// Oldest returns the key and value of the entry touched least recently;
// ok is false when the LRU is empty.
func (l *LRU[K, V]) Oldest() (k K, v *V, ok bool) {
	if l.tail == nil {
		return k, nil, false
	}
	return l.tail.key, &l.tail.val, true
}

// Delete removes k if present.
func (l *LRU[K, V]) Delete(k K) {
	if e, ok := l.m[k]; ok {
		l.unlink(e)
		delete(l.m, k)
	}
}
