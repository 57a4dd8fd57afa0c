package dht

import (
	"encoding/binary"
	"fmt"

	"github.com/sipmesh/sipmesh/ssr"
)

// Version is the wire format version (FORMAT.md).
const Version = 1

// Port is the mesh port DHT datagrams travel between (ssr datagrams carry
// ports like UDP); it is next to ssr.DefaultPort.
const Port = 7448

// Message types.
const (
	msgStore    = 1
	msgStoreAck = 2
	msgGet      = 3
	msgGetReply = 4
	msgSummary  = 5
	msgDigest   = 6
	msgWant     = 7
)

// STORE flags.
const (
	storeAck     = 1 << 0 // answer with STORE_ACK
	storeReplica = 1 << 1 // a copy for a replica: store, do not fan out
	storeHandoff = 1 << 2 // a hand-off from a node no longer responsible (counted apart)
	storeFlags   = storeAck | storeReplica | storeHandoff
)

// GET flags.
const (
	getLocal = 1 << 0 // answer from the local store only (an owner consulting its replicas)
)

const (
	hdrLen      = 10 // version, type, request ID
	digestEntry = 25 // key, writer, seq, flags
	wantEntry   = 16
	// maxDigest and maxWant fill one MaxMessage datagram.
	maxDigest = (MaxMessage - hdrLen - 18) / digestEntry
	maxWant   = (MaxMessage - hdrLen - 2) / wantEntry
)

// digest is one record's summary in a DIGEST.
type digest struct {
	id   recID
	seq  uint64
	tomb bool
}

// message is any DHT datagram, decoded. Fields not used by its type are
// zero.
type message struct {
	typ   byte
	req   uint64
	flags byte       // STORE, GET
	code  byte       // STORE_ACK, GET_REPLY
	hops  byte       // GET_REPLY: physical hops the GET took (capped at 255)
	part  byte       // GET_REPLY: index of this part
	last  byte       // GET_REPLY: index of the last part
	key   string     // GET
	recs  []Record   // STORE (exactly one), GET_REPLY
	lo    ssr.NodeID // SUMMARY, DIGEST: key range [lo, hi); lo == hi is the whole ring
	hi    ssr.NodeID
	count uint32   // SUMMARY
	hash  uint64   // SUMMARY
	dig   []digest // DIGEST
	want  []recID  // WANT
}

func header(b []byte, typ byte, req uint64) []byte {
	b = append(b, Version, typ)
	return binary.BigEndian.AppendUint64(b, req)
}

func encodeStore(b []byte, req uint64, flags byte, r *Record) []byte {
	b = header(b, msgStore, req)
	b = append(b, flags)
	return appendRecord(b, r)
}

func encodeStoreAck(b []byte, req uint64, code byte) []byte {
	return append(header(b, msgStoreAck, req), code)
}

func encodeGet(b []byte, req uint64, flags byte, key string) []byte {
	b = header(b, msgGet, req)
	b = append(b, flags, byte(len(key)))
	return append(b, key...)
}

// getReplyHdr is the size of a GET_REPLY without records.
const getReplyHdr = hdrLen + 5

func encodeGetReply(b []byte, req uint64, code, hops, part, last byte, recs []*Record) []byte {
	b = header(b, msgGetReply, req)
	b = append(b, code, hops, part, last, byte(len(recs)))
	for _, r := range recs {
		b = appendRecord(b, r)
	}
	return b
}

func encodeSummary(b []byte, lo, hi ssr.NodeID, count uint32, hash uint64) []byte {
	b = header(b, msgSummary, 0)
	b = binary.BigEndian.AppendUint64(b, uint64(lo))
	b = binary.BigEndian.AppendUint64(b, uint64(hi))
	b = binary.BigEndian.AppendUint32(b, count)
	return binary.BigEndian.AppendUint64(b, hash)
}

func encodeDigest(b []byte, lo, hi ssr.NodeID, ds []digest) []byte {
	b = header(b, msgDigest, 0)
	b = binary.BigEndian.AppendUint64(b, uint64(lo))
	b = binary.BigEndian.AppendUint64(b, uint64(hi))
	b = binary.BigEndian.AppendUint16(b, uint16(len(ds)))
	for _, d := range ds {
		b = binary.BigEndian.AppendUint64(b, uint64(d.id.key))
		b = binary.BigEndian.AppendUint64(b, uint64(d.id.writer))
		b = binary.BigEndian.AppendUint64(b, d.seq)
		fl := byte(0)
		if d.tomb {
			fl = 1
		}
		b = append(b, fl)
	}
	return b
}

