//go:build linux

package netns_test

import (
	"bufio"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/internal/netns"
)

// WireGuard is the bar for the mesh's encrypted links (issue 19): the same
// job — every link hop authenticated and encrypted — done by the tool a
// mesh operator would otherwise reach for. This kernel has no wireguard
// module ("Unknown device type"), so the bar is wireguard-go, WireGuard's
// own user-space implementation (the module golang.zx2c4.com/wireguard
// that sipmesh already depends on for its TUN package, built here from the
// same version). It runs as a TUN device per namespace, like sipmesh.
//
// Topology: one WireGuard interface per namespace on the bench's A–B–C
// veths, B peering with both, so a datagram A→C is encrypted on A,
// decrypted and re-encrypted on B (which forwards in its kernel between
// the two peers of its one interface) and decrypted on C — one seal and
// one open per link, as mesh-encryption does.

// Tunnel addresses (RFC 4193 ULA, inside the bench's namespaces only).
const wgNet = "fd53:6d00:99::"

// wgPort is the UDP port every WireGuard interface listens on.
const wgPort = 51820

// buildWireGuardGo builds wireguard-go from the module cache into a
// temporary directory and returns its path. A failed build fails the
// benchmark: a missing bar is loud, never a skip.
func buildWireGuardGo(b *testing.B) string {
	b.Helper()
	bin := filepath.Join(b.TempDir(), "wireguard-go")
	goBin := "go"
	if p, err := exec.LookPath("go"); err == nil {
		goBin = p
	} else if _, err := os.Stat("/usr/local/go/bin/go"); err == nil {
		goBin = "/usr/local/go/bin/go"
	}
	cmd := exec.Command(goBin, "build", "-o", bin, "golang.zx2c4.com/wireguard")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build wireguard-go (the WireGuard bar): %v\n%s", err, out)
	}
	return bin
}

// wgPeer is one WireGuard interface of the rig.
type wgPeer struct {
	ns   *netns.NS
	name string // interface name, unique on the machine: the UAPI socket is /var/run/wireguard/<name>.sock
	key  *ecdh.PrivateKey
	addr netip.Addr // tunnel address
	cmd  *exec.Cmd
}

func (p *wgPeer) pub() string { return hex.EncodeToString(p.key.PublicKey().Bytes()) }

// listen is the interface part of a UAPI set: its key and port.
func (p *wgPeer) listen() string {
	return fmt.Sprintf("private_key=%s\nlisten_port=%d\n", hex.EncodeToString(p.key.Bytes()), wgPort)
}

// peerConf is the UAPI lines that add p as a peer at endpoint (an address
// on the veth between them) routing allowed.
func peerConf(p *wgPeer, endpoint, allowed string) string {
	return fmt.Sprintf("public_key=%s\nendpoint=[%s]:%d\nallowed_ip=%s\n", p.pub(), endpoint, wgPort, allowed)
}

// uapi sends one set operation to the interface's UAPI socket (the
// cross-platform configuration protocol of wireguard.com/xplatform) and
// checks its errno=0 answer.
func (p *wgPeer) uapi(b *testing.B, conf string) {
	b.Helper()
	sock := filepath.Join("/var/run/wireguard", p.name+".sock")
	var c net.Conn
	var err error
	for range 100 { // the daemon creates the socket shortly after start
		if c, err = net.Dial("unix", sock); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		b.Fatalf("wireguard-go %s: UAPI socket: %v", p.name, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "set=1\n%s\n", conf); err != nil {
		b.Fatalf("wireguard-go %s: UAPI: %v", p.name, err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "errno=0" {
		b.Fatalf("wireguard-go %s: UAPI set answered %q (%v)", p.name, line, err)
	}
}

// wgRig is three wireguard-go daemons on the bench topology.
type wgRig struct {
	peers []*wgPeer
	wg    sync.WaitGroup
}

func newWGRig(b *testing.B, t *benchTopo) *wgRig {
	bin := buildWireGuardGo(b)
	rig := &wgRig{}
	// Interface names carry the PID: UAPI sockets live in /var/run, which
	// namespaces share, so two runs side by side must not collide.
	for i, ns := range []*netns.NS{t.a, t.b, t.c} {
		k, err := ecdh.X25519().GenerateKey(rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		p := &wgPeer{ns: ns, name: fmt.Sprintf("wg%d%c", os.Getpid()%100000, 'a'+i), key: k,
			addr: netip.MustParseAddr(fmt.Sprintf("%s%d", wgNet, i+1))}
		p.cmd = ns.Command(context.Background(), bin, "-f", p.name)
		p.cmd.Env = append(os.Environ(), "LOG_LEVEL=error")
		if err := p.cmd.Start(); err != nil {
			rig.stop()
			b.Fatalf("start wireguard-go in %s: %v", ns.Name, err)
		}
		rig.peers = append(rig.peers, p)
		rig.wg.Go(func() { p.cmd.Wait() })
	}
	b.Cleanup(rig.stop)
	a, bb, c := rig.peers[0], rig.peers[1], rig.peers[2]
	// A and C reach the whole tunnel net through B; B routes each end's
	// address to that end (allowed_ip is WireGuard's routing table).
	a.uapi(b, a.listen()+peerConf(bb, netAB+"2", wgNet+"/64"))
	c.uapi(b, c.listen()+peerConf(bb, netBC+"2", wgNet+"/64"))
	bb.uapi(b, bb.listen()+peerConf(a, netAB+"1", a.addr.String()+"/128")+peerConf(c, netBC+"3", c.addr.String()+"/128"))
	for _, p := range rig.peers {
		p.ns.Run(b, "ip", "-6", "addr", "add", p.addr.String()+"/64", "dev", p.name, "nodad")
		p.ns.Run(b, "ip", "link", "set", p.name, "up")
	}
	return rig
}

// stop ends the daemons (their TUN devices go with them) and waits.
func (rig *wgRig) stop() {
	for _, p := range rig.peers {
		if p.cmd.Process != nil {
			p.cmd.Process.Kill()
		}
	}
	rig.wg.Wait()
	for _, p := range rig.peers {
		os.Remove(filepath.Join("/var/run/wireguard", p.name+".sock"))
	}
	rig.peers = nil
}

// wireGuardRoundTrip runs the ping-pong A↔C through the WireGuard tunnel;
// the first datagram waits for both handshakes, so it warms up first.
func wireGuardRoundTrip(b *testing.B, t *benchTopo) time.Duration {
	rig := newWGRig(b, t)
	return udpRoundTrip(b, t.a, t.c, rig.peers[0].addr, rig.peers[2].addr, true)
}

// warmUp sends datagrams to dst until one echo comes back (at most 100
// tries a quarter of a second apart: handshakes take a round trip each).
func warmUp(b *testing.B, c addrPortConn, dst netip.AddrPort) {
	buf := make([]byte, 2048)
	for range 100 {
		if _, err := c.WriteToUDPAddrPort(make([]byte, 64), dst); err != nil {
			b.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
		if _, _, err := c.ReadFromUDPAddrPort(buf); err == nil {
			return
		}
	}
	b.Fatalf("no echo from %v through the tunnel in 25 s", dst)
}
