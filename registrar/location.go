package registrar

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sipmesh/sipmesh/ssr"
)

// Binding is one contact registered for an address-of-record (RFC 3261
// §10): which node took the registration, where to reach the phone and
// until when. The registrar of a node writes the full set of bindings it
// took for an AOR as one record (BindingList); several nodes may hold
// bindings for the same AOR (a phone moved, or two phones of one
// extension on different nodes), and a reader merges all of them
// (MergeBindings).
type Binding struct {
	AOR     string     // "sip:201@mesh": scheme, user and domain, no parameters
	Node    ssr.NodeID // the node that accepted the REGISTER and owns Source
	Contact string     // the contact URI, without the name-addr brackets
	Q       int16      // q-value in thousandths (0..1000), -1 when absent
	// Expires is when the binding lapses. A removed binding that another
	// node still holds is kept as a tombstone (Removed) until that node's
	// copy would have expired, so readers do not resurrect it.
	Expires time.Time
	Updated time.Time // when this node last changed it: the newest wins on merge
	Removed bool
	// Instance and RegID are the RFC 5626 +sip.instance and reg-id contact
	// parameters; with both set, they (not the contact URI) identify the
	// binding (RFC 5626 §6).
	Instance  string
	RegID     uint32
	CallID    string // Call-ID and CSeq of the REGISTER that wrote it, for the
	CSeq      uint32 // ordering check of RFC 3261 §10.3 step 7
	Source    netip.AddrPort
	Transport string // "udp" or "tcp": the flow the REGISTER came over
	UserAgent string
}

// key identifies a binding within its AOR: the instance and reg-id when
// the UA uses RFC 5626 outbound, else the contact URI compared as RFC 3261
// §19.1.4 says (scheme and host case-insensitive).
func (b *Binding) key() string {
	if b.Instance != "" && b.RegID != 0 {
		return fmt.Sprintf("i:%s;%d", b.Instance, b.RegID)
	}
	return "c:" + normalizeURI(b.Contact)
}

// normalizeURI lower-cases the parts of a SIP URI that compare
// case-insensitively: everything except the user part.
func normalizeURI(u string) string {
	at := strings.LastIndexByte(u, '@')
	colon := strings.IndexByte(u, ':')
	if at < 0 {
		return strings.ToLower(u)
	}
	if colon < 0 || colon > at {
		colon = -1
	}
	return strings.ToLower(u[:colon+1]) + u[colon+1:at] + strings.ToLower(u[at:])
}

// LocationStore keeps bindings. The DHT implementation stores one record
// per (AOR, writing node), the bytes of BindingList.MarshalBinary.
type LocationStore interface {
	// Bindings returns the bindings of every node for aor, tombstones and
	// expired entries included (the caller merges them with
	// MergeBindings). No bindings is not an error. With an error it may
	// still return what it knows for sure (the DHT store: this node's own
	// record), for a caller that prefers part of the answer to none.
	Bindings(ctx context.Context, aor string) ([]Binding, error)
	// SetBindings replaces the record of node for aor with bs (all with
	// Node == node); an empty bs deletes the record.
	SetBindings(ctx context.Context, aor string, node ssr.NodeID, bs []Binding) error
}

// MergeBindings folds the records of several nodes into the current
// bindings of one AOR at time now: for each binding key the most recently
// updated entry wins; removed and expired ones are dropped. The result is
// sorted by contact for stable answers.
func MergeBindings(all []Binding, now time.Time) []Binding {
	// The winner of each key, in order of first appearance: a linear
	// search, as an AOR has a handful of entries (a map per call was a
	// measurable share of a REGISTER's cost). The fold is the same as
	// with a map: an entry replaces the winner so far only if newer.
	var wins []int
	if len(all) <= mergeLinear {
		var keyBuf [mergeLinear]string
		var winBuf [mergeLinear]int
		keys := keyBuf[:0]
		wins = winBuf[:0]
		for i := range all {
			k := all[i].key()
			w := slices.Index(keys, k)
			switch {
			case w < 0:
				keys, wins = append(keys, k), append(wins, i)
			case newer(all[i], all[wins[w]]):
				wins[w] = i
			}
		}
	} else {
		// Many writers' entries (bounded by the DHT's, not by us): a map
		// keeps the fold linear.
		at := make(map[string]int, len(all))
		for i := range all {
			k := all[i].key()
			w, ok := at[k]
			switch {
			case !ok:
				at[k] = len(wins)
				wins = append(wins, i)
			case newer(all[i], all[wins[w]]):
				wins[w] = i
			}
		}
	}
	out := make([]Binding, 0, len(wins))
	for _, i := range wins {
		if b := &all[i]; !b.Removed && b.Expires.After(now) {
			out = append(out, *b)
		}
	}
	slices.SortFunc(out, func(a, b Binding) int { return strings.Compare(a.Contact, b.Contact) })
	return out
}

