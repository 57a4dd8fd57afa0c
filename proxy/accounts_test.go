package proxy

import (
	"context"
	"crypto/ed25519"
	"testing"

	"github.com/sipmesh/sipmesh/registrar"
)

// The proxy's tests run it with a real registrar in front, with the
// accounts of the registrar's tests.

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
