//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/gateway"
	"github.com/sipmesh/sipmesh/internal/netns"
	"github.com/sipmesh/sipmesh/netx"
	"github.com/sipmesh/sipmesh/ssr"
)

// TestRogueOnMeshLink (issue 19): three `sipmesh node` processes n1–n2–n3
// in namespaces, and a rogue namespace on a link of n2 that overhears the
// n1–n2 link (a packet socket: on a radio, anyone in range hears it). The
// rogue, driven by this test with link security of its own (its own key:
// an open mesh lets it hold a session, nothing more), replays overheard
// frames on the n1–n2 link as n1 and from its own address, replays and
// modifies its own sealed frames, sends bare frames and sealed frames
// claiming n1's ID and an invented one, a handshake whose key does not
// hash to the ID it claims (n1's), and a v1 frame. Meanwhile n1 pings n3
// through n2 every 100 ms. n2's neighbours, ring neighbours and route
// cache do not change, every ping is answered, and n2's counters show each
// kind of drop.
func TestRogueOnMeshLink(t *testing.T) {
	netns.RequireRoot(t)
	if testing.Short() {
		t.Skip("starts three nodes in network namespaces; takes some 15 s")
	}
	bin := buildSipmesh(t)
	tmp := t.TempDir()
	sockDir, err := os.MkdirTemp("", "smg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })

	sp := map[string]*netns.NS{}
	for _, name := range []string{"n1", "n2", "n3", "rogue"} {
		sp[name] = netns.New(t, name)
	}
	// Interfaces are named after the namespace at the other end.
	ifaces := map[string][]string{}
	for _, e := range [][2]string{{"n1", "n2"}, {"n2", "n3"}, {"n2", "rogue"}} {
		netns.Veth(t, sp[e[0]], "ve-"+e[1], sp[e[1]], "ve-"+e[0])
		ifaces[e[0]] = append(ifaces[e[0]], "ve-"+e[1])
		ifaces[e[1]] = append(ifaces[e[1]], "ve-"+e[0])
	}
	for name, ifs := range ifaces {
		for _, ifn := range ifs {
			sp[name].LinkLocal(t, ifn)
		}
	}
	nodes := map[string]*nsNode{}
	names := map[string]string{}
	var ids []ssr.NodeID
	for i, name := range []string{"n1", "n2", "n3"} {
		nd := &nsNode{name: name, ns: sp[name], sock: filepath.Join(sockDir, name+".sock")}
		nd.id = writeNodeKey(t, filepath.Join(tmp, name, "state"), byte(30+i))
		nodes[name], names[nd.id.String()] = nd, name
		ids = append(ids, nd.id)
		nd.start(t, bin, tmp, ifaces[name])
	}
	n1, n2, n3 := nodes["n1"], nodes["n2"], nodes["n3"]
	slices.Sort(ids)
	ringOK := func() (bool, string) {
		for _, nd := range []*nsNode{n1, n2, n3} {
			st, err := nd.status(bin)
			if err != nil {
				return false, err.Error()
			}
			want := ids[(slices.Index(ids, nd.id)+1)%len(ids)].String()
			if len(st.Successors) == 0 || st.Successors[0].ID != want {
				return false, fmt.Sprintf("%s: successors %v, want %s first", nd.name, succNames(st, names), names[want])
			}
		}
		return true, ""
	}
	waitFor(t, 30*time.Second, "the ring to form", ringOK)

	// view is what the attack must not change at n2.
	view := func() (string, gateway.NodeStatus) {
		st, err := n2.status(bin)
		if err != nil {
			t.Fatal(err)
		}
		var nb []string
		for _, x := range st.Neighbours {
			nb = append(nb, x.ID)
		}
		slices.Sort(nb)
		return fmt.Sprintf("neighbours %v successors %v predecessors %v cache %d", nb, succNames(st, names), st.Predecessors, st.CacheEntries), st
	}
	overhear := sp["n2"].OpenCapture(t, "ve-n1") // frames of the n1–n2 link
	asN1 := sp["n1"].OpenCapture(t, "ve-n2")     // puts them on the wire again, as n1
	// A call's worth of traffic through n2 while the rogue works.
	pingOut := make(chan string, 1)
	go func() {
		out, _ := exec.Command(bin, "ping", "--control", n1.sock, "--count", "60", "--interval", "100ms", "--timeout", "3s", n3.id.Addr().String()).CombinedOutput()
		pingOut <- string(out)
	}()
	waitFor(t, 10*time.Second, "the ping stream to cross n2", func() (bool, string) {
		st, err := n2.status(bin)
		if err != nil {
			return false, err.Error()
		}
		return st.Stats.Forwarded >= 6, fmt.Sprintf("n2 forwarded %d frames", st.Stats.Forwarded)
	})
	before, st0 := view()

	// n2's address on the rogue's link, zoned as the rogue sees it.
	rg := newRogue(t, sp["rogue"], netip.AddrPortFrom(sp["n2"].LinkLocal(t, "ve-rogue").WithZone("ve-n2"), ssr.DefaultPort))
	defer rg.stop()
	rg.handshake(t)

	n1ID, fake := n1.id, n2.id+1 // fake: an invented ID just after n2
	hello := func(src ssr.NodeID) []byte {
		b := []byte{ssr.Version, 1}
		b = binary.BigEndian.AppendUint64(b, uint64(src))
		b = binary.BigEndian.AppendUint32(b, 77)
		b = append(b, 1)
		b = binary.BigEndian.AppendUint64(b, uint64(n2.id))
		return append(b, 0)
	}
	notify := func(src ssr.NodeID) []byte { // a ring notification from src, src as the previous hop
		b := []byte{ssr.Version, 2, 2, 0}
		b = binary.BigEndian.AppendUint64(b, uint64(n2.id))
		b = append(b, 0, 0, 1, 2)
		b = binary.BigEndian.AppendUint64(b, uint64(src))
		b = binary.BigEndian.AppendUint64(b, uint64(n2.id))
		return append(b, 0, 0)
	}
	// First (n2 rate-limits the log lines each neighbour address causes):
	// a frame of the old format, and a handshake claiming n1's ID.
	v1 := hello(n1ID)
	v1[0] = 1
	rg.raw(v1)
	rg.raw(rg.handshakeClaiming(t, n1ID))
	for _, src := range []ssr.NodeID{n1ID, fake} {
		rg.sealed(hello(src), false) // sealed under its session, in another's name
		rg.sealed(notify(src), false)
		rg.raw(hello(src)) // bare: no session at all
		rg.raw(notify(src))
	}
	// A frame of its own that n2's Node drops unread (position 0), with a
	// byte modified; then unmodified, and once more: a replay.
	idle := []byte{ssr.Version, 2, 5, 0}
	idle = binary.BigEndian.AppendUint64(idle, uint64(n2.id))
	idle = append(idle, 0, 0, 0, 2)
	idle = binary.BigEndian.AppendUint64(idle, uint64(rg.auth.ID()))
	idle = binary.BigEndian.AppendUint64(idle, uint64(n2.id))
	idle = append(idle, make([]byte, 12)...)
	rg.sealed(idle, true)
	rg.sealed(idle, false)
	rg.raw(rg.last)
	replayed := 0
	n1LL := sp["n1"].LinkLocal(t, "ve-n2").As16()
	for _, f := range overhear.Drain(t) {
		// Ethernet (14) + IPv6 (40) + UDP (8) to the mesh port.
		if len(f) < 62 || binary.BigEndian.Uint16(f[12:]) != 0x86dd || f[20] != 17 || binary.BigEndian.Uint16(f[56:]) != ssr.DefaultPort {
			continue
		}
		if !bytes.Equal(f[22:38], n1LL[:]) {
			continue // n2's own frames to n1: replayed to n2 they would not be for it
		}
		udpChecksum(f[14:])
		if err := asN1.Send(f); err != nil {
			t.Fatal(err)
		}
		rg.raw(f[62:]) // the same frame from the rogue's own address
		replayed++
	}
	if replayed == 0 {
		t.Fatal("nothing overheard on the n1–n2 link")
	}
	rg.pump(2 * time.Second)

	after, st := view()
	if after != before {
		t.Errorf("n2's view changed under attack:\nbefore %s\nafter  %s", before, after)
	}
	if ok, why := ringOK(); !ok {
		t.Errorf("ring after the attack: %s", why)
	}
	a, a0 := st.Auth, st0.Auth
	t.Logf("n2's link security after the attack (%d frames of n1 overheard and replayed, as n1 and from the rogue): %+v", replayed, a)
	if got := a.Replayed - a0.Replayed; got < uint64(replayed)+1 {
		t.Errorf("%d frames replayed as n1 and one of the rogue's own, %d counted replayed", replayed, got)
	}
	for _, c := range []struct {
		what string
		n    uint64
	}{
		{"replayed", a.Replayed - a0.Replayed},
		{"unauthenticated", a.Unauthenticated - a0.Unauthenticated},
		{"wrong sender", a.WrongSender - a0.WrongSender},
		{"bad identity", a.BadIdentity - a0.BadIdentity},
		{"bad mac", a.BadMAC - a0.BadMAC},
		{"old version", a.OldVersion - a0.OldVersion},
	} {
		if c.n == 0 {
			t.Errorf("n2 counted no %s drops", c.what)
		}
	}
	out := <-pingOut
	if !strings.Contains(out, "60 sent, 60 received") {
		t.Errorf("pings n1→n3 through n2 during the attack:\n%s", out)
	}
	log, _ := os.ReadFile(n2.log)
	for _, want := range []string{"wire format v1", "does not hash to the node ID it claims"} {
		if !bytes.Contains(log, []byte(want)) {
			t.Errorf("n2's log has no line with %q", want)
		}
	}
}

// rogue is link security with a key of its own in the rogue namespace,
// driven by the test: it handshakes (anyone may, in an open mesh) and
// sends what the test tells it; its Node's own frames are not sent.
type rogue struct {
	auth   *ssr.LinkAuth
	conn   netx.AddrPortConn
	target netip.AddrPort // n2's mesh socket on the rogue's link
	in     chan []byte
	wg     sync.WaitGroup
	allow  bool   // let sealed frames out (the test's, not the Node's)
	mangle bool   // flip a byte of the next sealed frame
	last   []byte // the last frame sent
}

func newRogue(t *testing.T, ns *netns.NS, target netip.AddrPort) *rogue {
	t.Helper()
	local := ns.LinkLocal(t, "ve-n2")
	pc, err := ns.Network().ListenPacket(context.Background(), "udp6", netip.AddrPortFrom(local, ssr.DefaultPort).String())
	if err != nil {
		t.Fatal(err)
	}
	rg := &rogue{conn: netx.AsAddrPortConn(pc), target: target, in: make(chan []byte, 64)}
	seed := make([]byte, ed25519.SeedSize)
	copy(seed, "sipmesh rogue")
	rg.auth = ssr.NewLinkAuth(ssr.AuthConfig{Key: ed25519.NewKeyFromSeed(seed)}, rg)
	node := ssr.New(rg.auth.ID(), ssr.Params{}, rg.auth, 1)
	node.AddLink(0)
	rg.auth.Attach(node)
	rg.wg.Go(func() {
		buf := make([]byte, 70000)
		for {
			n, from, err := rg.conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				close(rg.in)
				return
			}
			if from.Addr().WithZone("") == target.Addr().WithZone("") {
				rg.in <- append([]byte(nil), buf[:n]...)
			}
		}
	})
	return rg
}

