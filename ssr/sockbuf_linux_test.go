package ssr

import (
	"net"
	"os"
	"syscall"
	"testing"
)

// TestLinkBuffers: a link socket gets LinkSocketBuffer of receive buffer
// (the kernel reports twice what was set, socket(7)); as root past
// net.core.rmem_max, otherwise up to it.
func TestLinkBuffers(t *testing.T) {
	c, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rcvbuf := func() int {
		rc, err := c.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var n int
		var serr error
		rc.Control(func(fd uintptr) { n, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF) })
		if serr != nil {
			t.Fatal(serr)
		}
		return n
	}
	before := rcvbuf()
	setLinkBuffers(c)
	after := rcvbuf()
	if os.Geteuid() == 0 {
		if after < 2*LinkSocketBuffer {
			t.Fatalf("as root: SO_RCVBUF %d after setLinkBuffers, want %d", after, 2*LinkSocketBuffer)
		}
		return
	}
	if after < before {
		t.Fatalf("SO_RCVBUF shrank: %d → %d", before, after)
	}
}
