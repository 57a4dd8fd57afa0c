package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/memnet"
	"github.com/sipmesh/sipmesh/ssr"
)

func TestLoadOrCreateKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	k1, created, err := LoadOrCreateKey(dir)
	if err != nil || !created {
		t.Fatalf("first start: created=%v, %v", created, err)
	}
	fi, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %04o, want 0600", fi.Mode().Perm())
	}
	k2, created, err := LoadOrCreateKey(dir)
	if err != nil || created || !bytes.Equal(k1, k2) {
		t.Fatalf("second start: created=%v, same key=%v, %v", created, bytes.Equal(k1, k2), err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("state dir holds %d files, want only %s", len(entries), KeyFile)
	}

	if err := os.Chmod(filepath.Join(dir, KeyFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreateKey(dir); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("world-readable key: %v, want a refusal", err)
	}

	bad := t.TempDir()
	os.WriteFile(filepath.Join(bad, KeyFile), []byte("garbage"), 0o600)
	if _, _, err := LoadOrCreateKey(bad); err == nil || !strings.Contains(err.Error(), KeyFile) {
		t.Errorf("garbage key: %v, want an error naming the file", err)
	}
}

var fastParams = ssr.Params{
	HelloInterval:    50 * time.Millisecond,
	NeighbourTimeout: 200 * time.Millisecond,
	RingInterval:     50 * time.Millisecond,
	RingIntervalMax:  200 * time.Millisecond,
}

// socketDir returns a short temporary directory: Unix socket paths are
// limited to 107 bytes, which t.TempDir() under a long test name exceeds.
func socketDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "smt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// logBuf collects the debug logs of a test's nodes, shown when it fails.
type logBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuf) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }

func (l *logBuf) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

func TestNodeControlSocket(t *testing.T) {
	var logs logBuf
	leakcheck.Check(t)
	n := memnet.New(memnet.Config{})
	ha, hb := n.AddHost("a"), n.AddHost("b")
	n.Connect(ha.AddInterface("m0", 1500), hb.AddInterface("m0", 1500), memnet.LinkConfig{Delay: time.Millisecond})

	sock := filepath.Join(socketDir(t), "a.sock")
	var nodes []*Node
	for i, h := range []*memnet.Host{ha, hb} {
		o := DefaultOptions()
		o.Name = h.Name()
		o.StateDir = filepath.Join(t.TempDir(), h.Name())
		o.MeshInterfaces = []string{"m0"}
		o.Control = ""
		if i == 0 {
			o.Control = sock
		}
		o.routerParams = fastParams
		node, err := NewNode(o, h, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, node)
	}
	defer func() {
		if t.Failed() {
			t.Logf("the nodes' logs:\n%s", logs.String())
			for _, nd := range nodes {
				b, _ := json.Marshal(nd.Router().Status())
				t.Logf("router %s: %s", nd.Router().ID(), b)
			}
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, node := range nodes {
		wg.Go(func() { errs[i] = node.Run(ctx) })
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			wg.Wait()
		}
	}
	defer stop()

	c := NewControlClient(sock)
	defer c.Close()
	b := nodes[1].Router()
	deadline := time.Now().Add(60 * time.Second)
	var st NodeStatus
	for {
		var err error
		st, err = c.Status(context.Background())
		if err == nil && len(st.Successors) > 0 && st.Successors[0].ID == b.ID().String() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ring after 60s: %+v, %v", st, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st.Name != "a" || st.ID != nodes[0].Router().ID().String() || len(st.Neighbours) != 1 {
		t.Errorf("status: %+v", st)
	}
	raw, err := c.StatusJSON(context.Background())
	if err != nil || !bytes.Contains(raw, []byte(`"successors"`)) {
		t.Errorf("StatusJSON: %s, %v", raw, err)
	}

	for _, dst := range []string{b.Addr().String(), b.ID().String()} {
		// A ping is one datagram each way, and one can be lost while the
		// neighbours' state settles (under load a missed hello makes b
		// hold a non-symmetric for a moment, and b drops its echo reply
		// rather than send it over a link not known to work both ways).
		// Like ping(8), try again: 10 probes of 3 s each.
		var res PingResult
		var err error
		for probe := 0; probe < 10; probe++ {
			if res, err = c.Ping(context.Background(), dst, 3*time.Second); err == nil {
				break
			}
		}
		if err != nil {
			t.Fatalf("ping %s: 10 probes unanswered, the last: %v", dst, err)
		}
		if res.Hops != 1 || len(res.Route) != 2 || res.Route[1] != b.ID().String() || res.RTTMs <= 0 || res.Addr != b.Addr().String() {
			t.Errorf("ping %s: %+v", dst, res)
		}
	}
	if _, err := c.Ping(context.Background(), "2001:db8::1", time.Second); err == nil || !strings.Contains(err.Error(), "not a mesh address") {
		t.Errorf("ping of a non-mesh address: %v", err)
	}
	if _, err := c.Ping(context.Background(), b.ID().String(), time.Hour); err == nil || !strings.Contains(err.Error(), "timeout") {
		t.Errorf("ping with a huge timeout: %v", err)
	}
	if _, err := c.Ping(context.Background(), (b.ID() ^ 1).String(), 30*time.Second); err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Errorf("ping of a missing node: %v", err)
	}

	// A second node on the same control socket is refused.
	o := nodes[0].opts
	o.StateDir = t.TempDir()
	dup, err := NewNode(o, ha, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := dup.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "running node") {
		t.Errorf("second node on %s: %v", sock, err)
	}

	stop()
	for _, err := range errs {
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("control socket left behind: %v", err)
	}
}

func TestStaleControlSocket(t *testing.T) {
	leakcheck.Check(t)
	sock := filepath.Join(socketDir(t), "stale.sock")
	// A socket file nobody listens on, as a killed node leaves.
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()

	h := memnet.New(memnet.Config{}).AddHost("a")
	h.AddInterface("m0", 1500)
	o := DefaultOptions()
	o.StateDir, o.MeshInterfaces, o.Control = t.TempDir(), []string{"m0"}, sock
	node, err := NewNode(o, h, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- node.Run(ctx) }()
	c := NewControlClient(sock)
	defer c.Close()
	deadline := time.Now().Add(60 * time.Second) // real time: room for a loaded machine
	for {
		if _, err := c.Status(context.Background()); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("node did not take over the stale socket: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// A regular file in the way is not removed.
	os.WriteFile(sock, nil, 0o600)
	if err := node.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("file in the way: %v", err)
	}
}
