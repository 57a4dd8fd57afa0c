package memnet

import (
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"

	"github.com/sipmesh/sipmesh/netx"
)

// Config configures a Network. The zero value is usable: real time, seed 0.
type Config struct {
	// Seed makes loss and jitter reproducible: the same seed and the same
	// sequence of sends give the same drops and delays.
	Seed int64
	// Clock schedules deliveries and deadlines; nil means RealClock{}.
	Clock Clock
	// SocketQueue bounds the datagrams a socket holds unread (default 256);
	// more are dropped and counted as QueueFull on the link they came from.
	SocketQueue int
	// LinkQueue bounds the datagrams in flight on one link (default 1000,
	// Linux's txqueuelen).
	LinkQueue int
}

// Network is a set of hosts and the links between them. All of its state is
// guarded by one mutex; user callbacks (packet handlers, AfterFunc) never run
// while it is held.
type Network struct {
	clock Clock
	vc    *VirtualClock // clock, if virtual: lets links schedule without Timers
	epoch time.Time     // origin of nanos
	sockQ int
	linkQ int

	mu    sync.Mutex
	rng   *rand.Rand
	hosts map[string]*Host
}

// New returns an empty network.
func New(cfg Config) *Network {
	n := &Network{
		clock: cfg.Clock,
		sockQ: cfg.SocketQueue,
		linkQ: cfg.LinkQueue,
		// PCG is small and fast, and its stream is fixed by the seed alone.
		rng:   rand.New(rand.NewPCG(uint64(cfg.Seed), 0x5eed)),
		hosts: make(map[string]*Host),
	}
	if n.clock == nil {
		n.clock = RealClock{}
	}
	n.vc, _ = n.clock.(*VirtualClock)
	n.epoch = n.clock.Now()
	if n.sockQ <= 0 {
		n.sockQ = 256
	}
	if n.linkQ <= 0 {
		n.linkQ = 1000
	}
	return n
}

// nanos is the clock's time as nanoseconds since New: packets in flight
// carry it instead of a time.Time, which is three times the size and holds
// a pointer the GC must track.
func (n *Network) nanos() int64 {
	if n.vc != nil {
		return n.vc.nanos()
	}
	return int64(n.clock.Now().Sub(n.epoch))
}

// Clock returns the network's clock.
func (n *Network) Clock() Clock { return n.clock }

// Host is one machine. It implements netx.Network: sockets opened through it
// are bound on this host.
type Host struct {
	net  *Network
	name string
	lo   *Interface // loopback: local delivery goes through its link

	// Guarded by net.mu.
	ifcs    []*Interface
	addrs   map[netip.Addr]*Interface // unicast addresses (zone-less) → owner
	udp     portTable[*udpConn]
	tcp     portTable[*listener]
	nextUDP uint16
	nextTCP uint16
	watches []*linkWatch // WatchLinks subscriptions
}

var _ netx.Network = (*Host)(nil)

// AddHost adds a host with a loopback interface and no other. It panics if
// the name is taken: topology is built by tests and the demo, where a
// duplicate is a programming error.
func (n *Network) AddHost(name string) *Host {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, dup := n.hosts[name]; dup {
		panic(fmt.Sprintf("memnet: duplicate host %q", name))
	}
	h := &Host{net: n, name: name, addrs: make(map[netip.Addr]*Interface),
		udp: make(portTable[*udpConn]), tcp: make(portTable[*listener])}
	// The loopback is a real Interface on a private link of zero delay, so
	// local datagrams take the same queue-and-deliver path as remote ones
	// (and a handler never runs inside the Send that caused it). It is not
	// listed by Interfaces.
	h.lo = &Interface{host: h, name: "lo", mtu: 65536, addrs: []netip.Prefix{
		netip.MustParsePrefix("127.0.0.1/8"), netip.MustParsePrefix("::1/128")}}
	lo := n.newLink(name+"/lo", true)
	lo.members = []*Interface{h.lo}
	h.lo.link = lo
	n.hosts[name] = h
	return h
}

