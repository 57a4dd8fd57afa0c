package registrar

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/internal/netns"
)

// nsRig is a registrar on kernel sockets in a "node" namespace
// (10.77.0.1/24 on lan0) and a "phone" namespace (10.77.0.2/24 on eth0)
// joined by a veth pair.
type nsRig struct {
	phone *netns.NS
	loc   *MemLocation
	r     *Registrar
}

func newNSRig(t *testing.T, mod func(*RegistrarConfig)) *nsRig {
	t.Helper()
	node, phone := netns.New(t, "node"), netns.New(t, "phone")
	netns.Veth(t, node, "lan0", phone, "eth0")
	node.Run(t, "ip", "addr", "add", "10.77.0.1/24", "dev", "lan0")
	phone.Run(t, "ip", "addr", "add", "10.77.0.2/24", "dev", "eth0")
	cfg := RegistrarConfig{Node: 0xabc, Locations: NewMemLocation(), Accounts: newTestAccounts(t, "201"),
		Addrs: []netip.Addr{netip.MustParseAddr("10.77.0.1")}}
	if mod != nil {
		mod(&cfg)
	}
	r, err := NewRegistrar(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	pc, err := node.Network().ListenPacket(ctx, "udp4", "10.77.0.1:5060")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := r.ServeUDP(ctx, pc); err != nil {
			t.Errorf("ServeUDP: %v", err)
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return &nsRig{phone: phone, loc: cfg.Locations.(*MemLocation), r: r}
}

func (n *nsRig) live(t *testing.T) []Binding {
	bs, err := n.loc.Bindings(context.Background(), "sip:201@mesh")
	if err != nil {
		t.Fatal(err)
	}
	return MergeBindings(bs, time.Now())
}

func need(t *testing.T, tool, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		t.Fatalf("%s not installed (Debian package %s): this test needs a real SIP client", tool, pkg)
	}
	return p
}

// TestRegisterSipsakNetns: sipsak (Debian) registers with digest at the
// registrar on kernel sockets, from another namespace over a veth link:
// the right password gets 200 and a binding, a wrong one 403 and no 401
// loop. sipsak reads only the first challenge and knows only MD5, so this
// registrar offers MD5 only.
func TestRegisterSipsakNetns(t *testing.T) {
	netns.RequireRoot(t)
	sipsak := need(t, "sipsak", "sipsak")
	leakcheck.Check(t)
	n := newNSRig(t, func(c *RegistrarConfig) { c.Algorithms = []string{"MD5"} })
	reg := func(password string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := n.phone.Command(ctx, sipsak, "-U", "-vvv", "-i", "-H", "10.77.0.2", "-l", "5062",
			"-C", "sip:201@10.77.0.2:5062", "-x", "300", "-u", "201", "-a", password, "-s", "sip:201@10.77.0.1")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := reg("secret201")
	t.Logf("sipsak, right password:\n%s", out)
	if err != nil || !strings.Contains(out, "SIP/2.0 401") || !strings.Contains(out, "SIP/2.0 200") {
		t.Fatalf("registration with the right password failed: %v", err)
	}
	if live := n.live(t); len(live) != 1 || live[0].Contact != "sip:201@10.77.0.2:5062" || live[0].Source.Addr() != netip.MustParseAddr("10.77.0.2") {
		t.Errorf("bindings %+v", live)
	}
	out, err = reg("wrong-password")
	t.Logf("sipsak, wrong password:\n%s", out)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !strings.Contains(out, "SIP/2.0 403") || strings.Contains(out, "SIP/2.0 200") {
		t.Errorf("wrong password not refused with 403 (err %v)", err)
	}
	if c := strings.Count(out, "SIP/2.0 401"); c > 1 {
		t.Errorf("%d challenges: a 401 loop", c)
	}
	if s := n.r.Stats(); s.Forbidden != 1 {
		t.Errorf("stats %+v", s)
	}
}

// TestRegisterBaresipNetns: baresip 1.0.0 (Debian 12, libre 1.1.0)
// registers the same way. It gives up on a 401 holding a SHA-256
// challenge ("Register: Function not implemented") whether that comes
// first or after the MD5 one (RFC 8760 §2.4 lets a server send both, in
// order of preference): shown here for both orders. With MD5 alone, the
// node's default (Options.DigestAlgorithms), it registers.
func TestRegisterBaresipNetns(t *testing.T) {
	netns.RequireRoot(t)
	baresip := need(t, "baresip", "baresip-core")
	leakcheck.Check(t)
	n := newNSRig(t, func(c *RegistrarConfig) { c.Algorithms = []string{"MD5"} }) // the node's default (gateway.DefaultOptions)
	run := func(n *nsRig, password string) string {
		dir := t.TempDir()
		conf := "poll_method epoll\nnet_interface 10.77.0.2\nsip_listen 10.77.0.2:5062\n" +
			"module_path /usr/lib/baresip/modules\nmodule g711.so\nmodule_tmp account.so\n"
		os.WriteFile(filepath.Join(dir, "config"), []byte(conf), 0o644)
		os.WriteFile(filepath.Join(dir, "accounts"), []byte("<sip:201@10.77.0.1>;auth_pass="+password+";regint=300;audio_codecs=pcmu\n"), 0o644)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := n.phone.Command(ctx, baresip, "-f", dir, "-t", "2")
		cmd.Dir = dir
		out, _ := cmd.CombinedOutput()
		return string(out)
	}
	for _, algs := range [][]string{{"SHA-256", "MD5"}, {"MD5", "SHA-256"}} {
		strict := newNSRig(t, func(c *RegistrarConfig) { c.Algorithms = algs })
		out := run(strict, "secret201")
		t.Logf("baresip, %v offered:\n%s", algs, out)
		if !strings.Contains(out, "Function not implemented") || len(strict.live(t)) != 0 {
			t.Errorf("baresip 1.0.0 registered with %v challenges: has Debian's libre learnt SHA-256? Then reconsider the default digest-algorithms", algs)
		}
	}
	out := run(n, "secret201")
	t.Logf("baresip, right password:\n%s", out)
	if !strings.Contains(out, "200 OK") {
		t.Errorf("no 200 for the right password")
	}
	if s := n.r.Stats(); s.Registered < 1 {
		t.Errorf("stats %+v", s)
	}
	out = run(n, "wrong-password")
	t.Logf("baresip, wrong password:\n%s", out)
	if !strings.Contains(out, "403 Forbidden") {
		t.Errorf("no 403 for the wrong password")
	}
	if s := n.r.Stats(); s.Forbidden != 1 {
		t.Errorf("stats %+v: want exactly one 403, no retry loop", s)
	}
}
