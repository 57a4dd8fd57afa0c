package nat64

import (
	"encoding/binary"
	"testing"
)

// fixL4 makes the upper-layer checksum of a parsed, unfragmented packet
// valid, so the fuzzer spends its time past the checksum checks and the
// property "valid in, valid out" can be asserted. ph is the pseudo-header
// sum (0 for ICMPv4).
func fixL4(proto uint8, l4 []byte, ph uint32) {
	switch proto {
	case protoTCP:
		if len(l4) >= 18 {
			setL4Sum(proto, l4, ph)
		}
	case protoUDP:
		if len(l4) >= 8 {
			setL4Sum(proto, l4, ph)
		}
	case protoICMP, protoICMPv6:
		if len(l4) >= 4 {
			setL4Sum(proto, l4, ph)
		}
	}
}

func fuzzTranslator(t *testing.T) *Translator {
	// One port, so the seeds can name the bindings IPv4 packets hit.
	tr, _ := newTestTranslator(t, func(c *Config) { c.PortMin, c.PortMax = 4000, 4000; c.ICMPErrorsPerSecond = 1 << 20 })
	return tr
}

func seeds6() [][]byte {
	dst := wkp(server4)
	fh := []byte{0, 0, 0, 1, 0, 0, 0, 9}
	msg := make([]byte, 8, 8+48)
	msg[0] = icmp6DstUnreach
	msg[1] = 4
	msg = append(msg, pkt6(dst, host6, 60, protoUDP, udpSeg(53, 40000, nil), nil)...)
	ptb := append([]byte{icmp6PacketTooBig, 0, 0, 0, 0, 0, 5, 0}, msg[8:]...)
	return [][]byte{
		pkt6(host6, dst, 64, protoUDP, udpSeg(40000, 53, []byte("hello")), nil),
		pkt6(host6, dst, 64, protoTCP, tcpSeg(33000, 80, tcpSYN, nil), nil),
		pkt6(host6, dst, 64, protoICMPv6, echoMsg(icmp6Echo, 0x1234, 1, []byte("ping")), nil),
		pkt6(host6, dst, 64, protoUDP, udpSeg(40000, 53, make([]byte, 40)), fh),
		pkt6(host6, dst, 64, protoICMPv6, msg, nil),
		pkt6(host6, dst, 64, protoICMPv6, ptb, nil),
		pkt6(host6, dst, 1, protoUDP, udpSeg(40000, 53, nil), nil),
	}
}

func seeds4() [][]byte {
	quoted := pkt4(pool4, server4, 63, protoUDP, 0, 0, udpSeg(4000, 53, []byte("hello")), true)[:28]
	te := append([]byte{icmp4TimeExceeded, 0, 0, 0, 0, 0, 0, 0}, quoted...)
	fn := append([]byte{icmp4DstUnreach, 4, 0, 0, 0, 0, 5, 0x78}, quoted...)
	return [][]byte{
		pkt4(server4, pool4, 64, protoUDP, 1, 0, udpSeg(53, 4000, []byte("answer")), true),
		pkt4(server4, pool4, 64, protoUDP, 1, 0, udpSeg(53, 4000, []byte("no sum")), false),
		pkt4(server4, pool4, 64, protoTCP, 2, 0x4000, tcpSeg(80, 4000, tcpSYN|0x10, nil), true),
		pkt4(server4, pool4, 64, protoICMP, 3, 0, echoMsg(icmp4EchoReply, 4000, 1, []byte("pong")), true),
		pkt4(server4, pool4, 64, protoUDP, 4, 0x2000, udpSeg(53, 4000, make([]byte, 40)), true),
		pkt4(router4, pool4, 64, protoICMP, 5, 0, te, true),
		pkt4(router4, pool4, 64, protoICMP, 6, 0, fn, true),
		pkt4(server4, pool4, 1, protoUDP, 7, 0, udpSeg(53, 4000, nil), true),
		pkt4(server4, pool4, 64, protoUDP, 8, 0, udpSeg(53, 4000, make([]byte, 1400)), true),
	}
}

// FuzzTranslate6to4 feeds IPv6 packets to In6: it must not panic, and what
// it emits (translations and its own ICMPv6 errors) must be well formed
// with valid checksums.
func FuzzTranslate6to4(f *testing.F) {
	for _, s := range seeds6() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		tr := fuzzTranslator(t)
		fix6(p)
		out := make([]byte, len(p)+64)
		for range 2 { // the second time finds the state the first made
			checkIn6(t, tr, p, out)
		}
	})
}

