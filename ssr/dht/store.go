package dht

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/sipmesh/sipmesh/ssr"
)

// entry is a stored record and its holder-side state.
type entry struct {
	rec     Record
	expires time.Time // on this holder's clock
	sum     uint64    // summary hash of (id, seq, tombstone)
	size    int
}

// store holds records with bounded memory: per writer, per key and in total.
type store struct {
	recs      map[recID]*entry
	perWriter map[ssr.NodeID]int
	perKey    map[ssr.NodeID]int
	bytes     int
	sorted    []recID // by key, then writer; rebuilt when dirty
	dirty     bool

	// changes are the records stored or removed since the journal last
	// took them (disk.go); nil when the node keeps nothing on disk. At
	// maxRecords entries it stops growing and overflow asks the journal
	// for a full rewrite instead.
	changes  map[recID]struct{}
	overflow bool

	maxRecords, maxBytes, maxPerWriter, maxPerKey int
}

func newStore(p Params) *store {
	return &store{
		recs:         make(map[recID]*entry),
		perWriter:    make(map[ssr.NodeID]int),
		perKey:       make(map[ssr.NodeID]int),
		maxRecords:   p.MaxRecords,
		maxBytes:     p.MaxBytes,
		maxPerWriter: p.MaxPerWriter,
		maxPerKey:    p.MaxPerKey,
	}
}

// mix64 is splitmix64's finaliser: the summary hash of one version. It
// needs to spread bits, not resist forgery: a forged record never gets in.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

func sumOf(id recID, seq uint64, tomb bool) uint64 {
	h := mix64(uint64(id.key) ^ 0x9e3779b97f4a7c15)
	h = mix64(h ^ uint64(id.writer))
	h = mix64(h ^ seq)
	if tomb {
		h = mix64(h ^ 1)
	}
	return h
}

// put stores r if it is valid and newer than what is held. changed
// reports a new version. A version equal to the one held is no error (a
// retry, a second copy), a strictly older one is ErrStale.
func (s *store) put(now time.Time, r *Record, validate Validator) (changed bool, err error) {
	if err := r.check(); err != nil {
		return false, err
	}
	id := r.id()
	old := s.recs[id]
	if old != nil && !now.Before(old.expires) {
		s.remove(id)
		old = nil
	}
	if old != nil {
		if sameVersion(&old.rec, r) {
			return false, nil
		}
		if old.rec.Seq >= r.Seq {
			return false, fmt.Errorf("%w: key %q holds seq %d, got %d", ErrStale, r.Key, old.rec.Seq, r.Seq)
		}
	}
	if err := r.Verify(); err != nil {
		return false, err
	}
	if validate != nil {
		if err := validate(r); err != nil {
			return false, err
		}
	}
	size := r.encodedLen() + 64 // map and index overhead, roughly
	if old == nil {
		switch {
		case s.perWriter[id.writer] >= s.maxPerWriter:
			return false, fmt.Errorf("%w: writer %s holds %d records here", ErrQuota, id.writer, s.maxPerWriter)
		case s.perKey[id.key] >= s.maxPerKey:
			return false, fmt.Errorf("%w: key %q has %d writers", ErrQuota, r.Key, s.maxPerKey)
		case len(s.recs) >= s.maxRecords:
			return false, fmt.Errorf("%w: store full (%d records)", ErrQuota, s.maxRecords)
		}
	}
	grow := size
	if old != nil {
		grow -= old.size
	}
	if s.bytes+grow > s.maxBytes {
		return false, fmt.Errorf("%w: store full (%d bytes)", ErrQuota, s.maxBytes)
	}
	rec := *r
	rec.Remaining = 0
	e := &entry{rec: rec, expires: now.Add(min(r.Remaining, r.maxRemaining())), sum: sumOf(id, r.Seq, r.Tombstone), size: size}
	if r.Tombstone && old != nil && old.expires.After(e.expires) {
		// A deletion lives at least as long as what it deleted, so that a
		// copy of the old version surfacing later (an island healing, a
		// replay) still meets it.
		e.expires = old.expires
	}
	if old == nil {
		s.perWriter[id.writer]++
		s.perKey[id.key]++
		s.dirty = true
	}
	s.bytes += grow
	s.recs[id] = e
	s.changed(id)
	return true, nil
}

