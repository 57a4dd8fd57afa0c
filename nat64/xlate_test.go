package nat64

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
	"time"
)

// out6to4 runs In6 and requires a translation that verifies.
func out6to4(t *testing.T, tr *Translator, p []byte) []byte {
	t.Helper()
	out := make([]byte, len(p)+64)
	n, reply, err := tr.In6(p, out)
	if err != nil || reply {
		t.Fatalf("In6: n=%d reply=%v err=%v", n, reply, err)
	}
	if err := verify4(out[:n]); err != nil {
		t.Fatalf("In6 output: %v\n% x", err, out[:n])
	}
	return out[:n]
}

func out4to6(t *testing.T, tr *Translator, p []byte) []byte {
	t.Helper()
	out := make([]byte, len(p)+64)
	n, reply, err := tr.In4(p, out)
	if err != nil || reply {
		t.Fatalf("In4: n=%d reply=%v err=%v", n, reply, err)
	}
	if err := verify6(out[:n]); err != nil {
		t.Fatalf("In4 output: %v\n% x", err, out[:n])
	}
	return out[:n]
}

func golden(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Fatalf("%s:\n got % x\nwant % x", what, got, want)
	}
}

// TestUDPGolden translates a UDP exchange both ways and compares with
// packets built by hand (RFC 7915 §4.1, §5.1; RFC 6146 §3.5.1).
func TestUDPGolden(t *testing.T) {
	tr, _ := newTestTranslator(t, nil)
	payload := []byte("what time is it?")
	in := pkt6(host6, wkp(server4), 64, protoUDP, udpSeg(40000, 123, payload), nil)
	in[0], in[1] = 0x6b, 0x80 // traffic class 0xb8 (EF), copied to TOS
	got := out6to4(t, tr, in)
	port := binary.BigEndian.Uint16(got[20:])
	if port < 1024 {
		t.Fatalf("pool port %d below PortMin", port)
	}
	want := pkt4(pool4, server4, 63, protoUDP, binary.BigEndian.Uint16(got[4:]), 0, udpSeg(port, 123, payload), true)
	want[1] = 0xb8
	binary.BigEndian.PutUint16(want[10:], 0)
	binary.BigEndian.PutUint16(want[10:], csum(want[:20], 0))
	golden(t, "6to4", got, want)

	// The answer comes back to the pool port.
	reply := []byte("noon")
	in4 := pkt4(server4, pool4, 50, protoUDP, 7, 0x4000, udpSeg(123, port, reply), true)
	got6 := out4to6(t, tr, in4)
	want6 := pkt6(wkp(server4), host6, 49, protoUDP, udpSeg(123, 40000, reply), nil)
	golden(t, "4to6", got6, want6)

	// The same IPv6 source port keeps its mapping to another server
	// (endpoint-independent mapping, RFC 4787 REQ-1).
	other := a4("198.51.100.99")
	got = out6to4(t, tr, pkt6(host6, wkp(other), 64, protoUDP, udpSeg(40000, 9, nil), nil))
	if p := binary.BigEndian.Uint16(got[20:]); p != port {
		t.Fatalf("second destination mapped to port %d, first %d", p, port)
	}
}

func TestUDPZeroChecksumFromIPv4(t *testing.T) {
	tr, _ := newTestTranslator(t, nil)
	got := out6to4(t, tr, pkt6(host6, wkp(server4), 64, protoUDP, udpSeg(5000, 53, []byte("q")), nil))
	port := binary.BigEndian.Uint16(got[20:])
	seg := udpSeg(53, port, []byte("answer"))
	in4 := pkt4(server4, pool4, 64, protoUDP, 1, 0, seg, false) // checksum left 0
	got6 := out4to6(t, tr, in4)                                 // verify6 rejects a zero checksum
	golden(t, "zero checksum computed (RFC 7915 §4.5)", got6,
		pkt6(wkp(server4), host6, 63, protoUDP, udpSeg(53, 5000, []byte("answer")), nil))

	// An IPv4 fragment with no checksum cannot be completed: dropped.
	in4 = pkt4(server4, pool4, 64, protoUDP, 2, 0x2000, seg, false)
	if _, _, err := tr.In4(in4, make([]byte, 200)); !errors.Is(err, ErrFragment) {
		t.Fatalf("zero-checksum fragment: %v", err)
	}
}

