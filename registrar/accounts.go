package registrar

import (
	"context"
	"crypto/ed25519"
	"crypto/md5"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/sipmesh/sipmesh/internal/sigcache"
	"slices"
	"strings"
	"sync"
	"time"
)

// Realm is the digest realm of every account: the mesh is one domain, so a
// phone's credentials work at whichever node it is plugged into.
const Realm = "mesh"

// Account is a subscriber: an extension (the user part of sip:EXT@mesh),
// a display name and the digest HA1 values for realm "mesh" (RFC 7616 §3.4.2:
// H(username:realm:password)) for MD5 and SHA-256. The password itself is
// never stored or sent to a node.
type Account struct {
	Ext       string   `json:"ext"`
	Display   string   `json:"display,omitempty"`
	HA1MD5    HexBytes `json:"ha1_md5"`
	HA1SHA256 HexBytes `json:"ha1_sha256"`
	// Updated orders versions of the record (the DHT keeps the newest).
	Updated time.Time `json:"updated"`
}

// HexBytes is a byte string shown as hex in JSON.
type HexBytes []byte

// MarshalText implements encoding.TextMarshaler.
func (h HexBytes) MarshalText() ([]byte, error) { return []byte(hex.EncodeToString(h)), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (h *HexBytes) UnmarshalText(b []byte) error {
	v, err := hex.DecodeString(string(b))
	if err != nil {
		return fmt.Errorf("not hex: %w", err)
	}
	*h = v
	return nil
}

// Account limits.
const (
	MaxExtLen     = 32
	MaxDisplayLen = 64
	MinPassword   = 6
)

// ValidExt reports whether ext can be an extension: 1 to MaxExtLen
// characters from RFC 3261's "unreserved" set minus the ones phones handle
// badly, so it is a SIP user part without escaping.
func ValidExt(ext string) error {
	if ext == "" || len(ext) > MaxExtLen {
		return fmt.Errorf("extension %q: want 1 to %d characters", ext, MaxExtLen)
	}
	for _, c := range []byte(ext) {
		ok := c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '_' || c == '.'
		if !ok {
			return fmt.Errorf("extension %q: only letters, digits, '-', '_' and '.'", ext)
		}
	}
	return nil
}

// NewAccount returns the account for ext with the HA1 values of password.
func NewAccount(ext, password, display string) (Account, error) {
	if err := ValidExt(ext); err != nil {
		return Account{}, err
	}
	if len(password) < MinPassword {
		return Account{}, fmt.Errorf("password: at least %d characters", MinPassword)
	}
	if len(display) > MaxDisplayLen {
		return Account{}, fmt.Errorf("display name: at most %d bytes", MaxDisplayLen)
	}
	a := Account{Ext: ext, Display: display, Updated: time.Now().UTC().Truncate(time.Millisecond)}
	m := md5.Sum([]byte(ext + ":" + Realm + ":" + password))
	s := sha256.Sum256([]byte(ext + ":" + Realm + ":" + password))
	a.HA1MD5, a.HA1SHA256 = m[:], s[:]
	return a, nil
}

// Validate checks an account that came from outside (the control socket,
// a DHT record).
func (a Account) Validate() error {
	if err := ValidExt(a.Ext); err != nil {
		return err
	}
	if len(a.Display) > MaxDisplayLen {
		return fmt.Errorf("display name: at most %d bytes", MaxDisplayLen)
	}
	if len(a.HA1MD5) != md5.Size || len(a.HA1SHA256) != sha256.Size {
		return fmt.Errorf("account %s: HA1 must be %d (MD5) and %d (SHA-256) bytes", a.Ext, md5.Size, sha256.Size)
	}
	return nil
}

// Errors of account stores.
var (
	ErrNoAccount   = errors.New("no such account")
	ErrStaleRecord = errors.New("account record older than the one stored")
)

// Accounts is where the registrar looks up subscribers. Changes arrive as
// records signed by the mesh administrator key (SignAccount), which the
// store checks before keeping them, so a node without the key cannot add
// or remove subscribers, and the DHT implementation can check every
// replica's copy the same way.
type Accounts interface {
	// Account returns the account of ext, or an error wrapping ErrNoAccount.
	Account(ctx context.Context, ext string) (Account, error)
	// ListAccounts returns all accounts sorted by extension.
	ListAccounts(ctx context.Context) ([]Account, error)
	// PutRecord stores a signed account record or tombstone. A record not
	// newer (Updated) than the stored version of its extension is refused
	// with ErrStaleRecord, a bad signature with ErrAccountSignature.
	PutRecord(ctx context.Context, rec []byte) error
}

// MemAccounts is an in-memory Accounts that trusts records signed by one
// administrator key.
type MemAccounts struct {
	admin ed25519.PublicKey

	mu sync.Mutex
	m  map[string]Account // live accounts
	// gone keeps the time of each removal, so an older copy of a deleted
	// account cannot bring it back.
	gone map[string]time.Time
}

// NewMemAccounts returns an empty account store trusting admin.
func NewMemAccounts(admin ed25519.PublicKey) *MemAccounts {
	return &MemAccounts{admin: admin, m: make(map[string]Account), gone: make(map[string]time.Time)}
}

// Account implements Accounts.
func (s *MemAccounts) Account(_ context.Context, ext string) (Account, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.m[ext]
	if !ok {
		return Account{}, fmt.Errorf("%s: %w", ext, ErrNoAccount)
	}
	return a, nil
}

// PutRecord implements Accounts.
func (s *MemAccounts) PutRecord(_ context.Context, rec []byte) error {
	a, deleted, err := OpenAccount(s.admin, rec)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	last := s.gone[a.Ext]
	if old, ok := s.m[a.Ext]; ok {
		last = old.Updated
	}
	if !a.Updated.After(last) {
		return fmt.Errorf("%s: %w", a.Ext, ErrStaleRecord)
	}
	if deleted {
		delete(s.m, a.Ext)
		s.gone[a.Ext] = a.Updated
		return nil
	}
	delete(s.gone, a.Ext)
	s.m[a.Ext] = a
	return nil
}

// ListAccounts implements Accounts.
func (s *MemAccounts) ListAccounts(context.Context) ([]Account, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Account, 0, len(s.m))
	for _, a := range s.m {
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b Account) int { return strings.Compare(a.Ext, b.Ext) })
	return out, nil
}

