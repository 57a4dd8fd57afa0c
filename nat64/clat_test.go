package nat64

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

var (
	clatPrefix = netip.MustParsePrefix("fd00:64:c1a7::/96")
	lanHost4   = a4("10.64.1.20")
)

func newTestCLAT(t testing.TB) *Translator {
	t.Helper()
	tr, err := NewCLAT(CLATConfig{CLAT: clatPrefix, MTU6: 1400, ICMPErrorsPerSecond: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func clatAddr(v4 [4]byte) [16]byte {
	a, _ := Embed(clatPrefix, netip.AddrFrom4(v4))
	return a.As16()
}

// TestCLATRoundTrip: a LAN host's UDP, TCP and echo packets become IPv6
// from its CLAT address to the server under the NAT64 prefix (RFC 6877
// §6.3, RFC 6052), ports and identifiers unchanged; the answers come back
// as the IPv4 packets the host expects. No state: an answer translates
// without its question.
func TestCLATRoundTrip(t *testing.T) {
	tr := newTestCLAT(t)
	out := make([]byte, 2000)
	for _, c := range []struct {
		name    string
		proto   uint8
		l4, ans []byte
	}{
		{"udp", protoUDP, udpSeg(40000, 123, []byte("ntp?")), udpSeg(123, 40000, []byte("ntp!"))},
		{"tcp", protoTCP, tcpSeg(33000, 80, tcpSYN, nil), tcpSeg(80, 33000, tcpSYN|0x10, nil)},
		{"echo", protoICMP, echoMsg(icmp4Echo, 0x77, 1, []byte("ping")), nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			in := pkt4(lanHost4, server4, 64, c.proto, 9, 0, c.l4, true)
			n, reply, err := tr.In4(in, out)
			if err != nil || reply {
				t.Fatalf("In4: %v %v", reply, err)
			}
			if err := verify6(out[:n]); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out[8:24], sl(clatAddr(lanHost4))) || !bytes.Equal(out[24:40], sl(wkp(server4))) {
				t.Fatalf("addresses %x → %x", out[8:24], out[24:40])
			}
			if c.proto != protoICMP && !bytes.Equal(out[40:44], c.l4[:4]) {
				t.Fatalf("ports changed: %x", out[40:44])
			}
			ans := c.ans
			if c.proto == protoICMP {
				ans = echoMsg(icmp6EchoReply, 0x77, 1, []byte("ping"))
			}
			proto6 := c.proto
			if proto6 == protoICMP {
				proto6 = protoICMPv6
			}
			back := pkt6(wkp(server4), clatAddr(lanHost4), 60, proto6, ans, nil)
			n, reply, err = tr.In6(back, out)
			if err != nil || reply {
				t.Fatalf("In6: %v %v", reply, err)
			}
			if err := verify4(out[:n]); err != nil {
				t.Fatal(err)
			}
			if [4]byte(out[12:16]) != server4 || [4]byte(out[16:20]) != lanHost4 {
				t.Fatalf("back: %v → %v", out[12:16], out[16:20])
			}
		})
	}
	if s := tr.Stats(); s.BIBs != 0 || s.Sessions != 0 {
		t.Errorf("a stateless translator kept state: %+v", s)
	}
}

func sl(a [16]byte) []byte { return a[:] }

// TestCLATICMPError: an ICMPv6 error from the Internet (through the
// NAT64) about a packet of a LAN host comes back as the ICMPv4 error the
// host understands, its quoted packet translated too (RFC 7915 §5.2,
// §5.3); packets from outside the NAT64 prefix or to another CLAT prefix
// are dropped.
func TestCLATICMPError(t *testing.T) {
	tr := newTestCLAT(t)
	out := make([]byte, 2000)
	sent := pkt6(clatAddr(lanHost4), wkp(server4), 63, protoUDP, udpSeg(40000, 9, []byte("x")), nil)
	msg := append([]byte{icmp6DstUnreach, 4, 0, 0, 0, 0, 0, 0}, sent...) // port unreachable
	in := pkt6(wkp(server4), clatAddr(lanHost4), 60, protoICMPv6, msg, nil)
	n, reply, err := tr.In6(in, out)
	if err != nil || reply {
		t.Fatalf("In6: %v %v", reply, err)
	}
	if err := verify4(out[:n]); err != nil {
		t.Fatal(err)
	}
	if out[20] != icmp4DstUnreach || out[21] != 3 {
		t.Fatalf("ICMPv4 %d/%d, want 3/3 (port unreachable)", out[20], out[21])
	}
	if inner := out[28:]; [4]byte(inner[12:16]) != lanHost4 || [4]byte(inner[16:20]) != server4 {
		t.Fatalf("quoted %v → %v", inner[12:16], inner[16:20])
	}
	for name, p := range map[string][]byte{
		"source outside the NAT64 prefix": pkt6(a16("2001:db8::1"), clatAddr(lanHost4), 60, protoUDP, udpSeg(1, 2, nil), nil),
		"another CLAT prefix":             pkt6(wkp(server4), a16("fd00:64:c1a8::a40:114"), 60, protoUDP, udpSeg(1, 2, nil), nil),
	} {
		if _, _, err := tr.In6(p, out); err == nil {
			t.Errorf("%s: translated", name)
		}
	}
}

// TestCLATSetPrefix: the NAT64 prefix follows the gateway in use.
func TestCLATSetPrefix(t *testing.T) {
	tr := newTestCLAT(t)
	nsp := netip.MustParsePrefix("2001:db8:64::/96")
	if err := tr.SetPrefix(nsp); err != nil {
		t.Fatal(err)
	}
	out := make([]byte, 200)
	_, _, err := tr.In4(pkt4(lanHost4, server4, 64, protoUDP, 1, 0, udpSeg(1000, 53, nil), true), out)
	want, _ := Embed(nsp, netip.AddrFrom4(server4))
	if err != nil || !bytes.Equal(out[24:40], want.AsSlice()) {
		t.Fatalf("after SetPrefix: %v, dst %x", err, out[24:40])
	}
	if err := tr.SetPrefix(netip.MustParsePrefix("fd00:64::/32")); err == nil {
		t.Error("a NAT64 prefix over the CLAT prefix was taken")
	}
	stateful, _ := newTestTranslator(t, nil)
	if err := stateful.SetPrefix(nsp); err == nil {
		t.Error("SetPrefix on a stateful translator")
	}
	if _, err := NewCLAT(CLATConfig{CLAT: netip.MustParsePrefix("64:ff9b::/96")}); err == nil {
		t.Error("a CLAT prefix equal to the NAT64 prefix")
	}
}

// TestCLATFragmentsAndTTL: a LAN host's packet too big for the mesh
// without DF is split into IPv6 fragments (stateless: the fragments after
// the first translate on their own); TTL 1 gets Time Exceeded from
// CLATAddr4.
func TestCLATFragmentsAndTTL(t *testing.T) {
	tr := newTestCLAT(t)
	out := make([]byte, 3000)
	big := pkt4(lanHost4, server4, 64, protoUDP, 5, 0, udpSeg(1000, 9, make([]byte, 1440)), true)
	frags := 0
	n, _, err := tr.In4Split(big, out, func(f []byte) {
		frags++
		if err := verify6(f); err != nil {
			t.Fatal(err)
		}
	})
	if err != nil || n != 0 || frags != 2 {
		t.Fatalf("big packet: n=%d err=%v fragments=%d", n, err, frags)
	}
	// A later IPv4 fragment alone.
	later := pkt4(lanHost4, server4, 64, protoUDP, 6, 185, make([]byte, 64), false)
	if n, _, err := tr.In4(later, out); err != nil || n == 0 || verify6(out[:n]) != nil {
		t.Fatalf("later fragment: n=%d err=%v", n, err)
	}
	n, reply, err := tr.In4(pkt4(lanHost4, server4, 1, protoUDP, 7, 0, udpSeg(1000, 9, nil), true), out)
	if !reply || !errors.Is(err, ErrHopLimit) || [4]byte(out[12:16]) != CLATAddr4.As4() || verify4(out[:n]) != nil {
		t.Fatalf("TTL 1: reply=%v err=%v from %v", reply, err, out[12:16])
	}
}

func fuzzCLAT(t *testing.T) *Translator {
	tr, err := NewCLAT(CLATConfig{CLAT: clatPrefix, ICMPErrorsPerSecond: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func clatSeeds4() [][]byte {
	quoted := pkt4(server4, lanHost4, 60, protoUDP, 0, 0, udpSeg(53, 40000, []byte("hello")), true)[:28]
	fn := append([]byte{icmp4DstUnreach, 3, 0, 0, 0, 0, 0, 0}, quoted...)
	return [][]byte{
		pkt4(lanHost4, server4, 64, protoUDP, 1, 0, udpSeg(40000, 53, []byte("q")), true),
		pkt4(lanHost4, server4, 64, protoTCP, 2, 0x4000, tcpSeg(33000, 80, tcpSYN, nil), true),
		pkt4(lanHost4, server4, 64, protoICMP, 3, 0, echoMsg(icmp4Echo, 1, 1, []byte("ping")), true),
		pkt4(lanHost4, server4, 64, protoICMP, 4, 0, fn, true),
		pkt4(lanHost4, server4, 64, protoUDP, 5, 0x2000, udpSeg(40000, 53, make([]byte, 40)), true),
		pkt4(lanHost4, server4, 64, protoUDP, 6, 0, udpSeg(40000, 53, make([]byte, 1400)), true),
	}
}

func clatSeeds6() [][]byte {
	sent := pkt6(clatAddr(lanHost4), wkp(server4), 63, protoUDP, udpSeg(40000, 9, []byte("x")), nil)
	return [][]byte{
		pkt6(wkp(server4), clatAddr(lanHost4), 60, protoUDP, udpSeg(53, 40000, []byte("a")), nil),
		pkt6(wkp(server4), clatAddr(lanHost4), 60, protoTCP, tcpSeg(80, 33000, tcpSYN|0x10, nil), nil),
		pkt6(wkp(server4), clatAddr(lanHost4), 60, protoICMPv6, echoMsg(icmp6EchoReply, 1, 1, nil), nil),
		pkt6(wkp(server4), clatAddr(lanHost4), 60, protoICMPv6, append([]byte{icmp6DstUnreach, 4, 0, 0, 0, 0, 0, 0}, sent...), nil),
		pkt6(wkp(server4), clatAddr(lanHost4), 1, protoUDP, udpSeg(53, 40000, nil), nil),
	}
}

// FuzzCLAT4to6 feeds IPv4 packets of a LAN host to a CLAT: no panic, and
// every translation, fragment and ICMPv4 error it emits is well formed
// with valid checksums.
func FuzzCLAT4to6(f *testing.F) {
	for _, s := range clatSeeds4() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		tr := fuzzCLAT(t)
		fix4(p, nil)
		checkIn4Split(t, tr, p)
	})
}

// FuzzCLAT6to4 feeds IPv6 packets from the NAT64 prefix to a CLAT.
func FuzzCLAT6to4(f *testing.F) {
	for _, s := range clatSeeds6() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		tr := fuzzCLAT(t)
		fix6(p)
		checkIn6(t, tr, p, make([]byte, len(p)+64))
	})
}