func TestTCPGoldenAndStates(t *testing.T) {
	tr, c := newTestTranslator(t, nil)
	dst := wkp(server4)
	// Not a SYN: no session is made (RFC 6146 §3.5.2.2).
	if _, _, err := tr.In6(pkt6(host6, dst, 64, protoTCP, tcpSeg(33000, 80, 0x10, nil), nil), make([]byte, 100)); !errors.Is(err, ErrNotSYN) {
		t.Fatalf("ACK without session: %v", err)
	}
	got := out6to4(t, tr, pkt6(host6, dst, 64, protoTCP, tcpSeg(33000, 80, tcpSYN, nil), nil))
	port := binary.BigEndian.Uint16(got[20:])
	golden(t, "SYN 6to4", got, pkt4(pool4, server4, 63, protoTCP, binary.BigEndian.Uint16(got[4:]), 0, tcpSeg(port, 80, tcpSYN, nil), true))
	// An unsolicited SYN from another IPv4 host is filtered.
	if _, _, err := tr.In4(pkt4(router4, pool4, 64, protoTCP, 1, 0, tcpSeg(80, port, tcpSYN, nil), true), make([]byte, 200)); !errors.Is(err, ErrFiltered) {
		t.Fatalf("SYN from another address: %v", err)
	}
	got6 := out4to6(t, tr, pkt4(server4, pool4, 64, protoTCP, 1, 0x4000, tcpSeg(80, port, tcpSYN|0x10, nil), true))
	golden(t, "SYN-ACK 4to6", got6, pkt6(dst, host6, 63, protoTCP, tcpSeg(80, 33000, tcpSYN|0x10, nil), nil))

	// Established: the session lives 2 h 4 min idle (RFC 6146 §4).
	c.advance(2*time.Hour + 3*time.Minute)
	out6to4(t, tr, pkt6(host6, dst, 64, protoTCP, tcpSeg(33000, 80, 0x10, []byte("GET /")), nil))
	c.advance(2*time.Hour + 3*time.Minute)
	out4to6(t, tr, pkt4(server4, pool4, 64, protoTCP, 2, 0, tcpSeg(80, port, 0x10, []byte("200")), true))
	// FIN both ways: transitory, 4 minutes.
	out6to4(t, tr, pkt6(host6, dst, 64, protoTCP, tcpSeg(33000, 80, tcpFIN|0x10, nil), nil))
	out4to6(t, tr, pkt4(server4, pool4, 64, protoTCP, 3, 0, tcpSeg(80, port, tcpFIN|0x10, nil), true))
	c.advance(4*time.Minute - time.Second)
	if s := tr.Stats(); s.Sessions != 1 {
		t.Fatalf("sessions before TCP_Trans = %d", s.Sessions)
	}
	c.advance(time.Second)
	if n := tr.Expire(); n != 1 {
		t.Fatalf("expired %d sessions after TCP_Trans, want 1", n)
	}
	if s := tr.Stats(); s.Sessions != 0 || s.BIBs != 0 {
		t.Fatalf("after expiry: %+v", s)
	}
}

func TestTimeouts(t *testing.T) {
	for _, tc := range []struct {
		name  string
		proto uint8
		l4    []byte
		life  time.Duration
	}{
		{"UDP 5 min", protoUDP, udpSeg(1, 2, nil), DefaultUDPTimeout},
		{"ICMP 60 s", protoICMPv6, echoMsg(icmp6Echo, 7, 1, nil), DefaultICMPTimeout},
		{"TCP half-open 4 min", protoTCP, tcpSeg(1, 2, tcpSYN, nil), DefaultTCPTransTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, c := newTestTranslator(t, nil)
			out6to4(t, tr, pkt6(host6, wkp(server4), 64, tc.proto, tc.l4, nil))
			c.advance(tc.life - time.Nanosecond)
			if tr.Expire() != 0 {
				t.Fatal("expired early")
			}
			c.advance(time.Nanosecond)
			if tr.Expire() != 1 {
				t.Fatal("not expired at its lifetime")
			}
		})
	}
}

