package netx

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Route is a NETLINK_ROUTE socket (rtnetlink, see rtnetlink(7)): the kernel
// interface that iproute2's `ip addr` uses, spoken directly so that a node
// needs no `ip` binary (routers may have only part of busybox). A Route
// talks to the network namespace of the thread that opened it, for its
// whole life.
//
// Each request waits for the kernel's acknowledgement (NLM_F_ACK) before
// the next one is sent; requests from several goroutines are serialised.
// The socket joins no multicast group: a subscription to link or address
// events belongs on a socket of its own (one bound to RTMGRP_LINK by
// openNetlink, its datagrams split by eachMessage), so that events never
// interleave with the answers to requests.
type Route struct {
	mu  sync.Mutex
	fd  int
	seq uint32
	buf []byte
}

// OpenRoute opens a NETLINK_ROUTE socket for requests.
func OpenRoute() (*Route, error) {
	fd, err := openNetlink(0)
	if err != nil {
		return nil, err
	}
	return &Route{fd: fd, buf: make([]byte, os.Getpagesize())}, nil
}

// openNetlink opens and binds a NETLINK_ROUTE socket that receives the
// multicast groups in groups (RTMGRP_* bits; 0 for none).
func openNetlink(groups uint32) (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return -1, fmt.Errorf("netx: netlink socket: %w", os.NewSyscallError("socket", err))
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: groups}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("netx: netlink socket: %w", os.NewSyscallError("bind", err))
	}
	return fd, nil
}

// Close closes the socket.
func (r *Route) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fd < 0 {
		return nil
	}
	err := unix.Close(r.fd)
	r.fd = -1
	return err
}

// AddAddress puts p (address and prefix length) on the interface ifname,
// as `ip addr add` does. added is false, with no error, when the interface
// already had that address: then it belongs to whoever put it there (the
// system's network configuration) and the caller should not remove it.
func (r *Route) AddAddress(ifname string, p netip.Prefix) (added bool, err error) {
	err = r.addrRequest(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, ifname, p)
	if errors.Is(err, unix.EEXIST) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("netx: adding %v to %s: %w", p, ifname, err)
	}
	return true, nil
}

// RemoveAddress removes p from ifname, as `ip addr del` does. An address
// that is not there (or an interface that is gone, taking its addresses
// along) is not an error: the address is not there, as asked.
func (r *Route) RemoveAddress(ifname string, p netip.Prefix) error {
	err := r.addrRequest(unix.RTM_DELADDR, 0, ifname, p)
	if errors.Is(err, unix.EADDRNOTAVAIL) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("netx: removing %v from %s: %w", p, ifname, err)
	}
	return nil
}

// targetLocked is what an address or route request on ifname for p needs,
// with r.mu held: the interface's index and p's address family.
func (r *Route) targetLocked(ifname string, p netip.Prefix) (idx int, family uint8, err error) {
	if r.fd < 0 {
		return 0, 0, os.ErrClosed
	}
	if idx, err = r.ifIndexLocked(ifname); err != nil {
		return 0, 0, err
	}
	family = unix.AF_INET6
	if p.Addr().Unmap().Is4() {
		family = unix.AF_INET
	}
	return idx, family, nil
}

