package main

import (
	"crypto/ed25519"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sipmesh/sipmesh/gateway"
	"github.com/sipmesh/sipmesh/ssr"
)

func TestAdmit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "admin.key")
	admin, _, err := gateway.LoadOrCreateAdminKey(path)
	if err != nil {
		t.Fatal(err)
	}
	s := make([]byte, ed25519.SeedSize)
	pub := ed25519.NewKeyFromSeed(s).Public().(ed25519.PublicKey)
	code, stdout, stderr := run(t, "admit", "--admin-key", path, fmt.Sprintf("%x", []byte(pub)))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	sig, err := hex.DecodeString(strings.TrimSpace(stdout))
	if err != nil || !ssr.Admitted(admin.Public().(ed25519.PublicKey), pub, sig) {
		t.Fatalf("output %q is not the admission of the key: %v", stdout, err)
	}
	if !strings.Contains(stderr, gateway.AdmissionFile) {
		t.Errorf("stderr does not say where the admission goes: %q", stderr)
	}

	missing := filepath.Join(t.TempDir(), "typo.key")
	if code, _, _ := run(t, "admit", "--admin-key", missing, fmt.Sprintf("%x", []byte(pub))); code != 1 {
		t.Errorf("missing administrator key: exit %d, want 1", code)
	}
	if _, err := os.Stat(missing); err == nil {
		t.Error("admit created an administrator key")
	}
	if code, _, _ := run(t, "admit", "--admin-key", path, "abcd"); code != 2 {
		t.Errorf("short key: exit %d, want 2", code)
	}
}
