package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/gateway"
	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/memnet"
)

func TestNodePingStatusUsage(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.conf")
	os.WriteFile(bad, []byte("mesh-interface eth0\nmesh-port abc\n"), 0o644)
	tests := []struct {
		name       string
		args       []string
		code       int
		wantStderr string
	}{
		{"node without config", []string{"node"}, 2, "--config FILE is required"},
		{"node with extra args", []string{"node", "--config", bad, "x"}, 2, "unexpected arguments"},
		{"node with missing config", []string{"node", "--config", filepath.Join(dir, "nope.conf")}, 1, "no such file"},
		{"node with bad config", []string{"node", "--config", bad}, 1, `config line 2: mesh-port: "abc" is not a port`},
		{"ping without address", []string{"ping"}, 2, "want exactly one NODE-ADDRESS"},
		{"ping of a non-mesh address", []string{"ping", "2001:db8::1"}, 2, "not a mesh address"},
		{"ping with a bad count", []string{"ping", "--count", "-1", "0123456789abcdef"}, 2, "--count -1"},
		{"ping with a bad timeout", []string{"ping", "--timeout", "1h", "0123456789abcdef"}, 2, "--timeout 1h0m0s"},
		{"ping without a node", []string{"ping", "--control", filepath.Join(dir, "none.sock"), "0123456789abcdef"}, 1, "no node answering"},
		{"status without a node", []string{"status", "--control", filepath.Join(dir, "none.sock")}, 1, "no node answering"},
		{"status with arguments", []string{"status", "x"}, 2, "unexpected arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := run(t, tt.args...)
			if code != tt.code || !strings.Contains(stderr, tt.wantStderr) {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", code, stderr, tt.code, tt.wantStderr)
			}
		})
	}
}

// TestPingAndStatusAgainstNode runs a node in this process on the in-memory
// network and drives `sipmesh status` and `sipmesh ping` against its
// control socket. A lone node pings itself: the route is just itself.
func TestPingAndStatusAgainstNode(t *testing.T) {
	leakcheck.Check(t)
	h := memnet.New(memnet.Config{}).AddHost("h")
	h.AddInterface("m0", 1500)
	sockDir, err := os.MkdirTemp("", "smt")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	o := gateway.DefaultOptions()
	o.Name, o.StateDir, o.MeshInterfaces = "solo", t.TempDir(), []string{"m0"}
	o.Control = filepath.Join(sockDir, "solo.sock")
	node, err := gateway.NewNode(o, h, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() {
		if err := node.Run(ctx); err != nil {
			t.Errorf("node: %v", err)
		}
	})
	// Wait for the socket rather than sleeping a guessed time.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if code, _, _ := run(t, "status", "--control", o.Control); code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("control socket not answering after 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}

	id := node.Router().ID().String()
	code, stdout, stderr := run(t, "status", "--control", o.Control)
	if code != 0 || !strings.Contains(stdout, "node solo  id "+id) || !strings.Contains(stdout, "m0") {
		t.Errorf("status: exit %d\n%s%s", code, stdout, stderr)
	}
	code, stdout, stderr = run(t, "status", "--json", "--control", o.Control)
	var st gateway.NodeStatus
	if code != 0 || json.Unmarshal([]byte(stdout), &st) != nil || st.ID != id || st.Name != "solo" {
		t.Errorf("status --json: exit %d, %+v\n%s%s", code, st, stdout, stderr)
	}

	addr := node.Router().Addr().String()
	code, stdout, stderr = run(t, "ping", "--control", o.Control, "--count", "2", "--interval", "10ms", addr)
	reply := regexp.MustCompile(`(?m)^reply from ` + regexp.QuoteMeta(addr) + `: rtt=[0-9.]+ms hops=0 route=` + id + `$`)
	if code != 0 || len(reply.FindAllString(stdout, -1)) != 2 || !strings.Contains(stdout, "2 sent, 2 received, 0% loss, rtt min/avg/max = ") {
		t.Errorf("ping: exit %d\n%s%s", code, stdout, stderr)
	}

	// A node that does not exist: every request fails, exit status 1.
	missing := "00000000000000ff"
	if missing == id {
		missing = "00000000000000fe"
	}
	code, stdout, _ = run(t, "ping", "--control", o.Control, "--count", "1", "--timeout", "200ms", missing)
	if code != 1 || !strings.Contains(stdout, "no reply from") || !strings.Contains(stdout, "1 sent, 0 received, 100% loss") {
		t.Errorf("ping of a missing node: exit %d\n%s", code, stdout)
	}
}

// TestNodeHelpListsConfigKeys: `sipmesh node --help` lists every config key
// with its default (the same table as the README's).
func TestNodeHelpListsConfigKeys(t *testing.T) {
	code, stdout, stderr := run(t, "node", "--help")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	help := stdout + stderr // the stream help goes to is the CLI's business
	for _, k := range gateway.ConfigKeys() {
		if !regexp.MustCompile(`(?m)^  ` + regexp.QuoteMeta(k.Name) + ` +` + regexp.QuoteMeta(k.Default) + ` `).MatchString(help) {
			t.Errorf("help lacks the line of %s (default %s):\n%s", k.Name, k.Default, help)
		}
	}
}