// Host returns the host with that name, or nil.
func (n *Network) Host(name string) *Host {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.hosts[name]
}

// Name returns the host's name.
func (h *Host) Name() string { return h.name }

// Network returns the network the host belongs to.
func (h *Host) Network() *Network { return h.net }

// Interface is a network interface of a host.
type Interface struct {
	host  *Host
	name  string
	index int
	mtu   int

	// Guarded by host.net.mu.
	addrs    []netip.Prefix // zone-less
	bcast    []netip.Addr   // IPv4 subnet broadcast addresses of addrs
	link     *Link
	handlers []portHandler // few per interface: a scan beats a map
	mcast    []*udpConn    // ListenMulticast sockets on this interface
	zones    map[netip.Addr]netip.Addr
	// lastSrc → lastZoned: the last zones lookup, the common case.
	lastSrc, lastZoned netip.Addr
}

type portHandler struct {
	port uint16
	fn   PacketHandler
}

// AddInterface adds an interface with the given MTU (0 means 1500) and
// addresses. Like a kernel, it gives the interface an IPv6 link-local
// address when addrs has none: fe80::/64 with an interface identifier hashed
// from the host and interface names, so addresses are stable across runs.
// It panics if the host already has an interface of that name.
func (h *Host) AddInterface(name string, mtu int, addrs ...netip.Prefix) *Interface {
	n := h.net
	n.mu.Lock()
	defer n.mu.Unlock()
	if name == "lo" || h.interfaceLocked(name) != nil {
		panic(fmt.Sprintf("memnet: duplicate interface %s/%s", h.name, name))
	}
	if mtu <= 0 {
		mtu = 1500
	}
	ifc := &Interface{host: h, name: name, index: len(h.ifcs) + 1, mtu: mtu}
	h.ifcs = append(h.ifcs, ifc)
	hasLL := false
	for _, p := range addrs {
		hasLL = hasLL || p.Addr().Is6() && p.Addr().IsLinkLocalUnicast()
		h.addAddressLocked(ifc, p)
	}
	if !hasLL {
		sum := fnv.New64a()
		sum.Write([]byte(h.name + "/" + name))
		var b [16]byte
		b[0], b[1] = 0xfe, 0x80
		copy(b[8:], sum.Sum(nil))
		h.addAddressLocked(ifc, netip.PrefixFrom(netip.AddrFrom16(b), 64))
	}
	return ifc
}

// Interface returns the host's interface with that name, or nil.
func (h *Host) Interface(name string) *Interface {
	h.net.mu.Lock()
	defer h.net.mu.Unlock()
	return h.interfaceLocked(name)
}

func (h *Host) interfaceLocked(name string) *Interface {
	for _, ifc := range h.ifcs {
		if ifc.name == name {
			return ifc
		}
	}
	return nil
}

// AddAddress adds an address to one of the host's interfaces (a DHCP lease,
// say). Sockets bound to the wildcard receive on it at once.
func (h *Host) AddAddress(ifc *Interface, p netip.Prefix) {
	h.net.mu.Lock()
	defer h.net.mu.Unlock()
	h.addAddressLocked(ifc, p)
}

// RemoveAddress removes an address; sockets bound to it stay open but
// receive nothing more on it.
func (h *Host) RemoveAddress(ifc *Interface, p netip.Prefix) {
	h.net.mu.Lock()
	defer h.net.mu.Unlock()
	h.mustOwn(ifc)
	a := p.Addr().Unmap().WithZone("")
	for i, q := range ifc.addrs {
		if q.Addr() == a {
			ifc.addrs = append(ifc.addrs[:i:i], ifc.addrs[i+1:]...)
			break
		}
	}
	if h.addrs[a] == ifc {
		delete(h.addrs, a)
		if ifc.link != nil && ifc.link.addrs[a] == ifc {
			delete(ifc.link.addrs, a)
		}
	}
	ifc.bcast = ifc.bcast[:0]
	for _, q := range ifc.addrs {
		ifc.addBroadcast(q)
	}
}

