package ssr

import "syscall"

// forceBuffers sets fd's buffers past net.core.{r,w}mem_max, which only a
// process with CAP_NET_ADMIN may (socket(7): SO_RCVBUFFORCE,
// SO_SNDBUFFORCE); without it the calls fail and the capped sizes stay.
func forceBuffers(fd uintptr, n int) {
	syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUFFORCE, n)
	syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUFFORCE, n)
}
