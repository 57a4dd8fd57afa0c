//go:build !linux

package ssr

// forceBuffers has nothing past SO_RCVBUF/SO_SNDBUF off Linux.
func forceBuffers(fd uintptr, n int) {}
