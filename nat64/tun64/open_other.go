//go:build !linux

package tun64

import (
	"errors"
	"runtime"
)

// OpenTUN fails off Linux: the node's NAT64 and CLAT run on Linux only.
func OpenTUN(name string, mtu int) (Device, error) {
	return nil, errors.New("tun64: TUN devices need Linux, not " + runtime.GOOS)
}
