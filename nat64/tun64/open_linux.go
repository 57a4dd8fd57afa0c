//go:build linux && nat64tun

package tun64

import (
	"fmt"

	"golang.zx2c4.com/wireguard/tun"
)

// OpenTUN creates the TUN device name with the given MTU (wireguard-go's
// tun.CreateTUN) in the calling thread's network namespace. It exists only
// in builds with the nat64tun tag (see the package doc).
func OpenTUN(name string, mtu int) (Device, error) {
	d, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return nil, fmt.Errorf("tun64: open TUN %s: %w", name, err)
	}
	return d, nil
}
