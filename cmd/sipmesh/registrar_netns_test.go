package main

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/gateway"
	"github.com/sipmesh/sipmesh/internal/netns"
)

// TestRegistrarAcrossNodes: three `sipmesh node` processes in a line
// (n1–n2–n3) form the mesh; a real SIP client (sipsak, from Debian) on n1's
// phone LAN registers with digest authentication; a wrong password is
// refused; and n3, two hops away, finds the binding in the DHT. The
// subscriber is created with `sipmesh user add` on n2, so the account
// itself travels through the DHT too.
func TestRegistrarAcrossNodes(t *testing.T) {
	netns.RequireRoot(t)
	sipsak, err := exec.LookPath("sipsak")
	if err != nil {
		t.Fatalf("sipsak not found (Debian package sipsak; make test installs it as root): %v", err)
	}
	bin := buildSipmesh(t)
	tmp := t.TempDir()
	sockDir, err := os.MkdirTemp("", "smr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })

	spaces := []*netns.NS{netns.New(t, "r1"), netns.New(t, "r2"), netns.New(t, "r3")}
	netns.Veth(t, spaces[0], "ve-n2", spaces[1], "ve-n1")
	netns.Veth(t, spaces[1], "ve-n3", spaces[2], "ve-n2")
	ifaces := [][]string{{"ve-n2"}, {"ve-n1", "ve-n3"}, {"ve-n2"}}
	for i, ns := range spaces {
		for _, ifn := range ifaces[i] {
			ns.LinkLocal(t, ifn)
		}
	}
	phone := netns.New(t, "rp")
	netns.Veth(t, spaces[0], "lan0", phone, "eth0")
	spaces[0].Run(t, "ip", "addr", "add", "10.64.1.1/24", "dev", "lan0")
	phone.Run(t, "ip", "addr", "add", "10.64.1.2/24", "dev", "eth0")

	// The administrator key lives on n2, where subscribers are managed;
	// the others know its public half.
	adminPath := filepath.Join(tmp, "admin.key")
	adminKey, _, err := gateway.LoadOrCreateAdminKey(adminPath)
	if err != nil {
		t.Fatal(err)
	}
	adminPub := hex.EncodeToString(adminKey.Public().(ed25519.PublicKey))
	nodes := make([]*nsNode, 3)
	for i := range nodes {
		nd := &nsNode{name: fmt.Sprintf("n%d", i+1), ns: spaces[i], sock: filepath.Join(sockDir, fmt.Sprintf("n%d.sock", i+1))}
		nd.id = writeNodeKey(t, filepath.Join(tmp, nd.name, "state"), byte(10+i))
		switch i {
		case 0:
			// Debian's sipsak knows only MD5 digests.
			nd.extra = "admin-public-key " + adminPub + "\nlan-interface lan0\nlan-address 10.64.1.1/24\ndhcp off\ndigest-algorithms MD5\n"
		case 1:
			nd.extra = "admin-key " + adminPath + "\n"
		default:
			nd.extra = "admin-public-key " + adminPub + "\n"
		}
		nodes[i] = nd
	}
	for i, nd := range nodes {
		nd.start(t, bin, tmp, ifaces[i])
	}
	waitFor(t, 30*time.Second, "the ring of three", func() (bool, string) {
		for _, nd := range nodes {
			st, err := nd.status(bin)
			if err != nil {
				return false, err.Error()
			}
			if len(st.Successors) == 0 {
				return false, nd.name + " has no successor"
			}
		}
		return true, ""
	})

	add := exec.Command(bin, "user", "add", "--control", nodes[1].sock, "--display", "Alice", "201")
	add.Stdin = strings.NewReader("alice-secret\n")
	if out, err := add.CombinedOutput(); err != nil {
		t.Fatalf("sipmesh user add on n2: %v\n%s", err, out)
	}

	register := func(password string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := phone.Command(ctx, sipsak, "-U", "-vvv", "-i", "-H", "10.64.1.2", "-l", "5062",
			"-C", "sip:201@10.64.1.2:5062", "-x", "300", "-u", "201", "-a", password, "-s", "sip:201@10.64.1.1").CombinedOutput()
		return string(out), err
	}
	// The account reaches n1 through the DHT: retry until it is there.
	var out string
	waitFor(t, 20*time.Second, "sipsak to register 201 at n1", func() (bool, string) {
		out, err = register("alice-secret")
		return err == nil && strings.Contains(out, "SIP/2.0 200"), out
	})
	t.Logf("sipsak registered 201 at n1 with digest auth:\n%s", lastLines(out, 12))

	out, err = register("wrong-password")
	if err == nil || !strings.Contains(out, "SIP/2.0 403") || strings.Contains(out, "SIP/2.0 200") {
		t.Fatalf("a wrong password was not refused with 403 (err %v):\n%s", err, out)
	}

	// n3, two hops from n1, resolves the binding from the DHT.
	var bs []gateway.BindingInfo
	waitFor(t, 10*time.Second, "n3 to see 201's binding", func() (bool, string) {
		o, err := exec.Command(bin, "lookup", "--json", "--control", nodes[2].sock, "201").CombinedOutput()
		if err != nil {
			return false, string(o)
		}
		if err := json.Unmarshal(o, &bs); err != nil {
			return false, string(o)
		}
		return len(bs) == 1, string(o)
	})
	if bs[0].Contact != "sip:201@10.64.1.2:5062" || bs[0].Node != nodes[0].id.String() {
		t.Fatalf("binding seen from n3: %+v; want contact sip:201@10.64.1.2:5062 at n1 (%s)", bs[0], nodes[0].id)
	}
	o, _ := exec.Command(bin, "lookup", "--control", nodes[2].sock, "201").CombinedOutput()
	t.Logf("sipmesh lookup 201 on n3:\n%s", o)
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
