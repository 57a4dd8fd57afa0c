package main

import (
	"context"
	"crypto/md5"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/gateway"
	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/memnet"
)

// startNode runs a node on the in-memory network with its control socket
// and returns the socket path once it answers.
func startNode(t *testing.T, name string, adminKey string) (string, *gateway.Node) {
	t.Helper()
	h := memnet.New(memnet.Config{}).AddHost(name)
	h.AddInterface("m0", 1500)
	sockDir, err := os.MkdirTemp("", "smt")
	if err != nil {
		t.Fatal(err)
	}
	o := gateway.DefaultOptions()
	o.Name, o.StateDir, o.MeshInterfaces = name, t.TempDir(), []string{"m0"}
	o.Control = filepath.Join(sockDir, name+".sock")
	o.AdminKey = adminKey
	node, err := gateway.NewNode(o, h, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := node.Run(ctx); err != nil {
			t.Errorf("node: %v", err)
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		os.RemoveAll(sockDir)
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		if code, _, _ := run(t, "status", "--control", o.Control); code == 0 {
			return o.Control, node
		}
		if time.Now().After(deadline) {
			t.Fatal("control socket not answering after 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func withStdin(t *testing.T, s string) {
	saved := stdin
	stdin = strings.NewReader(s)
	t.Cleanup(func() { stdin = saved })
}

func TestUserCommands(t *testing.T) {
	leakcheck.Check(t)
	keyPath := filepath.Join(t.TempDir(), "admin.key")
	sock, node := startNode(t, "n1", keyPath)
	if fi, err := os.Stat(keyPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin key not created 0600: %v", err)
	}

	withStdin(t, "secret201\n")
	code, stdout, stderr := run(t, "user", "add", "--control", sock, "--display", "Alice", "201")
	if code != 0 || !strings.Contains(stdout, "stored subscriber 201") {
		t.Fatalf("user add: exit %d\n%s%s", code, stdout, stderr)
	}
	withStdin(t, "secret202")
	if code, stdout, stderr := run(t, "user", "add", "--control", sock, "202"); code != 0 {
		t.Fatalf("user add 202: exit %d\n%s%s", code, stdout, stderr)
	}
	code, stdout, _ = run(t, "user", "list", "--control", sock)
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if code != 0 || len(lines) != 3 || !strings.HasPrefix(lines[1], "201  Alice") || !strings.HasPrefix(lines[2], "202") {
		t.Errorf("user list: exit %d\n%s", code, stdout)
	}
	code, stdout, _ = run(t, "user", "list", "--json", "--control", sock)
	var users []gateway.UserInfo
	if code != 0 || json.Unmarshal([]byte(stdout), &users) != nil || len(users) != 2 {
		t.Errorf("user list --json: exit %d\n%s", code, stdout)
	}
	if strings.Contains(stdout, "ha1") {
		t.Errorf("list shows HA1 values:\n%s", stdout)
	}

	// The node keeps the HA1 of the password, not the password.
	a, err := node.Accounts().Account(context.Background(), "201")
	if want := md5.Sum([]byte("201:mesh:secret201")); err != nil || string(a.HA1MD5) != string(want[:]) || a.Display != "Alice" {
		t.Errorf("stored account %+v %v", a, err)
	}
	c := gateway.NewControlClient(sock)
	defer c.Close()

	if code, stdout, stderr := run(t, "user", "del", "--control", sock, "201"); code != 0 || !strings.Contains(stdout, "removed subscriber 201") {
		t.Errorf("user del: exit %d\n%s%s", code, stdout, stderr)
	}
	if code, _, stderr := run(t, "user", "del", "--control", sock, "201"); code != 1 || !strings.Contains(stderr, `no subscriber "201"`) {
		t.Errorf("second user del: exit %d %s", code, stderr)
	}
	users, err = c.Users(context.Background())
	if err != nil || len(users) != 1 || users[0].Ext != "202" {
		t.Errorf("after del: %+v %v", users, err)
	}

	tests := []struct {
		name  string
		args  []string
		stdin string
		code  int
		want  string
	}{
		{"no subcommand", []string{"user"}, "", 2, "want a subcommand"},
		{"bad subcommand", []string{"user", "frob"}, "", 2, "unknown subcommand"},
		{"bad extension", []string{"user", "add", "--control", sock, "2 01"}, "pw", 2, "only letters"},
		{"short password", []string{"user", "add", "--control", sock, "203"}, "abc\n", 1, "at least 6"},
		{"empty password", []string{"user", "add", "--control", sock, "203"}, "", 1, "password"},
		{"add without EXT", []string{"user", "add", "--control", sock}, "", 2, "want exactly one EXT"},
		{"no node", []string{"user", "list", "--control", sock + ".none"}, "", 1, "no node answering"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			withStdin(t, tt.stdin)
			code, _, stderr := run(t, tt.args...)
			if code != tt.code || !strings.Contains(stderr, tt.want) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, stderr, tt.code, tt.want)
			}
		})
	}
}

// TestUserAddNeedsAdminKey: a node without admin-key serves but cannot
// change subscribers.
func TestUserAddNeedsAdminKey(t *testing.T) {
	leakcheck.Check(t)
	sock, _ := startNode(t, "n2", "")
	withStdin(t, "secret201\n")
	code, _, stderr := run(t, "user", "add", "--control", sock, "201")
	if code != 1 || !strings.Contains(stderr, "no admin-key configured") {
		t.Errorf("exit %d, %s", code, stderr)
	}
	if code, stdout, _ := run(t, "user", "list", "--control", sock); code != 0 || strings.TrimSpace(stdout) != "EXT  DISPLAY  UPDATED" {
		t.Errorf("list: exit %d %q", code, stdout)
	}
}
