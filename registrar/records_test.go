package registrar

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/md5"
	"crypto/sha256"
	"errors"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/ssr"
)

func ssrID(n uint64) ssr.NodeID { return ssr.NodeID(n) }

func sampleBindings() BindingList {
	t0 := time.UnixMilli(1795000000123)
	return BindingList{
		{AOR: "sip:201@mesh", Node: 0xfedcba9876543210, Contact: "sip:201@192.168.1.50:5062;transport=udp", Q: 700,
			Expires: t0.Add(time.Hour), Updated: t0, Instance: "<urn:uuid:1>", RegID: 1, CallID: "c@h", CSeq: 4294967295,
			Source: netip.MustParseAddrPort("192.168.1.50:5062"), Transport: "udp", UserAgent: "Yealink SIP-T21P"},
		{AOR: "sip:201@mesh", Node: 1, Contact: "sip:201@[fd00::5]", Q: -1, Expires: t0, Updated: t0, Removed: true,
			Source: netip.MustParseAddrPort("[fd00::5]:5060"), Transport: "tcp"},
		{AOR: "sip:201@mesh", Q: 0},
	}
}

func TestBindingListRoundTrip(t *testing.T) {
	in := sampleBindings()
	b, err := in.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var out BindingList
	if err := out.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if len(out) != len(in) {
		t.Fatalf("%d bindings back, want %d", len(out), len(in))
	}
	for i := range in {
		a, o := in[i], out[i]
		if !a.Expires.Equal(o.Expires) || !a.Updated.Equal(o.Updated) {
			t.Errorf("%d: times %v %v, want %v %v", i, o.Expires, o.Updated, a.Expires, a.Updated)
		}
		a.Expires, a.Updated, o.Expires, o.Updated = time.Time{}, time.Time{}, time.Time{}, time.Time{}
		if !reflect.DeepEqual(a, o) {
			t.Errorf("%d:\n got %+v\nwant %+v", i, o, a)
		}
	}
	var empty BindingList
	eb, _ := empty.MarshalBinary()
	if err := out.UnmarshalBinary(eb); err != nil || len(out) != 0 {
		t.Errorf("empty list: %v %v", out, err)
	}
}

func TestBindingListErrors(t *testing.T) {
	good, _ := sampleBindings().MarshalBinary()
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrBindingFormat},
		{"version", append([]byte{2}, good[1:]...), ErrBindingVersion},
		{"truncated", good[:len(good)-1], ErrBindingFormat},
		{"trailing", append(bytes.Clone(good), 0), ErrBindingFormat},
		{"too many", []byte{1, 0xff, 0x01}, ErrBindingFormat},
		{"huge string", []byte{1, 1, 0xff, 0xff, 0x03}, ErrBindingFormat},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var l BindingList
			if err := l.UnmarshalBinary(tt.in); !errors.Is(err, tt.want) {
				t.Errorf("got %v, want %v", err, tt.want)
			}
		})
	}
	big := make(BindingList, MaxBindingsPerRecord+1)
	if _, err := big.MarshalBinary(); err == nil {
		t.Error("marshalled too many bindings")
	}
}

func FuzzBindingList(f *testing.F) {
	good, _ := sampleBindings().MarshalBinary()
	f.Add(good)
	f.Add([]byte{1, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		var l BindingList
		if err := l.UnmarshalBinary(data); err != nil {
			return
		}
		// Whatever decodes re-encodes to a record that decodes the same.
		again, err := l.MarshalBinary()
		if err != nil {
			t.Fatalf("decoded %+v does not encode: %v", l, err)
		}
		var l2 BindingList
		if err := l2.UnmarshalBinary(again); err != nil || len(l2) != len(l) {
			t.Fatalf("re-decoding: %v", err)
		}
	})
}

func TestMergeBindings(t *testing.T) {
	now := time.Unix(1000, 0)
	b := func(node uint64, contact string, updated, expires int64, removed bool) Binding {
		return Binding{Node: ssrID(node), Contact: contact, Updated: time.Unix(updated, 0), Expires: time.Unix(expires, 0), Removed: removed}
	}
	got := MergeBindings([]Binding{
		b(1, "sip:a@h", 900, 2000, false),
		b(2, "sip:a@H", 950, 1500, false), // same key (host case), newer: wins
		b(1, "sip:b@h", 900, 2000, false),
		b(2, "sip:b@h", 950, 2000, true), // newer tombstone hides b
		b(1, "sip:c@h", 900, 999, false), // expired
	}, now)
	if len(got) != 1 || got[0].Node != 2 || got[0].Contact != "sip:a@H" {
		t.Errorf("merged %+v", got)
	}
}

