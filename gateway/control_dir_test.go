package gateway

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

// TestControlSocketDirectory checks that the node creates its socket's own
// directory but never a missing tree above it (a mistyped path).
func TestControlSocketDirectory(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	root := t.TempDir()

	deep := filepath.Join(root, "no", "such", "s.sock")
	if s, err := listenControl(deep, nil, log); err == nil {
		s.ln.Close()
		t.Fatalf("listenControl(%s) succeeded, want an error", deep)
	}
	if _, err := os.Stat(filepath.Join(root, "no")); !os.IsNotExist(err) {
		t.Errorf("%s/no exists (%v): the node created a directory tree", root, err)
	}

	own := filepath.Join(root, "run", "s.sock")
	s, err := listenControl(own, nil, log)
	if err != nil {
		t.Fatalf("listenControl(%s): %v", own, err)
	}
	s.ln.Close()
	if fi, err := os.Stat(filepath.Dir(own)); err != nil || !fi.IsDir() {
		t.Errorf("socket directory not created: %v", err)
	}
}
