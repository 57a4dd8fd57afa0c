package ssr

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sipmesh/sipmesh/internal/ratelog"
	"github.com/sipmesh/sipmesh/netx"
)

// Router defaults.
const (
	// DefaultPort is the UDP port of SSR frames on every mesh interface.
	DefaultPort = 7447
	// requestQueue bounds the requests waiting for the timer goroutine: link
	// state changes, and the sends and pings made before Run started (a
	// writer then waits for Run).
	requestQueue = 256
	// readBufSize holds the largest frame on the wire (the core's largest,
	// sealed) plus one byte, so a longer datagram shows up as oversized
	// rather than truncated.
	readBufSize = maxWireFrame + 1
	// linkRetry is how often an interface that could not be opened (missing,
	// down, link-local address still tentative) is tried again.
	linkRetry = time.Second
	// logEvery rate-limits repeated warnings of one kind on one link.
	logEvery = 10 * time.Second
)

// DefaultGroup is the IPv6 link-local multicast group of neighbour beacons:
// ff02::73:6d ("sm"), scope 2 so beacons never leave the link (RFC 4291
// §2.7).
var DefaultGroup = netip.MustParseAddr("ff02::73:6d")

// Router errors.
var (
	// ErrRouterClosed is returned by requests made after Run has returned.
	ErrRouterClosed = errors.New("ssr: router stopped")
	// ErrUnreachable wraps the reason an exact target could not be reached.
	ErrUnreachable = errors.New("ssr: unreachable")
	// ErrNotMesh is returned when a mesh socket is asked to send to an
	// address outside MeshPrefix: mesh sockets only reach mesh nodes.
	ErrNotMesh = errors.New("ssr: not a mesh address")
	// ErrPortInUse is returned by ListenPacket for a port already bound.
	ErrPortInUse = errors.New("ssr: mesh port already in use")
)

// RouterConfig configures a Router.
type RouterConfig struct {
	// Network opens the link sockets: netx.Kernel on a router, a memnet
	// Host in tests, a network namespace in integration tests.
	Network netx.Network
	// Key is the node's identity; the node ID is derived from its public half.
	Key ed25519.PrivateKey
	// Interfaces are the mesh interfaces. LinkID i is Interfaces[i].
	Interfaces []string
	// Port is the UDP port of SSR frames (default DefaultPort).
	Port uint16
	// Group is the beacon multicast group (default DefaultGroup).
	Group netip.Addr
	// Params tune the protocol; zero fields take DefaultParams.
	Params Params
	// Encrypt is mesh-encryption on: frame payloads are ChaCha20-Poly1305
	// encrypted per link. Off (the default), they are authenticated only,
	// as amateur-radio rules require. All nodes of a mesh must agree; a
	// neighbour that does not is refused at the handshake (FORMAT.md).
	Encrypt bool
	// Admission, Closed and Admin are mesh admission (AuthConfig): this
	// node's admission by the administrator key Admin, and whether
	// neighbours must present one.
	Admission []byte
	Closed    bool
	Admin     ed25519.PublicKey
	// Logger receives the router's logs; nil discards them.
	Logger *slog.Logger
	// plain leaves link security out (bare frames, which normal nodes
	// refuse): set only by benchmarks that measure what it costs.
	plain bool
}

// Router drives a Node with real sockets and timers: it discovers
// neighbours by multicast beacons on every mesh interface, exchanges frames
// with them over UDP to their link-local addresses, and offers mesh sockets
// (ListenPacket) bound to the node's mesh address.
//
// The Node is not safe for concurrent use; the core mutex owns it (and
// LinkAuth, and the links' state). Each goroutine that has work for it
// takes the mutex and does the work itself, so a datagram crosses no
// goroutine hand-off inside the router: a link socket's reader handles the
// frame it read (a relay's write to the next hop included), a mesh
// socket's writer originates its datagram and writes it to the link
// socket, and a datagram for this node goes from the reader straight into
// the mesh socket's queue. A hand-off (a channel send, and the scheduler
// waking the goroutine on the other end) costs microseconds per frame on a
// small router; the mutex costs tens of nanoseconds while nobody else holds
// it. One more goroutine (the one running Run) runs the Node's timers and
// the link state changes.
type Router struct {
	cfg  RouterConfig
	id   NodeID
	addr netip.Addr
	log  *slog.Logger
	node *Node
	auth *LinkAuth // between the links and the Node: every frame passes it

	reqs    chan request
	sendBuf sync.Pool     // *[]byte payload copies of sends queued before Run
	kick    chan struct{} // the Node's next deadline moved earlier than armed

	// core owns the Node: everything below up to stats is read and written
	// with it held.
	core        sync.Mutex
	live        bool      // Run is running: frames, sends and timers go to the Node
	armed       time.Time // the deadline the timer goroutine waits for
	links       []*routerLink
	owner       routerEnv
	failPending bool // some link has failed set

	runOnce atomic.Bool
	started chan struct{} // closed when Run starts owning the Node
	stopped chan struct{} // closed when Run stops owning the Node

	stats routerStats

	mu      sync.Mutex
	closing bool                    // Run is shutting down: open no more sockets
	sockets map[net.PacketConn]bool // link sockets to close on shutdown
	conns   map[uint16]*meshConn    // mesh sockets by port
	pings   map[uint32]*pendingPing
	nextEph uint16 // next ephemeral port to try
}