func TestAccountRecords(t *testing.T) {
	a, err := NewAccount("201", "secret201", "Alice")
	if err != nil {
		t.Fatal(err)
	}
	// RFC 2617 HA1 = MD5(user:realm:password).
	want := md5.Sum([]byte("201:mesh:secret201"))
	if !bytes.Equal(a.HA1MD5, want[:]) {
		t.Errorf("HA1 %x, want %x", a.HA1MD5, want)
	}
	want256 := sha256.Sum256([]byte("201:mesh:secret201"))
	if !bytes.Equal(a.HA1SHA256, want256[:]) {
		t.Errorf("SHA-256 HA1 %x, want %x", a.HA1SHA256, want256)
	}
	b, err := a.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var back Account
	if err := back.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, a) {
		t.Errorf("round trip:\n got %+v\nwant %+v", back, a)
	}

	pub, priv, _ := ed25519.GenerateKey(nil)
	rec, err := SignAccount(priv, a, false)
	if err != nil {
		t.Fatal(err)
	}
	got, deleted, err := OpenAccount(pub, rec)
	if err != nil || deleted || got.Ext != "201" {
		t.Errorf("open: %+v %v %v", got, deleted, err)
	}
	forged := bytes.Clone(rec)
	forged[5] ^= 1
	if _, _, err := OpenAccount(pub, forged); !errors.Is(err, ErrAccountSignature) {
		t.Errorf("forged record: %v", err)
	}
	otherPub, _, _ := ed25519.GenerateKey(nil)
	if _, _, err := OpenAccount(otherPub, rec); !errors.Is(err, ErrAccountSignature) {
		t.Errorf("record signed by another key: %v", err)
	}
	tomb, _ := SignAccount(priv, Account{Ext: "201", Updated: a.Updated.Add(time.Second)}, true)
	if got, deleted, err := OpenAccount(pub, tomb); err != nil || !deleted || got.Ext != "201" {
		t.Errorf("tombstone: %+v %v %v", got, deleted, err)
	}
	if err := back.UnmarshalBinary(tomb[:len(tomb)-64]); err == nil {
		t.Error("a tombstone decoded as a live account")
	}

	for _, bad := range []struct{ ext, pw, display string }{
		{"", "secret1", ""}, {"2 01", "secret1", ""}, {"201", "short", ""}, {"201", "secret1", string(make([]byte, 65))},
		{"sip:201", "secret1", ""},
	} {
		if _, err := NewAccount(bad.ext, bad.pw, bad.display); err == nil {
			t.Errorf("NewAccount(%q, %q, %q) accepted", bad.ext, bad.pw, bad.display)
		}
	}
}

func FuzzAccountRecord(f *testing.F) {
	a, _ := NewAccount("201", "secret201", "Alice")
	b, _ := a.MarshalBinary()
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		var a Account
		if err := a.UnmarshalBinary(data); err != nil {
			return
		}
		if err := a.Validate(); err != nil {
			t.Fatalf("decoded an invalid account %+v: %v", a, err)
		}
		if _, err := a.MarshalBinary(); err != nil {
			t.Fatal(err)
		}
	})
}

func TestMemAccounts(t *testing.T) {
	ctx := context.Background()
	pub, priv, _ := ed25519.GenerateKey(nil)
	s := NewMemAccounts(pub)
	if _, err := s.Account(ctx, "201"); !errors.Is(err, ErrNoAccount) {
		t.Errorf("missing: %v", err)
	}
	put := func(a Account, deleted bool) error {
		rec, err := SignAccount(priv, a, deleted)
		if err != nil {
			t.Fatal(err)
		}
		return s.PutRecord(ctx, rec)
	}
	var a201 Account
	for _, ext := range []string{"202", "201"} {
		a, _ := NewAccount(ext, "secret"+ext, "")
		if err := put(a, false); err != nil {
			t.Fatal(err)
		}
		a201 = a
	}
	l, _ := s.ListAccounts(ctx)
	if len(l) != 2 || l[0].Ext != "201" || l[1].Ext != "202" {
		t.Errorf("list %+v", l)
	}
	// The same version again (a replayed record) is refused.
	if err := put(a201, false); !errors.Is(err, ErrStaleRecord) {
		t.Errorf("replayed record: %v", err)
	}
	// A record signed by someone else is refused.
	_, other, _ := ed25519.GenerateKey(nil)
	evil, _ := NewAccount("666", "secret666", "")
	rec, _ := SignAccount(other, evil, false)
	if err := s.PutRecord(ctx, rec); !errors.Is(err, ErrAccountSignature) {
		t.Errorf("forged record: %v", err)
	}
	// Deletion is a newer tombstone; the old record cannot revive it.
	old, _ := SignAccount(priv, a201, false)
	tomb := Account{Ext: "201", Updated: a201.Updated.Add(time.Second)}
	if err := put(tomb, true); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Account(ctx, "201"); !errors.Is(err, ErrNoAccount) {
		t.Errorf("after delete: %v", err)
	}
	if err := s.PutRecord(ctx, old); !errors.Is(err, ErrStaleRecord) {
		t.Errorf("old record after delete: %v", err)
	}
}

