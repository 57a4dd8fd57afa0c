package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sipmesh/sipmesh/gateway"
	"github.com/sipmesh/sipmesh/internal/leakcheck"
)

// TestPhoneCommandAgainstNode: `sipmesh phone add|list|del` through the
// control socket of a running node (alone, with the administrator key):
// a generated password, a given one from stdin, a bad MAC refused, and
// no password in any answer.
func TestPhoneCommandAgainstNode(t *testing.T) {
	leakcheck.Check(t)
	sock, _ := startNode(t, "solo", filepath.Join(t.TempDir(), "admin.key"))
	code, stdout, stderr := run(t, "phone", "add", "--control", sock, "001565A1B2C3", "201")
	if code != 0 || !strings.Contains(stdout, "phone 00:15:65:a1:b2:c3 gets extension 201") {
		t.Fatalf("phone add: exit %d\n%s%s", code, stdout, stderr)
	}
	withStdin(t, "given-secret\n")
	code, stdout, stderr = run(t, "phone", "add", "--password-stdin", "--control", sock, "00:15:65:a1:b2:c4", "202")
	if code != 0 || strings.Contains(stdout+stderr, "given-secret") {
		t.Fatalf("phone add --password-stdin: exit %d\n%s%s", code, stdout, stderr)
	}
	if code, _, stderr := run(t, "phone", "add", "--control", sock, "00:15:65:a1", "203"); code != 1 || !strings.Contains(stderr, "want 6 bytes") {
		t.Errorf("bad MAC: exit %d, %q", code, stderr)
	}
	code, stdout, _ = run(t, "phone", "list", "--json", "--control", sock)
	var list []gateway.PhoneInfo
	if code != 0 || json.Unmarshal([]byte(stdout), &list) != nil || len(list) != 2 || list[0].Ext != "201" || list[1].Ext != "202" ||
		strings.Contains(stdout, "password\"") || strings.Contains(stdout, "given-secret") {
		t.Fatalf("phone list --json: exit %d\n%s", code, stdout)
	}
	if code, stdout, stderr := run(t, "phone", "del", "--control", sock, "00:15:65:a1:b2:c3"); code != 0 || !strings.Contains(stdout, "removed phone 00:15:65:a1:b2:c3 (extension 201)") {
		t.Fatalf("phone del: exit %d\n%s%s", code, stdout, stderr)
	}
	if code, _, _ := run(t, "phone", "del", "--control", sock, "00:15:65:a1:b2:c3"); code != 1 {
		t.Errorf("phone del twice: exit %d", code)
	}
	code, stdout, _ = run(t, "phone", "list", "--control", sock)
	if code != 0 || strings.Contains(stdout, "00:15:65:a1:b2:c3") || !strings.Contains(stdout, "00:15:65:a1:b2:c4  202") {
		t.Fatalf("phone list: exit %d\n%s", code, stdout)
	}
}