func TestEchoGolden(t *testing.T) {
	tr, _ := newTestTranslator(t, nil)
	data := []byte("abcdefgh")
	got := out6to4(t, tr, pkt6(host6, wkp(server4), 64, protoICMPv6, echoMsg(icmp6Echo, 0x1234, 1, data), nil))
	id := binary.BigEndian.Uint16(got[24:])
	golden(t, "echo 6to4", got, pkt4(pool4, server4, 63, protoICMP, binary.BigEndian.Uint16(got[4:]), 0, echoMsg(icmp4Echo, id, 1, data), true))
	got6 := out4to6(t, tr, pkt4(server4, pool4, 60, protoICMP, 9, 0, echoMsg(icmp4EchoReply, id, 1, data), true))
	golden(t, "echo reply 4to6", got6, pkt6(wkp(server4), host6, 59, protoICMPv6, echoMsg(icmp6EchoReply, 0x1234, 1, data), nil))
	// An IPv4-originated echo request has no binding.
	if _, _, err := tr.In4(pkt4(server4, pool4, 60, protoICMP, 9, 0, echoMsg(icmp4Echo, id, 1, data), true), make([]byte, 200)); err == nil {
		t.Fatal("IPv4 echo request translated")
	}
}

// TestICMPErrors4to6 has IPv4 routers answer a translated UDP packet; the
// errors come back as ICMPv6 with the quoted packet translated too (RFC
// 7915 §4.2, §4.3).
func TestICMPErrors4to6(t *testing.T) {
	big := make([]byte, 1400)
	for _, tc := range []struct {
		name         string
		typ, code    uint8
		rest         uint32
		wantT, wantC uint8
		wantRest     uint32
		payload      []byte
	}{
		{"time exceeded", icmp4TimeExceeded, 0, 0, icmp6TimeExceeded, 0, 0, nil},
		{"port unreachable", icmp4DstUnreach, 3, 0, icmp6DstUnreach, 4, 0, nil},
		{"host unreachable", icmp4DstUnreach, 1, 0, icmp6DstUnreach, 0, 0, nil},
		{"admin prohibited", icmp4DstUnreach, 13, 0, icmp6DstUnreach, 1, 0, nil},
		{"protocol unreachable", icmp4DstUnreach, 2, 0, icmp6ParamProblem, 1, 6, nil},
		{"frag needed 1400", icmp4DstUnreach, 4, 1400, icmp6PacketTooBig, 0, 1420, big},
		{"frag needed MTU 0: plateau", icmp4DstUnreach, 4, 0, icmp6PacketTooBig, 0, 1280, big},
		{"param problem at TTL", icmp4ParamProblem, 0, 8 << 24, icmp6ParamProblem, 0, 7, nil},
		{"param problem at dst", icmp4ParamProblem, 0, 17 << 24, icmp6ParamProblem, 0, 24, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, _ := newTestTranslator(t, func(c *Config) { c.MTU6 = 1500 })
			orig6 := pkt6(host6, wkp(server4), 64, protoUDP, udpSeg(40000, 7, tc.payload), nil)
			sent := out6to4(t, tr, orig6)
			// The router quotes the header and 8 bytes (RFC 792).
			q := sent[:28]
			msg := make([]byte, 8+len(q))
			msg[0], msg[1] = tc.typ, tc.code
			binary.BigEndian.PutUint32(msg[4:], tc.rest)
			copy(msg[8:], q)
			got := out4to6(t, tr, pkt4(router4, pool4, 64, protoICMP, 5, 0, msg, true))
			m := got[40:]
			if m[0] != tc.wantT || m[1] != tc.wantC || binary.BigEndian.Uint32(m[4:]) != tc.wantRest {
				t.Fatalf("ICMPv6 %d/%d rest %d, want %d/%d rest %d", m[0], m[1], binary.BigEndian.Uint32(m[4:]), tc.wantT, tc.wantC, tc.wantRest)
			}
			if r6 := wkp(router4); !bytes.Equal(got[8:24], r6[:]) || !bytes.Equal(got[24:40], host6[:]) {
				t.Fatalf("outer addresses % x", got[8:40])
			}
			// The quoted packet is the IPv6 packet the host sent, as far as
			// the router quoted it; its hop limit is what the router saw.
			inner := m[8:]
			want := append([]byte(nil), orig6[:48]...)
			want[7] = 63
			golden(t, "quoted packet", inner, want)
		})
	}
}

