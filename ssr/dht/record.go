package dht

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/sipmesh/sipmesh/internal/sigcache"
	"github.com/sipmesh/sipmesh/ssr"
)

// Bounds of a record; see FORMAT.md. They keep every message within
// MaxMessage, small enough not to be fragmented on a radio link.
const (
	MaxKey   = 200 // bytes of the key string
	MaxValue = 768 // bytes of the value
	// MaxLifetime bounds a record's lifetime (accounts live long; bindings
	// an hour or so).
	MaxLifetime = 400 * 24 * time.Hour
	// MaxMessage is the largest DHT datagram payload sent.
	MaxMessage = 1200
)

// KeyOf hashes a namespaced key ("aor:sip:201@mesh", "user:201",
// "name:node1") onto the ring: SHA-256 truncated to the ID width.
func KeyOf(key string) ssr.NodeID { return ssr.KeyID([]byte(key)) }

// WriterID names a writer by a hash of its public key (for a node, its
// node ID).
func WriterID(pub ed25519.PublicKey) ssr.NodeID { return ssr.IDFromPublicKey(pub) }

// Record is one writer's value under a key.
type Record struct {
	Key       string
	Writer    ed25519.PublicKey
	Seq       uint64        // version, chosen by the writer; higher wins
	Lifetime  time.Duration // signed lifetime, whole seconds
	Tombstone bool          // a deletion: replaces older versions until it expires
	Value     []byte
	Sig       []byte // ed25519 over everything above (sigInput)

	// Remaining is the time left to live as the sender counted it; it is
	// not signed (each holder counts down on its own clock) and never
	// exceeds Lifetime — except for a tombstone, which holders extend to
	// the expiry of the version it replaced (maxRemaining).
	Remaining time.Duration
}

// id is a record's identity in a store.
type recID struct {
	key    ssr.NodeID
	writer ssr.NodeID
}

func (r *Record) id() recID { return recID{KeyOf(r.Key), WriterID(r.Writer)} }

const sigContext = "sipmesh dht record v1\x00"

// sigInput is the signed byte string: a context label, then the record's
// fields as on the wire (FORMAT.md, "Record").
func (r *Record) sigInput(b []byte) []byte {
	b = append(b, sigContext...)
	b = append(b, byte(len(r.Key)))
	b = append(b, r.Key...)
	b = append(b, r.Writer...)
	b = binary.BigEndian.AppendUint64(b, r.Seq)
	b = binary.BigEndian.AppendUint32(b, uint32(r.Lifetime/time.Second))
	b = append(b, r.flags())
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.Value)))
	return append(b, r.Value...)
}

func (r *Record) flags() byte {
	if r.Tombstone {
		return 1
	}
	return 0
}

// Sign fills Sig with priv's signature; Writer must be priv's public key.
func (r *Record) Sign(priv ed25519.PrivateKey) {
	// The node keeps the records it writes (as their owner or a replica):
	// its own signature needs no verifying when they arrive.
	r.Sig = sigcache.Sign(priv, r.sigInput(nil))
}

// NewRecord makes a record of key → value for ttl (whole seconds), version
// seq, signed by priv: for records written with another key than the
// node's, such as accounts signed by the mesh administrator key. A
// tombstone has no value. A time-based seq (microseconds since 1970) lets
// writes from different machines with the same key order themselves; a
// writer whose clock may be behind reads the record first and uses its seq
// + 1.
func NewRecord(priv ed25519.PrivateKey, key string, value []byte, ttl time.Duration, seq uint64, tombstone bool) (Record, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return Record{}, fmt.Errorf("%w: private key of %d bytes", ErrInvalid, len(priv))
	}
	ttl = (ttl + time.Second - 1).Truncate(time.Second)
	r := Record{Key: key, Writer: priv.Public().(ed25519.PublicKey), Seq: seq, Lifetime: ttl, Tombstone: tombstone,
		Value: bytes.Clone(value), Remaining: ttl, Sig: make([]byte, ed25519.SignatureSize)}
	if err := r.check(); err != nil {
		return Record{}, err
	}
	r.Sign(priv)
	return r, nil
}

// check verifies a record's bounds (not its signature).
func (r *Record) check() error {
	switch {
	case len(r.Key) == 0 || len(r.Key) > MaxKey:
		return fmt.Errorf("%w: key of %d bytes (1..%d)", ErrInvalid, len(r.Key), MaxKey)
	case len(r.Value) > MaxValue:
		return fmt.Errorf("%w: value of %d bytes (at most %d)", ErrTooBig, len(r.Value), MaxValue)
	case len(r.Writer) != ed25519.PublicKeySize:
		return fmt.Errorf("%w: writer key of %d bytes", ErrInvalid, len(r.Writer))
	case len(r.Sig) != ed25519.SignatureSize:
		return fmt.Errorf("%w: signature of %d bytes", ErrInvalid, len(r.Sig))
	case r.Lifetime <= 0 || r.Lifetime > MaxLifetime || r.Lifetime%time.Second != 0:
		return fmt.Errorf("%w: lifetime %v", ErrInvalid, r.Lifetime)
	case r.Remaining <= 0:
		return fmt.Errorf("%w: expired", ErrExpired)
	case r.Tombstone && len(r.Value) != 0:
		return fmt.Errorf("%w: tombstone with a value", ErrInvalid)
	}
	return nil
}

