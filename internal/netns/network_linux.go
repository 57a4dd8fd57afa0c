//go:build linux

package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sipmesh/sipmesh/netx"
)

// Network returns a netx.Network whose sockets live in the named namespace
// (one under /run/netns, as `ip netns add` makes). Each socket is created
// on an OS thread switched into the namespace with setns(2) and switched
// back; a socket keeps the namespace it was created in, so the rest of the
// process uses it as any other.
//
// Package net resolves IPv6 zones (the "%eth0" of a link-local address) with
// a process-wide cache of the interfaces of whatever namespace asked last,
// which is wrong for sockets in several namespaces. The datagram sockets
// returned here therefore resolve zones themselves, through their own file
// descriptor (whose ioctls see the socket's namespace): reads report the
// receiving interface's name in that namespace, and writes accept it.
// Listing interfaces (Interfaces) still goes through package net and may
// leave that cache describing this namespace; the process's own namespace
// should not rely on zone names while a test uses this.
func Network(name string) netx.Network { return nsNetwork{name: name} }

// Network returns a netx.Network whose sockets live in ns.
func (ns *NS) Network() netx.Network { return Network(ns.Name) }

type nsNetwork struct{ name string }

// do runs f on a thread inside the namespace. It uses a goroutine of its
// own: if switching the thread back fails, the goroutine exits still locked
// and the runtime discards the tainted thread instead of reusing it.
func (n nsNetwork) do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- n.doLocked(f)
	}()
	return <-errc
}