// TestICMPErrors6to4 has the IPv6 host refuse a packet from IPv4 (RFC 7915
// §5.2, §5.3).
func TestICMPErrors6to4(t *testing.T) {
	for _, tc := range []struct {
		name         string
		typ, code    uint8
		rest         uint32
		wantT, wantC uint8
		wantRest     uint32
	}{
		{"port unreachable", icmp6DstUnreach, 4, 0, icmp4DstUnreach, 3, 0},
		{"no route", icmp6DstUnreach, 0, 0, icmp4DstUnreach, 1, 0},
		{"prohibited", icmp6DstUnreach, 1, 0, icmp4DstUnreach, 10, 0},
		{"packet too big", icmp6PacketTooBig, 0, 1400, icmp4DstUnreach, 4, 1380},
		{"time exceeded", icmp6TimeExceeded, 0, 0, icmp4TimeExceeded, 0, 0},
		{"param problem next header", icmp6ParamProblem, 1, 6, icmp4DstUnreach, 2, 0},
		{"param problem hop limit", icmp6ParamProblem, 0, 7, icmp4ParamProblem, 0, 8 << 24},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, _ := newTestTranslator(t, func(c *Config) { c.MTU6 = 1500 }) // PTB MTU is min(MTU-20, MTU4, MTU6-20)
			sent := out6to4(t, tr, pkt6(host6, wkp(server4), 64, protoUDP, udpSeg(40000, 7, nil), nil))
			port := binary.BigEndian.Uint16(sent[20:])
			orig4 := pkt4(server4, pool4, 64, protoUDP, 77, 0, udpSeg(7, port, []byte("data")), true)
			delivered := out4to6(t, tr, orig4)
			msg := make([]byte, 8+len(delivered))
			msg[0], msg[1] = tc.typ, tc.code
			binary.BigEndian.PutUint32(msg[4:], tc.rest)
			copy(msg[8:], delivered)
			got := out6to4(t, tr, pkt6(host6, wkp(server4), 64, protoICMPv6, msg, nil))
			m := got[20:]
			if m[0] != tc.wantT || m[1] != tc.wantC || binary.BigEndian.Uint32(m[4:]) != tc.wantRest {
				t.Fatalf("ICMPv4 %d/%d rest %#x, want %d/%d rest %#x", m[0], m[1], binary.BigEndian.Uint32(m[4:]), tc.wantT, tc.wantC, tc.wantRest)
			}
			if !bytes.Equal(got[12:16], pool4[:]) || !bytes.Equal(got[16:20], server4[:]) {
				t.Fatalf("outer addresses % x", got[12:20])
			}
			want := append([]byte(nil), orig4...)
			want[8] = 63 // the TTL the host saw
			binary.BigEndian.PutUint16(want[4:], 0)
			binary.BigEndian.PutUint16(want[10:], 0)
			binary.BigEndian.PutUint16(want[10:], csum(want[:20], 0))
			golden(t, "quoted packet", m[8:], want)
		})
	}
}

func TestFragments(t *testing.T) {
	tr, c := newTestTranslator(t, nil)
	// IPv6 first fragment (M=1) → IPv4 MF, Identification from the
	// Fragment Header (RFC 7915 §5.1.1).
	seg := udpSeg(40000, 7, make([]byte, 32))
	binary.BigEndian.PutUint16(seg[4:], 100) // the datagram is longer
	fh := []byte{0, 0, 0, 1, 0xca, 0xfe, 0xba, 0xbe}
	in := pkt6(host6, wkp(server4), 64, protoUDP, seg, fh)
	out := make([]byte, 200)
	n, _, err := tr.In6(in, out)
	if err != nil {
		t.Fatal(err)
	}
	got := out[:n]
	if err := verify4(got); err != nil {
		t.Fatal(err)
	}
	if id, ff := binary.BigEndian.Uint16(got[4:]), binary.BigEndian.Uint16(got[6:]); id != 0xbabe || ff != 0x2000 {
		t.Fatalf("id %#x flags %#x, want 0xbabe 0x2000", id, ff)
	}
	port := binary.BigEndian.Uint16(got[20:])
	// IPv4 first fragment → IPv6 with a Fragment Header (RFC 7915 §4.1).
	seg4 := udpSeg(7, port, make([]byte, 32))
	seg4[6] = 0x12 // some checksum of the whole datagram
	in4 := pkt4(server4, pool4, 64, protoUDP, 0x4321, 0x2000, seg4, false)
	n, _, err = tr.In4(in4, out)
	if err != nil {
		t.Fatal(err)
	}
	got = out[:n]
	if err := verify6(got); err != nil {
		t.Fatal(err)
	}
	if got[6] != nhFragment || got[40] != protoUDP || binary.BigEndian.Uint16(got[42:]) != 1 || binary.BigEndian.Uint32(got[44:]) != 0x4321 {
		t.Fatalf("fragment header % x", got[40:48])
	}
	// Later fragments carry no ports; they get the first one's addresses
	// (RFC 6146 §3.4).
	rest := []byte("0123456789abcdef")
	n, _, err = tr.In4(pkt4(server4, pool4, 64, protoUDP, 0x4321, 5, rest, false), out)
	if err != nil {
		t.Fatal(err)
	}
	want := pkt6(wkp(server4), host6, 63, protoUDP, rest, []byte{0, 0, 0, 5 << 3, 0, 0, 0x43, 0x21})
	copy(want[48:], rest) // pkt6 wrote a UDP checksum into what is mid-datagram data
	golden(t, "IPv4 last fragment", out[:n], want)
	n, _, err = tr.In6(pkt6(host6, wkp(server4), 64, protoUDP, rest, []byte{0, 0, 0, 4 << 3, 0xca, 0xfe, 0xba, 0xbe}), out)
	if err != nil {
		t.Fatal(err)
	}
	got = out[:n]
	if err := verify4(got); err != nil || binary.BigEndian.Uint16(got[6:]) != 4 || !bytes.Equal(got[12:20], append(pool4[:], server4[:]...)) {
		t.Fatalf("IPv6 last fragment: %v % x", err, got)
	}
	// A fragment of a datagram whose first fragment was not seen, or
	// after FRAGMENT_MIN, is dropped.
	if _, _, err := tr.In4(pkt4(server4, pool4, 64, protoUDP, 0x9999, 5, rest, false), out); !errors.Is(err, ErrFragment) {
		t.Fatalf("orphan fragment: %v", err)
	}
	c.advance(FragmentTimeout)
	if _, _, err := tr.In4(pkt4(server4, pool4, 64, protoUDP, 0x4321, 7, rest, false), out); !errors.Is(err, ErrFragment) {
		t.Fatalf("fragment after the timeout: %v", err)
	}
}

