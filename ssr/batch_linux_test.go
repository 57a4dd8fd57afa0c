package ssr

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// batchPair is a batched socket and a plain peer on the loopback.
func batchPair(t *testing.T) (bc *batchConn, self, peer *net.UDPConn, fails *[]error) {
	t.Helper()
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Fatalf("no loopback interface: %v", err)
	}
	listen := func() *net.UDPConn {
		c, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
		if err != nil {
			t.Fatalf("loopback UDP: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	self, peer = listen(), listen()
	fails = new([]error)
	bc = newBatchConn(self, lo.Index, "lo", func(_ netip.AddrPort, err error) { *fails = append(*fails, err) })
	if bc == nil {
		t.Fatal("no batched I/O on a kernel UDP socket")
	}
	return bc, self, peer, fails
}

func addrOf(c *net.UDPConn) netip.AddrPort { return c.LocalAddr().(*net.UDPAddr).AddrPort() }

func frameN(i int) []byte { return bytes.Repeat([]byte{byte(i)}, 10+i) }

// TestBatchRead: a burst larger than one batch arrives whole and in order
// over several recvmmsg calls, with its source; an oversized datagram is
// seen longer than maxWireFrame (the router drops and counts it).
func TestBatchRead(t *testing.T) {
	bc, self, peer, _ := batchPair(t)
	const burst = 2*linkBatch + 3
	for i := range burst {
		if _, err := peer.WriteToUDPAddrPort(frameN(i), addrOf(self)); err != nil {
			t.Fatal(err)
		}
	}
	peer.WriteToUDPAddrPort(make([]byte, readBufSize+100), addrOf(self))
	got, calls := 0, 0
	for got < burst+1 {
		n, err := bc.read()
		if err != nil {
			t.Fatal(err)
		}
		calls++
		for i := range n {
			b, from := bc.frame(i)
			if from != addrOf(peer) {
				t.Fatalf("frame %d from %v, want %v", got, from, addrOf(peer))
			}
			if got == burst {
				if len(b) <= maxWireFrame {
					t.Fatalf("oversized datagram read as %d bytes", len(b))
				}
			} else if !bytes.Equal(b, frameN(got)) {
				t.Fatalf("frame %d: %d bytes %x…, want %d", got, len(b), b[:1], len(frameN(got)))
			}
			got++
		}
	}
	if calls > burst/2 {
		t.Errorf("%d frames took %d reads: not batched", burst, calls)
	}
}

// TestBatchWrite: frames queued past one batch leave in order; a closed
// socket reports every frame still queued as failed.
func TestBatchWrite(t *testing.T) {
	bc, self, peer, fails := batchPair(t)
	const burst = 2*linkBatch + 3
	to := addrOf(peer)
	for i := range burst {
		if !bc.add(frameN(i), to) {
			bc.flush()
			if !bc.add(frameN(i), to) {
				t.Fatalf("frame %d not queued after a flush", i)
			}
		}
	}
	bc.flush()
	buf := make([]byte, 2048)
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	for i := range burst {
		n, from, err := peer.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if from != addrOf(self) || !bytes.Equal(buf[:n], frameN(i)) {
			t.Fatalf("frame %d: %d bytes from %v, want %d from %v", i, n, from, len(frameN(i)), addrOf(self))
		}
	}
	if len(*fails) != 0 {
		t.Fatalf("failures: %v", *fails)
	}
	// An address on another link (zone) is not batched: the router sends
	// it on its own, after flushing what is queued.
	if bc.add([]byte("x"), netip.AddrPortFrom(netip.MustParseAddr("fe80::1%eth9"), 7447)) {
		t.Error("a frame for another interface's zone was queued")
	}
	bc.add([]byte("a"), to)
	bc.add([]byte("b"), to)
	self.Close()
	bc.flush()
	if len(*fails) != 2 || !errors.Is((*fails)[0], net.ErrClosed) {
		t.Errorf("flush on a closed socket reported %v, want 2 × net.ErrClosed", *fails)
	}
}

// TestBatchNoAlloc: a batch written and read back allocates nothing.
func TestBatchNoAlloc(t *testing.T) {
	bc, self, _, _ := batchPair(t)
	to := addrOf(self) // to itself: the same socket reads it back
	frame := frameN(5)
	avg := testing.AllocsPerRun(200, func() {
		for range 4 {
			bc.add(frame, to)
		}
		bc.flush()
		for got := 0; got < 4; {
			n, err := bc.read()
			if err != nil {
				t.Fatal(err)
			}
			for i := range n {
				bc.frame(i)
			}
			got += n
		}
	})
	if avg != 0 {
		t.Errorf("%.1f allocations per batch, want 0", avg)
	}
}

// TestBatchZones: a link-local source read on the link's interface gets
// the link's name as zone (what package net reports, and the Node keys
// neighbours by), one on another interface its number; the cached last
// source does not leak into the next one.
func TestBatchZones(t *testing.T) {
	b := &batchConn{ifindex: 7, name: "mesh0"}
	b.rx.init()
	set := func(i int, addr string, scope uint32, port uint16) {
		sa := &b.rx.names[i]
		sa.Family = unix.AF_INET6
		sa.Addr = netip.MustParseAddr(addr).As16()
		sa.Scope_id = scope
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		p[0], p[1] = byte(port>>8), byte(port)
		b.rx.msgs[i].n = 3
	}
	set(0, "fe80::1", 7, 7447)
	set(1, "fe80::1", 7, 7448)
	set(2, "fe80::1", 9, 7447)
	set(3, "fd00::2", 0, 7447)
	want := []string{"[fe80::1%mesh0]:7447", "[fe80::1%mesh0]:7448", "[fe80::1%9]:7447", "[fd00::2]:7447"}
	for i, w := range want {
		buf, from := b.frame(i)
		if from.String() != w || len(buf) != 3 {
			t.Errorf("frame %d: %d bytes from %v, want 3 from %s", i, len(buf), from, w)
		}
	}
}
