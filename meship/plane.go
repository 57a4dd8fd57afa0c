package meship

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/sipmesh/sipmesh/ssr"
)

// Port is the mesh port IP packets ride on, node to node (41: IPv6's
// protocol number as an encapsulation, RFC 2473).
const Port = 41

// Sizes of the data plane's fixed buffers.
const (
	// tunOffset is the headroom before each packet in TUN buffers:
	// wireguard-go's Linux TUN puts its virtio-net header there when the
	// kernel offloads segmentation (tun.CreateTUN turns that on).
	tunOffset = 16
	// inQueue bounds the packets from the mesh not yet written into the
	// TUN; it is also the number of receive buffers, so memory stays fixed
	// (inQueue × (MaxMTU+tunOffset), some 900 KiB).
	inQueue = 64
	// writeBatch bounds one TUN write, so that the reader keeps buffers
	// while a batch is written.
	writeBatch = inQueue / 2
	// unreachQueue bounds the unreachable reports waiting to be answered.
	unreachQueue = 64
	// recentSlots remember the start of the last packet sent to a node
	// (hashed by ID), so that an unreachable report, which names only the
	// node, can be answered with an ICMPv6 error quoting the packet.
	recentSlots = 256
	recentLen   = 128
	// recentFresh: a remembered packet older than this is not quoted.
	recentFresh = 5 * time.Second
)

// Overhead is what carrying one IPv6 packet costs on a mesh link whose
// source route holds routeLen nodes (sender first): the link's IPv6 and UDP
// headers (48), link security (ssr.AuthOverhead), the routed header (16)
// and route (8 per node), the ports (4) and end-to-end sealing
// (ssr.E2EOverhead). See FORMAT.md, "IP network".
func Overhead(routeLen int) int {
	return 40 + 8 + ssr.AuthOverhead + 16 + 8*routeLen + 4 + ssr.E2EOverhead
}

// RouteReserve is the route length the default MTU leaves room for: a
// packet of the TUN's MTU crosses up to RouteReserve−1 physical hops in
// one link frame; on a longer route the link's UDP fragments it (as it
// does large SIP messages), which delivers it all the same.
const RouteReserve = 8

// MaxMTU is the largest TUN MTU: a packet that fits a routed frame even
// with the longest route (ssr's MaxFrame, 255 nodes).
const MaxMTU = ssr.MaxFrame - 16 - 8*255 - 4 - ssr.E2EOverhead

// MTUFor is the TUN MTU for mesh links of MTU linkMTU (the smallest of
// the node's mesh interfaces): what is left after Overhead(RouteReserve),
// at least IPv6's minimum and at most MaxMTU.
func MTUFor(linkMTU int) int {
	return min(max(linkMTU-Overhead(RouteReserve), MinMTU), MaxMTU)
}

// Mesh is what the data plane needs of the SSR router (*ssr.Router).
type Mesh interface {
	ID() ssr.NodeID
	ListenPacket(port uint16) (net.PacketConn, error)
}

// Device is the TUN the data plane reads and writes: wireguard-go's
// tun.Device has these methods. Read and Write move batches of packets,
// each at offset in its buffer; Write may be called from two goroutines.
type Device interface {
	Read(bufs [][]byte, sizes []int, offset int) (int, error)
	Write(bufs [][]byte, offset int) (int, error)
	BatchSize() int
	Close() error
}

// Config configures a Plane.
type Config struct {
	Mesh Mesh
	TUN  Device
	// MTU is the TUN's MTU (MTUFor the mesh links; MinMTU … MaxMTU).
	MTU int
	// Exit chooses the node that carries packets to dst outside MeshNet
	// (a NAT64 gateway for the NAT64 prefix); false: no exit, the sender
	// is told (Destination Unreachable, no route). It also checks the
	// source of packets from outside MeshNet that arrive from the mesh:
	// they are delivered only if Exit(source) is the node they came from.
	// nil: no exits.
	Exit func(dst netip.Addr) (ssr.NodeID, bool)
	// ExitFor reports whether this node is an exit for dst outside MeshNet:
	// packets for it from the mesh are written into the TUN, for the
	// kernel to route on (into NAT64). nil: for nothing.
	ExitFor func(dst netip.Addr) bool
	// ExitFailed is told that the mesh could not carry packets to node id
	// (a send failed, or ssr reported it unreachable), so that Exit picks
	// another exit for new flows. nil: nobody is told.
	ExitFailed func(id ssr.NodeID)
	Logger     *slog.Logger
}