// routerLink is one mesh interface. Its fields are the core mutex's, but
// for the atomics (the link watchers read them).
type routerLink struct {
	id        LinkID
	name      string
	uc        netx.AddrPortConn // unicast socket: sends everything, receives unicast
	bc        *batchConn        // uc's batched I/O (Linux kernel sockets), or nil
	local     netip.Addr        // our link-local address on it
	port      uint16            // the unicast socket's port
	group     netip.AddrPort    // beacon group with the interface as zone
	lastErr   string
	lastLog   time.Time
	suppressd int         // send errors not logged since lastLog
	down      bool        // the interface went down: removed from the Node
	failed    bool        // a send said the interface is gone; apply after the Node call
	isDown    atomic.Bool // down, for the watcher goroutine
	// noCarrier: the link watcher reported the carrier lost, and not back
	// yet; the poll must not bring the link up meanwhile.
	noCarrier atomic.Bool
}

type reqKind uint8

const (
	reqSend reqKind = iota + 1
	reqPing
	reqLinkUp
	reqLinkState
	reqCarrier // reqLinkState from a link event (netx.LinkWatcher)
)

// request is work for the Node: an application's, done by the caller with
// the core mutex held, or one queued for the timer goroutine (link state
// changes; sends and pings before Run started). It travels by value through
// the channel, so it costs no allocation.
type request struct {
	kind             reqKind
	target           NodeID
	mode             Mode
	srcPort, dstPort uint16
	payload          *[]byte // reqSend queued: a pooled copy, returned after Send
	pingID           uint32
	link             LinkID
	uc               netx.AddrPortConn
	bc               *batchConn
	local            netip.Addr
	up               bool // reqLinkState
}

// pendingPing is a Ping waiting for its reply.
type pendingPing struct {
	sent time.Time // when the Node sent it; zero while still queued
	ch   chan pingResult
}

type pingResult struct {
	reply PingReply
	rtt   time.Duration
	err   error
}

// routerStats are the driver's own counters (the Node counts the protocol's).
type routerStats struct {
	oversize     atomic.Uint64 // frames longer than maxWireFrame
	otherIface   atomic.Uint64 // multicast heard on a sibling interface's socket
	readErrors   atomic.Uint64
	sendErrors   atomic.Uint64
	linkNotReady atomic.Uint64 // frames for a link whose socket is not open
	noListener   atomic.Uint64 // datagrams for a port nobody is bound to
	queueFull    atomic.Uint64 // datagrams dropped at a full mesh socket
	unreachable  atomic.Uint64 // datagrams reported undeliverable
}

// NewRouter checks cfg and returns a Router; Run starts it.
func NewRouter(cfg RouterConfig) (*Router, error) {
	if cfg.Network == nil {
		return nil, errors.New("ssr: router: no Network")
	}
	if cfg.Closed && len(cfg.Admin) != ed25519.PublicKeySize {
		return nil, errors.New("ssr: router: a closed mesh needs the administrator's public key")
	}
	if len(cfg.Key) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("ssr: router: key is %d bytes, want an ed25519 private key of %d", len(cfg.Key), ed25519.PrivateKeySize)
	}
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	if !cfg.Group.IsValid() {
		cfg.Group = DefaultGroup
	}
	if !cfg.Group.Is6() || !cfg.Group.IsMulticast() {
		return nil, fmt.Errorf("ssr: router: beacon group %s is not an IPv6 multicast address", cfg.Group)
	}
	cfg.Group = cfg.Group.WithZone("")
	cfg.Interfaces = slices.Clone(cfg.Interfaces)
	for i, name := range cfg.Interfaces {
		if name == "" {
			return nil, fmt.Errorf("ssr: router: mesh interface %d has no name", i)
		}
		if slices.Contains(cfg.Interfaces[:i], name) {
			return nil, fmt.Errorf("ssr: router: mesh interface %s listed twice", name)
		}
	}
	id := IDFromPublicKey(cfg.Key.Public().(ed25519.PublicKey))
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "ssr.router", "node", id.String())
	r := &Router{
		cfg:     cfg,
		id:      id,
		addr:    id.Addr(),
		log:     log,
		reqs:    make(chan request, requestQueue),
		kick:    make(chan struct{}, 1),
		started: make(chan struct{}),
		stopped: make(chan struct{}),
		sockets: make(map[net.PacketConn]bool),
		conns:   make(map[uint16]*meshConn),
		pings:   make(map[uint32]*pendingPing),
		nextEph: ephemeralLo + uint16(rand.N(ephemeralHi-ephemeralLo+1)),
	}
	r.sendBuf.New = func() any { b := make([]byte, 0, MaxFrame); return &b }
	r.owner.r = r
	// Lines peers cause (refused frames, handshakes) are rate-limited per
	// neighbour address.
	peerLog := slog.New(ratelog.New(log.Handler(), ratelog.Options{}))
	if cfg.plain {
		r.node = New(id, cfg.Params, &r.owner, rand.Uint64())
	} else {
		r.auth = NewLinkAuth(AuthConfig{Key: cfg.Key, Encrypt: cfg.Encrypt, Logger: peerLog,
			Admission: cfg.Admission, Closed: cfg.Closed, Admin: cfg.Admin}, &r.owner)
		r.node = New(id, cfg.Params, r.auth, rand.Uint64())
		r.auth.Attach(r.node)
	}
	for i, name := range cfg.Interfaces {
		r.links = append(r.links, &routerLink{
			id:    LinkID(i),
			name:  name,
			group: netip.AddrPortFrom(cfg.Group.WithZone(name), cfg.Port),
		})
		r.node.AddLink(LinkID(i))
	}
	return r, nil
}