// changed notes id for the journal.
func (s *store) changed(id recID) {
	if s.changes == nil || s.overflow {
		return
	}
	if len(s.changes) >= s.maxRecords {
		s.overflow = true
		clear(s.changes)
		return
	}
	s.changes[id] = struct{}{}
}

func (s *store) remove(id recID) {
	e := s.recs[id]
	if e == nil {
		return
	}
	delete(s.recs, id)
	s.bytes -= e.size
	if s.perWriter[id.writer]--; s.perWriter[id.writer] <= 0 {
		delete(s.perWriter, id.writer)
	}
	if s.perKey[id.key]--; s.perKey[id.key] <= 0 {
		delete(s.perKey, id.key)
	}
	s.dirty = true
	s.changed(id)
}

// get returns the entry for id if it is alive.
func (s *store) get(now time.Time, id recID) *entry {
	e := s.recs[id]
	if e == nil || !now.Before(e.expires) {
		return nil
	}
	return e
}

// expire drops records whose time is up. Tombstones carry the lifetime of
// the deletion, so they outlive the version they replaced.
func (s *store) expire(now time.Time) int {
	n := 0
	for id, e := range s.recs {
		if !now.Before(e.expires) {
			s.remove(id)
			n++
		}
	}
	return n
}

func (s *store) index() []recID {
	if s.dirty {
		s.sorted = s.sorted[:0]
		for id := range s.recs {
			s.sorted = append(s.sorted, id)
		}
		slices.SortFunc(s.sorted, func(a, b recID) int {
			if c := cmp.Compare(a.key, b.key); c != 0 {
				return c
			}
			return cmp.Compare(a.writer, b.writer)
		})
		s.dirty = false
	}
	return s.sorted
}

// inRange reports whether k lies in the ring range [lo, hi); lo == hi is
// the whole ring.
func inRange(lo, hi, k ssr.NodeID) bool {
	return lo == hi || uint64(k-lo) < uint64(hi-lo)
}

// inRangeIDs returns the IDs of records in [lo, hi), clockwise from lo.
func (s *store) inRangeIDs(lo, hi ssr.NodeID, out []recID) []recID {
	idx := s.index()
	start, _ := slices.BinarySearchFunc(idx, lo, func(id recID, k ssr.NodeID) int { return cmp.Compare(id.key, k) })
	n := len(idx)
	for i := 0; i < n; i++ {
		id := idx[(start+i)%n]
		if !inRange(lo, hi, id.key) {
			break
		}
		out = append(out, id)
	}
	return out
}

// forKey returns the entries for key (alive, tombstones included).
func (s *store) forKey(now time.Time, key string) []*entry {
	k := KeyOf(key)
	idx := s.index()
	i, _ := slices.BinarySearchFunc(idx, k, func(id recID, k ssr.NodeID) int { return cmp.Compare(id.key, k) })
	var out []*entry
	for ; i < len(idx) && idx[i].key == k; i++ {
		if e := s.get(now, idx[i]); e != nil && e.rec.Key == key {
			out = append(out, e)
		}
	}
	return out
}

// summary returns the count and XOR of summary hashes over [lo, hi).
func (s *store) summary(now time.Time, lo, hi ssr.NodeID, scratch []recID) (uint32, uint64, []recID) {
	scratch = s.inRangeIDs(lo, hi, scratch[:0])
	var c uint32
	var h uint64
	for _, id := range scratch {
		if e := s.get(now, id); e != nil {
			c++
			h ^= e.sum
		}
	}
	return c, h, scratch
}

// record returns a copy of e's record with its remaining time at now.
func (e *entry) record(now time.Time) Record {
	r := e.rec
	r.Remaining = min(e.expires.Sub(now), r.maxRemaining())
	return r
}