// addrRequest sends an RTM_NEWADDR or RTM_DELADDR message for p on ifname
// and waits for its acknowledgement.
func (r *Route) addrRequest(typ uint16, flags uint16, ifname string, p netip.Prefix) error {
	if !p.IsValid() {
		return fmt.Errorf("invalid prefix %v", p)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	idx, family, err := r.targetLocked(ifname, p)
	if err != nil {
		return err
	}
	a := p.Addr().Unmap()
	// struct ifaddrmsg (rtnetlink(7)), then the attributes. For IPv4,
	// IFA_LOCAL is the interface's address and IFA_ADDRESS the peer's,
	// which on a broadcast link is the same; IFA_BROADCAST is what `ip
	// addr add … brd +` would set, so that the subnet's broadcast
	// (DHCP clients, RFC 919) reaches the node.
	msg := make([]byte, 0, 64)
	msg = append(msg, family, uint8(p.Bits()), 0, unix.RT_SCOPE_UNIVERSE)
	msg = binary.NativeEndian.AppendUint32(msg, uint32(idx))
	raw := a.AsSlice()
	msg = appendAttr(msg, unix.IFA_LOCAL, raw)
	msg = appendAttr(msg, unix.IFA_ADDRESS, raw)
	if a.Is4() && p.Bits() < 31 && typ == unix.RTM_NEWADDR {
		msg = appendAttr(msg, unix.IFA_BROADCAST, broadcast4(p).AsSlice())
	}
	return r.requestLocked(typ, flags, msg)
}

// AddDeviceRoute routes p into the interface ifname (main table, no
// gateway), as `ip route replace p dev ifname` does: an existing route for
// p is replaced, so a start after a crash finds it in place. The route
// goes with the interface; a TUN takes it along when it closes.
func (r *Route) AddDeviceRoute(ifname string, p netip.Prefix) error {
	return r.deviceRoute(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, ifname, p, 0)
}

// AddDeviceRouteMetric is AddDeviceRoute with a route metric (`ip route
// replace p dev ifname metric m`): IPv6 keeps routes for the same prefix
// with different metrics side by side and uses the lowest, so a fallback
// route with a high metric stays in place under a preferred one and takes
// over when that one goes with its interface.
func (r *Route) AddDeviceRouteMetric(ifname string, p netip.Prefix, metric uint32) error {
	return r.deviceRoute(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, ifname, p, metric)
}

// RemoveDeviceRoute removes the route AddDeviceRouteMetric put in place
// (`ip route del p dev ifname metric m`); one that is not there is no
// error.
func (r *Route) RemoveDeviceRoute(ifname string, p netip.Prefix, metric uint32) error {
	err := r.deviceRoute(unix.RTM_DELROUTE, 0, ifname, p, metric)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

func (r *Route) deviceRoute(typ, flags uint16, ifname string, p netip.Prefix, metric uint32) error {
	if !p.IsValid() {
		return fmt.Errorf("netx: route: invalid prefix %v", p)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	idx, family, err := r.targetLocked(ifname, p)
	if err != nil {
		return err
	}
	p = p.Masked()
	// struct rtmsg (rtnetlink(7)), then RTA_DST, RTA_OIF and RTA_PRIORITY
	// (the metric; none: the kernel's default).
	msg := []byte{family, uint8(p.Bits()), 0, 0, unix.RT_TABLE_MAIN, unix.RTPROT_STATIC, unix.RT_SCOPE_LINK, unix.RTN_UNICAST}
	msg = binary.NativeEndian.AppendUint32(msg, 0) // rtm_flags
	msg = appendAttr(msg, unix.RTA_DST, p.Addr().AsSlice())
	msg = appendAttr(msg, unix.RTA_OIF, binary.NativeEndian.AppendUint32(nil, uint32(idx)))
	if metric != 0 {
		msg = appendAttr(msg, unix.RTA_PRIORITY, binary.NativeEndian.AppendUint32(nil, metric))
	}
	if err := r.requestLocked(typ, flags, msg); err != nil {
		verb := "routing %v into %s"
		if typ == unix.RTM_DELROUTE {
			verb = "removing the route of %v into %s"
		}
		return fmt.Errorf("netx: "+verb+": %w", p, ifname, err)
	}
	return nil
}

// ifIndexLocked resolves ifname in the socket's namespace: the ioctl goes
// through the netlink socket's own descriptor, so it sees the interfaces
// of the namespace the socket lives in, not the calling thread's.
func (r *Route) ifIndexLocked(ifname string) (int, error) {
	ifr, err := unix.NewIfreq(ifname)
	if err != nil {
		return 0, fmt.Errorf("interface %q: %w", ifname, err)
	}
	if err := unix.IoctlIfreq(r.fd, unix.SIOCGIFINDEX, ifr); err != nil {
		return 0, fmt.Errorf("interface %q: %w", ifname, err)
	}
	return int(ifr.Uint32()), nil
}

// requestLocked sends one request (body after the netlink header) with
// NLM_F_REQUEST|NLM_F_ACK and returns the kernel's answer: nil or the
// errno of its NLMSG_ERROR message.
func (r *Route) requestLocked(typ, flags uint16, body []byte) error {
	r.seq++
	seq := r.seq
	msg := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(body))
	binary.NativeEndian.PutUint32(msg[0:], uint32(unix.SizeofNlMsghdr+len(body)))
	binary.NativeEndian.PutUint16(msg[4:], typ)
	binary.NativeEndian.PutUint16(msg[6:], flags|unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(msg[8:], seq)
	// Port ID 0 here: the kernel fills in the socket's own.
	msg = append(msg, body...)
	if err := unix.Sendto(r.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return os.NewSyscallError("sendto", err)
	}
	for {
		n, from, err := unix.Recvfrom(r.fd, r.buf, 0)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return os.NewSyscallError("recvfrom", err)
		}
		if sa, ok := from.(*unix.SockaddrNetlink); !ok || sa.Pid != 0 {
			continue // only the kernel (port 0) answers requests
		}
		done, err := ackOf(r.buf[:n], seq)
		if done {
			return err
		}
	}
}

// ackOf looks for the acknowledgement of request seq among the messages in
// b (one datagram). done reports that it was found; err is its errno (nil
// for success). Messages of older requests (one whose caller gave up) are
// skipped.
func ackOf(b []byte, seq uint32) (done bool, err error) {
	werr := eachMessage(b, func(typ uint16, mseq uint32, body []byte) bool {
		if mseq != seq || typ != unix.NLMSG_ERROR {
			return true
		}
		done = true
		// struct nlmsgerr: a negative errno, 0 for an acknowledgement.
		if len(body) < 4 {
			err = errors.New("short netlink error message")
		} else if e := int32(binary.NativeEndian.Uint32(body)); e != 0 {
			err = unix.Errno(-e)
		}
		return false
	})
	if werr != nil {
		return true, werr
	}
	return done, err
}

// eachMessage calls f with the type, sequence number and body of each
// netlink message in the datagram b until f returns false; a message whose
// length does not fit b ends the walk with an error.
func eachMessage(b []byte, f func(typ uint16, seq uint32, body []byte) bool) error {
	for len(b) >= unix.SizeofNlMsghdr {
		l := int(binary.NativeEndian.Uint32(b[0:]))
		if l < unix.SizeofNlMsghdr || l > len(b) {
			return fmt.Errorf("malformed netlink message: length %d in %d bytes", l, len(b))
		}
		if !f(binary.NativeEndian.Uint16(b[4:]), binary.NativeEndian.Uint32(b[8:]), b[unix.SizeofNlMsghdr:l]) {
			return nil
		}
		b = b[min(nlmAlign(l), len(b)):]
	}
	return nil
}

// appendAttr appends one route attribute (struct rtattr and its payload,
// padded to 4 bytes).
func appendAttr(b []byte, typ uint16, v []byte) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(unix.SizeofRtAttr+len(v)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, v...)
	for len(b)%unix.NLMSG_ALIGNTO != 0 {
		b = append(b, 0)
	}
	return b
}

func nlmAlign(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// broadcast4 is the subnet-directed broadcast address of an IPv4 prefix.
func broadcast4(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	for i := p.Bits(); i < 32; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	return netip.AddrFrom4(b)
}

// AddAddress puts p on ifname in the calling thread's network namespace
// (see Route.AddAddress).
func AddAddress(ifname string, p netip.Prefix) (added bool, err error) {
	r, err := OpenRoute()
	if err != nil {
		return false, err
	}
	defer r.Close()
	return r.AddAddress(ifname, p)
}

// AddDeviceRoute routes p into ifname in the calling thread's network
// namespace (see Route.AddDeviceRoute).
func AddDeviceRoute(ifname string, p netip.Prefix) error {
	r, err := OpenRoute()
	if err != nil {
		return err
	}
	defer r.Close()
	return r.AddDeviceRoute(ifname, p)
}

// AddDeviceRouteMetric routes p into ifname with a metric in the calling
// thread's network namespace (see Route.AddDeviceRouteMetric).
func AddDeviceRouteMetric(ifname string, p netip.Prefix, metric uint32) error {
	r, err := OpenRoute()
	if err != nil {
		return err
	}
	defer r.Close()
	return r.AddDeviceRouteMetric(ifname, p, metric)
}

// RemoveDeviceRoute removes a route of AddDeviceRouteMetric in the calling
// thread's network namespace (see Route.RemoveDeviceRoute).
func RemoveDeviceRoute(ifname string, p netip.Prefix, metric uint32) error {
	r, err := OpenRoute()
	if err != nil {
		return err
	}
	defer r.Close()
	return r.RemoveDeviceRoute(ifname, p, metric)
}

// RemoveAddress removes p from ifname in the calling thread's network
// namespace (see Route.RemoveAddress).
func RemoveAddress(ifname string, p netip.Prefix) error {
	r, err := OpenRoute()
	if err != nil {
		return err
	}
	defer r.Close()
	return r.RemoveAddress(ifname, p)
}
