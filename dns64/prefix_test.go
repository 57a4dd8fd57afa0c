package dns64

import (
	"net/netip"
	"testing"
)

// TestEmbedRFC6052Examples checks the examples of RFC 6052 §2.4 (Table 1):
// 192.0.2.33 under 2001:db8::/32 ... 2001:db8:122:344::/96 and the
// Well-Known Prefix.
func TestEmbedRFC6052Examples(t *testing.T) {
	v4 := netip.MustParseAddr("192.0.2.33")
	tests := []struct{ prefix, want string }{
		{"2001:db8::/32", "2001:db8:c000:221::"},
		{"2001:db8:100::/40", "2001:db8:1c0:2:21::"},
		{"2001:db8:122::/48", "2001:db8:122:c000:2:2100::"},
		{"2001:db8:122:300::/56", "2001:db8:122:3c0:0:221::"},
		{"2001:db8:122:344::/64", "2001:db8:122:344:c0:2:2100:0"},
		{"2001:db8:122:344::/96", "2001:db8:122:344::192.0.2.33"},
		{"64:ff9b::/96", "64:ff9b::192.0.2.33"},
	}
	for _, tt := range tests {
		t.Run(tt.prefix, func(t *testing.T) {
			p := netip.MustParsePrefix(tt.prefix)
			if err := ValidatePrefix(p); err != nil {
				t.Fatal(err)
			}
			want := netip.MustParseAddr(tt.want)
			if got := Embed(p, v4); got != want {
				t.Errorf("Embed(%v, %v) = %v, want %v", p, v4, got, want)
			}
			if got, ok := Extract(p, want); !ok || got != v4 {
				t.Errorf("Extract(%v, %v) = %v, %v; want %v", p, want, got, ok, v4)
			}
		})
	}
}

// TestEmbedIssueCase is the issue's case: 198.51.100.10 under
// 2001:db8:64::/96 is 2001:db8:64::c633:640a.
func TestEmbedIssueCase(t *testing.T) {
	got := Embed(netip.MustParsePrefix("2001:db8:64::/96"), netip.MustParseAddr("198.51.100.10"))
	if want := netip.MustParseAddr("2001:db8:64::c633:640a"); got != want {
		t.Errorf("got %v, want %v", got, want)
	}
}

// TestEmbedUOctet checks on every prefix length and a few addresses that
// bits 64–71 stay zero and that Extract inverts Embed.
func TestEmbedUOctet(t *testing.T) {
	for _, pl := range []string{"2001:db8::/32", "2001:db8:ff00::/40", "2001:db8:ffff::/48", "2001:db8:ffff:ff00::/56", "2001:db8:ffff:ffff::/64", "2001:db8:ffff:ffff::/96"} {
		p := netip.MustParsePrefix(pl)
		for _, s := range []string{"0.0.0.0", "255.255.255.255", "1.2.3.4", "198.51.100.10"} {
			v4 := netip.MustParseAddr(s)
			a := Embed(p, v4)
			if b := a.As16(); b[8] != 0 {
				t.Errorf("Embed(%v, %v) = %v: u octet %#x", p, v4, a, b[8])
			}
			if !p.Contains(a) {
				t.Errorf("Embed(%v, %v) = %v: outside the prefix", p, v4, a)
			}
			if got, ok := Extract(p, a); !ok || got != v4 {
				t.Errorf("Extract(%v, %v) = %v, %v", p, a, got, ok)
			}
		}
	}
}

func TestValidatePrefix(t *testing.T) {
	bad := []string{
		"2001:db8::/33",         // not an RFC 6052 length
		"2001:db8::/128",        // ditto
		"10.0.0.0/8",            // IPv4
		"2001:db8::1/64",        // host bits
		"2001:db8:0:0:100::/96", // u octet set
		"::ffff:0:0/96",         // IPv4-mapped
	}
	for _, s := range bad {
		if err := ValidatePrefix(netip.MustParsePrefix(s)); err == nil {
			t.Errorf("ValidatePrefix(%s) = nil, want an error", s)
		}
	}
	if err := ValidatePrefix(netip.Prefix{}); err == nil {
		t.Error("ValidatePrefix(zero) = nil")
	}
}

// TestIsGlobal4 covers each range RFC 6052 §3.1 (via RFC 1918 and RFC 5735
// §3) and RFC 6598 exclude, at both ends, and global neighbours.
func TestIsGlobal4(t *testing.T) {
	nonGlobalAddrs := []string{
		"0.0.0.0", "0.255.255.255", "10.0.0.0", "10.255.255.255", "100.64.0.0", "100.127.255.255",
		"127.0.0.1", "169.254.1.1", "172.16.0.0", "172.31.255.255", "192.0.0.8", "192.0.2.33",
		"192.168.1.1", "198.18.0.1", "198.19.255.255", "198.51.100.10", "203.0.113.7", "224.0.0.1",
		"239.255.255.255", "240.0.0.1", "255.255.255.255",
	}
	global := []string{
		"1.1.1.1", "8.8.8.8", "9.255.255.255", "11.0.0.0", "100.63.255.255", "100.128.0.0", "172.15.255.255",
		"172.32.0.0", "192.0.1.255", "192.0.3.0", "192.88.99.1", "192.167.255.255", "198.17.255.255",
		"198.20.0.0", "198.51.101.0", "203.0.114.0", "223.255.255.255",
	}
	for _, s := range nonGlobalAddrs {
		if IsGlobal4(netip.MustParseAddr(s)) {
			t.Errorf("IsGlobal4(%s) = true", s)
		}
	}
	for _, s := range global {
		if !IsGlobal4(netip.MustParseAddr(s)) {
			t.Errorf("IsGlobal4(%s) = false", s)
		}
	}
}

func TestReverseNames(t *testing.T) {
	a := netip.MustParseAddr("2001:db8:64::c633:640a")
	name := reverseName6(a)
	if want := "a.0.4.6.3.3.6.c.0.0.0.0.0.0.0.0.0.0.0.0.4.6.0.0.8.b.d.0.1.0.0.2.ip6.arpa."; name != want {
		t.Fatalf("reverseName6 = %s, want %s", name, want)
	}
	if got, ok := parseReverse6(name); !ok || got != a {
		t.Errorf("parseReverse6(%s) = %v, %v", name, got, ok)
	}
	for _, bad := range []string{"ip6.arpa.", "0.ip6.arpa.", name[2:], "g" + name[1:], "a-" + name[2:], "a.0.4.6.in-addr.arpa."} {
		if _, ok := parseReverse6(bad); ok {
			t.Errorf("parseReverse6(%q) accepted", bad)
		}
	}
	if got := reverseName4(netip.MustParseAddr("198.51.100.10")); got != "10.100.51.198.in-addr.arpa." {
		t.Errorf("reverseName4 = %s", got)
	}
}
