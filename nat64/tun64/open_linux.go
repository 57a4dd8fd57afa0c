//go:build linux

package tun64

import (
	"fmt"

	"golang.zx2c4.com/wireguard/tun"
)

// OpenTUN creates the TUN device name with the given MTU (wireguard-go's
// tun.CreateTUN) in the calling thread's network namespace.
func OpenTUN(name string, mtu int) (Device, error) {
	d, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return nil, fmt.Errorf("tun64: open TUN %s: %w", name, err)
	}
	return d, nil
}
