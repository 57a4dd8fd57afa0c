package dns64

import (
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Batched I/O on the node's kernel UDP sockets (Linux).
//
// A phone LAN or a resolver in front of it sends bursts of queries, and
// most are repeats of a few .mesh questions that replay.go answers
// without parsing. Per query the node then spent most of its time in
// two syscalls (issue 12: 81 % of its CPU in recvmsg and sendmsg under
// `make bench-peers`, 14 µs of CPU per query). Here one recvmmsg(2)
// reads every query waiting, up to batchSize, and one sendmmsg(2) sends
// the replayed replies to all of them. A reply is sent from where it is:
// two iovecs, the query's ID from the receive buffer and the rest of the
// packed reply from the replay cache (whose replies are never changed),
// to the source address exactly as the kernel gave it (scope ID
// included). Nothing is allocated for a replayed query.
//
// The socket is bound to one address (Config.Listen), so replies leave
// from the address the query came to without IP_PKTINFO (RFC 2181 §4.1:
// clients expect the reply from the address they sent the query to).

// batchSize bounds the datagrams read by one recvmmsg and so the buffers
// of a socket: batchSize × UDPSize bytes (40 KB at the default 1232).
const batchSize = 32

// mmsghdr is struct mmsghdr of recvmmsg(2): Go lays it out as C does on
// 32- and 64-bit (a msghdr, then the length, padded to the alignment).
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
}

// udpBatch reads and writes one kernel UDP socket in batches. Only the
// server's read loop uses it: no lock.
type udpBatch struct {
	rc    syscall.RawConn
	laddr net.Addr
	size  int // bytes per receive buffer

	// Received: message i is bufs[i*size:][:hdrs[i].len] from names[i].
	hdrs  []mmsghdr
	iovs  []unix.Iovec
	names [][unix.SizeofSockaddrInet6]byte
	bufs  []byte
	n     int // messages in the batch
	next  int // the next to process

	// To send: out[:nout], two iovecs each (outIov[2j:2j+2]).
	out    []mmsghdr
	outIov []unix.Iovec
	nout   int
	sent   int // of out[:nout], sent so far

	// The syscalls' results, and the functions given to RawConn.Read and
	// Write, bound once: a method value made per call would allocate.
	got   int
	errno syscall.Errno
	recvF func(fd uintptr) bool
	sendF func(fd uintptr) bool

	zoneIdx  uint32 // the last scope ID named (zone)
	zoneName string
}

// newUDPBatch returns the batch reader of conn, or nil when conn is not a
// kernel socket (memnet in the tests): then the reader reads one datagram
// at a time.
func newUDPBatch(conn net.PacketConn, size int) *udpBatch {
	if ps, ok := conn.(packetSocket); ok {
		conn = ps.PacketConn
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	b := &udpBatch{
		rc: rc, laddr: conn.LocalAddr(), size: size,
		hdrs:   make([]mmsghdr, batchSize),
		iovs:   make([]unix.Iovec, batchSize),
		names:  make([][unix.SizeofSockaddrInet6]byte, batchSize),
		bufs:   make([]byte, batchSize*size),
		out:    make([]mmsghdr, batchSize),
		outIov: make([]unix.Iovec, 2*batchSize),
	}
	for i := range b.hdrs {
		b.iovs[i].Base = &b.bufs[i*size]
		b.iovs[i].SetLen(size)
		h := &b.hdrs[i].hdr
		h.Name = &b.names[i][0]
		h.Iov = &b.iovs[i]
		h.SetIovlen(1)
	}
	b.recvF = b.recvmmsg
	b.sendF = b.sendmmsg
	return b
}

// msg returns the datagram i of the batch (cut to the buffer, as
// recvmsg(2) cuts a longer one).
func (b *udpBatch) msg(i int) []byte {
	return b.bufs[i*b.size:][:min(int(b.hdrs[i].len), b.size)]
}

// from returns the source of datagram i, without the IPv6 zone (the
// rate limiter ignores it), and the scope ID the zone stands for.
func (b *udpBatch) from(i int) (netip.AddrPort, uint32) {
	sa := &b.names[i]
	port := binary.BigEndian.Uint16(sa[2:4])
	switch binary.NativeEndian.Uint16(sa[0:2]) {
	case unix.AF_INET:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(sa[4:8])), port), 0
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(sa[8:24])), port), binary.NativeEndian.Uint32(sa[24:28])
	}
	return netip.AddrPort{}, 0
}

// addr returns the source of datagram i for the miekg server (it
// allocates: only queries that take the full path need it).
func (b *udpBatch) addr(i int) net.Addr {
	ap, scope := b.from(i)
	a := net.UDPAddrFromAddrPort(ap)
	if scope != 0 {
		a.Zone = b.zone(scope)
	}
	return a
}

// zone names the interface of a scope ID, as the net package's own reads
// do. One socket's link-local clients are on one interface: the last
// name is kept, so a look-up (a netlink dump) is made once, not per
// query; the index itself serves if the interface is gone.
func (b *udpBatch) zone(scope uint32) string {
	if scope != b.zoneIdx {
		b.zoneIdx, b.zoneName = scope, strconv.FormatUint(uint64(scope), 10)
		if ifi, err := net.InterfaceByIndex(int(scope)); err == nil {
			b.zoneName = ifi.Name
		}
	}
	return b.zoneName
}