func TestFragmentTableBounded(t *testing.T) {
	tr, _ := newTestTranslator(t, func(c *Config) { c.MaxFragments = 2 })
	out := make([]byte, 200)
	sent := out6to4(t, tr, pkt6(host6, wkp(server4), 64, protoUDP, udpSeg(40000, 7, nil), nil))
	port := binary.BigEndian.Uint16(sent[20:])
	seg := udpSeg(7, port, make([]byte, 16))
	binary.BigEndian.PutUint16(seg[4:], 100)
	seg[6] = 1
	for id := uint16(1); id <= 3; id++ {
		if _, _, err := tr.In4(pkt4(server4, pool4, 64, protoUDP, id, 0x2000, seg, false), out); err != nil {
			t.Fatal(err)
		}
	}
	if len(tr.frags.m) != 2 {
		t.Fatalf("%d fragment entries, want 2", len(tr.frags.m))
	}
	if _, _, err := tr.In4(pkt4(server4, pool4, 64, protoUDP, 1, 3, seg, false), out); !errors.Is(err, ErrFragment) {
		t.Fatalf("evicted datagram's fragment: %v", err)
	}
	if _, _, err := tr.In4(pkt4(server4, pool4, 64, protoUDP, 3, 3, seg, false), out); err != nil {
		t.Fatalf("newest datagram's fragment: %v", err)
	}
}

