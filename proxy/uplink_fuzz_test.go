package proxy

import (
	"strings"
	"testing"
)

// FuzzTrunkChallenge: whatever a provider sends as its digest challenge,
// answering it never panics, and an answer names the trunk's account and
// never carries its password.
func FuzzTrunkChallenge(f *testing.F) {
	f.Add(`Digest realm="example.net", nonce="5f0b1c2d3e4f", qop="auth"`)
	f.Add(`Digest realm="mesh", nonce="abc", algorithm=SHA-256, qop="auth,auth-int", opaque="x"`)
	f.Add(`Digest realm="p", nonce="n", algorithm=MD5-sess, stale=true`)
	f.Add(`Basic realm="x"`)
	f.Fuzz(func(t *testing.T, challenge string) {
		cred, err := trunkCredentials(challenge, "INVITE", "sip:5550101@example.net", "5550100", "pw-secret-550100")
		if err != nil {
			return
		}
		if !strings.Contains(cred, `username="5550100"`) || strings.Contains(cred, "pw-secret-550100") {
			t.Fatalf("answer %q to %q", cred, challenge)
		}
	})
}

// TestTrunkCredentials: the answer to the challenge of RFC 2617 §3.5's
// example (the algorithm is the same for SIP, RFC 3261 §22.4) carries the
// challenge's realm and opaque, the account, the URI and qop=auth with a
// nonce count; a challenge of another scheme is not answered.
func TestTrunkCredentials(t *testing.T) {
	cred, err := trunkCredentials(`Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"`,
		"GET", "/dir/index.html", "Mufasa", "Circle Of Life")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`username="Mufasa"`, `realm="testrealm@host.com"`, `uri="/dir/index.html"`, `opaque="5ccc069c403ebaf9f0171e9517f40e41"`, "qop=auth", "nc=00000001"} {
		if !strings.Contains(cred, want) {
			t.Errorf("credentials %q lack %s", cred, want)
		}
	}
	if _, err := trunkCredentials(`Basic realm="x"`, "INVITE", "sip:a@b", "u", "p"); err == nil {
		t.Error("a Basic challenge was answered")
	}
}