// ID returns the node's ID.
func (r *Router) ID() NodeID { return r.id }

// Addr returns the node's mesh IPv6 address.
func (r *Router) Addr() netip.Addr { return r.addr }

// Run opens the mesh interfaces and runs the node until ctx ends. It returns
// nil after a clean stop, once every goroutine it started has ended and
// every socket it opened, mesh sockets included, is closed. An interface
// that cannot be opened yet (missing, down, address still tentative) is
// retried every second rather than failing the node: on a router, radios
// come and go. Run may be called once.
func (r *Router) Run(ctx context.Context) error {
	if !r.runOnce.CompareAndSwap(false, true) {
		return errors.New("ssr: router: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		r.shutdown()
		wg.Wait()
		r.closeMeshConns()
		r.log.Info("router stopped")
	}()

	r.log.Info("router starting", "addr", r.addr, "interfaces", r.cfg.Interfaces, "port", r.cfg.Port)
	// What was queued before Run goes first, then the Node is live: from
	// here on callers do their work themselves (Router says why).
	r.core.Lock()
	r.drainRequests()
	r.live = true
	r.core.Unlock()
	close(r.started)
	for _, l := range r.links {
		wg.Go(func() { r.openLink(ctx, &wg, l.id, l.name) })
	}
	wg.Go(func() { r.watchLinks(ctx) })
	if lw, ok := r.cfg.Network.(netx.LinkWatcher); ok {
		wg.Go(func() { r.watchLinkEvents(ctx, lw) })
	}
	r.loop(ctx)
	return nil
}

// loop runs the Node's timers and the queued requests. Frames and
// application sends do not pass through it.
func (r *Router) loop(ctx context.Context) {
	// Fires at once: the Node has not started, its deadline is the zero time.
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		r.core.Lock()
		next := r.node.NextDeadline()
		r.armed = next
		r.core.Unlock()
		// Since Go 1.23 Reset discards a value the timer sent and nobody
		// received, so the channel never holds a stale expiry.
		timer.Reset(time.Until(next))
		select {
		case <-ctx.Done():
			return
		case <-r.kick:
			// A frame or a send set an earlier deadline: re-arm.
		case req := <-r.reqs:
			r.core.Lock()
			r.handleRequest(req)
			r.unlockCore()
		case <-timer.C:
			r.core.Lock()
			if r.auth != nil {
				r.auth.Tick(time.Now())
			} else {
				r.node.Tick(time.Now())
			}
			r.unlockCore()
		}
	}
}

// drainRequests handles what is queued, without waiting.
func (r *Router) drainRequests() {
	for {
		select {
		case req := <-r.reqs:
			r.handleRequest(req)
		default:
			return
		}
	}
}

// lockLive takes the core mutex if the router runs and reports whether it
// did; after Run has returned nobody may touch the Node but Status.
func (r *Router) lockLive() bool {
	r.core.Lock()
	if r.live {
		return true
	}
	r.core.Unlock()
	return false
}

// unlockCore ends a Node call: it sends the frames the call queued on the
// links (batched, one system call per link), takes down the links whose
// sends failed (Env methods must not call back into the Node, so this
// waits until the call returned), tells the timer goroutine when the call
// moved the next deadline earlier than the one it waits for, and releases
// the mutex.
func (r *Router) unlockCore() {
	r.flushLinks()
	if r.failPending {
		r.applyFailures()
		r.flushLinks() // what taking the links down sent; its errors wait for the next call
	}
	if r.live && r.node.NextDeadline().Before(r.armed) {
		r.armed = time.Time{} // kick once; the loop arms the new one
		select {
		case r.kick <- struct{}{}:
		default:
		}
	}
	r.core.Unlock()
}

// flushLinks sends the frames the Node call queued on each link (SendFrame).
func (r *Router) flushLinks() {
	for _, l := range r.links {
		if l.bc != nil && l.bc.txN > 0 {
			l.bc.flush()
		}
	}
}

// handleRequest does req; the core mutex is held.
func (r *Router) handleRequest(req request) {
	now := time.Now()
	if r.auth != nil {
		r.auth.SetNow(now)
	}
	switch req.kind {
	case reqSend:
		if err := r.node.Send(now, req.target, req.mode, req.srcPort, req.dstPort, *req.payload); err != nil {
			// Sizes are checked before queueing; this is a core change.
			r.log.Warn("send refused", "target", req.target, "err", err)
		}
		*req.payload = (*req.payload)[:0]
		r.sendBuf.Put(req.payload)
	case reqPing:
		r.mu.Lock()
		p := r.pings[req.pingID]
		if p != nil {
			p.sent = now
		}
		r.mu.Unlock()
		if p != nil { // else the caller gave up while it was queued
			r.node.Ping(now, req.target, req.pingID)
		}
	case reqLinkUp:
		l := r.links[req.link]
		l.uc, l.bc, l.local, l.port, l.lastErr = req.uc, req.bc, req.local, req.srcPort, ""
	case reqLinkState, reqCarrier:
		l := r.links[req.link]
		why := "interface down or without its link-local address"
		if req.kind == reqCarrier {
			why = "carrier lost (link event)"
		}
		switch {
		case l.uc == nil:
			// Not open yet: openLink brings it up.
		case req.up && l.down:
			l.down, l.failed, l.lastErr = false, false, ""
			l.isDown.Store(false)
			r.node.AddLink(l.id)
			r.log.Info("mesh interface back up", "iface", l.name)
		case !req.up && !l.down:
			r.linkDown(l, why)
		}
	}
}