func (h *Host) mustOwn(ifc *Interface) {
	if ifc == nil || ifc.host != h {
		panic(fmt.Sprintf("memnet: interface is not on host %s", h.name))
	}
}

func (h *Host) addAddressLocked(ifc *Interface, p netip.Prefix) {
	h.mustOwn(ifc)
	a := p.Addr().Unmap().WithZone("")
	if !a.IsValid() || h.addrs[a] != nil {
		return
	}
	p = netip.PrefixFrom(a, min(p.Bits(), a.BitLen()))
	ifc.addrs = append(ifc.addrs, p)
	ifc.addBroadcast(p)
	h.addrs[a] = ifc
	if ifc.link != nil {
		ifc.link.addrs[a] = ifc
	}
}

// addBroadcast records the subnet broadcast address of an IPv4 prefix
// (RFC 919/922); /31 and /32 have none (RFC 3021).
func (ifc *Interface) addBroadcast(p netip.Prefix) {
	if !p.Addr().Is4() || p.Bits() > 30 {
		return
	}
	b := p.Addr().As4()
	for i := p.Bits(); i < 32; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	ifc.bcast = append(ifc.bcast, netip.AddrFrom4(b))
}

// Name returns the interface name, which is also its IPv6 zone.
func (ifc *Interface) Name() string { return ifc.name }

// Host returns the host the interface belongs to.
func (ifc *Interface) Host() *Host { return ifc.host }

// MTU returns the interface MTU.
func (ifc *Interface) MTU() int { return ifc.mtu }

// Link returns the link or segment the interface is attached to, or nil.
func (ifc *Interface) Link() *Link {
	ifc.host.net.mu.Lock()
	defer ifc.host.net.mu.Unlock()
	return ifc.link
}

// Addrs returns a copy of the interface's addresses.
func (ifc *Interface) Addrs() []netip.Prefix {
	ifc.host.net.mu.Lock()
	defer ifc.host.net.mu.Unlock()
	return append([]netip.Prefix(nil), ifc.addrs...)
}

// LinkLocal returns the interface's IPv6 link-local address with its zone.
func (ifc *Interface) LinkLocal() netip.Addr {
	for _, p := range ifc.Addrs() {
		if a := p.Addr(); a.Is6() && a.IsLinkLocalUnicast() {
			return a.WithZone(ifc.name)
		}
	}
	return netip.Addr{}
}

// Interfaces implements netx.Network. The loopback is not listed: services
// enumerate interfaces to find mesh links and LANs.
func (h *Host) Interfaces() ([]netx.Interface, error) {
	h.net.mu.Lock()
	defer h.net.mu.Unlock()
	out := make([]netx.Interface, 0, len(h.ifcs))
	for _, ifc := range h.ifcs {
		out = append(out, netx.Interface{
			Index: ifc.index, Name: ifc.name, MTU: ifc.mtu,
			Up:        ifc.link == nil || !ifc.link.cfg.Down,
			Multicast: true,
			Addrs:     append([]netip.Prefix(nil), ifc.addrs...),
		})
	}
	return out, nil
}

// LinkConfig is the behaviour of a link, the same in both directions.
type LinkConfig struct {
	// Delay is the one-way latency; each datagram gets Delay plus a uniform
	// draw in [0, Jitter), but never arrives before one sent earlier.
	Delay, Jitter time.Duration
	// Loss is the probability in [0, 1] that a datagram is dropped.
	Loss float64
	// Down cuts the link: datagrams sent or in flight are dropped, Dial fails.
	Down bool
}

// LinkStats counts datagrams on a link. Broadcast and multicast datagrams
// count once in Sent and once per receiver in Delivered.
type LinkStats struct {
	Sent      uint64 // offered to the link by a sender
	Delivered uint64 // handed to a socket or handler
	Dropped   uint64 // Loss + Down + QueueFull + TooBig + NoNeighbor
	Loss      uint64 // random loss
	Down      uint64 // sent on, or in flight on, a down link
	// QueueFull counts drops at a full link queue or socket receive queue.
	QueueFull  uint64
	TooBig     uint64 // longer than the interface MTU allows
	NoNeighbor uint64 // unicast to an on-link address no interface has
	// NoReceiver counts datagrams that arrived where no socket or handler
	// wanted them (a kernel would answer ICMP port unreachable); they are
	// not in Dropped, since the network delivered them.
	NoReceiver uint64
}

