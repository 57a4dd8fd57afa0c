package uplink

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/internal/kamailio"
)

func unhex(t testing.TB, s string) []byte {
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The sample responses of RFC 5769 §2.2 (IPv4) and §2.3 (IPv6).
const (
	rfc5769v4 = `0101 003c 2112 a442 b7e7 a701 bc34 d686 fa87 dfae
		8022 000b 7465 7374 2076 6563 746f 7220
		0020 0008 0001 a147 e112 a643
		0008 0014 2b91 f599 fd9e 90c3 8c74 89f9 2af9 ba53 f06b e7d7
		8028 0004 c07d 4c96`
	rfc5769v6 = `0101 0048 2112 a442 b7e7 a701 bc34 d686 fa87 dfae
		8022 000b 7465 7374 2076 6563 746f 7220
		0020 0014 0002 a147 0113 a9fa a5d3 f179 bc25 f4b5 bed2 b9d9
		0008 0014 a382 954e 4be6 7bf1 1784 c97c 8292 c275 bfe3 ed41
		8028 0004 c8fb 0b4c`
)

func TestSTUNVectors(t *testing.T) {
	txid := [12]byte(unhex(t, "b7e7a701bc34d686fa87dfae"))
	for _, tc := range []struct{ msg, want string }{
		{rfc5769v4, "192.0.2.1:32853"},
		{rfc5769v6, "[2001:db8:1234:5678:11:2233:4455:6677]:32853"},
	} {
		got, err, mine := parseBindingResponse(unhex(t, tc.msg), txid)
		if err != nil || !mine || got.String() != tc.want {
			t.Errorf("got %v %v %v, want %s", got, err, mine, tc.want)
		}
	}
	// Another transaction's answer is not ours; an error response is an
	// error with its code.
	other := txid
	other[0] ^= 1
	if _, _, mine := parseBindingResponse(unhex(t, rfc5769v4), other); mine {
		t.Error("another transaction's response taken")
	}
	errResp := unhex(t, "0111 0010 2112a442 b7e7a701bc34d686fa87dfae 0009 000c 0000 0401 556e6175 74686f72")
	if _, err, mine := parseBindingResponse(errResp, txid); !mine || err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("error response: %v %v", err, mine)
	}
}

// FuzzSTUN: any datagram is ignored, refused or read, never a panic.
func FuzzSTUN(f *testing.F) {
	f.Add(unhex(f, rfc5769v4))
	f.Add(unhex(f, rfc5769v6))
	f.Fuzz(func(t *testing.T, b []byte) {
		var txid [12]byte
		if len(b) >= 20 {
			txid = [12]byte(b[8:20])
		}
		addr, err, _ := parseBindingResponse(b, txid)
		if err == nil && addr.IsValid() && addr.Addr().BitLen() != 32 && addr.Addr().BitLen() != 128 {
			t.Fatalf("odd address %v", addr)
		}
	})
}

// TestSTUNCoturn asks a real STUN server — coturn from Debian, STUN only,
// on loopback — for the socket's reflexive address: with no NAT between
// them, it is the socket's own.
func TestSTUNCoturn(t *testing.T) {
	bin, err := exec.LookPath("turnserver")
	if err != nil && os.Geteuid() != 0 {
		t.Skip("turnserver not installed (Debian package coturn): run make test as root to install it and cover this test")
	}
	if err != nil {
		t.Fatal("turnserver not installed (Debian package coturn; make test installs it as root): this test needs the real server")
	}
	port := kamailio.FreeUDPPort(t)
	dir := t.TempDir()
	cmd := exec.Command(bin, "-n", "--stun-only", "--no-cli", "--no-tls", "--no-dtls",
		"--listening-ip=127.0.0.1", fmt.Sprintf("--listening-port=%d", port),
		"--pidfile="+filepath.Join(dir, "turnserver.pid"), "--log-file=stdout", "--simple-log")
	logf, err := os.Create(filepath.Join(dir, "turnserver.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "turnserver.log"))
			t.Logf("turnserver log:\n%s", b)
		}
	})
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	server := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
	// Binding retransmits (RFC 8489 §6.2.1) while the server starts.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got, err := Binding(ctx, conn, server)
	if err != nil {
		t.Fatal(err)
	}
	if want := conn.LocalAddr().(*net.UDPAddr).AddrPort(); got != want {
		t.Fatalf("reflexive address %v, want the socket's own %v", got, want)
	}
	// Nobody answers: the context ends it, with its error.
	silent, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer scancel()
	if _, err := Binding(sctx, conn, silent.LocalAddr().(*net.UDPAddr).AddrPort()); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("silent server: %v", err)
	}
	// Probe: one request, its round trip; a silent server is one loss
	// after the timeout, with exactly one request sent (no retransmission
	// hides the loss).
	drain := func() int {
		silent.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		buf := make([]byte, 100)
		n := 0
		for {
			if _, _, err := silent.ReadFrom(buf); err != nil {
				return n
			}
			n++
		}
	}
	drain() // Binding's retransmissions
	got, rtt, err := Probe(ctx, conn, server, time.Second)
	if err != nil || got != conn.LocalAddr().(*net.UDPAddr).AddrPort() || rtt <= 0 || rtt >= time.Second {
		t.Fatalf("Probe = %v, %v, %v", got, rtt, err)
	}
	if _, _, err := Probe(ctx, conn, silent.LocalAddr().(*net.UDPAddr).AddrPort(), 300*time.Millisecond); !errors.Is(err, ErrSTUN) {
		t.Fatalf("Probe of a silent server: %v, want ErrSTUN", err)
	}
	if n := drain(); n != 1 {
		t.Errorf("silent server received %d requests from one probe, want 1", n)
	}
}
