package ssr

import "syscall"

// LinkSocketBuffer is the kernel receive and send buffer asked for each
// link socket. One link socket carries everything a node exchanges with
// its neighbours over that interface — the media of every call it relays,
// the DHT, the routing — while one goroutine drains it: the default (about
// 208 KiB on Linux, net.core.rmem_default) overflowed at 256 relayed G.711
// streams with the node at a quarter of its core (`make bench-peers`, rtp
// row: the kernel's receive-buffer drops were all at that socket). 4 MiB
// holds some 150 ms of that load. The kernel charges it to the socket only
// while datagrams wait, not to the node's RSS.
const LinkSocketBuffer = 4 << 20

// setLinkBuffers asks for LinkSocketBuffer on c where the socket allows
// it. Linux caps SO_RCVBUF at net.core.rmem_max; a node running as root
// (as on a router) may exceed the cap with SO_RCVBUFFORCE
// (socket(7)). Best effort: a socket that refuses keeps its default.
func setLinkBuffers(c any) {
	if b, ok := c.(interface {
		SetReadBuffer(int) error
		SetWriteBuffer(int) error
	}); ok {
		b.SetReadBuffer(LinkSocketBuffer)
		b.SetWriteBuffer(LinkSocketBuffer)
	}
	if sc, ok := c.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			rc.Control(func(fd uintptr) { forceBuffers(fd, LinkSocketBuffer) })
		}
	}
}