// Link is a point-to-point link (Connect) or a broadcast segment
// (NewSegment): a set of interfaces that hear each other's broadcasts and
// multicasts and can reach each other's addresses.
type Link struct {
	net  *Network
	name string
	p2p  bool
	fire func() // l.deliver, bound once so arming a timer allocates nothing

	// Guarded by net.mu.
	cfg     LinkConfig
	members []*Interface
	addrs   map[netip.Addr]*Interface // members' addresses (zone-less)
	stats   LinkStats
	q       fifo[packet] // in flight, in order of due time
	lastDue int64        // nanos
	armed   bool         // a clock event will call fire
	firing  bool         // fire is delivering; it re-arms before it returns
	calls   []call       // handler calls of the current fire, reused
}

func (n *Network) newLink(name string, p2p bool) *Link {
	l := &Link{net: n, name: name, p2p: p2p, addrs: make(map[netip.Addr]*Interface)}
	l.fire = l.deliver
	return l
}

// Connect joins two interfaces with a point-to-point link. It panics if
// either is already attached.
func (n *Network) Connect(a, b *Interface, cfg LinkConfig) *Link {
	l := n.newLink(a.host.name+"/"+a.name+"-"+b.host.name+"/"+b.name, false)
	l.Set(cfg)
	l.attach(a)
	l.attach(b)
	l.p2p = true
	return l
}

// NewSegment returns an empty broadcast segment (an Ethernet LAN or a radio
// channel); interfaces join it with Attach.
func (n *Network) NewSegment(name string, cfg LinkConfig) *Link {
	l := n.newLink(name, false)
	l.Set(cfg)
	return l
}

// Attach adds an interface to a segment. It panics if the interface is
// already attached somewhere, belongs to another network, or l is a
// point-to-point link.
func (l *Link) Attach(ifc *Interface) {
	if l.p2p {
		panic(fmt.Sprintf("memnet: Attach on point-to-point link %s", l.name))
	}
	l.attach(ifc)
}

func (l *Link) attach(ifc *Interface) {
	l.net.mu.Lock()
	defer l.net.mu.Unlock()
	if ifc.host.net != l.net || ifc.link != nil {
		panic(fmt.Sprintf("memnet: cannot attach %s/%s to %s", ifc.host.name, ifc.name, l.name))
	}
	ifc.link = l
	l.members = append(l.members, ifc)
	for _, p := range ifc.addrs {
		l.addrs[p.Addr()] = ifc
	}
}

// Name returns the link's name.
func (l *Link) Name() string { return l.name }

// Set changes the link's behaviour; datagrams in flight keep their delay.
// Negative durations count as zero and Loss is clamped to [0, 1].
func (l *Link) Set(cfg LinkConfig) {
	cfg.Delay = max(cfg.Delay, 0)
	cfg.Jitter = max(cfg.Jitter, 0)
	cfg.Loss = min(max(cfg.Loss, 0), 1)
	l.net.mu.Lock()
	l.cfg = cfg
	l.net.mu.Unlock()
}

// SetDown cuts (true) or heals (false) the link.
func (l *Link) SetDown(down bool) {
	l.net.mu.Lock()
	l.cfg.Down = down
	l.net.mu.Unlock()
}

// Config returns the link's current behaviour.
func (l *Link) Config() LinkConfig {
	l.net.mu.Lock()
	defer l.net.mu.Unlock()
	return l.cfg
}

// Stats returns the link's counters.
func (l *Link) Stats() LinkStats {
	l.net.mu.Lock()
	defer l.net.mu.Unlock()
	return l.stats
}