func (rg *rogue) stop() {
	rg.conn.Close()
	for range rg.in {
	}
	rg.wg.Wait()
}

// SendFrame implements ssr.Env: handshake messages always go out, sealed
// frames only when the test sends them.
func (rg *rogue) SendFrame(_ ssr.LinkID, to netip.AddrPort, b []byte) {
	if !to.IsValid() || len(b) < 2 || (b[1] > 5 && !rg.allow) {
		return
	}
	b = bytes.Clone(b)
	if rg.mangle && b[1] == 7 {
		b[len(b)-20] ^= 1
		rg.mangle = false
	}
	rg.raw(b)
}

func (rg *rogue) Deliver(ssr.Event) {}

func (rg *rogue) raw(b []byte) {
	rg.last = b
	rg.conn.WriteToUDPAddrPort(b, rg.target)
}

// sealed sends an inner frame under the rogue's session with n2.
func (rg *rogue) sealed(inner []byte, mangle bool) {
	rg.allow, rg.mangle = true, mangle
	rg.auth.SetNow(time.Now())
	rg.auth.SendFrame(0, rg.target, inner)
	rg.allow = false
}

// pump hands n2's answers to the rogue's link security for d.
func (rg *rogue) pump(d time.Duration) {
	end := time.After(d)
	for {
		select {
		case b := <-rg.in:
			rg.auth.HandleFrame(time.Now(), 0, rg.target, b)
		case <-end:
			return
		}
	}
}