func (n nsNetwork) doLocked(f func() error) error {
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("netns: open own namespace: %w", err)
	}
	defer unix.Close(orig)
	target, err := unix.Open("/run/netns/"+n.name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns: open namespace %s: %w", n.name, err)
	}
	defer unix.Close(target)
	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns: enter namespace %s: %w", n.name, err)
	}
	ferr := f()
	if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
		// Stay locked: the thread dies with the goroutine.
		return errors.Join(ferr, fmt.Errorf("netns: leave namespace %s: %w", n.name, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// ListenPacket implements netx.Network. A link-local address with a zone
// is bound with SO_BINDTOIFINDEX rather than through package net's zone
// cache (see Network).
func (n nsNetwork) ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	ap, zoned := zonedAddrPort(address)
	var c net.PacketConn
	err := n.do(func() error {
		var lc net.ListenConfig
		addr := address
		if zoned {
			idx, err := ifIndex(ap.Addr().Zone())
			if err != nil {
				return err
			}
			lc.Control = func(_, _ string, rc syscall.RawConn) error {
				var serr error
				err := rc.Control(func(fd uintptr) {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BINDTOIFINDEX, idx)
				})
				return errors.Join(err, serr)
			}
			addr = netip.AddrPortFrom(ap.Addr().WithZone(""), ap.Port()).String()
		}
		var err error
		c, err = lc.ListenPacket(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netns %s: listen %s %s: %w", n.name, network, address, err)
	}
	if u, ok := c.(*net.UDPConn); ok {
		return newConn(u)
	}
	return c, nil
}

// zonedAddrPort reports whether address is an IP:port with an IPv6 zone.
func zonedAddrPort(address string) (netip.AddrPort, bool) {
	ap, err := netip.ParseAddrPort(address)
	return ap, err == nil && ap.Addr().Zone() != ""
}

// ListenMulticast implements netx.Network. For an IPv6 group the socket is
// bound to the group on that one interface ([group%ifname]:port with
// SO_BINDTOIFINDEX), so it hears the group only on that interface, as the
// netx contract says, and leaves the port free for unicast sockets bound
// to the interface's own addresses. (Package net's ListenMulticastUDP binds
// the wildcard address instead; it is used for IPv4 groups.)
func (n nsNetwork) ListenMulticast(_ context.Context, ifname string, group netip.AddrPort) (net.PacketConn, error) {
	var c net.PacketConn
	err := n.do(func() error {
		idx, err := ifIndex(ifname)
		if err != nil {
			return err
		}
		if group.Addr().Is6() {
			c, err = netx.ListenGroup6(idx, group)
			return err
		}
		// Only Index is used: joining the group and choosing the
		// outgoing interface.
		c, err = net.ListenMulticastUDP("udp4", &net.Interface{Index: idx, Name: ifname}, net.UDPAddrFromAddrPort(group))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netns %s: multicast %s on %s: %w", n.name, group, ifname, err)
	}
	if u, ok := c.(*net.UDPConn); ok {
		return newConn(u)
	}
	return c, nil
}

// Listen implements netx.Network.
func (n nsNetwork) Listen(ctx context.Context, network, address string) (net.Listener, error) {
	var l net.Listener
	err := n.do(func() error {
		var lc net.ListenConfig
		var err error
		l, err = lc.Listen(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netns %s: listen %s %s: %w", n.name, network, address, err)
	}
	return l, nil
}

// Dial implements netx.Network. The connection's socket is created in the
// namespace; a zone in address is resolved there too.
func (n nsNetwork) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := n.do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netns %s: dial %s %s: %w", n.name, network, address, err)
	}
	return c, nil
}

// Interfaces implements netx.Network.
func (n nsNetwork) Interfaces() ([]netx.Interface, error) {
	var out []netx.Interface
	err := n.do(func() error {
		var err error
		out, err = netx.Kernel{}.Interfaces()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", n.name, err)
	}
	return out, nil
}

// ifIndex looks an interface up in the calling thread's namespace with an
// ioctl, bypassing package net's zone cache.
func ifIndex(name string) (int, error) {
	if i, err := strconv.Atoi(name); err == nil {
		return i, nil
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("netns: socket for interface lookup: %w", err)
	}
	defer unix.Close(fd)
	return ifIndexFD(fd, name)
}

func ifIndexFD(fd int, name string) (int, error) {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, fmt.Errorf("netns: interface %q: %w", name, err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		return 0, fmt.Errorf("netns: no interface %q: %w", name, err)
	}
	return int(ifr.Uint32()), nil
}

// conn is a UDP socket in some namespace whose AddrPort methods resolve
// zones in that namespace (see Network). It is what the SSR router and the
// benchmarks use on the fast path; ReadFrom/WriteTo go through it too.
type conn struct {
	*net.UDPConn
	rc syscall.RawConn

	mu    sync.Mutex
	names map[int]string // interface index → name, in the socket's namespace
	index map[string]int
}

func newConn(u *net.UDPConn) (*conn, error) {
	rc, err := u.SyscallConn()
	if err != nil {
		u.Close()
		return nil, fmt.Errorf("netns: raw socket: %w", err)
	}
	return &conn{UDPConn: u, rc: rc, names: make(map[int]string), index: make(map[string]int)}, nil
}

// zoneName maps an interface index to its name in the socket's namespace.
func (c *conn) zoneName(idx int) string {
	if idx == 0 {
		return ""
	}
	c.mu.Lock()
	name, ok := c.names[idx]
	c.mu.Unlock()
	if ok {
		return name
	}
	name = strconv.Itoa(idx)
	c.rc.Control(func(fd uintptr) {
		ifr, err := unix.NewIfreq("")
		if err != nil {
			return
		}
		ifr.SetUint32(uint32(idx))
		if unix.IoctlIfreq(int(fd), unix.SIOCGIFNAME, ifr) == nil {
			name = ifr.Name()
		}
	})
	c.mu.Lock()
	c.names[idx] = name
	c.mu.Unlock()
	return name
}

// zoneIndex maps a zone (a name in the socket's namespace, or a number).
func (c *conn) zoneIndex(zone string) (int, error) {
	if zone == "" {
		return 0, nil
	}
	c.mu.Lock()
	idx, ok := c.index[zone]
	c.mu.Unlock()
	if ok {
		return idx, nil
	}
	var err error
	cerr := c.rc.Control(func(fd uintptr) { idx, err = ifIndexFD(int(fd), zone) })
	if err = errors.Join(cerr, err); err != nil {
		if i, aerr := strconv.Atoi(zone); aerr == nil {
			return i, nil
		}
		return 0, err
	}
	c.mu.Lock()
	c.index[zone] = idx
	c.mu.Unlock()
	return idx, nil
}

// ReadFromUDPAddrPort reads a datagram; a link-local source carries the
// receiving interface's name as zone. It calls recvfrom(2) itself: x/sys's
// Recvfrom asks the kernel for the socket's protocol (getsockopt
// SO_PROTOCOL, to tell L2TP from UDP) on every IPv6 datagram, a second
// system call per read that package net's sockets, which nodes run on, do
// not make, and that would weigh on every benchmark using these sockets.
func (c *conn) ReadFromUDPAddrPort(b []byte) (int, netip.AddrPort, error) {
	var (
		n   int
		rsa unix.RawSockaddrAny
		err error
	)
	rerr := c.rc.Read(func(fd uintptr) bool {
		l := uint32(unix.SizeofSockaddrAny)
		r, _, e := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)),
			0, uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&l)))
		n, err = int(r), nil
		if e != 0 {
			n, err = 0, e
		}
		return err != unix.EAGAIN
	})
	if rerr != nil {
		return 0, netip.AddrPort{}, &net.OpError{Op: "read", Net: "udp", Source: c.LocalAddr(), Err: unwrapOp(rerr)}
	}
	if err != nil {
		return 0, netip.AddrPort{}, &net.OpError{Op: "read", Net: "udp", Source: c.LocalAddr(), Err: os.NewSyscallError("recvfrom", err)}
	}
	switch rsa.Addr.Family {
	case unix.AF_INET6:
		sa := (*unix.RawSockaddrInet6)(unsafe.Pointer(&rsa))
		a := netip.AddrFrom16(sa.Addr)
		if a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() {
			a = a.WithZone(c.zoneName(int(sa.Scope_id)))
		}
		return n, netip.AddrPortFrom(a.Unmap(), port(sa.Port)), nil
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&rsa))
		return n, netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port(sa.Port)), nil
	}
	return n, netip.AddrPort{}, nil
}