// Account record encoding, version 1: the bytes the DHT stores.
//
//	0x01 version
//	Updated (Unix milliseconds, zig-zag varint)
//	Ext, Display (varint length + bytes)
//	HA1 MD5 (16 bytes), HA1 SHA-256 (32 bytes)
//	flags (varint, bit 0: deleted: a tombstone so a removal wins over
//	       older copies still held by replicas)
//
// A signed record is the encoding followed by a 64-byte ed25519 signature
// of "sipmesh-account-v1\x00" + encoding by the mesh administrator key.
const (
	accountVersion = 1
	accountSigCtx  = "sipmesh-account-v1\x00"
)

// Errors of the account codec.
var (
	ErrAccountFormat    = errors.New("account record: malformed")
	ErrAccountSignature = errors.New("account record: bad signature")
)

// MarshalBinary implements encoding.BinaryMarshaler.
func (a Account) MarshalBinary() ([]byte, error) { return a.marshal(false) }

func (a Account) marshal(deleted bool) ([]byte, error) {
	if deleted {
		if err := ValidExt(a.Ext); err != nil {
			return nil, err
		}
	} else if err := a.Validate(); err != nil {
		return nil, err
	}
	b := []byte{accountVersion}
	b = binary.AppendVarint(b, a.Updated.UnixMilli())
	b = appendString(b, a.Ext)
	b = appendString(b, a.Display)
	ha1m, ha1s := make([]byte, md5.Size), make([]byte, sha256.Size)
	copy(ha1m, a.HA1MD5)
	copy(ha1s, a.HA1SHA256)
	b = append(b, ha1m...)
	b = append(b, ha1s...)
	var flags uint64
	if deleted {
		flags = 1
	}
	return binary.AppendUvarint(b, flags), nil
}

// UnmarshalBinary implements encoding.BinaryUnmarshaler for a live
// account record (a tombstone is an error here; see OpenAccount).
func (a *Account) UnmarshalBinary(data []byte) error {
	v, deleted, err := unmarshalAccount(data)
	if err != nil {
		return err
	}
	if deleted {
		return fmt.Errorf("%w: %s is deleted", ErrAccountFormat, v.Ext)
	}
	*a = v
	return nil
}

func unmarshalAccount(data []byte) (Account, bool, error) {
	d := decoder{b: data}
	if v := d.byte(); d.err == nil && v != accountVersion {
		return Account{}, false, fmt.Errorf("%w: unknown version %d", ErrAccountFormat, v)
	}
	var a Account
	a.Updated = time.UnixMilli(d.varint()).UTC()
	a.Ext = d.string()
	a.Display = d.string()
	a.HA1MD5 = slices.Clone(d.bytes(md5.Size))
	a.HA1SHA256 = slices.Clone(d.bytes(sha256.Size))
	flags := d.uvarint()
	if d.err == nil && flags&^1 != 0 {
		d.fail("unknown flags")
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes")
	}
	if d.err != nil {
		return Account{}, false, fmt.Errorf("%w: %v", ErrAccountFormat, d.err)
	}
	deleted := flags&1 != 0
	if deleted {
		if err := ValidExt(a.Ext); err != nil {
			return Account{}, false, fmt.Errorf("%w: %v", ErrAccountFormat, err)
		}
	} else if err := a.Validate(); err != nil {
		return Account{}, false, fmt.Errorf("%w: %v", ErrAccountFormat, err)
	}
	return a, deleted, nil
}

// SignAccount encodes a (or, with deleted, a tombstone for a.Ext at
// a.Updated) and signs it with the mesh administrator key.
func SignAccount(admin ed25519.PrivateKey, a Account, deleted bool) ([]byte, error) {
	b, err := a.marshal(deleted)
	if err != nil {
		return nil, err
	}
	sig := ed25519.Sign(admin, append([]byte(accountSigCtx), b...))
	return append(b, sig...), nil
}

// OpenAccount checks the administrator's signature on a signed account
// record and decodes it. deleted reports a tombstone.
func OpenAccount(admin ed25519.PublicKey, rec []byte) (a Account, deleted bool, err error) {
	if len(rec) < ed25519.SignatureSize+1 {
		return Account{}, false, fmt.Errorf("%w: %d bytes", ErrAccountFormat, len(rec))
	}
	body, sig := rec[:len(rec)-ed25519.SignatureSize], rec[len(rec)-ed25519.SignatureSize:]
	if len(admin) != ed25519.PublicKeySize || !sigcache.Verify(admin, append([]byte(accountSigCtx), body...), sig) {
		return Account{}, false, ErrAccountSignature
	}
	return unmarshalAccount(body)
}
