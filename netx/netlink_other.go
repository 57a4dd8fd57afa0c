//go:build !linux

package netx

import (
	"errors"
	"fmt"
	"net/netip"
)

// AddAddress is Linux-only (rtnetlink); elsewhere the system's own tools
// put addresses on interfaces.
func AddAddress(ifname string, p netip.Prefix) (added bool, err error) {
	return false, fmt.Errorf("netx: adding %v to %s: %w", p, ifname, errors.ErrUnsupported)
}

// RemoveAddress is Linux-only (rtnetlink).
func RemoveAddress(ifname string, p netip.Prefix) error {
	return fmt.Errorf("netx: removing %v from %s: %w", p, ifname, errors.ErrUnsupported)
}