// applyFailures takes down the links whose sends reported the interface
// gone. It runs after the Node call in which SendFrame saw the error, since
// Env methods must not call back into the Node.
func (r *Router) applyFailures() {
	r.failPending = false
	for _, l := range r.links {
		if l.failed && !l.down {
			r.linkDown(l, l.lastErr)
		}
		l.failed = false
	}
}

// linkDown removes a link from the Node, which forgets the neighbours heard
// on it at once instead of waiting for them to time out, so routes through
// them are repaired right away. The watcher brings the link back.
func (r *Router) linkDown(l *routerLink, why string) {
	l.down = true
	l.isDown.Store(true)
	r.node.RemoveLink(l.id)
	r.log.Warn("mesh interface down; its neighbours are dropped", "iface", l.name, "reason", why)
}

// watchLinks checks the mesh interfaces every linkRetry and tells the
// timer goroutine when one it uses went down (admin down, link-local
// address gone) or one it took down came back. A send error takes a link
// down sooner; this is how it comes back.
func (r *Router) watchLinks(ctx context.Context) {
	t := time.NewTicker(linkRetry)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ifs, err := r.cfg.Network.Interfaces()
		if err != nil {
			continue
		}
		for _, l := range r.links {
			i := slices.IndexFunc(ifs, func(x netx.Interface) bool { return x.Name == l.name })
			up := i >= 0 && ifs[i].Up && ifs[i].LinkLocal().IsValid() && !l.noCarrier.Load()
			if up != l.isDown.Load() {
				continue // the Node already agrees
			}
			select {
			case r.reqs <- request{kind: reqLinkState, link: l.id, up: up}:
			case <-ctx.Done():
				return
			}
		}
	}
}

// watchLinkEvents hands the link watcher's carrier changes of the mesh
// interfaces to the timer goroutine as they happen (on Linux a netlink
// RTM_NEWLINK, within milliseconds of a cable pulled or a veth peer gone),
// so the neighbours on a dead link are dropped at once and the frames for
// them repaired, instead of after NeighbourTimeout or the next poll.
func (r *Router) watchLinkEvents(ctx context.Context, lw netx.LinkWatcher) {
	err := lw.WatchLinks(ctx, func(ev netx.LinkEvent) {
		i := slices.Index(r.cfg.Interfaces, ev.Name)
		if i < 0 {
			return
		}
		l := r.links[i]
		if l.noCarrier.Swap(!ev.Up) == !ev.Up && ev.Up != l.isDown.Load() {
			return // no news
		}
		select {
		case r.reqs <- request{kind: reqCarrier, link: l.id, up: ev.Up}:
		case <-ctx.Done():
		}
	})
	if err != nil {
		r.log.Warn("link events unavailable; mesh links are polled every second", "err", err)
	}
}

// linkGone reports whether a send error means the interface itself is
// unusable (down, removed, its address gone) rather than one datagram lost.
func linkGone(err error) bool {
	for _, e := range []error{syscall.ENETDOWN, syscall.ENODEV, syscall.ENXIO, syscall.EADDRNOTAVAIL, syscall.ENETUNREACH} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// shutdown closes every link socket, which ends the readers, and makes the
// Node unreachable. The sockets are closed first: a goroutine holding the
// core mutex while it waits for a full send buffer then gets an error
// instead of holding the mutex (and shutdown) forever.
func (r *Router) shutdown() {
	r.mu.Lock()
	r.closing = true
	socks := make([]net.PacketConn, 0, len(r.sockets))
	for c := range r.sockets {
		socks = append(socks, c)
	}
	clear(r.sockets)
	r.mu.Unlock()
	for _, c := range socks {
		c.Close()
	}
	r.core.Lock()
	r.live = false
	close(r.stopped)
	r.core.Unlock()
}

// track registers a link socket for shutdown; it refuses (and closes the
// socket) once shutdown has begun, so no socket outlives Run.
func (r *Router) track(c net.PacketConn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closing {
		c.Close()
		return false
	}
	r.sockets[c] = true
	return true
}

// openLink opens the two sockets of one mesh interface, retrying until it
// succeeds or ctx ends, then starts their readers and hands the unicast
// socket to the timer goroutine.
func (r *Router) openLink(ctx context.Context, wg *sync.WaitGroup, id LinkID, name string) {
	log := r.log.With("iface", name)
	t := time.NewTimer(0)
	defer t.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		mc, uc, local, ifindex, err := r.dialLink(ctx, name)
		if err == nil {
			if !r.track(uc) {
				mc.Close()
				return
			}
			if !r.track(mc) {
				return
			}
			if failures > 0 {
				log.Info("mesh interface up after retries", "local", local, "failures", failures)
			} else {
				log.Info("mesh interface up", "local", local)
			}
			pc := netx.AsAddrPortConn(uc)
			bc := newBatchConn(uc, ifindex, name, func(to netip.AddrPort, err error) { r.sendFailed(r.links[id], to, err) })
			wg.Go(func() { r.read(id, netx.AsAddrPortConn(mc), local, true) })
			if bc != nil {
				wg.Go(func() { r.readBatch(id, bc, local) })
			} else {
				wg.Go(func() { r.read(id, pc, local, false) })
			}
			select {
			case r.reqs <- request{kind: reqLinkUp, link: id, uc: pc, bc: bc, local: local, srcPort: netx.AddrPortOf(uc.LocalAddr()).Port()}:
			case <-ctx.Done():
			}
			return
		}
		failures++
		// The first failure and then one a minute: a missing radio is worth
		// a warning, not a log line per second.
		if failures == 1 || failures%60 == 0 {
			log.Warn("mesh interface not usable yet; retrying", "err", err, "failures", failures)
		}
		t.Reset(linkRetry)
	}
}

