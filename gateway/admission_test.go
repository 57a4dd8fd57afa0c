package gateway

import (
	"crypto/ed25519"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sipmesh/sipmesh/ssr"
)

func TestLoadAdmission(t *testing.T) {
	seed := func(b byte) ed25519.PrivateKey {
		s := make([]byte, ed25519.SeedSize)
		s[0] = b
		return ed25519.NewKeyFromSeed(s)
	}
	admin, node, other := seed(1), seed(2), seed(3)
	adminPub, pub := admin.Public().(ed25519.PublicKey), node.Public().(ed25519.PublicKey)
	dir := t.TempDir()

	// The administrator's node admits itself.
	got, err := loadAdmission(dir, admin, adminPub, pub)
	if err != nil || !ssr.Admitted(adminPub, pub, got) {
		t.Fatalf("admin node: %x, %v", got, err)
	}
	// No file: none, and no error (an open mesh needs none).
	if got, err := loadAdmission(dir, nil, adminPub, pub); got != nil || err != nil {
		t.Fatalf("no file: %x, %v", got, err)
	}
	for _, tt := range []struct {
		name, file, err string
	}{
		{"valid", fmt.Sprintf("%x\n", ssr.Admit(admin, pub)), ""},
		{"not hex", "hello\n", "want 64 bytes in hex"},
		{"short", "abcd\n", "want 64 bytes in hex"},
		{"another node's", fmt.Sprintf("%x\n", ssr.Admit(admin, other.Public().(ed25519.PublicKey))), "not the administrator's signature"},
		{"another administrator's", fmt.Sprintf("%x\n", ssr.Admit(other, pub)), "not the administrator's signature"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := os.WriteFile(filepath.Join(dir, AdmissionFile), []byte(tt.file), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := loadAdmission(dir, nil, adminPub, pub)
			if tt.err == "" {
				if err != nil || !ssr.Admitted(adminPub, pub, got) {
					t.Fatalf("%x, %v", got, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("error %v, want one saying %q", err, tt.err)
			}
		})
	}
}

func TestClosedMeshNeedsAdminKey(t *testing.T) {
	_, err := ParseConfig(strings.NewReader("mesh-interface a\nmesh-admission closed\n"))
	if err == nil || !strings.Contains(err.Error(), "mesh-admission: closed needs the administrator's key") {
		t.Fatalf("closed without a key: %v", err)
	}
	o, err := ParseConfig(strings.NewReader("mesh-interface a\nmesh-admission closed\nadmin-public-key " + strings.Repeat("ab", 32) + "\n"))
	if err != nil || !o.MeshAdmissionClosed {
		t.Fatalf("closed with a key: %+v, %v", o.MeshAdmissionClosed, err)
	}
	if _, err := ParseConfig(strings.NewReader("mesh-interface a\nmesh-admission ajar\n")); err == nil {
		t.Fatal("mesh-admission ajar accepted")
	}
}
