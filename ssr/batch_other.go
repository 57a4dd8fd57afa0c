//go:build !linux

package ssr

import (
	"errors"
	"net/netip"
)

// batchConn is Linux's batched link I/O (batch_linux.go); elsewhere links
// are read and written frame by frame.
type batchConn struct{ txN int }

func newBatchConn(any, int, string, func(netip.AddrPort, error)) *batchConn { return nil }

func (b *batchConn) read() (int, error)                 { return 0, errors.ErrUnsupported }
func (b *batchConn) frame(int) ([]byte, netip.AddrPort) { return nil, netip.AddrPort{} }
func (b *batchConn) add([]byte, netip.AddrPort) bool    { return false }
func (b *batchConn) flush()                             {}
