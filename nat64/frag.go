package nat64

import "time"

// FragmentTimeout is how long the translation of a first fragment is
// remembered for the fragments after it: FRAGMENT_MIN of RFC 6146 §4.
const FragmentTimeout = 2 * time.Second

// Fragments after the first carry no ports, so the binding cannot be
// found from them (RFC 6146 §3.4). Instead of reassembling, the
// translator remembers the addresses it gave the first fragment of each
// datagram and gives them to the rest. Fragments that arrive before their
// first one are dropped.

// fragKey names a datagram by its source, destination, protocol and
// Identification (IPv4 addresses in the first 4 bytes).
type fragKey struct {
	src, dst [16]byte
	id       uint32
	proto    uint8
	from4    bool
}

type fragEntry struct {
	tu4     tuple4
	tu6     tuple6
	expires time.Time
}

type fragQItem struct {
	key     fragKey
	expires time.Time
}

// frags is a bounded table: entries have one fixed lifetime, so a FIFO
// ring in insertion order is also in expiry order.
type frags struct {
	m    map[fragKey]fragEntry
	ring []fragQItem
	head int
	n    int
}

func (f *frags) expire(now time.Time) {
	for f.n > 0 && !now.Before(f.ring[f.head].expires) {
		f.pop()
	}
}

// pop forgets the oldest entry, unless its key was since reused.
func (f *frags) pop() {
	it := f.ring[f.head]
	if e, ok := f.m[it.key]; ok && e.expires.Equal(it.expires) {
		delete(f.m, it.key)
	}
	f.ring[f.head] = fragQItem{}
	f.head = (f.head + 1) % len(f.ring)
	f.n--
}

// add remembers a first fragment's translation; when the table is full
// the oldest entry makes room.
func (f *frags) add(k fragKey, e fragEntry) {
	if len(f.ring) == 0 {
		return
	}
	if f.n == len(f.ring) {
		f.pop()
	}
	f.m[k] = e
	f.ring[(f.head+f.n)%len(f.ring)] = fragQItem{k, e.expires}
	f.n++
}

func frag6Key(h *hdr6) fragKey {
	return fragKey{src: h.src, dst: h.dst, id: h.fragID, proto: h.proto}
}

func frag4Key(h *hdr4) fragKey {
	k := fragKey{id: uint32(h.id), proto: h.proto, from4: true}
	copy(k.src[:], h.src[:])
	copy(k.dst[:], h.dst[:])
	return k
}