// handshake gets the rogue a session with n2: a frame for a neighbour
// without one starts the handshake.
func (rg *rogue) handshake(t *testing.T) {
	t.Helper()
	for range 50 {
		if rg.auth.Stats().Handshakes > 0 {
			return
		}
		rg.auth.SetNow(time.Now())
		rg.auth.SendFrame(0, rg.target, []byte{ssr.Version, 2})
		rg.pump(200 * time.Millisecond)
	}
	t.Fatalf("the rogue got no session with n2: %+v", rg.auth.Stats())
}

// handshakeClaiming is a handshake init that claims id with the rogue's
// own public key, which does not hash to it (FORMAT.md, HANDSHAKE-INIT).
func (rg *rogue) handshakeClaiming(t *testing.T, id ssr.NodeID) []byte {
	eph, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	seed := make([]byte, ed25519.SeedSize)
	copy(seed, "sipmesh rogue")
	b := []byte{ssr.Version, 3, 0, 0, 0, 9}
	b = binary.BigEndian.AppendUint64(b, uint64(id))
	b = append(b, ed25519.NewKeyFromSeed(seed).Public().(ed25519.PublicKey)...)
	b = append(b, eph.PublicKey().Bytes()...)
	b = append(b, 0)                      // mode: mesh-encryption off
	return append(b, make([]byte, 64)...) // no admission: an open mesh
}

// udpChecksum sets the UDP checksum of an IPv6 packet (RFC 8200 §8.1): a
// veth hands captured packets over with the checksum left to offload, and
// a replay must carry a valid one, as frames overheard on a radio do.
func udpChecksum(ip6 []byte) {
	udp := ip6[40:]
	udp[6], udp[7] = 0, 0
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(ip6[8:40]) // source and destination addresses
	sum += uint32(len(udp)) + 17
	add(udp)
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	c := ^uint16(sum)
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], c)
}