func TestNonceTableBounded(t *testing.T) {
	m := newNonceMinter(time.Minute)
	now := time.Unix(1e9, 0)
	for i := range maxTrackedNonces + 100 {
		n := m.mint(now)
		id, err := m.check(n, now)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.use(id, 1, now); err != nil {
			t.Fatalf("use %d: %v", i, err)
		}
	}
	if m.tracked() > maxTrackedNonces {
		t.Errorf("tracking %d nonces, bound %d", m.tracked(), maxTrackedNonces)
	}
	// After the lifetime every entry expires, also without a new use,
	// and the map the burst grew is made anew.
	later := now.Add(2 * time.Minute)
	m.sweep(later)
	if m.tracked() != 0 || m.peak != 0 || cap(m.order) != 0 {
		t.Errorf("after sweep: %d tracked, peak %d, order cap %d; want none", m.tracked(), m.peak, cap(m.order))
	}
	n := m.mint(later)
	id, _ := m.check(n, later)
	m.use(id, 1, later)
	if m.tracked() != 1 {
		t.Errorf("after expiry %d tracked, want 1", m.tracked())
	}
	if len(m.order)-m.head > 2 {
		t.Errorf("order queue holds %d", len(m.order)-m.head)
	}
}

func TestParseDigest(t *testing.T) {
	tests := []struct {
		in   string
		ok   bool
		want digestParams
	}{
		{`Digest username="201", realm="mesh", nonce="abc", uri="sip:mesh", response="0123", algorithm=MD5, qop=auth, nc=0000000a, cnonce="x y"`, true,
			digestParams{username: "201", realm: "mesh", nonce: "abc", uri: "sip:mesh", response: "0123", algorithm: "MD5", qop: "auth", nc: 10, cnonce: "x y"}},
		{`digest  realm = "me\"sh" ,nonce="n",stale=TRUE`, true, digestParams{realm: `me"sh`, nonce: "n", stale: true}},
		{`Digest realm="mesh", nonce="n", qop="auth"`, true, digestParams{realm: "mesh", nonce: "n", qop: "auth"}},
		{`Basic dXNlcjpwYXNz`, false, digestParams{}},
		{`DigestX realm="a"`, false, digestParams{}},
		{`Digest realm="unterminated`, false, digestParams{}},
		{`Digest nc=zz`, false, digestParams{}},
		{`Digest =x`, false, digestParams{}},
		{`Digest`, false, digestParams{}},
	}
	for _, tt := range tests {
		got, ok := parseDigest(tt.in)
		if ok != tt.ok || ok && got != tt.want {
			t.Errorf("parseDigest(%q) = %+v, %v; want %+v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func FuzzParseDigest(f *testing.F) {
	f.Add(`Digest username="201", realm="mesh", nonce="abc", uri="sip:mesh", response="0123", qop=auth, nc=00000001, cnonce="x"`)
	f.Add(`Digest realm="a\\b\"c"`)
	f.Fuzz(func(t *testing.T, s string) {
		parseDigest(s) // must not panic or loop
	})
}

// TestMergeBindingsFold: MergeBindings (linear search for a handful of
// entries, a map beyond) picks what the plain map fold picks, ties and
// order included.
func TestMergeBindingsFold(t *testing.T) {
	ref := func(all []Binding, now time.Time) []Binding {
		win := make(map[string]Binding, len(all))
		var order []string
		for _, b := range all {
			k := b.key()
			w, ok := win[k]
			if !ok {
				order = append(order, k)
			} else if !newer(b, w) {
				continue
			}
			win[k] = b
		}
		var out []Binding
		for _, k := range order {
			if b := win[k]; !b.Removed && b.Expires.After(now) {
				out = append(out, b)
			}
		}
		slices.SortFunc(out, func(a, b Binding) int { return strings.Compare(a.Contact, b.Contact) })
		return out
	}
	rng := rand.New(rand.NewPCG(1, 2))
	now := time.Unix(1_700_000_000, 0)
	for range 2000 {
		all := make([]Binding, rng.IntN(3*mergeLinear))
		for i := range all {
			all[i] = Binding{
				AOR: "sip:201@mesh", Node: ssr.NodeID(rng.IntN(3) + 1),
				Contact: "sip:201@10.0.0." + strconv.Itoa(rng.IntN(6)),
				Expires: now.Add(time.Duration(rng.IntN(3)-1) * time.Minute),
				Updated: now.Add(-time.Duration(rng.IntN(3)) * time.Second),
				Removed: rng.IntN(5) == 0,
				CallID:  "c" + strconv.Itoa(rng.IntN(2)), CSeq: uint32(rng.IntN(3)),
			}
		}
		got, want := MergeBindings(all, now), ref(all, now)
		if !slices.EqualFunc(got, want, func(a, b Binding) bool { return a == b }) {
			t.Fatalf("%d entries: merged %+v, want %+v", len(all), got, want)
		}
	}
}