// port converts a sockaddr's port, stored in network byte order.
func port(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(b[0])<<8 | uint16(b[1])
}

// WriteToUDPAddrPort sends a datagram; a zone names an interface of the
// socket's namespace.
func (c *conn) WriteToUDPAddrPort(b []byte, to netip.AddrPort) (int, error) {
	opErr := func(err error) error {
		return &net.OpError{Op: "write", Net: "udp", Source: c.LocalAddr(), Addr: net.UDPAddrFromAddrPort(to), Err: err}
	}
	var sa unix.Sockaddr
	if a := to.Addr(); a.Is4() && c.LocalAddr().(*net.UDPAddr).IP.To4() != nil {
		sa = &unix.SockaddrInet4{Port: int(to.Port()), Addr: a.As4()}
	} else {
		idx, err := c.zoneIndex(a.Zone())
		if err != nil {
			return 0, opErr(err)
		}
		sa = &unix.SockaddrInet6{Port: int(to.Port()), Addr: a.As16(), ZoneId: uint32(idx)}
	}
	var err error
	werr := c.rc.Write(func(fd uintptr) bool {
		err = unix.Sendto(int(fd), b, 0, sa)
		return err != unix.EAGAIN
	})
	if werr != nil {
		return 0, opErr(unwrapOp(werr))
	}
	if err != nil {
		return 0, opErr(os.NewSyscallError("sendto", err))
	}
	return len(b), nil
}

// ReadFrom implements net.PacketConn through ReadFromUDPAddrPort.
func (c *conn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, ap, err := c.ReadFromUDPAddrPort(b)
	if err != nil {
		return n, nil, err
	}
	return n, net.UDPAddrFromAddrPort(ap), nil
}

// WriteTo implements net.PacketConn through WriteToUDPAddrPort.
func (c *conn) WriteTo(b []byte, addr net.Addr) (int, error) {
	u, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, &net.OpError{Op: "write", Net: "udp", Source: c.LocalAddr(), Addr: addr, Err: syscall.EINVAL}
	}
	a, _ := netip.AddrFromSlice(u.IP)
	if u.Zone != "" {
		a = a.WithZone(u.Zone)
	}
	return c.WriteToUDPAddrPort(b, netip.AddrPortFrom(a.Unmap(), uint16(u.Port)))
}

// unwrapOp takes the error of a RawConn.Read/Write (an *OpError around
// net.ErrClosed or os.ErrDeadlineExceeded) apart, so our own OpError wraps
// the cause directly.
func unwrapOp(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		return oe.Err
	}
	return err
}

// Do runs f on an OS thread inside the namespace: for code that acts on
// the namespace of the calling thread, such as opening a netlink socket
// (netx.OpenRoute), which keeps that namespace for its life.
func (ns *NS) Do(f func() error) error { return nsNetwork{name: ns.Name}.do(f) }