// dialLink opens the beacon (multicast) and the unicast socket of an
// interface. The unicast socket is bound to the interface's link-local
// address so that frames leave through that interface and neighbours see a
// stable source address; they learn it from our beacons, which leave from
// it. It takes the mesh port when it can. A kernel whose multicast socket
// holds the wildcard address on that port (package net binds group sockets
// to [::]:port) refuses a second bind of the port; the unicast socket then
// takes an ephemeral port, which works the same because neighbours answer
// to the beacon's source port.
func (r *Router) dialLink(ctx context.Context, name string) (mc, uc net.PacketConn, local netip.Addr, ifindex int, err error) {
	ifs, err := r.cfg.Network.Interfaces()
	if err != nil {
		return nil, nil, local, 0, fmt.Errorf("listing interfaces: %w", err)
	}
	i := slices.IndexFunc(ifs, func(x netx.Interface) bool { return x.Name == name })
	if i < 0 {
		return nil, nil, local, 0, fmt.Errorf("no interface %s", name)
	}
	if !ifs[i].Up {
		return nil, nil, local, 0, fmt.Errorf("interface %s is down", name)
	}
	local = ifs[i].LinkLocal()
	if !local.IsValid() {
		return nil, nil, local, 0, fmt.Errorf("interface %s has no IPv6 link-local address", name)
	}
	mc, err = r.cfg.Network.ListenMulticast(ctx, name, netip.AddrPortFrom(r.cfg.Group, r.cfg.Port))
	if err != nil {
		return nil, nil, local, 0, fmt.Errorf("beacon socket [%s%%%s]:%d: %w", r.cfg.Group, name, r.cfg.Port, err)
	}
	uaddr := netip.AddrPortFrom(local, r.cfg.Port)
	uc, err = r.cfg.Network.ListenPacket(ctx, "udp6", uaddr.String())
	if errors.Is(err, syscall.EADDRINUSE) {
		uaddr = netip.AddrPortFrom(local, 0)
		uc, err = r.cfg.Network.ListenPacket(ctx, "udp6", uaddr.String())
		if err == nil {
			r.log.Debug("mesh port taken by the beacon socket; unicast on an ephemeral port", "iface", name, "addr", uc.LocalAddr())
		}
	}
	if err != nil {
		mc.Close()
		return nil, nil, local, 0, fmt.Errorf("unicast socket %s: %w", uaddr, err)
	}
	setLinkBuffers(uc)
	return mc, uc, local, ifs[i].Index, nil
}

// read is the reader goroutine of one link socket: it hands each frame to
// the Node itself (Router says why). It exits when the socket is closed or
// the router stops. A reader busy in the Node leaves frames waiting in the
// socket's kernel buffer (LinkSocketBuffer), which bounds them and counts
// what overflows, as it does for any UDP socket.
func (r *Router) read(id LinkID, c netx.AddrPortConn, local netip.Addr, beacon bool) {
	name := r.cfg.Interfaces[id]
	local = local.WithZone("")
	var errs int
	buf := make([]byte, readBufSize)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if r.readFailed(name, err, &errs) {
				return
			}
			continue
		}
		if !r.wanted(name, local, beacon, n, from) {
			continue
		}
		if !r.lockLive() {
			return // stopped
		}
		r.handleFrame(time.Now(), id, from, buf[:n])
		r.unlockCore()
	}
}

// readBatch is read for a unicast socket with batched I/O: a burst of
// frames is read with one system call and handled under one hold of the
// core mutex, and what the Node sends meanwhile leaves in one system call
// per link when the mutex is released (unlockCore).
func (r *Router) readBatch(id LinkID, bc *batchConn, local netip.Addr) {
	name := r.cfg.Interfaces[id]
	local = local.WithZone("")
	var errs int
	for {
		n, err := bc.read()
		if err != nil {
			if r.readFailed(name, err, &errs) {
				return
			}
			continue
		}
		if !r.lockLive() {
			return // stopped
		}
		now := time.Now()
		for i := range n {
			b, from := bc.frame(i)
			if r.wanted(name, local, false, len(b), from) {
				r.handleFrame(now, id, from, b)
			}
		}
		r.unlockCore()
	}
}

// readFailed counts and logs a failed read and reports whether the reader
// must stop (the socket closed, or the router stopped). It waits a little
// first: a socket that keeps failing must not spin.
func (r *Router) readFailed(name string, err error, errs *int) bool {
	if errors.Is(err, net.ErrClosed) {
		return true
	}
	r.stats.readErrors.Add(1)
	*errs++
	if *errs == 1 || *errs%1000 == 0 {
		r.log.Warn("mesh read failed", "iface", name, "err", err, "count", *errs)
	}
	select {
	case <-time.After(10 * time.Millisecond):
		return false
	case <-r.stopped:
		return true
	}
}

