package gateway

import (
	"context"
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/memnet"
	"github.com/sipmesh/sipmesh/nat64/tun64"
)

// fakeTUN is a TUN device in memory: packets put in in are read by the
// loop, what the loop writes arrives on out.
type fakeTUN struct {
	in     chan []byte
	out    chan []byte
	closed chan struct{}
	once   sync.Once
}

func newFakeTUN() *fakeTUN {
	return &fakeTUN{in: make(chan []byte, 4), out: make(chan []byte, 4), closed: make(chan struct{})}
}

func (f *fakeTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	select {
	case p := <-f.in:
		sizes[0] = copy(bufs[0][offset:], p)
		return 1, nil
	case <-f.closed:
		return 0, os.ErrClosed
	}
}

func (f *fakeTUN) Write(bufs [][]byte, offset int) (int, error) {
	for _, b := range bufs {
		select {
		case f.out <- append([]byte(nil), b[offset:]...):
		case <-f.closed:
			return 0, os.ErrClosed
		}
	}
	return len(bufs), nil
}

func (f *fakeTUN) BatchSize() int { return 1 }
func (f *fakeTUN) Close() error   { f.once.Do(func() { close(f.closed) }); return nil }

type fakeWired struct{ down chan struct{} }

func (w fakeWired) Down() error { close(w.down); return nil }

// udp6 is an IPv6 UDP packet with a valid checksum.
func udp6(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	p := make([]byte, 48+len(payload))
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:], uint16(8+len(payload)))
	p[6], p[7] = 17, 64
	copy(p[8:24], src.AsSlice())
	copy(p[24:40], dst.AsSlice())
	binary.BigEndian.PutUint16(p[40:], sport)
	binary.BigEndian.PutUint16(p[42:], dport)
	binary.BigEndian.PutUint16(p[44:], uint16(8+len(payload)))
	copy(p[48:], payload)
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(p[8:40])
	sum += uint32(8+len(payload)) + 17
	add(p[40:])
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(p[46:], ^uint16(sum))
	return p
}

func newNAT64TestNode(t *testing.T) *Node {
	t.Helper()
	nw := memnet.New(memnet.Config{})
	h := nw.AddHost("gw")
	h.AddInterface("m0", 1500)
	h.AddInterface("up0", 1500, netip.MustParsePrefix("198.51.100.2/24"))
	o := DefaultOptions()
	o.Name = "gw"
	o.StateDir = filepath.Join(t.TempDir(), "gw")
	o.MeshInterfaces = []string{"m0"}
	o.Control = ""
	o.UplinkInterface = "up0"
	o.PublicAddress = netip.MustParseAddr("203.0.113.1")
	o.DNSUpstreams = []netip.AddrPort{netip.MustParseAddrPort("198.51.100.53:53")}
	o.NAT64Prefix = netip.MustParsePrefix("2001:db8:64::/96")
	n, err := NewNode(o, h, nil)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestGatewayNAT64Lifecycle: the gateway's NAT64 opens its device, wires
// it with the configured prefix, pool and uplink, announces the prefix
// only while it runs, translates what the device gives it, and unwires
// when it stops; a wiring that fails leaves no announcement and says why
// in the status.
func TestGatewayNAT64Lifecycle(t *testing.T) {
	leakcheck.Check(t)
	n := newNAT64TestNode(t)
	g := n.svc.role
	dev := newFakeTUN()
	wired := fakeWired{down: make(chan struct{})}
	var got tun64.Wiring
	n.openTUN = func(name string, mtu int) (tun64.Device, error) {
		if name != nat64Device {
			t.Errorf("device %q", name)
		}
		return dev, nil
	}
	n.wire = func(w tun64.Wiring) (interface{ Down() error }, error) { got = w; return wired, nil }
	if a := g.announcement(true); a.NAT64.IsValid() {
		t.Fatalf("NAT64 announced before it runs: %v", a.NAT64)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.runNAT64(ctx) }()
	waitCond(t, 10*time.Second, "the NAT64 to run", func() bool { return g.nat64Prefix().IsValid() })
	if got != (tun64.Wiring{Device: nat64Device, Prefix: netip.MustParsePrefix("2001:db8:64::/96"), Pool: netip.MustParsePrefix("198.18.64.0/30"), Uplink: "up0"}) {
		t.Errorf("wiring %+v", got)
	}
	a, err := decodeAnnouncement(encodeAnnouncement(g.announcement(true)))
	if err != nil || a.NAT64 != netip.MustParsePrefix("2001:db8:64::/96") {
		t.Fatalf("announcement %+v, %v", a, err)
	}
	// A packet from a mesh host to 198.51.100.7 under the prefix leaves
	// as IPv4 from the pool.
	dev.in <- udp6(netip.MustParseAddr("fdf0::1"), netip.MustParseAddr("2001:db8:64::c633:6407"), 40000, 123, []byte("ntp?"))
	select {
	case p := <-dev.out:
		if p[0]>>4 != 4 || netip.AddrFrom4([4]byte(p[16:20])) != netip.MustParseAddr("198.51.100.7") || !netip.MustParsePrefix("198.18.64.0/30").Contains(netip.AddrFrom4([4]byte(p[12:16]))) {
			t.Fatalf("translated % x", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("nothing translated")
	}
	if st := g.nat64Status(); !st.Running || st.Out4 != 1 || st.Sessions != 1 {
		t.Errorf("status %+v", st)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	select {
	case <-wired.down:
	default:
		t.Error("stopped without unwiring")
	}
	if g.nat64Prefix().IsValid() {
		t.Error("NAT64 still announced after it stopped")
	}

	// A wiring that fails: no NAT64, and the status says why.
	n.openTUN = func(string, int) (tun64.Device, error) { return newFakeTUN(), nil }
	n.wire = func(tun64.Wiring) (interface{ Down() error }, error) {
		return nil, errors.New("tun64: iptables (Debian/OpenWrt package iptables): not found")
	}
	if err := g.runNAT64(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := g.nat64Status(); st.Running || st.Error == "" || g.announcement(true).NAT64.IsValid() {
		t.Errorf("after a failed wiring: %+v", st)
	}
}
