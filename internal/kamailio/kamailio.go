// Package kamailio runs Kamailio from Debian on loopback for tests and
// benchmarks that need a real SIP server as a peer or as the bar: the
// registrar benchmark (Kamailio is what a mesh operator would run
// instead) and the uplink's trunk test (Kamailio as the SIP provider the
// gateway registers with).
//
// The configuration is the repository's testdata/kamailio/kamailio.cfg
// (registrar + usrloc in memory + tm + rr; with WITH_AUTH, digest
// authentication of user uXXXX with password pwXXXX). Start moves its
// listen port to a free one and stops the process (by PID) when the test
// ends.
package kamailio

import (
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
)

// Start runs Kamailio with the configuration at cfgPath, each of defines
// passed as -A (e.g. "WITH_AUTH"), on a free UDP port of 127.0.0.1, and
// returns its address once it answers OPTIONS. A missing kamailio fails
// tb as root (make test installs it) and skips it otherwise.
func Start(tb testing.TB, cfgPath string, defines ...string) netip.AddrPort {
	tb.Helper()
	bin, err := exec.LookPath("kamailio")
	if err != nil && os.Geteuid() != 0 {
		// As another user make test cannot install it (scripts/test-deps.sh
		// printed the apt-get line); the skip is listed at the end.
		tb.Skip("kamailio not installed (Debian package kamailio): run make test as root to install it and cover this test")
	}
	if err != nil {
		tb.Fatal("kamailio not installed (Debian package kamailio; make test installs it as root): this test needs the real server")
	}
	cfg, err := os.ReadFile(cfgPath)
	if err != nil {
		tb.Fatalf("Kamailio reference config: %v", err)
	}
	port := FreeUDPPort(tb)
	text := strings.Replace(string(cfg), "listen=udp:127.0.0.1:5070", fmt.Sprintf("listen=udp:127.0.0.1:%d", port), 1)
	if text == string(cfg) {
		tb.Fatal("kamailio.cfg: no listen=udp:127.0.0.1:5070 line to move to a free port")
	}
	dir := tb.TempDir()
	path := filepath.Join(dir, "kamailio.cfg")
	if err := os.WriteFile(path, []byte(strings.Replace(text, "debug=2", "debug=1", 1)), 0o644); err != nil {
		tb.Fatal(err)
	}
	args := []string{"-f", path, "-DD", "-E", "-m", "256", "-M", "16", "-Y", dir, "-P", filepath.Join(dir, "kamailio.pid")}
	for _, d := range defines {
		args = append(args, "-A", d)
	}
	cmd := exec.Command(bin, args...)
	logPath := filepath.Join(dir, "kamailio.log")
	log, err := os.Create(logPath)
	if err != nil {
		tb.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		tb.Fatalf("starting kamailio: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	tb.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		log.Close()
		if tb.Failed() {
			b, _ := os.ReadFile(logPath)
			tb.Logf("kamailio log:\n%s", b)
		}
	})
	addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
	// Ready when it answers OPTIONS (its config replies 200 Keepalive).
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 4096)
	for i := range 100 {
		select {
		case <-exited:
			b, _ := os.ReadFile(logPath)
			tb.Fatalf("kamailio exited at start:\n%s", b)
		default:
		}
		fmt.Fprintf(c, "OPTIONS sip:127.0.0.1:%d SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bKping%d;rport\r\nMax-Forwards: 70\r\nFrom: <sip:ping@127.0.0.1>;tag=p\r\nTo: <sip:127.0.0.1>\r\nCall-ID: ping%d\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
			port, c.LocalAddr(), i, i)
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := c.Read(buf)
		if err == nil && strings.HasPrefix(string(buf[:n]), "SIP/2.0 200") {
			return addr
		}
		var ne net.Error
		if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
			// Port unreachable: not listening yet. Kamailio gives no
			// readiness signal but its log, so wait a little.
			time.Sleep(100 * time.Millisecond)
		}
	}
	tb.Fatal("kamailio did not answer OPTIONS within 10 s")
	return netip.AddrPort{}
}

// FreeUDPPort returns a high port free on 127.0.0.1 now.
func FreeUDPPort(tb testing.TB) int {
	tb.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}