// FuzzTranslate4to6 feeds IPv4 packets to the pool address to In4Split,
// with bindings for UDP, TCP and ICMP in place.
func FuzzTranslate4to6(f *testing.F) {
	for _, s := range seeds4() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		tr := fuzzTranslator(t)
		setup := make([]byte, 200)
		for _, s := range seeds6()[:3] {
			if _, _, err := tr.In6(s, setup); err != nil {
				t.Fatal(err)
			}
		}
		fix4(p, pool4[:])
		checkIn4Split(t, tr, p)
	})
}

// fix4 makes a fuzzed IPv4 packet pass the header checks (version, total
// length, header checksum) and, where it is whole, the upper-layer
// checksum, so the fuzzer explores the translation itself. A non-nil dst
// replaces the destination address first. A UDP datagram without a
// checksum keeps none (RFC 768; RFC 7915 section 4.5 governs it).
func fix4(p, dst []byte) {
	if len(p) < 20 || p[0]&0x0f < 5 || int(p[0]&0x0f)*4 > len(p) {
		return
	}
	ihl := int(p[0]&0x0f) * 4
	p[0] = 0x40 | p[0]&0x0f
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	if dst != nil {
		copy(p[16:20], dst)
	}
	p[10], p[11] = 0, 0
	binary.BigEndian.PutUint16(p[10:], csum(p[:ihl], 0))
	if h, err := parse4(p, false); err == nil && !h.fragment() {
		ph := uint32(0)
		if h.proto != protoICMP {
			ph = ph4(h.src, h.dst, len(h.l4), h.proto)
		}
		if h.proto != protoUDP || len(h.l4) < 8 || binary.BigEndian.Uint16(h.l4[6:]) != 0 {
			fixL4(h.proto, h.l4, ph)
		}
	}
}

// fix6 is fix4 for IPv6: version, payload length and, for a whole packet
// or an atomic fragment, the upper-layer checksum.
func fix6(p []byte) {
	if len(p) < 40 {
		return
	}
	p[0] = 0x60 | p[0]&0x0f
	binary.BigEndian.PutUint16(p[4:], uint16(len(p)-40))
	if h, err := parse6(p, false); err == nil && h.first() && !h.more {
		fixL4(h.proto, h.l4, ph6(h.src, h.dst, len(h.l4), h.proto))
	}
}

// checkIn4Split passes p to tr.In4Split and asserts the property "valid in,
// valid out": a translation (or its fragments, each within the IPv6 MTU)
// is well-formed IPv6, an ICMPv4 error reply well-formed IPv4, and the
// result says one of them or an error.
func checkIn4Split(t *testing.T, tr *Translator, p []byte) {
	t.Helper()
	out := make([]byte, len(p)+64)
	frags := 0
	n, reply, err := tr.In4Split(p, out, func(f []byte) {
		frags++
		if len(f) > tr.cfg.MTU6 {
			t.Fatalf("fragment of %d bytes", len(f))
		}
		if err := verify6(f); err != nil {
			t.Fatalf("fragment: %v\nin  % x\nout % x", err, p, f)
		}
	})
	if n > len(out) || (n > 0) == (err != nil && !reply) && frags == 0 || frags > 0 && (n != 0 || err != nil) {
		t.Fatalf("n=%d reply=%v err=%v fragments=%d", n, reply, err, frags)
	}
	checkOut(t, p, out, n, reply, verify6, verify4)
}

// checkIn6 is checkIn4Split for tr.In6: an IPv4 translation, or an ICMPv6
// error reply.
func checkIn6(t *testing.T, tr *Translator, p, out []byte) {
	t.Helper()
	n, reply, err := tr.In6(p, out)
	if n > len(out) || (n > 0) == (err != nil && !reply) {
		t.Fatalf("n=%d reply=%v err=%v", n, reply, err)
	}
	checkOut(t, p, out, n, reply, verify4, verify6)
}

// checkOut verifies the n bytes emitted for p: with verify for a
// translation, with verifyReply for the translator's own error reply.
func checkOut(t *testing.T, p, out []byte, n int, reply bool, verify, verifyReply func([]byte) error) {
	t.Helper()
	if n == 0 {
		return
	}
	if reply {
		verify = verifyReply
	}
	if err := verify(out[:n]); err != nil {
		t.Fatalf("reply=%v: %v\nin  % x\nout % x", reply, err, p, out[:n])
	}
}
