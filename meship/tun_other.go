//go:build !linux

package meship

import (
	"errors"
	"net/netip"

	"github.com/sipmesh/sipmesh/ssr"
)

// Kernel is what Open put in place (Linux only).
type Kernel struct {
	Dev  Device
	Name string
	MTU  int
}

// Open fails: the IP network needs Linux's TUN and routing.
func Open(name string, mtu int, id ssr.NodeID, lan string) (*Kernel, error) {
	return nil, errors.New("meship: the IP network needs Linux")
}

// AddRoute fails: Linux only.
func (k *Kernel) AddRoute(p netip.Prefix) error { return errors.New("meship: routes need Linux") }

// RemoveRoute fails: Linux only.
func (k *Kernel) RemoveRoute(p netip.Prefix) error { return errors.New("meship: routes need Linux") }

// Close does nothing.
func (k *Kernel) Close() error { return nil }
