package meship

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"
)

// testPacket is an IPv6 packet from src to dst: next header nh, payload
// of n bytes.
func testPacket(src, dst netip.Addr, nh byte, n int) []byte {
	p := make([]byte, ipv6Len+n)
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:], uint16(n))
	p[6], p[7] = nh, 64
	s, d := src.As16(), dst.As16()
	copy(p[8:], s[:])
	copy(p[24:], d[:])
	for i := range n {
		p[ipv6Len+i] = byte(i)
	}
	return p
}

// checkICMPError verifies that e is a well-formed ICMPv6 error of type
// typ: version, length, checksum, at most MinMTU bytes.
func checkICMPError(t testing.TB, e []byte, typ uint8) {
	t.Helper()
	n := packetLen(e)
	if n == 0 || n != len(e) || len(e) > MinMTU || e[6] != protoICMPv6 || e[ipv6Len] != typ {
		t.Fatalf("not an ICMPv6 error of type %d: % x", typ, e[:min(len(e), 48)])
	}
	if icmpChecksum(e[8:40], e[ipv6Len:]) != 0 {
		t.Fatalf("ICMPv6 checksum does not verify")
	}
}

func TestICMPError(t *testing.T) {
	src := netip.MustParseAddr("fdf0:4cb5:d384:1012:3456:789a:bcde:f0a0")
	dst := netip.MustParseAddr("fdf0:4cb5:d384:1fed:cba9:8765:4321:0001")
	self := netip.MustParseAddr("fdf0:4cb5:d384::1").As16()
	for _, size := range []int{8, 1000, 1240, 1400, 9000} {
		p := testPacket(src, dst, 17, size)
		out := make([]byte, MinMTU)
		n := icmpError(out, self[:], p, icmpTooBig, 0, 1280)
		e := out[:n]
		checkICMPError(t, e, icmpTooBig)
		if netip.AddrFrom16([16]byte(e[24:40])) != src || binary.BigEndian.Uint32(e[44:]) != 1280 {
			t.Fatalf("wrong destination or MTU")
		}
		if q := e[48:]; len(q) != min(len(p), MinMTU-48) || string(q) != string(p[:len(q)]) {
			t.Fatalf("size %d: quote of %d bytes, not the start of the packet", size, len(q))
		}
	}
}

func TestMayAnswer(t *testing.T) {
	a := netip.MustParseAddr("fdf0:4cb5:d384::1")
	b := netip.MustParseAddr("fdf0:4cb5:d384::2")
	echo := testPacket(a, b, protoICMPv6, 8)
	echo[ipv6Len] = 128
	errMsg := testPacket(a, b, protoICMPv6, 8)
	errMsg[ipv6Len] = icmpDestUnreach
	// An ICMPv6 error behind a destination options header.
	hidden := testPacket(a, b, 60, 16)
	hidden[ipv6Len], hidden[ipv6Len+1] = protoICMPv6, 0
	hidden[ipv6Len+8] = icmpTooBig
	mcast := testPacket(a, netip.MustParseAddr("ff02::1"), 17, 8)
	unspec := testPacket(netip.IPv6Unspecified(), b, 17, 8)
	for _, c := range []struct {
		name   string
		p      []byte
		tooBig bool
		want   bool
	}{
		{"udp", testPacket(a, b, 17, 8), false, true},
		{"echo request", echo, false, true},
		{"icmp error", errMsg, true, false},
		{"icmp error behind options", hidden, true, false},
		{"multicast", mcast, false, false},
		{"multicast too big", mcast, true, true},
		{"unspecified source", unspec, true, false},
	} {
		if got := mayAnswer(c.p, c.tooBig); got != c.want {
			t.Errorf("%s: mayAnswer = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestLimiter(t *testing.T) {
	var l limiter
	now := time.Unix(1000, 0)
	n := 0
	for range 1000 {
		if l.allow(now) {
			n++
		}
	}
	if n != errBurst {
		t.Fatalf("burst: %d allowed, want %d", n, errBurst)
	}
	now = now.Add(time.Second)
	n = 0
	for range 1000 {
		if l.allow(now) {
			n++
		}
	}
	if n != errBurst { // refilled to the burst, not beyond
		t.Fatalf("after 1 s: %d allowed, want %d", n, errBurst)
	}
}