// wanted reports whether a frame of n bytes read on link name from from
// goes to the Node, and counts the ones that do not.
func (r *Router) wanted(name string, local netip.Addr, beacon bool, n int, from netip.AddrPort) bool {
	switch {
	case n > maxWireFrame:
		r.stats.oversize.Add(1)
	case from.Addr().WithZone("") == local:
		// Our own beacon, looped back by the kernel.
	case beacon && from.Addr().Zone() != "" && from.Addr().Zone() != name:
		// A multicast socket also hears the group on its siblings'
		// interfaces (Linux matches memberships by group, not by
		// interface); their own sockets report those.
		r.stats.otherIface.Add(1)
	default:
		return true
	}
	return false
}

// handleFrame passes a frame read from a link to the Node, through link
// security; the core mutex is held.
func (r *Router) handleFrame(now time.Time, id LinkID, from netip.AddrPort, b []byte) {
	if r.auth != nil {
		r.auth.HandleFrame(now, id, from, b)
	} else {
		r.node.HandleFrame(now, id, from, b)
	}
}

// routerEnv is the Node's Env. Its methods run with the core mutex held.
type routerEnv struct{ r *Router }

// SendFrame implements Env.
func (e *routerEnv) SendFrame(link LinkID, to netip.AddrPort, frame []byte) {
	r := e.r
	if int(link) < 0 || int(link) >= len(r.links) {
		return
	}
	l := r.links[link]
	if l.uc == nil || l.down {
		r.stats.linkNotReady.Add(1)
		return
	}
	if !to.IsValid() {
		to = l.group
	}
	if l.bc != nil {
		// Queued for unlockCore, which sends the frames of this Node call
		// together; the Node's frame is only valid during the call, so the
		// batch holds a copy.
		if l.bc.add(frame, to) {
			return
		}
		l.bc.flush() // full, or not an address of the link: keep the order
		if l.bc.add(frame, to) {
			return
		}
	}
	if _, err := l.uc.WriteToUDPAddrPort(frame, to); err != nil {
		r.sendFailed(l, to, err)
	}
}

// sendFailed counts a frame the link socket refused and takes the link
// down (after the Node call) if the error says the interface is gone.
func (r *Router) sendFailed(l *routerLink, to netip.AddrPort, err error) {
	r.stats.sendErrors.Add(1)
	if errors.Is(err, net.ErrClosed) {
		return // the router is stopping (shutdown closed the socket)
	}
	l.lastErr = err.Error()
	if linkGone(err) {
		l.failed, r.failPending = true, true
	}
	// A cut cable makes every beacon fail: log the first, then a summary
	// every logEvery.
	if now := time.Now(); now.Sub(l.lastLog) >= logEvery {
		r.log.Warn("mesh send failed", "iface", l.name, "to", to, "err", err, "suppressed", l.suppressd)
		l.lastLog, l.suppressd = now, 0
	} else {
		l.suppressd++
	}
}

// Deliver implements Env.
func (e *routerEnv) Deliver(ev Event) {
	r := e.r
	switch ev := ev.(type) {
	case Datagram:
		e.deliverDatagram(ev)
	case PingReply:
		r.resolvePing(ev.ID, pingResult{reply: ev})
	case Unreachable:
		if ev.PingID == 0 {
			r.stats.unreachable.Add(1)
			r.log.Debug("datagram undeliverable", "target", ev.Target, "port", ev.DstPort, "at", ev.At, "reason", ev.Reason)
			r.mu.Lock()
			c := r.conns[ev.DstPort]
			r.mu.Unlock()
			if c != nil {
				if fn := c.unreach.Load(); fn != nil {
					(*fn)(ev)
				}
			}
			return
		}
		r.resolvePing(ev.PingID, pingResult{err: unreachableError{ev.Reason, ev.At}})
	}
}

// deliverDatagram queues a datagram at the mesh socket bound to its port.
func (e *routerEnv) deliverDatagram(d Datagram) {
	r := e.r
	r.mu.Lock()
	c := r.conns[d.DstPort]
	r.mu.Unlock()
	if c == nil {
		r.stats.noListener.Add(1)
		return
	}
	c.enqueue(meshPacket{src: d.Src, srcPort: d.SrcPort, payload: d.Payload, hops: d.Hops})
}

// unreachableError is an Unreachable report; it is an ErrUnreachable.
type unreachableError struct {
	reason string
	at     NodeID
}

func (e unreachableError) Error() string {
	return fmt.Sprintf("unreachable: %s (reported by %s)", e.reason, e.at)
}

func (e unreachableError) Unwrap() error { return ErrUnreachable }

// resolvePing hands the outcome of ping id to its caller. The round trip is
// measured on the monotonic clock from the moment the Node sent the request.
func (r *Router) resolvePing(id uint32, res pingResult) {
	r.mu.Lock()
	p := r.pings[id]
	delete(r.pings, id)
	r.mu.Unlock()
	if p == nil || p.sent.IsZero() {
		return // the caller gave up already, or a stray reply
	}
	if res.err == nil {
		res.rtt = time.Since(p.sent)
	}
	p.ch <- res // buffered for the one result
}

// errGaveUp is do's report that the caller's done channel closed (context
// cancelled, deadline passed); callers replace it with their reason.
var errGaveUp = errors.New("ssr: gave up waiting for the router")

