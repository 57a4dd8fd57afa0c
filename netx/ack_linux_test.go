package netx

import (
	"encoding/binary"
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// TestAckOf decodes the kernel's answers to a request, bad ones included.
func TestAckOf(t *testing.T) {
	msg := func(typ uint16, seq uint32, errno int32, length uint32) []byte {
		b := make([]byte, 36)
		binary.NativeEndian.PutUint32(b[0:], length)
		binary.NativeEndian.PutUint16(b[4:], typ)
		binary.NativeEndian.PutUint32(b[8:], seq)
		binary.NativeEndian.PutUint32(b[16:], uint32(errno))
		return b
	}
	malformed := errors.New("malformed")
	for _, tc := range []struct {
		name string
		b    []byte
		done bool
		err  error
	}{
		{"ack", msg(unix.NLMSG_ERROR, 5, 0, 36), true, nil},
		{"EEXIST", msg(unix.NLMSG_ERROR, 5, -int32(unix.EEXIST), 36), true, unix.EEXIST},
		{"older request", msg(unix.NLMSG_ERROR, 4, 0, 36), false, nil},
		{"other type", msg(unix.RTM_NEWADDR, 5, 0, 36), false, nil},
		{"length past the datagram", msg(unix.NLMSG_ERROR, 5, 0, 99), true, malformed},
		{"length under a header", msg(unix.NLMSG_ERROR, 5, 0, 3), true, malformed},
		{"short error", msg(unix.NLMSG_ERROR, 5, 0, 18)[:18], true, malformed},
		{"empty", nil, false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done, err := ackOf(tc.b, 5)
			ok := done == tc.done
			switch tc.err {
			case nil:
				ok = ok && err == nil
			case malformed:
				ok = ok && err != nil && !errors.Is(err, unix.EEXIST)
			default:
				ok = ok && errors.Is(err, tc.err)
			}
			if !ok {
				t.Errorf("ackOf = %v, %v; want %v, %v", done, err, tc.done, tc.err)
			}
		})
	}
}
