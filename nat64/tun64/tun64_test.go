package tun64

import (
	"context"
	"encoding/binary"
	"errors"
	"net/netip"
	"sync"
	"testing"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/nat64"
)

// chanDevice is an in-memory TUN: packets written to in are read by Run;
// packets Run writes arrive on out.
type chanDevice struct {
	in, out   chan []byte
	closed    chan struct{}
	closeOnce sync.Once
}

func newChanDevice() *chanDevice {
	return &chanDevice{in: make(chan []byte), out: make(chan []byte, 16), closed: make(chan struct{})}
}

func (d *chanDevice) BatchSize() int { return 4 }

func (d *chanDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	select {
	case p := <-d.in:
		sizes[0] = copy(bufs[0][offset:], p)
		return 1, nil
	case <-d.closed:
		return 0, errors.New("closed")
	}
}

func (d *chanDevice) Write(bufs [][]byte, offset int) (int, error) {
	for _, b := range bufs {
		select {
		case d.out <- append([]byte(nil), b[offset:]...):
		case <-d.closed:
			return 0, errors.New("closed")
		}
	}
	return len(bufs), nil
}

func (d *chanDevice) Close() error {
	d.closeOnce.Do(func() { close(d.closed) })
	return nil
}

func csum(b []byte, acc uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		acc += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		acc += uint32(b[len(b)-1]) << 8
	}
	for acc > 0xffff {
		acc = acc>>16 + acc&0xffff
	}
	return ^uint16(acc)
}

// udp6 builds an IPv6 UDP packet with a valid checksum.
func udp6(src, dst netip.Addr, sp, dp uint16, payload []byte) []byte {
	b := make([]byte, 48+len(payload))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
	b[6], b[7] = 17, 64
	s, d := src.As16(), dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	u := b[40:]
	binary.BigEndian.PutUint16(u, sp)
	binary.BigEndian.PutUint16(u[2:], dp)
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	copy(u[8:], payload)
	var ph uint32
	for i := 8; i < 40; i += 2 {
		ph += uint32(b[i])<<8 | uint32(b[i+1])
	}
	ph += uint32(len(u)) + 17
	binary.BigEndian.PutUint16(u[6:], csum(u, ph))
	return b
}

// TestRun drives a UDP exchange through the loop in both directions and
// stops it by cancelling its context.
func TestRun(t *testing.T) {
	leakcheck.Check(t)
	pool := netip.MustParseAddr("192.0.2.1")
	tr, err := nat64.New(nat64.Config{Pool: []netip.Addr{pool}})
	if err != nil {
		t.Fatal(err)
	}
	dev := newChanDevice()
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() { res <- Run(ctx, dev, tr, nil) }()

	host := netip.MustParseAddr("2001:db8::10")
	server, _ := nat64.Embed(nat64.WellKnownPrefix, netip.MustParseAddr("198.51.100.7"))
	dev.in <- udp6(host, server, 40000, 123, []byte("time?"))
	got := <-dev.out
	if got[0] != 0x45 || netip.AddrFrom4([4]byte(got[12:16])) != pool || csum(got[:20], 0) != 0 {
		t.Fatalf("translated: % x", got)
	}
	// Echo it back as the server's answer: swap addresses and ports.
	back := append([]byte(nil), got...)
	copy(back[12:16], got[16:20])
	copy(back[16:20], got[12:16])
	copy(back[20:22], got[22:24])
	copy(back[22:24], got[20:22])
	dev.in <- back
	got6 := <-dev.out
	if got6[0]>>4 != 6 || netip.AddrFrom16([16]byte(got6[24:40])) != host || binary.BigEndian.Uint16(got6[42:]) != 40000 {
		t.Fatalf("answer: % x", got6)
	}
	cancel()
	if err := <-res; err != nil {
		t.Fatalf("Run: %v", err)
	}
	select {
	case <-dev.closed:
	default:
		t.Fatal("device left open")
	}
}

// splitDevice reports tun.ErrTooManySegments with every read, as
// wireguard-go's device does when a GSO super-packet splits into more
// segments than the batch: the segments read are good.
type splitDevice struct{ *chanDevice }

func (d splitDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := d.chanDevice.Read(bufs, sizes, offset)
	if err != nil {
		return n, err
	}
	return n, tun.ErrTooManySegments
}

// TestRunTooManySegments: a split too large for the batch loses its rest,
// not the NAT64: the segments read are translated and Run goes on.
func TestRunTooManySegments(t *testing.T) {
	leakcheck.Check(t)
	tr, err := nat64.New(nat64.Config{Pool: []netip.Addr{netip.MustParseAddr("192.0.2.1")}})
	if err != nil {
		t.Fatal(err)
	}
	dev := splitDevice{newChanDevice()}
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() { res <- Run(ctx, dev, tr, nil) }()
	host := netip.MustParseAddr("2001:db8::10")
	server, _ := nat64.Embed(nat64.WellKnownPrefix, netip.MustParseAddr("198.51.100.7"))
	for i := range 2 {
		dev.in <- udp6(host, server, 40000, 123, []byte("time?"))
		select {
		case got := <-dev.out:
			if got[0] != 0x45 {
				t.Fatalf("packet %d: % x", i, got)
			}
		case err := <-res:
			t.Fatalf("Run ended on a too large split: %v", err)
		}
	}
	cancel()
	if err := <-res; err != nil {
		t.Fatalf("Run: %v", err)
	}
}
