package nat64

import (
	"net/netip"
	"testing"
)

// TestRFC6052Vectors checks the examples of RFC 6052 §2.4 (Table 1 and
// the Well-Known Prefix line): 192.0.2.33 under each prefix length.
func TestRFC6052Vectors(t *testing.T) {
	v4 := netip.MustParseAddr("192.0.2.33")
	for _, tc := range []struct{ prefix, want string }{
		{"2001:db8::/32", "2001:db8:c000:221::"},
		{"2001:db8:100::/40", "2001:db8:1c0:2:21::"},
		{"2001:db8:122::/48", "2001:db8:122:c000:2:2100::"},
		{"2001:db8:122:300::/56", "2001:db8:122:3c0:0:221::"},
		{"2001:db8:122:344::/64", "2001:db8:122:344:c0:2:2100:0"},
		{"2001:db8:122:344::/96", "2001:db8:122:344::192.0.2.33"},
		{"64:ff9b::/96", "64:ff9b::192.0.2.33"},
	} {
		t.Run(tc.prefix, func(t *testing.T) {
			p := netip.MustParsePrefix(tc.prefix)
			got, err := Embed(p, v4)
			if err != nil {
				t.Fatal(err)
			}
			if want := netip.MustParseAddr(tc.want); got != want {
				t.Fatalf("Embed = %v, want %v", got, want)
			}
			back, ok := Extract(p, got)
			if !ok || back != v4 {
				t.Fatalf("Extract(%v) = %v %v, want %v", got, back, ok, v4)
			}
		})
	}
}

func TestExtractOutside(t *testing.T) {
	p := netip.MustParsePrefix("2001:db8:122::/48")
	if _, ok := Extract(p, netip.MustParseAddr("2001:db8:123:c000:2:2100::")); ok {
		t.Fatal("address outside the prefix extracted")
	}
	if _, ok := Extract(p, netip.MustParseAddr("::ffff:192.0.2.1")); ok {
		t.Fatal("IPv4-mapped address extracted")
	}
}

func TestValidatePrefix(t *testing.T) {
	for _, tc := range []struct {
		p  string
		ok bool
	}{
		{"64:ff9b::/96", true},
		{"2001:db8::/32", true},
		{"2001:db8::/33", false},         // not a RFC 6052 length
		{"2001:db8::1/96", false},        // host bits
		{"2001:db8:0:0:100::/96", false}, // u octet set
		{"192.0.2.0/24", false},          // IPv4
		{"2001:db8:122:344::/64", true},
	} {
		if err := ValidatePrefix(netip.MustParsePrefix(tc.p)); (err == nil) != tc.ok {
			t.Errorf("ValidatePrefix(%s) = %v, want ok=%v", tc.p, err, tc.ok)
		}
	}
}