// Verify checks the record's bounds and signature.
func (r *Record) Verify() error {
	if err := r.check(); err != nil {
		return err
	}
	if !sigcache.Verify(r.Writer, r.sigInput(make([]byte, 0, 128+len(r.Key)+len(r.Value))), r.Sig) {
		return fmt.Errorf("%w: key %q seq %d", ErrBadSignature, r.Key, r.Seq)
	}
	return nil
}

// sameVersion reports whether two records are the same signed version.
func sameVersion(a, b *Record) bool {
	return a.Seq == b.Seq && bytes.Equal(a.Sig, b.Sig)
}

// encodedLen is the record's size on the wire.
func (r *Record) encodedLen() int {
	return 1 + len(r.Key) + 32 + 8 + 4 + 1 + 2 + len(r.Value) + 64 + 8
}

// appendRecord encodes r (FORMAT.md, "Record").
func appendRecord(b []byte, r *Record) []byte {
	b = append(b, byte(len(r.Key)))
	b = append(b, r.Key...)
	b = append(b, r.Writer...)
	b = binary.BigEndian.AppendUint64(b, r.Seq)
	b = binary.BigEndian.AppendUint32(b, uint32(r.Lifetime/time.Second))
	b = append(b, r.flags())
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.Value)))
	b = append(b, r.Value...)
	b = append(b, r.Sig...)
	rem := max(r.Remaining, 0) / time.Millisecond
	return binary.BigEndian.AppendUint64(b, uint64(rem))
}

// readRecord decodes one record from b and returns the rest. The slices of
// the record are copies.
func readRecord(b []byte) (Record, []byte, error) {
	var r Record
	if len(b) < 1 {
		return r, nil, errShort
	}
	kl := int(b[0])
	b = b[1:]
	if kl == 0 || kl > MaxKey {
		return r, nil, fmt.Errorf("%w: key length %d", ErrMalformed, kl)
	}
	if len(b) < kl+32+8+4+1+2 {
		return r, nil, errShort
	}
	r.Key = string(b[:kl])
	b = b[kl:]
	r.Writer = ed25519.PublicKey(bytes.Clone(b[:32]))
	r.Seq = binary.BigEndian.Uint64(b[32:])
	r.Lifetime = time.Duration(binary.BigEndian.Uint32(b[40:])) * time.Second
	fl := b[44]
	if fl > 1 {
		return r, nil, fmt.Errorf("%w: record flags %#x", ErrMalformed, fl)
	}
	r.Tombstone = fl == 1
	vl := int(binary.BigEndian.Uint16(b[45:]))
	b = b[47:]
	if vl > MaxValue {
		return r, nil, fmt.Errorf("%w: value length %d", ErrMalformed, vl)
	}
	if len(b) < vl+64+8 {
		return r, nil, errShort
	}
	if vl > 0 {
		r.Value = bytes.Clone(b[:vl])
	}
	r.Sig = bytes.Clone(b[vl : vl+64])
	rem := binary.BigEndian.Uint64(b[vl+64:])
	if rem > uint64(MaxLifetime/time.Millisecond) {
		rem = uint64(MaxLifetime / time.Millisecond)
	}
	r.Remaining = min(time.Duration(rem)*time.Millisecond, r.maxRemaining())
	return r, b[vl+64+8:], nil
}

// maxRemaining bounds the unsigned remaining time: the signed lifetime for
// a value; for a tombstone MaxLifetime, since a holder extends it to
// outlive what it deleted (a writer that restarted does not know that
// lifetime). Stretching a tombstone harms nobody: its writer can still
// write a newer version, and quotas bound what is held.
func (r *Record) maxRemaining() time.Duration {
	if r.Tombstone {
		return MaxLifetime
	}
	return r.Lifetime
}

// Validator is a policy on top of signatures, e.g. "records under user:
// must be written by the admin key". It is called for every record before
// it is stored, whoever sent it; a non-nil error refuses the record.
type Validator func(r *Record) error

// RequireWriter returns a Validator that accepts records whose key starts
// with prefix only from the writer pub, and leaves other keys alone.
func RequireWriter(prefix string, pub ed25519.PublicKey) Validator {
	return func(r *Record) error {
		if len(r.Key) >= len(prefix) && r.Key[:len(prefix)] == prefix && !bytes.Equal(r.Writer, pub) {
			return fmt.Errorf("%w: %q records must be written by the admin key", ErrForbidden, prefix)
		}
		return nil
	}
}

// Validators combines validators: all must accept.
func Validators(vs ...Validator) Validator {
	return func(r *Record) error {
		for _, v := range vs {
			if v == nil {
				continue
			}
			if err := v(r); err != nil {
				return err
			}
		}
		return nil
	}
}