// Stats are the data plane's counters.
type Stats struct {
	FromTUN     uint64 `json:"from_tun"`     // packets read from the TUN
	ToMesh      uint64 `json:"to_mesh"`      // packets sent into the mesh
	FromMesh    uint64 `json:"from_mesh"`    // packets received from the mesh
	ToTUN       uint64 `json:"to_tun"`       // packets written into the TUN (ICMPv6 errors included)
	Malformed   uint64 `json:"malformed"`    // not an IPv6 packet
	LinkScope   uint64 `json:"link_scope"`   // link-local or multicast from the TUN (its own router solicitations, MLD, redirects): not carried
	Spoofed     uint64 `json:"spoofed"`      // source not the sending side's (dropped)
	NotOurs     uint64 `json:"not_ours"`     // from the mesh for an address this node does not serve (dropped)
	NoRoute     uint64 `json:"no_route"`     // no node or exit for the destination (Destination Unreachable sent)
	TooBig      uint64 `json:"too_big"`      // over the MTU (Packet Too Big sent)
	Unreachable uint64 `json:"unreachable"`  // mesh reports of an unreachable node (Destination Unreachable sent)
	ICMPLimited uint64 `json:"icmp_limited"` // ICMPv6 errors not sent: rate limit (RFC 4443 §2.4(f))
	SendErrors  uint64 `json:"send_errors"`  // mesh sends that failed
	TUNErrors   uint64 `json:"tun_errors"`   // packets the TUN refused or lost
}

type counters struct {
	fromTUN, toMesh, fromMesh, toTUN, malformed, linkScope, spoofed, notOurs,
	noRoute, tooBig, unreachable, icmpLimited, sendErrors, tunErrors atomic.Uint64
}

// meshSocket is the part of an ssr mesh socket the plane uses.
type meshSocket interface {
	ReadFromUDPAddrPort([]byte) (int, netip.AddrPort, error)
	WriteToUDPAddrPort([]byte, netip.AddrPort) (int, error)
	Close() error
}

// Plane is one node's IPv6 data plane: it carries packets between its TUN
// and the mesh (package doc).
type Plane struct {
	cfg    Config
	id     ssr.NodeID
	self   [16]byte // the mesh address: source of this node's ICMPv6 errors
	log    *slog.Logger
	stats  counters
	conn   meshSocket
	inbuf  chan *pbuf // from the mesh, checked, to the TUN writer
	free   chan *pbuf
	reach  chan ssr.Unreachable
	errMu  sync.Mutex // guards lim, recent
	lim    limiter
	recent [recentSlots]recentPkt
}

type pbuf struct {
	b []byte // tunOffset + MaxMTU
	n int    // packet length after tunOffset
}

type recentPkt struct {
	id  ssr.NodeID
	at  time.Time
	n   int
	hdr [recentLen]byte
}