// do carries out an application request (a send of b, a ping) on the
// caller's goroutine with the core mutex held. Before Run has started it
// queues the request for Run (a send as a pooled copy of b); with the
// queue full it waits for Run, or until done or done2 is closed (nil:
// never) or the router stops. Queued requests are all done before the
// first direct one, so one writer's datagrams leave in the order written.
func (r *Router) do(req request, b []byte, done, done2 <-chan struct{}) error {
	for {
		r.core.Lock()
		if r.live {
			r.handle(req, b)
			r.unlockCore()
			return nil
		}
		if isClosed(r.stopped) {
			r.core.Unlock()
			return ErrRouterClosed
		}
		if req.kind == reqSend && req.payload == nil {
			p := r.sendBuf.Get().(*[]byte)
			*p = append((*p)[:0], b...)
			req.payload = p
		}
		select {
		case r.reqs <- req:
			r.core.Unlock()
			return nil
		default:
		}
		r.core.Unlock()
		select {
		case <-r.started:
		case <-r.stopped:
		case <-done:
			if req.payload != nil {
				r.sendBuf.Put(req.payload)
			}
			return errGaveUp
		case <-done2:
			if req.payload != nil {
				r.sendBuf.Put(req.payload)
			}
			return errGaveUp
		}
	}
}

// handle does an application request with the core mutex held: a send of
// b straight into the Node, which seals it and writes it to the link
// socket before returning, or a ping.
func (r *Router) handle(req request, b []byte) {
	if req.kind != reqSend || req.payload != nil {
		r.handleRequest(req)
		return
	}
	now := time.Now()
	if r.auth != nil {
		r.auth.SetNow(now)
	}
	if err := r.node.Send(now, req.target, req.mode, req.srcPort, req.dstPort, b); err != nil {
		// Sizes are checked before; this is a core change.
		r.log.Warn("send refused", "target", req.target, "err", err)
	}
}

// maxPayload is the largest datagram Send accepts with the router's hop
// budget (Node.Send's own check, made before queueing so that the caller
// gets the error).
func (r *Router) maxPayload() int {
	hops := DefaultParams.MaxHops
	if r.cfg.Params.MaxHops > 0 {
		hops = min(r.cfg.Params.MaxHops, maxRoute)
	}
	if r.auth != nil {
		return MaxFrame - routedHdr - 8*hops - 4 - E2EOverhead
	}
	return MaxFrame - routedHdr - 8*hops - 4
}

// SendTo sends b to the node key (Exact) or to the node responsible for key
// (Closest), from srcPort to dstPort. It returns once the datagram is queued
// for the Node; delivery is not confirmed (it is a datagram).
func (r *Router) SendTo(key NodeID, mode Mode, srcPort, dstPort uint16, b []byte) error {
	return r.send(key, mode, srcPort, dstPort, b, nil, nil)
}

func (r *Router) send(key NodeID, mode Mode, srcPort, dstPort uint16, b []byte, done, done2 <-chan struct{}) error {
	if max := r.maxPayload(); len(b) > max {
		return fmt.Errorf("%w: %d bytes (at most %d)", ErrTooBig, len(b), max)
	}
	return r.do(request{kind: reqSend, target: key, mode: mode, srcPort: srcPort, dstPort: dstPort}, b, done, done2)
}

// Ping sends an echo request to dst and waits for the reply, ctx's end, or
// an unreachable report. It returns the reply (with the source route the
// request took) and the round-trip time measured by this node's clock.
func (r *Router) Ping(ctx context.Context, dst NodeID) (PingReply, time.Duration, error) {
	ch := make(chan pingResult, 1)
	r.mu.Lock()
	var id uint32
	for id == 0 || r.pings[id] != nil {
		id = rand.Uint32()
	}
	r.pings[id] = &pendingPing{ch: ch}
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.pings, id)
		r.mu.Unlock()
	}()
	if err := r.do(request{kind: reqPing, target: dst, pingID: id}, nil, ctx.Done(), nil); err != nil {
		if err == errGaveUp {
			err = ctx.Err()
		}
		return PingReply{}, 0, fmt.Errorf("ssr: ping %s: %w", dst, err)
	}
	select {
	case res := <-ch:
		if res.err != nil {
			return PingReply{}, 0, fmt.Errorf("ssr: ping %s: %w", dst, res.err)
		}
		return res.reply, res.rtt, nil
	case <-ctx.Done():
		return PingReply{}, 0, fmt.Errorf("ssr: ping %s: no reply: %w", dst, ctx.Err())
	case <-r.stopped:
		return PingReply{}, 0, fmt.Errorf("ssr: ping %s: %w", dst, ErrRouterClosed)
	}
}

// RouterStatus is a snapshot of a router for humans and tools (JSON).
type RouterStatus struct {
	ID           string            `json:"id"`
	PublicKey    string            `json:"public_key"` // hex: what `sipmesh admit` signs
	Addr         string            `json:"addr"`
	Running      bool              `json:"running"`
	Interfaces   []InterfaceStatus `json:"interfaces"`
	Successors   []PeerStatus      `json:"successors"`
	Predecessors []PeerStatus      `json:"predecessors"`
	Neighbours   []NeighbourStatus `json:"neighbours"`
	Fingers      []string          `json:"fingers"`
	CacheEntries int               `json:"cache_entries"`
	Stats        Stats             `json:"stats"`        // the Node's protocol counters
	Driver       DriverStats       `json:"driver_stats"` // the Router's own
	Auth         AuthStats         `json:"auth_stats"`   // link security's
}

