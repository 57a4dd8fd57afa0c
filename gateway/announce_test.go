package gateway

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/dns64"
)

func TestAnnouncementRoundTrip(t *testing.T) {
	for _, a := range []Announcement{
		{Name: "gw1", Up: true, URIs: true},
		{Name: "gw-2", Up: true, URIs: true, Trunk: true, DialPrefix: "0", Inbound: true, Domain: "voice.example.org",
			RTT: 23456 * time.Microsecond, Loss: 0.125, Probes: 10},
		{URIs: true, Loss: 1, Probes: 3},
		{Name: "gw3", Up: true, URIs: true, NAT64: netip.MustParsePrefix("64:ff9b::/96")},
		{Name: "gw4", Up: true, NAT64: netip.MustParsePrefix("2001:db8:64::/48")},
	} {
		v := encodeAnnouncement(a)
		got, err := decodeAnnouncement(v)
		if err != nil || !reflect.DeepEqual(got, a) {
			t.Errorf("decode(encode(%+v)) = %+v, %v", a, got, err)
		}
		// A later version appends fields: they are ignored.
		if got, err := decodeAnnouncement(append(bytes.Clone(v), 1, 2, 3)); err != nil || !reflect.DeepEqual(got, a) {
			t.Errorf("with trailing bytes: %+v, %v", got, err)
		}
	}
	// A record from before NAT64 (no nat64 field) announces none.
	old := encodeAnnouncement(Announcement{Name: "gw5", URIs: true})
	if old[len(old)-1] != 0 {
		t.Fatalf("no NAT64 encodes as %x", old)
	}
	if got, err := decodeAnnouncement(old[:len(old)-1]); err != nil || got.NAT64.IsValid() || got.Name != "gw5" {
		t.Errorf("pre-NAT64 record: %+v, %v", got, err)
	}
	// Out-of-range values are clamped when encoding.
	got, err := decodeAnnouncement(encodeAnnouncement(Announcement{Name: string(bytes.Repeat([]byte("n"), 40)), Loss: 2, RTT: -time.Second, Probes: 1000}))
	if err != nil || len(got.Name) != maxAnnounceName || got.Loss != 1 || got.RTT != 0 || got.Probes != 255 {
		t.Errorf("clamped: %+v, %v", got, err)
	}
}

func TestAnnouncementRefused(t *testing.T) {
	good := encodeAnnouncement(Announcement{Name: "gw", Up: true, URIs: true, Trunk: true, DialPrefix: "0"})
	bad := map[string][]byte{
		"empty":            nil,
		"version 0":        append([]byte{0}, good[1:]...),
		"truncated":        good[:len(good)-2], // into the dial prefix
		"loss over 100 %":  append(append(bytes.Clone(good[:6]), 0x27, 0x11), good[8:]...),
		"control in name":  encodeAnnouncement(Announcement{Name: "g\x1bw", URIs: true}),
		"bad domain":       encodeAnnouncement(Announcement{Name: "gw", Inbound: true, Domain: "-x.example"}),
		"letters dialled":  encodeAnnouncement(Announcement{Name: "gw", Trunk: true, DialPrefix: "0a"}),
		"trunk, no prefix": encodeAnnouncement(Announcement{Name: "gw", Trunk: true}),
		"prefix, no trunk": encodeAnnouncement(Announcement{Name: "gw", DialPrefix: "0"}),
		"domain, no flag":  encodeAnnouncement(Announcement{Name: "gw", Domain: "voice.example.org"}),
		"NAT64 /80":        encodeAnnouncement(Announcement{Name: "gw", NAT64: netip.MustParsePrefix("2001:db8::/80")}),
		"NAT64 u octet":    encodeAnnouncement(Announcement{Name: "gw", NAT64: netip.MustParsePrefix("2001:db8:0:0:100::/96")}),
		"NAT64 truncated":  encodeAnnouncement(Announcement{Name: "gw", NAT64: dns64.WellKnownPrefix})[:30],
	}
	for name, v := range bad {
		if a, err := decodeAnnouncement(v); err == nil {
			t.Errorf("%s: decoded as %+v", name, a)
		}
	}
}

// FuzzDecodeAnnouncement: any bytes another node signs under "gateways"
// decode to an error or to an announcement that encodes back to the same
// fields.
func FuzzDecodeAnnouncement(f *testing.F) {
	f.Add(encodeAnnouncement(Announcement{Name: "gw1", Up: true, URIs: true, Trunk: true, DialPrefix: "0", Inbound: true, Domain: "voice.example.org", RTT: time.Millisecond, Loss: 0.1, Probes: 10}))
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add(encodeAnnouncement(Announcement{Name: "gw2", Up: true, NAT64: dns64.WellKnownPrefix}))
	f.Fuzz(func(t *testing.T, v []byte) {
		a, err := decodeAnnouncement(v)
		if err != nil {
			return
		}
		b, err := decodeAnnouncement(encodeAnnouncement(a))
		if err != nil || !reflect.DeepEqual(a, b) {
			t.Fatalf("%+v re-encoded decodes as %+v, %v", a, b, err)
		}
	})
}

// TestAnnouncementSeedCorpus keeps the fuzz target's checked-in corpus
// (testdata/fuzz) in step with the format: regenerate it with
// SIPMESH_WRITE_CORPUS=1.
func TestAnnouncementSeedCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzDecodeAnnouncement")
	seeds := map[string][]byte{
		"gateway-full":  encodeAnnouncement(Announcement{Name: "gw1", Up: true, URIs: true, Trunk: true, DialPrefix: "0", Inbound: true, Domain: "voice.example.org", RTT: 12 * time.Millisecond, Loss: 0.05, Probes: 10}),
		"gateway-plain": encodeAnnouncement(Announcement{Name: "gw2", URIs: true}),
		"truncated":     encodeAnnouncement(Announcement{Name: "gw3", URIs: true})[:7],
		"gateway-nat64": encodeAnnouncement(Announcement{Name: "gw4", Up: true, URIs: true, NAT64: dns64.WellKnownPrefix}),
		"pre-nat64":     encodeAnnouncement(Announcement{Name: "gw5", URIs: true})[:15],
	}
	for name, v := range seeds {
		want := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", v)
		path := filepath.Join(dir, name)
		if os.Getenv("SIPMESH_WRITE_CORPUS") != "" {
			if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != want {
			t.Errorf("%s: corpus file differs from the format (%v); rerun with SIPMESH_WRITE_CORPUS=1", path, err)
		}
	}
}
