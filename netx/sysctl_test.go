package netx_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sipmesh/sipmesh/netx"
)

// TestHoldSysctl: two holders of one file (the IP network and the NAT64
// both want forwarding); the first release leaves the value, the last puts
// the old one back; a conflicting value is refused; a file already at the
// value is left as it is.
func TestHoldSysctl(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "forwarding")
	read := func() string {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	if err := os.WriteFile(f, []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r1, err := netx.HoldSysctl(f, "1")
	if err != nil {
		t.Fatal(err)
	}
	r2, err := netx.HoldSysctl(f, "1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := netx.HoldSysctl(f, "2"); err == nil {
		t.Error("a second value for a held file: no error")
	}
	if v := read(); v != "1" {
		t.Fatalf("held: %q, want 1", v)
	}
	if err := r1(); err != nil {
		t.Fatal(err)
	}
	r1() // twice: still one release
	if v := read(); v != "1" {
		t.Fatalf("one holder left: %q, want 1", v)
	}
	if err := r2(); err != nil {
		t.Fatal(err)
	}
	if v := read(); v != "0" {
		t.Fatalf("released: %q, want 0 again", v)
	}
	// Already at the value: nothing to put back.
	os.WriteFile(f, []byte("1"), 0o644)
	r, err := netx.HoldSysctl(f, "1")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(f, []byte("1"), 0o644)
	r()
	if v := read(); v != "1" {
		t.Fatalf("held a file already at the value, released: %q, want 1", v)
	}
	if _, err := netx.HoldSysctl(filepath.Join(dir, "missing"), "1"); err == nil {
		t.Error("a missing file: no error")
	}
}