// InterfaceStatus is one mesh interface.
type InterfaceStatus struct {
	Name      string `json:"name"`
	Link      int    `json:"link"`
	Up        bool   `json:"up"` // its sockets are open
	LinkLocal string `json:"link_local,omitempty"`
	Port      uint16 `json:"port,omitempty"` // of the unicast socket
	LastError string `json:"last_error,omitempty"`
}

// PeerStatus is a ring neighbour and the cached source route to it.
type PeerStatus struct {
	ID    string   `json:"id"`
	Addr  string   `json:"addr"`
	Route []string `json:"route,omitempty"` // first hop first, the peer last
}

// NeighbourStatus is a node heard directly on a mesh interface.
type NeighbourStatus struct {
	ID        string  `json:"id"`
	Addr      string  `json:"addr"`
	Interface string  `json:"iface"`
	LinkAddr  string  `json:"link_addr"`
	Quality   float64 `json:"quality"` // fraction of recent beacons heard
	LastSeen  float64 `json:"last_seen_ms"`
}

// DriverStats count what the Router itself saw and dropped.
type DriverStats struct {
	OversizeFrames    uint64 `json:"oversize_frames"`     // longer than MaxFrame sealed
	OtherIfaceFrames  uint64 `json:"other_iface_frames"`  // beacons heard on a sibling's socket
	ReadErrors        uint64 `json:"read_errors"`         // link socket reads that failed
	SendErrors        uint64 `json:"send_errors"`         // link socket writes that failed
	LinkNotReady      uint64 `json:"link_not_ready"`      // frames for a link not open or down
	NoListener        uint64 `json:"no_listener"`         // datagrams for an unbound mesh port
	SocketQueueFull   uint64 `json:"socket_queue_full"`   // datagrams dropped at a full mesh socket
	UnreachableReport uint64 `json:"unreachable_reports"` // datagrams reported undeliverable
}

// Status returns a snapshot of the router. Before Run it shows identity
// only; after Run returned, the state the Node was left in.
func (r *Router) Status() RouterStatus {
	select {
	case <-r.started:
	default:
		return r.staticStatus()
	}
	r.core.Lock()
	defer r.core.Unlock()
	st := r.statusLocked(time.Now())
	if !r.live {
		st.Running = false
		for i := range st.Interfaces {
			st.Interfaces[i].Up = false
		}
	}
	return st
}

func (r *Router) staticStatus() RouterStatus {
	st := RouterStatus{ID: r.id.String(), PublicKey: r.pubHex(), Addr: r.addr.String(), Driver: r.driverStats()}
	for i, name := range r.cfg.Interfaces {
		st.Interfaces = append(st.Interfaces, InterfaceStatus{Name: name, Link: i})
	}
	return st
}

func (r *Router) driverStats() DriverStats {
	return DriverStats{
		OversizeFrames:    r.stats.oversize.Load(),
		OtherIfaceFrames:  r.stats.otherIface.Load(),
		ReadErrors:        r.stats.readErrors.Load(),
		SendErrors:        r.stats.sendErrors.Load(),
		LinkNotReady:      r.stats.linkNotReady.Load(),
		NoListener:        r.stats.noListener.Load(),
		SocketQueueFull:   r.stats.queueFull.Load(),
		UnreachableReport: r.stats.unreachable.Load(),
	}
}

// statusLocked reads the Node: call it with the core mutex held.
func (r *Router) statusLocked(now time.Time) RouterStatus {
	n := r.node
	st := RouterStatus{
		ID: r.id.String(), PublicKey: r.pubHex(), Addr: r.addr.String(), Running: true,
		CacheEntries: n.CacheLen(), Stats: n.Stats(), Driver: r.driverStats(),
		Successors: r.peers(n.Successors()), Predecessors: r.peers(n.Predecessors()),
		Interfaces: []InterfaceStatus{}, Neighbours: []NeighbourStatus{}, Fingers: []string{},
	}
	if r.auth != nil {
		st.Auth = r.auth.Stats()
	}
	for _, l := range r.links {
		is := InterfaceStatus{Name: l.name, Link: int(l.id), Up: l.uc != nil && !l.down, LastError: l.lastErr}
		if l.local.IsValid() {
			is.LinkLocal, is.Port = l.local.String(), l.port
		}
		st.Interfaces = append(st.Interfaces, is)
	}
	for _, nb := range n.Neighbours() {
		ns := NeighbourStatus{
			ID: nb.ID.String(), Addr: nb.ID.Addr().String(), LinkAddr: nb.Addr.String(),
			Quality: nb.Quality, LastSeen: float64(now.Sub(nb.LastSeen)) / float64(time.Millisecond),
		}
		if int(nb.Link) >= 0 && int(nb.Link) < len(r.links) {
			ns.Interface = r.links[nb.Link].name
		}
		st.Neighbours = append(st.Neighbours, ns)
	}
	for _, f := range n.Fingers() {
		if f != 0 && !slices.Contains(st.Fingers, f.String()) {
			st.Fingers = append(st.Fingers, f.String())
		}
	}
	return st
}

func (r *Router) peers(ids []NodeID) []PeerStatus {
	out := make([]PeerStatus, 0, len(ids))
	for _, id := range ids {
		p := PeerStatus{ID: id.String(), Addr: id.Addr().String()}
		for _, hop := range r.node.Route(id) {
			p.Route = append(p.Route, hop.String())
		}
		out = append(out, p)
	}
	return out
}

// pubHex is the node's public key in hex.
func (r *Router) pubHex() string {
	return hex.EncodeToString(r.cfg.Key.Public().(ed25519.PublicKey))
}