func encodeWant(b []byte, ids []recID) []byte {
	b = header(b, msgWant, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(len(ids)))
	for _, id := range ids {
		b = binary.BigEndian.AppendUint64(b, uint64(id.key))
		b = binary.BigEndian.AppendUint64(b, uint64(id.writer))
	}
	return b
}

// decode parses a DHT datagram. It checks the format only: signatures and
// bounds of the records are the store's business. Bytes after the last
// field are ignored (FORMAT.md).
func decode(b []byte) (message, error) {
	var m message
	if len(b) < hdrLen {
		return m, errShort
	}
	if b[0] != Version {
		return m, fmt.Errorf("%w: version %d (want %d)", ErrMalformed, b[0], Version)
	}
	m.typ, m.req = b[1], binary.BigEndian.Uint64(b[2:])
	b = b[hdrLen:]
	switch m.typ {
	case msgStore:
		if len(b) < 1 {
			return m, errShort
		}
		m.flags = b[0]
		if m.flags&^storeFlags != 0 {
			return m, fmt.Errorf("%w: store flags %#x", ErrMalformed, m.flags)
		}
		r, _, err := readRecord(b[1:])
		if err != nil {
			return m, err
		}
		m.recs = []Record{r}
	case msgStoreAck:
		if len(b) < 1 {
			return m, errShort
		}
		m.code = b[0]
	case msgGet:
		if len(b) < 2 {
			return m, errShort
		}
		m.flags = b[0]
		kl := int(b[1])
		if m.flags&^getLocal != 0 {
			return m, fmt.Errorf("%w: get flags %#x", ErrMalformed, m.flags)
		}
		if kl == 0 || kl > MaxKey || len(b) < 2+kl {
			return m, fmt.Errorf("%w: key length %d", ErrMalformed, kl)
		}
		m.key = string(b[2 : 2+kl])
	case msgGetReply:
		if len(b) < 5 {
			return m, errShort
		}
		m.code, m.hops, m.part, m.last = b[0], b[1], b[2], b[3]
		n := int(b[4])
		if m.part > m.last {
			return m, fmt.Errorf("%w: part %d of %d", ErrMalformed, m.part, m.last)
		}
		b = b[5:]
		for range n {
			r, rest, err := readRecord(b)
			if err != nil {
				return m, err
			}
			m.recs = append(m.recs, r)
			b = rest
		}
	case msgSummary:
		if len(b) < 28 {
			return m, errShort
		}
		m.lo = ssr.NodeID(binary.BigEndian.Uint64(b))
		m.hi = ssr.NodeID(binary.BigEndian.Uint64(b[8:]))
		m.count = binary.BigEndian.Uint32(b[16:])
		m.hash = binary.BigEndian.Uint64(b[20:])
	case msgDigest:
		if len(b) < 18 {
			return m, errShort
		}
		m.lo = ssr.NodeID(binary.BigEndian.Uint64(b))
		m.hi = ssr.NodeID(binary.BigEndian.Uint64(b[8:]))
		n := int(binary.BigEndian.Uint16(b[16:]))
		b = b[18:]
		if n > maxDigest || len(b) < n*digestEntry {
			return m, fmt.Errorf("%w: digest of %d entries in %d bytes", ErrMalformed, n, len(b))
		}
		m.dig = make([]digest, n)
		for i := range m.dig {
			e := b[i*digestEntry:]
			if e[24] > 1 {
				return m, fmt.Errorf("%w: digest flags %#x", ErrMalformed, e[24])
			}
			m.dig[i] = digest{
				id:   recID{ssr.NodeID(binary.BigEndian.Uint64(e)), ssr.NodeID(binary.BigEndian.Uint64(e[8:]))},
				seq:  binary.BigEndian.Uint64(e[16:]),
				tomb: e[24] == 1,
			}
		}
	case msgWant:
		if len(b) < 2 {
			return m, errShort
		}
		n := int(binary.BigEndian.Uint16(b))
		b = b[2:]
		if n > maxWant || len(b) < n*wantEntry {
			return m, fmt.Errorf("%w: want of %d entries in %d bytes", ErrMalformed, n, len(b))
		}
		m.want = make([]recID, n)
		for i := range m.want {
			e := b[i*wantEntry:]
			m.want[i] = recID{ssr.NodeID(binary.BigEndian.Uint64(e)), ssr.NodeID(binary.BigEndian.Uint64(e[8:]))}
		}
	default:
		return m, fmt.Errorf("%w: type %d", ErrMalformed, m.typ)
	}
	return m, nil
}
