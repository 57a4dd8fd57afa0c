package memnet

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"time"
)

// family is the set of address families a socket speaks.
type family uint8

const (
	fam4 family = 1 << iota
	fam6
	famAny = fam4 | fam6
)

func (f family) has(a netip.Addr) bool {
	if a.Is4() {
		return f&fam4 != 0
	}
	return f&fam6 != 0
}

// networkFamily maps "udp", "udp4", "udp6" (or the tcp ones, per proto).
func networkFamily(network, proto string) (family, error) {
	switch network {
	case proto:
		return famAny, nil
	case proto + "4":
		return fam4, nil
	case proto + "6":
		return fam6, nil
	}
	return 0, net.UnknownNetworkError(network)
}

// resolve is the common start of Listen*, Dial: the context, the network
// name and the address.
func resolve(ctx context.Context, network, proto, address string) (fam family, ip netip.Addr, zone string, port uint16, err error) {
	if err = ctx.Err(); err != nil {
		return
	}
	if fam, err = networkFamily(network, proto); err != nil {
		return
	}
	ip, zone, port, err = parseAddr(fam, address)
	return
}

// parseAddr splits "host:port" into a zone-less address (invalid for the
// wildcard), its zone and the port. There is no resolver: only literals and
// "localhost" are understood.
func parseAddr(fam family, address string) (ip netip.Addr, zone string, port uint16, err error) {
	host, ps, err := net.SplitHostPort(address)
	if err != nil {
		return ip, "", 0, err
	}
	if ps != "" {
		p, err := strconv.ParseUint(ps, 10, 16)
		if err != nil {
			return ip, "", 0, &net.AddrError{Err: "invalid port", Addr: address}
		}
		port = uint16(p)
	}
	switch host {
	case "":
		return ip, "", port, nil
	case "localhost":
		return loopback(fam), "", port, nil
	}
	ip, err = netip.ParseAddr(host)
	if err != nil {
		return ip, "", 0, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	zone = ip.Zone()
	ip = ip.WithZone("").Unmap()
	if !ip.IsUnspecified() && !fam.has(ip) {
		return ip, "", 0, &net.AddrError{Err: "no suitable address found", Addr: host}
	}
	return ip, zone, port, nil
}

// loopback is the address "localhost" means: IPv4 first, as Go's resolver
// orders it, unless the network is IPv6-only.
func loopback(fam family) netip.Addr {
	if fam == fam6 {
		return netip.IPv6Loopback()
	}
	return netip.AddrFrom4([4]byte{127, 0, 0, 1})
}

// binding is the local half of a socket: what bind(2) checks for conflicts
// and what delivery matches.
type binding struct {
	addr netip.Addr // zone-less; invalid for the wildcard
	ifc  *Interface // owner of addr, the multicast interface, or nil
	fam  family
	port uint16
}

func (b *binding) local() *binding { return b }

// bindLocked resolves the address a socket asks for on h. A wildcard for
// "udp"/"tcp" is dual-stack, as Go makes it on Linux even for "0.0.0.0".
func (h *Host) bindLocked(fam family, ip netip.Addr, zone string, port uint16) (binding, error) {
	b := binding{fam: fam, port: port}
	if !ip.IsValid() || ip.IsUnspecified() {
		return b, nil
	}
	b.addr = ip
	if ip.Is4() {
		b.fam = fam4
	} else {
		b.fam = fam6
	}
	switch {
	case ip.IsLoopback():
		b.ifc = h.lo
	case zone != "":
		if ifc := h.interfaceLocked(zone); ifc != nil && h.addrs[ip] == ifc {
			b.ifc = ifc
		}
	default:
		b.ifc = h.addrs[ip]
	}
	if b.ifc == nil {
		return b, syscall.EADDRNOTAVAIL
	}
	return b, nil
}

// portTable is a host's bound sockets of one protocol, by port.
type portTable[T interface {
	comparable
	local() *binding
}] map[uint16][]T

// conflict reports whether b overlaps a bound socket: same port, a family in
// common, and the same address or a wildcard on either side (Linux without
// SO_REUSEADDR). Link-local addresses are per interface.
func (t portTable[T]) conflict(b *binding) bool {
	for _, x := range t[b.port] {
		o := x.local()
		if o.fam&b.fam != 0 && (!o.addr.IsValid() || !b.addr.IsValid() || o.addr == b.addr && o.ifc == b.ifc) {
			return true
		}
	}
	return false
}

// add binds x at b, picking the port first when b.port is 0.
func (t portTable[T]) add(b *binding, x T, next *uint16) error {
	if err := t.pick(b, next); err != nil {
		return err
	}
	t[b.port] = append(t[b.port], x)
	return nil
}

// pick checks b for conflicts or, when b.port is 0, chooses an ephemeral
// port: Linux's default range 32768–60999, in order, so runs repeat.
func (t portTable[T]) pick(b *binding, next *uint16) error {
	if b.port != 0 {
		if t.conflict(b) {
			return syscall.EADDRINUSE
		}
		return nil
	}
	const lo, hi = 32768, 60999
	for range hi - lo + 1 {
		if *next < lo || *next > hi {
			*next = lo
		}
		b.port = *next
		*next++
		if !t.conflict(b) {
			return nil
		}
	}
	b.port = 0
	return syscall.EADDRINUSE
}

func (t portTable[T]) remove(port uint16, x T) {
	list := t[port]
	for i, y := range list {
		if y == x {
			list = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(t, port)
	} else {
		t[port] = list
	}
}

// lookup finds the socket for a datagram or connection to dst:port arriving
// on ifc: one bound to dst exactly, else a wildcard of dst's family.
func (t portTable[T]) lookup(port uint16, dst netip.Addr, ifc *Interface) T {
	var wild T
	var zero T
	for _, x := range t[port] {
		b := x.local()
		switch {
		case !b.addr.IsValid():
			if b.fam.has(dst) && wild == zero {
				wild = x
			}
		case b.addr == dst && (b.ifc == ifc || !dst.IsLinkLocalUnicast()):
			return x
		}
	}
	return wild
}

// addrOf renders a bound or peer address for net.Addr, with ifc as zone
// when the address is link-local.
func addrOf(a netip.Addr, ifc *Interface) (ip net.IP, zone string) {
	if a.Is6() && (a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast()) && ifc != nil {
		zone = ifc.name
	}
	return a.AsSlice(), zone
}

func opErr(op, network string, src, dst net.Addr, err error) error {
	return &net.OpError{Op: op, Net: network, Source: src, Addr: dst, Err: err}
}

// deadline is a socket deadline on the network's clock, after net.Pipe's
// pipeDeadline: a channel that is closed when the deadline passes. Guarded
// by the network's mutex.
type deadline struct {
	timer   Timer
	gen     uint64 // invalidates the callback of a timer Stop came too late for
	ch      chan struct{}
	expired bool
}

func (d *deadline) setLocked(n *Network, t time.Time) {
	d.stopLocked()
	d.gen++
	if d.expired {
		d.ch, d.expired = nil, false
	}
	if t.IsZero() {
		return
	}
	dur := t.Sub(n.clock.Now())
	if dur <= 0 {
		d.expireLocked()
		return
	}
	gen := d.gen
	d.timer = n.clock.AfterFunc(dur, func() {
		n.mu.Lock()
		if d.gen == gen {
			d.expireLocked()
		}
		n.mu.Unlock()
	})
}

func (d *deadline) expireLocked() {
	close(d.waitLocked())
	d.expired, d.timer = true, nil
}

func (d *deadline) stopLocked() {
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
}

// waitLocked returns the channel to wait on; readers that wait across a
// SetDeadline keep waiting on the same channel, and see the new deadline.
func (d *deadline) waitLocked() chan struct{} {
	if d.ch == nil {
		d.ch = make(chan struct{})
	}
	return d.ch
}