// mergeLinear is how many entries MergeBindings folds by linear search.
const mergeLinear = 16

// newer orders two entries with the same key: later update first, then
// (for equal clocks on two nodes) higher CSeq of the same call, then the
// node ID so that every reader picks the same one.
func newer(a, b Binding) bool {
	if !a.Updated.Equal(b.Updated) {
		return a.Updated.After(b.Updated)
	}
	if a.CallID == b.CallID && a.CSeq != b.CSeq {
		return a.CSeq > b.CSeq
	}
	return a.Node > b.Node
}

// MemLocation is an in-memory LocationStore for tests and a single node.
type MemLocation struct {
	mu   sync.Mutex
	recs map[string]map[ssr.NodeID][]byte // AOR → writer → encoded BindingList
}

// NewMemLocation returns an empty store.
func NewMemLocation() *MemLocation {
	return &MemLocation{recs: make(map[string]map[ssr.NodeID][]byte)}
}

// Bindings implements LocationStore. Records are kept encoded, as the DHT
// keeps them, so tests exercise the codec on every access.
func (m *MemLocation) Bindings(_ context.Context, aor string) ([]Binding, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Binding
	for _, rec := range m.recs[aor] {
		var l BindingList
		if err := l.UnmarshalBinary(rec); err != nil {
			return nil, err
		}
		out = append(out, l...)
	}
	return out, nil
}

// SetBindings implements LocationStore.
func (m *MemLocation) SetBindings(_ context.Context, aor string, node ssr.NodeID, bs []Binding) error {
	b, err := BindingList(bs).MarshalBinary()
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(bs) == 0 {
		delete(m.recs[aor], node)
		if len(m.recs[aor]) == 0 {
			delete(m.recs, aor)
		}
		return nil
	}
	if m.recs[aor] == nil {
		m.recs[aor] = make(map[ssr.NodeID][]byte)
	}
	m.recs[aor][node] = b
	return nil
}

// AORs returns the AORs with at least one record, sorted.
func (m *MemLocation) AORs() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]string, 0, len(m.recs))
	for a := range m.recs {
		out = append(out, a)
	}
	slices.Sort(out)
	return out
}

// BindingList is the record a node writes for one AOR.
//
// Encoding, version 1 (all integers unsigned varints unless noted; strings
// are a varint length and the bytes):
//
//	0x01 version
//	count
//	per binding:
//	  AOR, node (8 bytes big endian), Contact, Q+1,
//	  Expires and Updated (Unix milliseconds, zig-zag varints),
//	  flags (bit 0: Removed), Instance, RegID, CallID, CSeq,
//	  Source (address length 0/4/16, address, port 2 bytes big endian),
//	  Transport, UserAgent
//
// Limits keep a decoder of peer bytes bounded: at most MaxBindingsPerRecord
// bindings and maxBindingString bytes per string.
type BindingList []Binding

// Encoding limits.
const (
	bindingVersion       = 1
	MaxBindingsPerRecord = 64
	maxBindingString     = 2048
)

// Errors of the binding codec.
var (
	ErrBindingVersion = errors.New("binding record: unknown version")
	ErrBindingFormat  = errors.New("binding record: malformed")
)