// TestTranslatorAnswers covers the ICMP errors the translator itself sends.
func TestTranslatorAnswers(t *testing.T) {
	tr, _ := newTestTranslator(t, nil)
	out := make([]byte, 2000)
	check6 := func(name string, p []byte, wantErr error, typ, code uint8, param uint32) {
		t.Helper()
		n, reply, err := tr.In6(p, out)
		if !errors.Is(err, wantErr) || !reply {
			t.Fatalf("%s: reply=%v err=%v", name, reply, err)
		}
		if err := verify6(out[:n]); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if out[40] != typ || out[41] != code || binary.BigEndian.Uint32(out[44:]) != param || !bytes.Equal(out[24:40], p[8:24]) {
			t.Fatalf("%s: got % x", name, out[:48])
		}
	}
	check6("hop limit 1", pkt6(host6, wkp(server4), 1, protoUDP, udpSeg(1, 2, nil), nil), ErrHopLimit, icmp6TimeExceeded, 0, 0)
	check6("too big for MTU4", pkt6(host6, wkp(server4), 64, protoUDP, udpSeg(1, 2, make([]byte, 1480)), nil), ErrTooBig, icmp6PacketTooBig, 0, 1520)

	sent := out6to4(t, tr, pkt6(host6, wkp(server4), 64, protoUDP, udpSeg(40000, 7, nil), nil))
	port := binary.BigEndian.Uint16(sent[20:])
	check4 := func(name string, p []byte, wantErr error, typ, code uint8, param uint32) {
		t.Helper()
		n, reply, err := tr.In4(p, out)
		if !errors.Is(err, wantErr) || !reply {
			t.Fatalf("%s: reply=%v err=%v", name, reply, err)
		}
		if err := verify4(out[:n]); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if out[20] != typ || out[21] != code || binary.BigEndian.Uint32(out[24:]) != param || !bytes.Equal(out[16:20], p[12:16]) {
			t.Fatalf("%s: got % x", name, out[:28])
		}
	}
	check4("TTL 1", pkt4(server4, pool4, 1, protoUDP, 1, 0, udpSeg(7, port, nil), true), ErrHopLimit, icmp4TimeExceeded, 0, 0)
	check4("DF too big for MTU6", pkt4(server4, pool4, 64, protoUDP, 1, 0x4000, udpSeg(7, port, make([]byte, 1300)), true), ErrTooBig, icmp4DstUnreach, 4, 1260)
	// Not DF: fragmenting is not implemented, so it is dropped and counted.
	if _, reply, err := tr.In4(pkt4(server4, pool4, 64, protoUDP, 1, 0, udpSeg(7, port, make([]byte, 1300)), true), out); reply || !errors.Is(err, ErrNeedFragment) {
		t.Fatalf("big non-DF: reply=%v %v", reply, err)
	}
	// No error about an error (RFC 4443 §2.4(e)).
	msg := make([]byte, 8+48)
	msg[0] = icmp6DstUnreach
	if _, reply, _ := tr.In6(pkt6(host6, wkp(server4), 1, protoICMPv6, msg, nil), out); reply {
		t.Fatal("ICMPv6 error answered with an error")
	}
}

func TestICMPErrorRateLimit(t *testing.T) {
	tr, c := newTestTranslator(t, func(c *Config) { c.ICMPErrorsPerSecond = 3 })
	out := make([]byte, 2000)
	p := pkt6(host6, wkp(server4), 1, protoUDP, udpSeg(1, 2, nil), nil)
	replies := 0
	for range 10 {
		if _, reply, _ := tr.In6(p, out); reply {
			replies++
		}
	}
	if replies != 3 {
		t.Fatalf("%d replies in a burst, want 3", replies)
	}
	c.advance(time.Second)
	if _, reply, _ := tr.In6(p, out); !reply {
		t.Fatal("no reply after the bucket refilled")
	}
}

// TestFairness: one IPv6 /64 cannot take more than MaxPerSource sessions,
// and others still get ports (RFC 6146 §3.5.1.1 answers with Destination
// Unreachable when no binding can be made).
func TestFairness(t *testing.T) {
	tr, _ := newTestTranslator(t, func(c *Config) { c.MaxPerSource = 4; c.MaxSessions = 6 })
	out := make([]byte, 200)
	for i := range 4 {
		src := host6
		src[15] = byte(i) // privacy addresses in one /64 count together
		out6to4(t, tr, pkt6(src, wkp(server4), 64, protoUDP, udpSeg(1000, 53, nil), nil))
	}
	n, reply, err := tr.In6(pkt6(host6, wkp(server4), 64, protoUDP, udpSeg(1001, 53, nil), nil), out)
	if !errors.Is(err, ErrSourceLimit) || !reply || out[40] != icmp6DstUnreach || out[41] != 3 {
		t.Fatalf("fifth session from one /64: n=%d reply=%v err=%v", n, reply, err)
	}
	out6to4(t, tr, pkt6(host6b, wkp(server4), 64, protoUDP, udpSeg(1000, 53, nil), nil))
	out6to4(t, tr, pkt6(host6b, wkp(server4), 64, protoUDP, udpSeg(1001, 53, nil), nil))
	if _, _, err := tr.In6(pkt6(host6b, wkp(server4), 64, protoUDP, udpSeg(1002, 53, nil), nil), out); !errors.Is(err, ErrTableFull) {
		t.Fatalf("over MaxSessions: %v", err)
	}
}

