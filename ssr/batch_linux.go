package ssr

import (
	"net/netip"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Batched link I/O (Linux): recvmmsg(2) and sendmmsg(2) on a link socket's
// descriptor, so that a burst of frames (the media of many calls through a
// relay) costs one system call each way instead of one per frame. The
// calls go through the socket's syscall.RawConn, so they wait in Go's
// poller like any read or write of package net. golang.org/x/net/ipv6's
// ReadBatch/WriteBatch do the same, but would add that package and its
// dependencies to the router build for two system calls.

// linkBatch is how many frames one recvmmsg or sendmmsg moves at most: a
// burst larger than that takes several calls. 16 frames of 1,500 bytes
// are 24 KiB per link socket each way.
const linkBatch = 16

// mmsghdr is struct mmsghdr (recvmmsg(2)): the message and the length the
// kernel received or sent of it. Go lays it out as C does on every Linux
// architecture (msg_len after the header, padded to the header's
// alignment).
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
}

// batchConn batches the I/O of one link socket. Reads and writes use
// separate halves: the reader goroutine owns rx, the core mutex tx. The
// functions handed to the RawConn are made once, so no call allocates.
type batchConn struct {
	rc      syscall.RawConn
	ifindex uint32 // the link's interface: the scope of its link-local peers
	name    string // its name: the zone reads report, as package net does
	// fail hears each frame the kernel refused (the core mutex is held).
	fail func(to netip.AddrPort, err error)

	rx    batchHalf
	rxN   int
	rxErr syscall.Errno
	// The last source address read, with its zone: giving an address a
	// zone interns the zone's name (unique.Make), a map look-up that a
	// stream of frames from one neighbour need not repeat.
	lastRaw   [16]byte
	lastScope uint32
	lastAddr  netip.Addr
	readFn    func(fd uintptr) bool
	tx        batchHalf
	txTo      [linkBatch]netip.AddrPort // their destinations, for error reports
	txN       int                       // frames waiting in tx
	txSent    int                       // frames of tx flushed so far
	writeFn   func(fd uintptr) bool
}

// batchHalf is a vector of linkBatch messages, each one buffer and one
// IPv6 socket address, wired together once.
type batchHalf struct {
	msgs  [linkBatch]mmsghdr
	iov   [linkBatch]unix.Iovec
	names [linkBatch]unix.RawSockaddrInet6
	bufs  [linkBatch][readBufSize]byte
}

// init wires h once, when its link socket opens; inlining it (twice in
// newBatchConn) would only grow the router binary.
//
//go:noinline
func (h *batchHalf) init() {
	for i := range h.msgs {
		h.iov[i].Base = &h.bufs[i][0]
		h.iov[i].SetLen(readBufSize)
		h.msgs[i].hdr.Name = (*byte)(unsafe.Pointer(&h.names[i]))
		h.msgs[i].hdr.Iov = &h.iov[i]
		h.msgs[i].hdr.SetIovlen(1)
	}
}

// newBatchConn returns batched I/O for c when c is a kernel socket (one
// with a descriptor: package net's, or internal/netns's); nil otherwise
// (memnet), and the router reads and writes frame by frame.
func newBatchConn(c any, ifindex int, name string, fail func(netip.AddrPort, error)) *batchConn {
	sc, ok := c.(syscall.Conn)
	if !ok || ifindex <= 0 {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	b := &batchConn{rc: rc, ifindex: uint32(ifindex), name: name, fail: fail}
	b.rx.init()
	b.tx.init()
	b.readFn, b.writeFn = b.recv, b.send
	return b
}

// read waits for frames and returns how many it received (at least one),
// or the error that ends the socket (net.ErrClosed once closed).
func (b *batchConn) read() (int, error) {
	if err := b.rc.Read(b.readFn); err != nil {
		return 0, err
	}
	if b.rxErr != 0 {
		return 0, b.rxErr
	}
	return b.rxN, nil
}

// recv is one recvmmsg; false asks the poller to wait for data.
func (b *batchConn) recv(fd uintptr) bool {
	h := &b.rx
	for i := range h.msgs {
		h.msgs[i].hdr.Namelen = unix.SizeofSockaddrInet6
	}
	r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&h.msgs[0])), linkBatch, 0, 0, 0)
	b.rxN, b.rxErr = int(r), e
	return e != unix.EAGAIN
}

// frame returns the i-th frame read and its source. A datagram longer than
// the buffer fills it (the kernel truncates it), so the caller sees it
// longer than maxWireFrame.
func (b *batchConn) frame(i int) ([]byte, netip.AddrPort) {
	h := &b.rx
	buf := h.bufs[i][:min(int(h.msgs[i].n), readBufSize)]
	sa := &h.names[i]
	if sa.Family != unix.AF_INET6 {
		return buf, netip.AddrPort{}
	}
	if !b.lastAddr.IsValid() || sa.Addr != b.lastRaw || sa.Scope_id != b.lastScope {
		a := netip.AddrFrom16(sa.Addr)
		if a.IsLinkLocalUnicast() {
			if sa.Scope_id == b.ifindex {
				a = a.WithZone(b.name)
			} else {
				a = a.WithZone(strconv.Itoa(int(sa.Scope_id)))
			}
		}
		b.lastRaw, b.lastScope, b.lastAddr = sa.Addr, sa.Scope_id, a.Unmap()
	}
	return buf, netip.AddrPortFrom(b.lastAddr, netPort(sa.Port))
}

// netPort converts a port from a socket address (network byte order).
func netPort(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(b[0])<<8 | uint16(b[1])
}

// add queues frame for to, a peer on this link (its zone is the link's
// name, or none), and reports false when it cannot: the address is not on
// this link or the batch is full. The frame is copied.
func (b *batchConn) add(frame []byte, to netip.AddrPort) bool {
	a := to.Addr()
	if !a.Is6() || a.Is4In6() || b.txN == linkBatch || len(frame) > readBufSize {
		return false
	}
	var scope uint32
	if z := a.Zone(); z != "" {
		if z != b.name {
			return false
		}
		scope = b.ifindex
	}
	h := &b.tx
	i := b.txN
	sa := &h.names[i]
	*sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: a.As16(), Scope_id: scope}
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	p[0], p[1] = byte(to.Port()>>8), byte(to.Port())
	h.msgs[i].hdr.Namelen = unix.SizeofSockaddrInet6
	h.iov[i].SetLen(copy(h.bufs[i][:], frame))
	b.txTo[i] = to
	b.txN++
	return true
}

// flush sends the queued frames in order, in as few sendmmsg calls as the
// kernel takes them in. A frame the kernel refuses is passed to fail and
// skipped; if the socket is closed, every frame left is.
func (b *batchConn) flush() {
	if b.txN == 0 {
		return
	}
	b.txSent = 0
	if err := b.rc.Write(b.writeFn); err != nil {
		for ; b.txSent < b.txN; b.txSent++ {
			b.fail(b.txTo[b.txSent], err)
		}
	}
	b.txN = 0
}

// send is sendmmsg until every queued frame is out; false asks the poller
// to wait until the send buffer drains.
func (b *batchConn) send(fd uintptr) bool {
	h := &b.tx
	for b.txSent < b.txN {
		r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&h.msgs[b.txSent])), uintptr(b.txN-b.txSent), 0, 0, 0)
		switch {
		case e == unix.EAGAIN:
			return false
		case e != 0:
			// sendmmsg(2) fails only when the first message failed.
			b.fail(b.txTo[b.txSent], e)
			b.txSent++
		default:
			b.txSent += int(r)
		}
	}
	return true
}
