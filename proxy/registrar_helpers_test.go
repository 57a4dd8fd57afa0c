package proxy

import (
	"context"
	"crypto/ed25519"
	"testing"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"

	"github.com/sipmesh/sipmesh/registrar"
)

// Helpers of the registrar's tests that the proxy's tests need too: they
// run the proxy with a real registrar in front.

// newTestAccounts returns a store with an account per extension, password
// "secret" + ext.
func newTestAccounts(t testing.TB, exts ...string) *registrar.MemAccounts {
	pub, priv, _ := ed25519.GenerateKey(nil)
	accts := registrar.NewMemAccounts(pub)
	for _, ext := range exts {
		a, err := registrar.NewAccount(ext, "secret"+ext, "Phone "+ext)
		if err != nil {
			t.Fatal(err)
		}
		rec, _ := registrar.SignAccount(priv, a, false)
		if err := accts.PutRecord(context.Background(), rec); err != nil {
			t.Fatal(err)
		}
	}
	return accts
}

// authorize answers the challenge in res (the first WWW-Authenticate
// whose algorithm is alg, any if empty) with password and nonce count nc.
func authorize(t *testing.T, res *sip.Response, alg, user, password string, nc int) string {
	t.Helper()
	for _, h := range res.GetHeaders("WWW-Authenticate") {
		chal, err := digest.ParseChallenge(h.Value())
		if err != nil {
			t.Fatalf("bad challenge %q: %v", h.Value(), err)
		}
		if alg != "" && chal.Algorithm != alg {
			continue
		}
		cred, err := digest.Digest(chal, digest.Options{Method: "REGISTER", URI: "sip:mesh", Username: user, Password: password, Count: nc, Cnonce: "0a4f113b"})
		if err != nil {
			t.Fatal(err)
		}
		return cred.String()
	}
	t.Fatalf("no %s challenge in\n%s", alg, res)
	return ""
}

func wantCode(t *testing.T, res *sip.Response, code int) {
	t.Helper()
	if res == nil {
		t.Fatalf("no answer, want %d", code)
	}
	if res.StatusCode != code {
		t.Fatalf("got %d %s, want %d\n%s", res.StatusCode, res.Reason, code, res)
	}
}
