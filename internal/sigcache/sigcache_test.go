package sigcache

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"testing"
)

func TestVerify(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	other, _, _ := ed25519.GenerateKey(rand.Reader)
	msg := []byte("account 201")
	sig := ed25519.Sign(priv, msg)
	for range 2 { // the second time from the cache
		if !Verify(pub, msg, sig) {
			t.Fatal("a good signature refused")
		}
	}
	// A cached success never vouches for anything else.
	bad := append([]byte(nil), sig...)
	bad[0] ^= 1
	for name, ok := range map[string]bool{
		"other message": Verify(pub, []byte("account 202"), sig),
		"other key":     Verify(other, msg, sig),
		"flipped sig":   Verify(pub, msg, bad),
		"short key":     Verify(pub[:31], msg, sig),
		"short sig":     Verify(pub, msg, sig[:63]),
	} {
		if ok {
			t.Errorf("%s accepted", name)
		}
	}
}

// TestBounded: the cache never holds more than Size signatures and still
// answers right after forgetting.
func TestBounded(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	first := []byte("m0")
	firstSig := ed25519.Sign(priv, first)
	Verify(pub, first, firstSig)
	for i := 1; i <= Size+10; i++ {
		m := fmt.Appendf(nil, "m%d", i)
		if !Verify(pub, m, ed25519.Sign(priv, m)) {
			t.Fatal("refused")
		}
	}
	if Len() > Size {
		t.Fatalf("%d entries, bound %d", Len(), Size)
	}
	if !Verify(pub, first, firstSig) {
		t.Fatal("a forgotten signature is no longer verified")
	}
}

func BenchmarkVerify(b *testing.B) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	msg := make([]byte, 200)
	sig := ed25519.Sign(priv, msg)
	b.Run("ed25519", func(b *testing.B) {
		for b.Loop() {
			ed25519.Verify(pub, msg, sig)
		}
	})
	b.Run("cached", func(b *testing.B) {
		Verify(pub, msg, sig)
		for b.Loop() {
			Verify(pub, msg, sig)
		}
	})
}

// TestSign: a signature this process made verifies from the cache, under
// the signing key only.
func TestSign(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	other, _, _ := ed25519.GenerateKey(rand.Reader)
	msg := []byte("binding 201")
	sig := Sign(priv, msg)
	if !ed25519.Verify(pub, msg, sig) {
		t.Fatal("Sign made a bad signature")
	}
	n := verifications.Load()
	if !Verify(pub, msg, sig) {
		t.Fatal("own signature refused")
	}
	if verifications.Load() != n {
		t.Fatal("own signature was verified again instead of found")
	}
	if Verify(other, msg, sig) {
		t.Fatal("own signature accepted under another key")
	}
}