// TestCLATSeedCorpus keeps the checked-in corpus of the CLAT fuzz targets
// (testdata/fuzz) in step with the seeds: regenerate with
// SIPMESH_WRITE_CORPUS=1.
func TestCLATSeedCorpus(t *testing.T) {
	for target, seeds := range map[string][][]byte{"FuzzCLAT4to6": clatSeeds4(), "FuzzCLAT6to4": clatSeeds6()} {
		dir := filepath.Join("testdata", "fuzz", target)
		for i, s := range seeds {
			path := filepath.Join(dir, fmt.Sprintf("seed-%d", i))
			want := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
			if os.Getenv("SIPMESH_WRITE_CORPUS") != "" {
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			if got, err := os.ReadFile(path); err != nil || string(got) != want {
				t.Errorf("%s: differs from the seeds (%v); rerun with SIPMESH_WRITE_CORPUS=1", path, err)
			}
		}
	}
}

// TestCLATPrefixUOctet: a mesh node's CLAT /96 carries its node ID in bits
// 32–95, u octet included (newCLATPrefix): the CLAT takes it, embeds the
// host's IPv4 address in bits 96–127, and takes answers to it only (one
// with another u octet is another node's). Other malformed CLAT prefixes
// are still refused.
func TestCLATPrefixUOctet(t *testing.T) {
	p := netip.MustParsePrefix("fdca:654:1234:5678:9abc:def0::/96")
	tr, err := NewCLAT(CLATConfig{CLAT: p})
	if err != nil {
		t.Fatalf("NewCLAT with a u octet: %v", err)
	}
	out := make([]byte, 200)
	n, _, err := tr.In4(pkt4(lanHost4, server4, 64, protoUDP, 1, 0, udpSeg(1000, 123, nil), true), out)
	if err != nil {
		t.Fatal(err)
	}
	src := p.Addr().As16()
	copy(src[12:], lanHost4[:])
	if !bytes.Equal(out[8:24], src[:]) {
		t.Fatalf("source %x, want %x", out[8:24], src)
	}
	back := pkt6(wkp(server4), src, 60, protoUDP, udpSeg(123, 1000, nil), nil)
	if n, _, err = tr.In6(back, out); err != nil || [4]byte(out[16:20]) != lanHost4 {
		t.Fatalf("answer: %v, %x", err, out[:n])
	}
	other := src
	other[8] ^= 1
	if _, _, err := tr.In6(pkt6(wkp(server4), other, 60, protoUDP, udpSeg(123, 1000, nil), nil), out); err == nil {
		t.Error("an answer to another u octet (another node's CLAT) was taken")
	}
	for _, bad := range []string{"fdca:654:1234:5678:9abc:def0::/64", "fdca:654:1234:5678:9abc:def0:0:1/96"} {
		if _, err := NewCLAT(CLATConfig{CLAT: netip.MustParsePrefix(bad)}); err == nil {
			t.Errorf("CLAT prefix %s taken", bad)
		}
	}
}
