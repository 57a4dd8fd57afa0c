package gateway

import (
	"context"
	"crypto/ed25519"
	"fmt"
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

// TestClosedMeshNodes: three nodes with mesh-admission closed on memnet,
// a linked to b and to c. a holds the administrator key (it admits
// itself), b has an admission file, c has none: a and b form a link, c is
// refused by a and gets no neighbour.
func TestClosedMeshNodes(t *testing.T) {
	leakcheck.Check(t)
	n := memnet.New(memnet.Config{})
	ha, hb, hc := n.AddHost("a"), n.AddHost("b"), n.AddHost("c")
	n.Connect(ha.AddInterface("m0", 1500), hb.AddInterface("m0", 1500), memnet.LinkConfig{Delay: time.Millisecond})
	n.Connect(ha.AddInterface("m1", 1500), hc.AddInterface("m0", 1500), memnet.LinkConfig{Delay: time.Millisecond})
	adminPath := filepath.Join(t.TempDir(), "admin.key")
	admin, _, err := LoadOrCreateAdminKey(adminPath)
	if err != nil {
		t.Fatal(err)
	}
	var nodes []*Node
	for _, h := range []*memnet.Host{ha, hb, hc} {
		o := DefaultOptions()
		o.Name, o.StateDir, o.Control = h.Name(), filepath.Join(t.TempDir(), h.Name()), ""
		o.MeshInterfaces = []string{"m0"}
		o.MeshAdmissionClosed = true
		o.AdminPublicKey = admin.Public().(ed25519.PublicKey)
		o.routerParams = fastParams
		switch h {
		case ha:
			o.MeshInterfaces, o.AdminKey = []string{"m0", "m1"}, adminPath
		case hb:
			key, _, err := LoadOrCreateKey(o.StateDir)
			if err != nil {
				t.Fatal(err)
			}
			adm := fmt.Sprintf("%x\n", ssr.Admit(admin, key.Public().(ed25519.PublicKey)))
			if err := os.WriteFile(filepath.Join(o.StateDir, AdmissionFile), []byte(adm), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		node, err := NewNode(o, h, nil)
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, node)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for _, node := range nodes {
		wg.Go(func() { node.Run(ctx) })
	}
	a, b, c := nodes[0].Router(), nodes[1].Router(), nodes[2].Router()
	waitCond(t, 10*time.Second, "a and b to be neighbours and a to refuse c", func() bool {
		st := a.Status()
		return len(st.Neighbours) == 1 && st.Neighbours[0].ID == b.ID().String() && st.Auth.NotAdmitted > 0
	})
	if st := c.Status(); len(st.Neighbours) != 0 || st.Auth.Sessions != 0 {
		t.Errorf("c, not admitted: neighbours %v, %+v", st.Neighbours, st.Auth)
	}
}