// New checks cfg and returns a Plane; Run starts it.
func New(cfg Config) (*Plane, error) {
	if cfg.Mesh == nil || cfg.TUN == nil {
		return nil, errors.New("meship: Mesh and TUN are required")
	}
	if cfg.MTU < MinMTU || cfg.MTU > MaxMTU {
		return nil, fmt.Errorf("meship: MTU %d outside %d…%d", cfg.MTU, MinMTU, MaxMTU)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	p := &Plane{cfg: cfg, id: cfg.Mesh.ID(), log: cfg.Logger,
		inbuf: make(chan *pbuf, inQueue), free: make(chan *pbuf, inQueue),
		reach: make(chan ssr.Unreachable, unreachQueue)}
	p.self = p.id.Addr().As16()
	for range inQueue {
		p.free <- &pbuf{b: make([]byte, tunOffset+MaxMTU)}
	}
	return p, nil
}

// ID is the node the plane serves.
func (p *Plane) ID() ssr.NodeID { return p.id }

// Stats returns the counters.
func (p *Plane) Stats() Stats {
	s := &p.stats
	return Stats{FromTUN: s.fromTUN.Load(), ToMesh: s.toMesh.Load(), FromMesh: s.fromMesh.Load(),
		ToTUN: s.toTUN.Load(), Malformed: s.malformed.Load(), LinkScope: s.linkScope.Load(), Spoofed: s.spoofed.Load(),
		NotOurs: s.notOurs.Load(), NoRoute: s.noRoute.Load(), TooBig: s.tooBig.Load(),
		Unreachable: s.unreachable.Load(), ICMPLimited: s.icmpLimited.Load(),
		SendErrors: s.sendErrors.Load(), TUNErrors: s.tunErrors.Load()}
}

// Run carries packets until ctx ends or the TUN fails; it closes the TUN
// and its mesh socket and waits for its goroutines before returning.
func (p *Plane) Run(ctx context.Context) error {
	pc, err := p.cfg.Mesh.ListenPacket(Port)
	if err != nil {
		p.cfg.TUN.Close()
		return fmt.Errorf("meship: %w", err)
	}
	conn, ok := pc.(meshSocket)
	if !ok {
		pc.Close()
		p.cfg.TUN.Close()
		return fmt.Errorf("meship: mesh socket %T cannot send to node addresses", pc)
	}
	p.conn = conn
	if n, ok := pc.(interface{ NotifyUnreachable(func(ssr.Unreachable)) }); ok {
		n.NotifyUnreachable(func(u ssr.Unreachable) {
			select {
			case p.reach <- u:
			default: // a burst of reports: the errors are rate-limited anyway
				p.stats.icmpLimited.Add(1)
			}
		})
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var once sync.Once
	var runErr error
	fail := func(err error) {
		once.Do(func() { runErr = err })
		cancel()
	}
	wg.Go(func() {
		if err := p.readTUN(); err != nil && ctx.Err() == nil {
			fail(fmt.Errorf("meship: reading the TUN: %w", err))
		}
	})
	wg.Go(func() { p.readMesh(ctx.Done()) })
	wg.Go(func() {
		if err := p.writeTUN(ctx); err != nil && ctx.Err() == nil {
			fail(fmt.Errorf("meship: writing the TUN: %w", err))
		}
	})
	<-ctx.Done()
	// Closing the socket and the TUN ends the blocked reads.
	pc.Close()
	p.cfg.TUN.Close()
	wg.Wait()
	return runErr
}

// readTUN reads batches of packets the kernel routed into the TUN and
// sends each to its node. The buffers are allocated once.
func (p *Plane) readTUN() error {
	bs := max(p.cfg.TUN.BatchSize(), 1)
	bufs := make([][]byte, bs)
	sizes := make([]int, bs)
	// The kernel hands over nothing longer than the TUN's MTU (a GSO
	// super-packet is split into MTU-sized segments, one per buffer), plus
	// one byte to see a longer one as over the MTU.
	for i := range bufs {
		bufs[i] = make([]byte, tunOffset+p.cfg.MTU+1)
	}
	errBuf := make([]byte, tunOffset+MinMTU)
	for {
		n, err := p.cfg.TUN.Read(bufs, sizes, tunOffset)
		for i := range n {
			p.outbound(bufs[i][tunOffset:tunOffset+sizes[i]], errBuf)
		}
		if err != nil {
			if errors.Is(err, tun.ErrTooManySegments) {
				// A GSO packet split into more than the batch: the kernel
				// dropped the rest, and TCP sends them again.
				p.stats.tunErrors.Add(1)
				continue
			}
			return err
		}
	}
}

// outbound sends one packet from the TUN into the mesh, or answers it
// with an ICMPv6 error written back into the TUN.
func (p *Plane) outbound(pkt, errBuf []byte) {
	p.stats.fromTUN.Add(1)
	n := packetLen(pkt)
	if n == 0 {
		p.stats.malformed.Add(1)
		return
	}
	pkt = pkt[:n]
	src, dst := pkt[8:24], pkt[24:40]
	if dst[0] == 0xff || linkLocal(src) || linkLocal(dst) {
		// Link scope: the TUN's own router solicitations, MLD reports,
		// redirects. A router forwards no link-local packet (RFC 4291
		// §2.5.6) and the mesh carries no multicast.
		p.stats.linkScope.Add(1)
		return
	}
	id, ok := nodeOf16(dst)
	exit := false
	if !ok && !inMesh(dst) && p.cfg.Exit != nil {
		id, ok = p.cfg.Exit(netip.AddrFrom16([16]byte(dst)))
		exit = true
	}
	if !ok || id == p.id {
		// No node has that address (the reserved parts of the mesh), no
		// exit, or an address of this node that the kernel has no route for
		// (no LAN, no CLAT; the packet may have come from the mesh and
		// been routed back here): RFC 4443 §3.1 code 0, no route.
		p.stats.noRoute.Add(1)
		p.sendError(errBuf, pkt, icmpDestUnreach, codeNoRoute, 0, nil)
		return
	}
	// Egress filter (BCP 38): a source in the mesh must be this node's.
	if inMesh(src) {
		if sid, ok := nodeOf16(src); !ok || sid != p.id {
			p.stats.spoofed.Add(1)
			return
		}
	}
	if n > p.cfg.MTU {
		p.stats.tooBig.Add(1)
		p.sendError(errBuf, pkt, icmpTooBig, 0, uint32(p.cfg.MTU), nil)
		return
	}
	p.remember(id, pkt)
	if _, err := p.conn.WriteToUDPAddrPort(pkt, netip.AddrPortFrom(id.Addr(), Port)); err != nil {
		p.stats.sendErrors.Add(1)
		p.log.Debug("mesh send failed", "to", id, "err", err)
		if exit && p.cfg.ExitFailed != nil {
			p.cfg.ExitFailed(id)
		}
		return
	}
	p.stats.toMesh.Add(1)
}

// linkLocal reports whether the raw address b is link-local unicast
// (fe80::/10).
func linkLocal(b []byte) bool { return b[0] == 0xfe && b[1]&0xc0 == 0x80 }

// remember keeps the start of the last packet to id, to quote should the
// mesh report id unreachable.
func (p *Plane) remember(id ssr.NodeID, pkt []byte) {
	p.errMu.Lock()
	r := &p.recent[uint64(id)%recentSlots]
	r.id, r.at = id, time.Now()
	r.n = copy(r.hdr[:], pkt)
	p.errMu.Unlock()
}

// sendError answers pkt with an ICMPv6 error, rate-limited: into the TUN
// when to is nil (the sender is behind this node's kernel), else into the
// mesh to node *to.
func (p *Plane) sendError(buf, pkt []byte, typ, code uint8, param uint32, to *ssr.NodeID) {
	if !mayAnswer(pkt, typ == icmpTooBig) {
		return
	}
	p.errMu.Lock()
	ok := p.lim.allow(time.Now())
	p.errMu.Unlock()
	if !ok {
		p.stats.icmpLimited.Add(1)
		return
	}
	n := icmpError(buf[tunOffset:], p.self[:], pkt, typ, code, param)
	if to != nil {
		if _, err := p.conn.WriteToUDPAddrPort(buf[tunOffset:tunOffset+n], netip.AddrPortFrom(to.Addr(), Port)); err != nil {
			p.stats.sendErrors.Add(1)
		} else {
			p.stats.toMesh.Add(1)
		}
		return
	}
	if _, err := p.cfg.TUN.Write([][]byte{buf[:tunOffset+n]}, tunOffset); err != nil {
		p.log.Debug("writing an ICMPv6 error into the TUN", "err", err)
		return
	}
	p.stats.toTUN.Add(1)
}

// readMesh receives the packets other nodes send to this one, checks
// them, and queues them for the TUN writer.
func (p *Plane) readMesh(done <-chan struct{}) {
	errBuf := make([]byte, tunOffset+MinMTU)
	for {
		// With every buffer waiting for the TUN, wait too: the mesh
		// socket's queue (bounded, its drops counted by ssr) takes the
		// burst meanwhile.
		var b *pbuf
		select {
		case b = <-p.free:
		case <-done:
			return
		}
		n, from, err := p.conn.ReadFromUDPAddrPort(b.b[tunOffset:])
		if err != nil {
			return
		}
		if !p.inbound(b.b[tunOffset:tunOffset+n], from, errBuf) {
			p.free <- b
			continue
		}
		b.n = n
		p.inbuf <- b // never blocks: inbuf holds every buffer
	}
}

// inbound checks a packet that node from sent; true: write it into the TUN.
func (p *Plane) inbound(pkt []byte, from netip.AddrPort, errBuf []byte) bool {
	p.stats.fromMesh.Add(1)
	sender, ok := ssr.IDFromAddr(from.Addr())
	n := packetLen(pkt)
	if !ok || n == 0 || n != len(pkt) {
		p.stats.malformed.Add(1)
		return false
	}
	src, dst := pkt[8:24], pkt[24:40]
	// Source check: the sender's own address or space, or, for an address
	// outside the mesh, the exit this node would use for it (its
	// translated return traffic). ssr authenticated the sender end to end.
	if !p.sourceOK(src, sender) {
		p.stats.spoofed.Add(1)
		p.log.Debug("dropped a packet from the mesh: source not the sender's", "from", sender,
			"src", netip.AddrFrom16([16]byte(src)), "dst", netip.AddrFrom16([16]byte(dst)))
		return false
	}
	if inMesh(dst) {
		if id, ok := nodeOf16(dst); !ok || id != p.id {
			p.stats.notOurs.Add(1)
			return false
		}
	} else if p.cfg.ExitFor == nil || !p.cfg.ExitFor(netip.AddrFrom16([16]byte(dst))) {
		p.stats.notOurs.Add(1)
		return false
	}
	if n > p.cfg.MTU {
		// The sender's links allow more than this node's TUN: tell it
		// (RFC 8201 §4), across the mesh.
		p.stats.tooBig.Add(1)
		p.sendError(errBuf, pkt, icmpTooBig, 0, uint32(p.cfg.MTU), &sender)
		return false
	}
	return true
}

// sourceOK reports whether node sender may send packets from src: an
// address of its own, or one outside the mesh it is this node's exit for.
func (p *Plane) sourceOK(src []byte, sender ssr.NodeID) bool {
	if inMesh(src) {
		id, ok := nodeOf16(src)
		return ok && id == sender
	}
	if p.cfg.Exit == nil {
		return false
	}
	id, ok := p.cfg.Exit(netip.AddrFrom16([16]byte(src)))
	return ok && id == sender
}

// writeTUN writes the queued packets from the mesh into the TUN in
// batches, and answers unreachable reports.
func (p *Plane) writeTUN(ctx context.Context) error {
	batch := make([][]byte, 0, writeBatch)
	held := make([]*pbuf, 0, writeBatch)
	errBuf := make([]byte, tunOffset+MinMTU)
	for {
		select {
		case <-ctx.Done():
			return nil
		case u := <-p.reach:
			p.answerUnreachable(u, errBuf)
			continue
		case b := <-p.inbuf:
			held = append(held, b)
		}
	more:
		for len(held) < cap(held) {
			select {
			case b := <-p.inbuf:
				held = append(held, b)
			default:
				break more
			}
		}
		batch = batch[:0]
		for _, b := range held {
			batch = append(batch, b.b[:tunOffset+b.n])
		}
		// (wireguard-go's Write returns bytes, not packets: count here.)
		_, err := p.cfg.TUN.Write(batch, tunOffset)
		for i, b := range held {
			p.free <- b
			held[i] = nil
		}
		held = held[:0]
		if err != nil {
			if closed(err) {
				return err
			}
			// One refused packet does not stop the device.
			p.stats.tunErrors.Add(1)
			p.log.Debug("TUN write", "err", err)
			continue
		}
		p.stats.toTUN.Add(uint64(len(batch)))
	}
}

// closed reports whether err says the TUN is gone.
func closed(err error) bool {
	return errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.EBADF)
}

// answerUnreachable quotes the last packet sent to the unreachable node
// in an ICMPv6 Destination Unreachable (code 3, address unreachable) to
// its sender behind this node's kernel.
func (p *Plane) answerUnreachable(u ssr.Unreachable, errBuf []byte) {
	if u.Mode != ssr.Exact || u.DstPort != Port {
		return
	}
	if p.cfg.ExitFailed != nil {
		// If it is an exit, new flows must go elsewhere.
		p.cfg.ExitFailed(u.Target)
	}
	p.errMu.Lock()
	r := p.recent[uint64(u.Target)%recentSlots] // a copy: the reader goes on
	p.errMu.Unlock()
	if r.id != u.Target || r.n < ipv6Len || time.Since(r.at) > recentFresh {
		return
	}
	p.stats.unreachable.Add(1)
	p.sendError(errBuf, r.hdr[:r.n], icmpDestUnreach, codeAddrUnreach, 0, nil)
}