// MarshalBinary implements encoding.BinaryMarshaler.
func (l BindingList) MarshalBinary() ([]byte, error) {
	if len(l) > MaxBindingsPerRecord {
		return nil, fmt.Errorf("binding record: %d bindings, at most %d", len(l), MaxBindingsPerRecord)
	}
	b := []byte{bindingVersion}
	b = binary.AppendUvarint(b, uint64(len(l)))
	for i := range l {
		x := &l[i]
		for _, s := range []string{x.AOR, x.Contact, x.Instance, x.CallID, x.Transport, x.UserAgent} {
			if len(s) > maxBindingString {
				return nil, fmt.Errorf("binding record: string of %d bytes, at most %d", len(s), maxBindingString)
			}
		}
		if x.Q < -1 || x.Q > 1000 {
			return nil, fmt.Errorf("binding record: q %d out of range", x.Q)
		}
		b = appendString(b, x.AOR)
		b = binary.BigEndian.AppendUint64(b, uint64(x.Node))
		b = appendString(b, x.Contact)
		b = binary.AppendUvarint(b, uint64(x.Q+1))
		b = binary.AppendVarint(b, x.Expires.UnixMilli())
		b = binary.AppendVarint(b, x.Updated.UnixMilli())
		var flags uint64
		if x.Removed {
			flags |= 1
		}
		b = binary.AppendUvarint(b, flags)
		b = appendString(b, x.Instance)
		b = binary.AppendUvarint(b, uint64(x.RegID))
		b = appendString(b, x.CallID)
		b = binary.AppendUvarint(b, uint64(x.CSeq))
		switch a := x.Source.Addr(); {
		case !a.IsValid():
			b = append(b, 0)
		case a.Is4():
			b = append(b, 4)
			b = append(b, a.AsSlice()...)
		default:
			b = append(b, 16)
			a16 := a.As16()
			b = append(b, a16[:]...)
		}
		b = binary.BigEndian.AppendUint16(b, x.Source.Port())
		b = appendString(b, x.Transport)
		b = appendString(b, x.UserAgent)
	}
	return b, nil
}

// UnmarshalBinary implements encoding.BinaryUnmarshaler. It never panics on
// any input, and rejects trailing bytes.
func (l *BindingList) UnmarshalBinary(data []byte) error {
	d := decoder{b: data}
	if v := d.byte(); d.err == nil && v != bindingVersion {
		return fmt.Errorf("%w %d", ErrBindingVersion, v)
	}
	n := d.uvarint()
	if d.err == nil && n > MaxBindingsPerRecord {
		return fmt.Errorf("%w: %d bindings, at most %d", ErrBindingFormat, n, MaxBindingsPerRecord)
	}
	out := make(BindingList, 0, min(n, MaxBindingsPerRecord))
	for i := uint64(0); i < n && d.err == nil; i++ {
		var x Binding
		x.AOR = d.string()
		x.Node = ssr.NodeID(d.uint64())
		x.Contact = d.string()
		q := d.uvarint()
		if q > 1001 {
			d.fail("q out of range")
		}
		x.Q = int16(q) - 1
		x.Expires = time.UnixMilli(d.varint())
		x.Updated = time.UnixMilli(d.varint())
		flags := d.uvarint()
		if flags&^1 != 0 {
			d.fail("unknown flags")
		}
		x.Removed = flags&1 != 0
		x.Instance = d.string()
		regID := d.uvarint()
		if regID > 1<<32-1 {
			d.fail("reg-id out of range")
		}
		x.RegID = uint32(regID)
		x.CallID = d.string()
		cseq := d.uvarint()
		if cseq > 1<<32-1 {
			d.fail("CSeq out of range")
		}
		x.CSeq = uint32(cseq)
		var addr netip.Addr
		switch alen := d.byte(); alen {
		case 0:
		case 4, 16:
			raw := d.bytes(int(alen))
			if d.err == nil {
				addr, _ = netip.AddrFromSlice(raw)
			}
		default:
			d.fail("bad address length")
		}
		port := d.uint16()
		if addr.IsValid() {
			x.Source = netip.AddrPortFrom(addr, port)
		}
		x.Transport = d.string()
		x.UserAgent = d.string()
		out = append(out, x)
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes")
	}
	if d.err != nil {
		return d.err
	}
	*l = out
	return nil
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// decoder reads the record formats of this package; the first error
// sticks and every later read returns zero values.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrBindingFormat, what)
	}
}

func (d *decoder) bytes(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || len(d.b) < n {
		d.fail("truncated")
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) byte() byte {
	v := d.bytes(1)
	if v == nil {
		return 0
	}
	return v[0]
}

func (d *decoder) uint16() uint16 {
	v := d.bytes(2)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint16(v)
}

func (d *decoder) uint64() uint64 {
	v := d.bytes(8)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) string() string {
	n := d.uvarint()
	if d.err == nil && n > maxBindingString {
		d.fail("string too long")
		return ""
	}
	return string(d.bytes(int(n)))
}