func TestPoolExhausted(t *testing.T) {
	tr, c := newTestTranslator(t, func(c *Config) { c.PortMin, c.PortMax = 2000, 2003 })
	seen := map[uint16]bool{}
	for i := range 4 {
		got := out6to4(t, tr, pkt6(host6, wkp(server4), 64, protoUDP, udpSeg(uint16(5000+i), 53, nil), nil))
		seen[binary.BigEndian.Uint16(got[20:])] = true
	}
	if len(seen) != 4 {
		t.Fatalf("ports %v", seen)
	}
	if _, _, err := tr.In6(pkt6(host6, wkp(server4), 64, protoUDP, udpSeg(6000, 53, nil), nil), make([]byte, 200)); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("fifth binding: %v", err)
	}
	// TCP has its own port space.
	out6to4(t, tr, pkt6(host6, wkp(server4), 64, protoTCP, tcpSeg(6000, 80, tcpSYN, nil), nil))
	c.advance(DefaultUDPTimeout)
	out6to4(t, tr, pkt6(host6, wkp(server4), 64, protoUDP, udpSeg(6000, 53, nil), nil))
}

func TestDrops(t *testing.T) {
	tr, _ := newTestTranslator(t, nil)
	out := make([]byte, 200)
	for _, tc := range []struct {
		name string
		p    []byte
		v4   bool
		want error
	}{
		{"outside prefix", pkt6(host6, host6b, 64, protoUDP, udpSeg(1, 2, nil), nil), false, ErrNotPrefix},
		{"multicast IPv4 destination", pkt6(host6, wkp(a4("224.0.0.1")), 64, protoUDP, udpSeg(1, 2, nil), nil), false, ErrBadAddr},
		{"SCTP", pkt6(host6, wkp(server4), 64, 132, make([]byte, 12), nil), false, ErrProto},
		{"neighbour solicitation", pkt6(host6, wkp(server4), 64, protoICMPv6, echoMsg(135, 0, 0, nil), nil), false, ErrICMPType},
		{"truncated", []byte{0x60, 0, 0}, false, ErrTruncated},
		{"not pool", pkt4(server4, router4, 64, protoUDP, 1, 0, udpSeg(1, 2, nil), true), true, ErrNotPool},
		{"no binding", pkt4(server4, pool4, 64, protoUDP, 1, 0, udpSeg(1, 2, nil), true), true, ErrNoMapping},
		{"broadcast source", pkt4(a4("255.255.255.255"), pool4, 64, protoUDP, 1, 0, udpSeg(1, 2, nil), true), true, ErrBadAddr},
	} {
		var err error
		if tc.v4 {
			_, _, err = tr.In4(tc.p, out)
		} else {
			_, _, err = tr.In6(tc.p, out)
		}
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	bad := pkt4(server4, pool4, 64, protoUDP, 1, 0, udpSeg(1, 2, nil), true)
	bad[10]++
	if _, _, err := tr.In4(bad, out); !errors.Is(err, ErrChecksum) {
		t.Errorf("bad header checksum: %v", err)
	}
	if s := tr.Stats(); s.Dropped != 9 {
		t.Errorf("Dropped = %d, want 9", s.Dropped)
	}
}

// TestNoAllocs: an established flow translates without allocating.
func TestNoAllocs(t *testing.T) {
	tr, _ := newTestTranslator(t, nil)
	in6 := pkt6(host6, wkp(server4), 64, protoUDP, udpSeg(40000, 53, make([]byte, 100)), nil)
	out := make([]byte, 1600)
	sent := out6to4(t, tr, in6)
	in4 := pkt4(server4, pool4, 64, protoUDP, 1, 0, udpSeg(53, binary.BigEndian.Uint16(sent[20:]), make([]byte, 100)), true)
	if a := testing.AllocsPerRun(100, func() { tr.In6(in6, out) }); a != 0 {
		t.Errorf("In6: %v allocs per packet", a)
	}
	if a := testing.AllocsPerRun(100, func() { tr.In4(in4, out) }); a != 0 {
		t.Errorf("In4: %v allocs per packet", a)
	}
}

// TestIn4Split: an IPv4 packet without DF that outgrows the IPv6 MTU is
// sent as IPv6 fragments (RFC 7915 §4.1); reassembled, it is the
// translation, checksum and all.
func TestIn4Split(t *testing.T) {
	for _, tc := range []struct {
		name  string
		flags uint16 // of the IPv4 packet
	}{
		{"whole datagram", 0},
		{"first IPv4 fragment", 0x2000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, _ := newTestTranslator(t, nil)
			sent := out6to4(t, tr, pkt6(host6, wkp(server4), 64, protoUDP, udpSeg(40000, 7, nil), nil))
			port := binary.BigEndian.Uint16(sent[20:])
			data := make([]byte, 3000)
			for i := range data {
				data[i] = byte(i * 7)
			}
			in := pkt4(server4, pool4, 64, protoUDP, 0x5555, tc.flags, udpSeg(7, port, data), true)
			out := make([]byte, len(in)+56)
			var whole []byte
			var ids []uint32
			next := 0
			n, reply, err := tr.In4Split(in, out, func(f []byte) {
				if len(f) > 1280 {
					t.Errorf("fragment of %d bytes", len(f))
				}
				if err := verify6(f); err != nil {
					t.Error(err)
				}
				if f[6] != nhFragment || f[40] != protoUDP {
					t.Fatalf("fragment header % x", f[:48])
				}
				fo := binary.BigEndian.Uint16(f[42:])
				if int(fo>>3)*8 != next {
					t.Fatalf("offset %d, want %d", fo>>3*8, next)
				}
				next += len(f) - 48
				ids = append(ids, binary.BigEndian.Uint32(f[44:]))
				if whole == nil {
					whole = append(whole, f[:40]...)
				}
				whole = append(whole, f[48:]...)
				if last := next == 3008; last != (fo&1 == 0) && tc.flags == 0 {
					t.Fatalf("M flag %d at %d", fo&1, next)
				}
			})
			if n != 0 || reply || err != nil {
				t.Fatalf("n=%d reply=%v err=%v", n, reply, err)
			}
			if len(ids) != 3 || ids[0] != ids[1] || ids[1] != ids[2] {
				t.Fatalf("fragment ids %v", ids)
			}
			if tc.flags == 0 {
				binary.BigEndian.PutUint16(whole[4:], uint16(len(whole)-40))
				whole[6] = protoUDP
				golden(t, "reassembled", whole, pkt6(wkp(server4), host6, 63, protoUDP, udpSeg(7, 40000, data), nil))
			} else if ids[0] != 0x5555 {
				t.Fatalf("id %#x, want the IPv4 one", ids[0])
			}
			// In4 alone does not fragment.
			if _, _, err := tr.In4(in, out); !errors.Is(err, ErrNeedFragment) {
				t.Fatalf("In4: %v", err)
			}
		})
	}
}

