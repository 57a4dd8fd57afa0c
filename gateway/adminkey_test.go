package gateway

import (
	"os"
	"path/filepath"
	"testing"
)

func TestAdminKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys", "admin.key")
	k1, created, err := LoadOrCreateAdminKey(path)
	if err != nil || !created {
		t.Fatalf("create: %v %v", created, err)
	}
	k2, created, err := LoadOrCreateAdminKey(path)
	if err != nil || created || !k1.Equal(k2) {
		t.Fatalf("reload: %v %v", created, err)
	}
	os.Chmod(path, 0o644)
	if _, _, err := LoadOrCreateAdminKey(path); err == nil {
		t.Error("world-readable key accepted")
	}
}