// queue adds the reply to datagram i: reply (shared, unchanged) with the
// ID of the query. At most one reply per datagram: out never overflows.
func (b *udpBatch) queue(i int, reply []byte) {
	j := b.nout
	b.nout++
	iov := b.outIov[2*j : 2*j+2]
	iov[0].Base = &b.bufs[i*b.size] // the query's ID, bytes 0 and 1
	iov[0].SetLen(2)
	iov[1].Base = &reply[2]
	iov[1].SetLen(len(reply) - 2)
	h := &b.out[j].hdr
	h.Name = &b.names[i][0]
	h.Namelen = b.hdrs[i].hdr.Namelen
	h.Iov = &iov[0]
	h.SetIovlen(2)
}

// flush sends the queued replies. A datagram the kernel refuses is
// dropped and reported through fail (UDP: the client asks again); a
// socket that fails (closed) drops the rest, and the next read reports it.
func (b *udpBatch) flush(fail func(to net.Addr, err error)) {
	for b.sent < b.nout {
		if err := b.rc.Write(b.sendF); err != nil {
			break
		}
		switch {
		case b.errno != 0:
			// sendmmsg(2) fails only on the first datagram: skip it.
			j := b.sent
			b.sent++
			fail(b.outAddr(j), os.NewSyscallError("sendmmsg", b.errno))
		default:
			b.sent += b.got
		}
	}
	for j := range b.nout {
		b.outIov[2*j].Base, b.outIov[2*j+1].Base = nil, nil // keep no reply alive
	}
	b.nout, b.sent = 0, 0
}

// outAddr returns the destination of queued reply j (for a log line).
func (b *udpBatch) outAddr(j int) net.Addr {
	for i := range b.n {
		if b.out[j].hdr.Name == &b.names[i][0] {
			return b.addr(i)
		}
	}
	return nil
}

// recv reads the next batch, waiting for at least one datagram; the
// socket's read deadline applies (the server's shutdown sets one).
func (b *udpBatch) recv() error {
	b.n, b.next = 0, 0
	for i := range b.hdrs {
		b.hdrs[i].hdr.Namelen = unix.SizeofSockaddrInet6
		b.hdrs[i].hdr.Flags = 0
		b.hdrs[i].len = 0
	}
	if err := b.rc.Read(b.recvF); err != nil {
		return err
	}
	if b.errno != 0 {
		// Like the net package's errors, so the miekg server tells
		// temporary ones (it goes on reading) from the rest.
		return &net.OpError{Op: "read", Net: "udp", Source: b.laddr, Err: os.NewSyscallError("recvmmsg", b.errno)}
	}
	b.n = b.got
	return nil
}

// recvmmsg and sendmmsg run under RawConn.Read and Write: false asks to
// wait until the socket is ready (the socket is non-blocking).
func (b *udpBatch) recvmmsg(fd uintptr) bool {
	return b.mmsg(unix.SYS_RECVMMSG, fd, unsafe.Pointer(&b.hdrs[0]), len(b.hdrs))
}

func (b *udpBatch) sendmmsg(fd uintptr) bool {
	out := b.out[b.sent:b.nout]
	return b.mmsg(unix.SYS_SENDMMSG, fd, unsafe.Pointer(&out[0]), len(out))
}

// mmsg makes one recvmmsg or sendmmsg call (trap) on the n headers at
// hdrs, again after EINTR; it notes the count and error in b.
func (b *udpBatch) mmsg(trap, fd uintptr, hdrs unsafe.Pointer, n int) bool {
	for {
		r, _, e := unix.Syscall6(trap, fd, uintptr(hdrs), uintptr(n), 0, 0, 0)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		b.got, b.errno = int(r), e
		return true
	}
}

// readBatch is ReadPacketConn on a kernel socket: it takes the queries of
// the batch in turn, drops those over their source's rate, queues the
// replayed replies, hands the first other query on to the miekg server
// and, when the batch is done, sends the queued replies and reads the
// next batch.
func (r *limitedReader) readBatch() ([]byte, net.Addr, error) {
	b := r.batch
	for {
		for b.next < b.n {
			i := b.next
			b.next++
			q := b.msg(i)
			src, _ := b.from(i)
			if !r.s.lim.allowAt(src.Addr(), r.now) {
				r.s.stats.rateLimited.Add(1)
				continue
			}
			if reply := r.replay.get(q, r.now); reply != nil && len(reply) <= b.size {
				b.queue(i, reply)
				r.replayed++
				continue
			}
			return r.handOn(q), b.addr(i), nil
		}
		// Counted before they are sent: whoever sees a reply sees it
		// counted.
		r.countReplayed()
		b.flush(r.writeFailed)
		if err := b.recv(); err != nil {
			return nil, nil, err
		}
		r.now = r.s.cfg.Now()
	}
}
