//go:build !linux

package dns64

import (
	"errors"
	"net"
)

// udpBatch is Linux's (batch_linux.go): elsewhere the reader reads one
// datagram at a time.
type udpBatch struct{}

func newUDPBatch(net.PacketConn, int) *udpBatch { return nil }

func (r *limitedReader) readBatch() ([]byte, net.Addr, error) {
	return nil, nil, errors.New("dns64: batched reads need Linux")
}