// TestICMPErrorAboutEcho: an IPv4 router's Time Exceeded about a
// translated echo request comes back with the host's own identifier in
// the quoted ICMPv6 echo.
func TestICMPErrorAboutEcho(t *testing.T) {
	tr, _ := newTestTranslator(t, nil)
	orig := pkt6(host6, wkp(server4), 64, protoICMPv6, echoMsg(icmp6Echo, 0x1234, 9, []byte("ttl probe")), nil)
	sent := out6to4(t, tr, orig)
	msg := append([]byte{icmp4TimeExceeded, 0, 0, 0, 0, 0, 0, 0}, sent[:28]...)
	got := out4to6(t, tr, pkt4(router4, pool4, 64, protoICMP, 5, 0, msg, true))
	inner := got[48:]
	if got[40] != icmp6TimeExceeded || inner[40] != icmp6Echo || binary.BigEndian.Uint16(inner[44:]) != 0x1234 {
		t.Fatalf("got % x", got)
	}
	want := append([]byte(nil), orig[:48]...)
	want[7] = 63
	golden(t, "quoted echo", inner, want)
}

// TestICMPErrorUnrelated: an ICMPv4 error quoting a flow the translator
// never carried (right pool port, another remote) is dropped.
func TestICMPErrorUnrelated(t *testing.T) {
	tr, _ := newTestTranslator(t, nil)
	sent := out6to4(t, tr, pkt6(host6, wkp(server4), 64, protoUDP, udpSeg(40000, 7, nil), nil))
	forged := append([]byte(nil), sent[:28]...)
	copy(forged[16:20], router4[:]) // quoted destination: not a session
	binary.BigEndian.PutUint16(forged[10:], 0)
	binary.BigEndian.PutUint16(forged[10:], csum(forged[:20], 0))
	msg := append([]byte{icmp4DstUnreach, 4, 0, 0, 0, 0, 2, 0}, forged...)
	if _, _, err := tr.In4(pkt4(router4, pool4, 64, protoICMP, 5, 0, msg, true), make([]byte, 200)); !errors.Is(err, ErrNoMapping) {
		t.Fatalf("unrelated ICMP error: %v", err)
	}
}
