// Package ssrsim runs the real SSR protocol core (package ssr) for
// thousands of nodes on the in-memory network (package memnet) in virtual
// time: one goroutine, a discrete-event clock, deterministic under a seed.
// It is what `sipmesh sim` reports on and what the randomized tests check
// closest-node delivery with against a brute-force reference.
package ssrsim

import (
	"crypto/ed25519"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"time"

	"github.com/sipmesh/sipmesh/internal/stats"
	"github.com/sipmesh/sipmesh/memnet"
	"github.com/sipmesh/sipmesh/ssr"
)

// Config describes a simulation.
type Config struct {
	Nodes     int
	Topology  string // line, grid or random
	Seed      uint64
	Params    ssr.Params
	LinkDelay time.Duration // per link, default 2 ms
	Jitter    time.Duration // default 1 ms
	Loss      float64
	// Auth runs link security (ssr.LinkAuth, wire format v3) on every
	// node, as Routers do: IDs are hashes of ed25519 keys, neighbours
	// handshake, every frame is sealed, every datagram is authenticated
	// end to end. Encrypt is mesh-encryption on.
	Auth, Encrypt bool
	// ChooseID, if set, gives node i the ID it returns instead of its
	// random one (without Auth): an attacker that ground keys until their
	// hashes fell where it wanted, as package dhtsim's eclipse attack.
	ChooseID func(i int, random ssr.NodeID) ssr.NodeID
}

const port = 7447

var group = netip.MustParseAddr("ff02::73:6d")

// Sim is a running simulation.
type Sim struct {
	cfg   Config
	clock *memnet.VirtualClock
	net   *memnet.Network
	rng   *rand.Rand
	topo  *topology
	nodes []*simNode
	start time.Time

	// Probes in flight: payload tag → probe.
	probes map[uint64]*probe
	seq    uint64

	// App receives the events of every node that are not probes
	// (datagrams to other ports, unreachable reports): the hook an
	// application simulated on top (package dhtsim) plugs into. It is
	// called from inside the node's frame handling and must not call back
	// into the node; queue the event and handle it in a clock event.
	App func(node int, ev ssr.Event)
}

type simNode struct {
	sim   *Sim
	idx   int
	id    ssr.NodeID
	alive bool
	host  *memnet.Host
	ifcs  []*memnet.Interface
	links []*memnet.Link
	peers []netip.AddrPort // per link: the neighbour's address
	bcast []netip.AddrPort // per link: the beacon group with the link's zone
	node  *ssr.Node
	auth  *ssr.LinkAuth // with Config.Auth: frames and timers pass it first
	timer memnet.Timer
	at    time.Time
}

type probe struct {
	src, want int // want: the node that must receive it
	key       ssr.NodeID
	mode      ssr.Mode
	got       int // receiving node, -1 until delivered
	hops      int
	why       string // the unreachable report's reason, if one came back
	// An exact probe starts a flow, as a call does (INVITE, answer,
	// media): its receiver answers with a reply probe, and the reply's
	// arrival makes the source send the established probe, which shows
	// the route the flow keeps using. next is the probe this one caused.
	stage probeStage
	next  *probe
}

// probeStage is a probe's place in its flow.
type probeStage uint8

const (
	stageFirst       probeStage = iota // the first datagram: no route known
	stageReply                         // the answer, from the first's receiver
	stageEstablished                   // the source's next datagram, after the answer
)

// New builds the topology and its nodes; nothing runs until Run.
func New(cfg Config) (*Sim, error) {
	if cfg.Nodes < 2 {
		return nil, fmt.Errorf("ssrsim: need at least 2 nodes, got %d", cfg.Nodes)
	}
	if cfg.ChooseID != nil && cfg.Auth {
		return nil, fmt.Errorf("ssrsim: chosen IDs need Auth off (with it an ID is the hash of a key)")
	}
	if cfg.LinkDelay == 0 {
		cfg.LinkDelay = 2 * time.Millisecond
	}
	if cfg.Jitter == 0 {
		cfg.Jitter = time.Millisecond
	}
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := &Sim{
		cfg:    cfg,
		clock:  memnet.NewVirtualClock(start),
		rng:    rand.New(rand.NewPCG(cfg.Seed, 0x55a)),
		start:  start,
		probes: make(map[uint64]*probe),
	}
	s.net = memnet.New(memnet.Config{Seed: int64(cfg.Seed), Clock: s.clock})
	t, err := makeTopology(cfg.Topology, cfg.Nodes, s.rng)
	if err != nil {
		return nil, err
	}
	s.topo = t
	for i := 0; i < cfg.Nodes; i++ {
		s.addNode()
	}
	for i, nb := range t.adj {
		for _, j := range nb {
			if j > i {
				s.connect(i, j)
			}
		}
	}
	return s, nil
}

// addNode creates node len(s.nodes) with a random ID (a hash of a key in
// real life: uniform on the ring either way).
func (s *Sim) addNode() *simNode {
	i := len(s.nodes)
	n := &simNode{sim: s, idx: i, alive: true}
	n.host = s.net.AddHost(fmt.Sprintf("n%d", i))
	if s.cfg.Auth {
		var seed [ed25519.SeedSize]byte
		for k := range 4 {
			binary.LittleEndian.PutUint64(seed[8*k:], s.rng.Uint64())
		}
		key := ed25519.NewKeyFromSeed(seed[:])
		n.id = ssr.IDFromPublicKey(key.Public().(ed25519.PublicKey))
		// Handshake randomness from the seed too: runs stay reproducible.
		n.auth = ssr.NewLinkAuth(ssr.AuthConfig{Key: key, Encrypt: s.cfg.Encrypt, Rand: rand.NewChaCha8(seed)}, n)
		n.node = ssr.New(n.id, s.cfg.Params, n.auth, s.rng.Uint64())
		n.auth.Attach(n.node)
	} else {
		n.id = ssr.NodeID(s.rng.Uint64())
		if s.cfg.ChooseID != nil {
			n.id = s.cfg.ChooseID(i, n.id)
		}
		n.node = ssr.New(n.id, s.cfg.Params, n, s.rng.Uint64())
	}
	s.nodes = append(s.nodes, n)
	n.schedule(s.clock.Now())
	return n
}

func (s *Sim) connect(i, j int) {
	a, b := s.nodes[i], s.nodes[j]
	ia, ib := a.newLink(), b.newLink()
	l := s.net.Connect(ia.ifc, ib.ifc, memnet.LinkConfig{Delay: s.cfg.LinkDelay, Jitter: s.cfg.Jitter, Loss: s.cfg.Loss})
	a.links = append(a.links, l)
	b.links = append(b.links, l)
	a.peers = append(a.peers, netip.AddrPortFrom(ib.ifc.LinkLocal(), port))
	b.peers = append(b.peers, netip.AddrPortFrom(ia.ifc.LinkLocal(), port))
}

type newLink struct{ ifc *memnet.Interface }

func (n *simNode) newLink() newLink {
	li := len(n.ifcs)
	ifc := n.host.AddInterface(fmt.Sprintf("m%d", li), 9000)
	n.ifcs = append(n.ifcs, ifc)
	n.bcast = append(n.bcast, netip.AddrPortFrom(group.WithZone(ifc.Name()), port))
	link := ssr.LinkID(li)
	n.host.HandlePacket(ifc, port, func(pkt []byte, from netip.AddrPort, _ *memnet.Interface) {
		if !n.alive {
			return
		}
		now := n.sim.clock.Now()
		if n.auth != nil {
			n.auth.HandleFrame(now, link, from, pkt)
		} else {
			n.node.HandleFrame(now, link, from, pkt)
		}
		n.schedule(now)
	})
	n.node.AddLink(link)
	return newLink{ifc}
}

// setNow tells link security the time of a Node call made outside frame
// and timer handling (Send).
func (n *simNode) setNow(now time.Time) {
	if n.auth != nil {
		n.auth.SetNow(now)
	}
}

// AuthStats sums the link security counters of every node (zero without
// Config.Auth).
func (s *Sim) AuthStats() ssr.AuthStats {
	var sum ssr.AuthStats
	for _, n := range s.nodes {
		if n.auth == nil {
			continue
		}
		st := n.auth.Stats()
		sum.Sessions += st.Sessions
		sum.Handshakes += st.Handshakes
		sum.BadMAC += st.BadMAC
		sum.Replayed += st.Replayed
		sum.WrongSender += st.WrongSender
		sum.Unauthenticated += st.Unauthenticated
		sum.BadHandshake += st.BadHandshake
		sum.SendNoSession += st.SendNoSession
	}
	return sum
}

// SendFrame implements ssr.Env.
func (n *simNode) SendFrame(l ssr.LinkID, to netip.AddrPort, frame []byte) {
	if !n.alive {
		return
	}
	if !to.IsValid() {
		to = n.bcast[l]
	}
	_ = n.ifcs[l].Send(port, to, frame) // a down link drops, as radio does
}

// probePort is the port of probe datagrams.
const probePort = 9

// Deliver implements ssr.Env: probes are recognised by their port and tag;
// everything else goes to the App hook.
func (n *simNode) Deliver(ev ssr.Event) {
	d, ok := ev.(ssr.Datagram)
	if !ok || d.DstPort != probePort {
		u, isU := ev.(ssr.Unreachable)
		if isU && u.DstPort == probePort {
			n.sim.probeFailed(n.idx, u)
			return
		}
		if n.sim.App != nil {
			n.sim.App(n.idx, ev)
		}
		return
	}
	if len(d.Payload) != 8 {
		return
	}
	var tag uint64
	for _, c := range d.Payload {
		tag = tag<<8 | uint64(c)
	}
	if p := n.sim.probes[tag]; p != nil && p.got < 0 {
		p.got, p.hops = n.idx, d.Hops
		if p.mode == ssr.Exact && p.stage < stageEstablished && p.got == p.want {
			// The flow's next datagram goes back the other way. Not from
			// inside the node's frame handling: from a clock event.
			s, from, to := n.sim, p.want, p.src
			s.clock.AfterFunc(0, func() {
				if s.nodes[from].alive && s.nodes[to].alive {
					p.next = s.probe(from, ssr.Exact, s.nodes[to].id, p.stage+1)
				}
			})
		}
	}
}

// probeFailed notes why a probe from src did not arrive: reports carry
// no tag, so it goes to the undelivered probes from src to that target.
func (s *Sim) probeFailed(src int, u ssr.Unreachable) {
	for _, p := range s.probes {
		if p.src == src && p.key == u.Target && p.got < 0 && p.why == "" {
			p.why = u.Reason
		}
	}
}

// schedule arms the node's timer for its next deadline if that moved.
func (n *simNode) schedule(now time.Time) {
	d := n.node.NextDeadline()
	if d.IsZero() {
		d = now
	}
	if n.timer != nil && !d.Before(n.at) {
		return
	}
	if n.timer != nil {
		n.timer.Stop()
	}
	n.at = d
	n.timer = n.sim.clock.AfterFunc(d.Sub(now), func() {
		n.timer = nil
		if !n.alive {
			return
		}
		t := n.sim.clock.Now()
		if n.auth != nil {
			n.auth.Tick(t)
		} else {
			n.node.Tick(t)
		}
		n.schedule(t)
	})
}

// Node returns node i's protocol core, for reading (Successors, ID);
// sending goes through Send so that the node's timer is rearmed.
func (s *Sim) Node(i int) *ssr.Node { return s.nodes[i].node }

// Len is the number of nodes ever created (live or not).
func (s *Sim) Len() int { return len(s.nodes) }

// Clock is the simulation's virtual clock.
func (s *Sim) Clock() *memnet.VirtualClock { return s.clock }

// Send originates an application datagram at live node i, as a Router's
// SendTo does.
func (s *Sim) Send(i int, target ssr.NodeID, mode ssr.Mode, srcPort, dstPort uint16, payload []byte) error {
	n := s.nodes[i]
	if !n.alive {
		return fmt.Errorf("ssrsim: node %d is dead", i)
	}
	now := s.clock.Now()
	n.setNow(now)
	err := n.node.Send(now, target, mode, srcPort, dstPort, payload)
	n.schedule(now)
	return err
}

// Now is the virtual time since the start.
func (s *Sim) Now() time.Duration { return s.clock.Now().Sub(s.start) }

// RunFor advances virtual time.
func (s *Sim) RunFor(d time.Duration) { s.clock.RunFor(d) }

// Live returns the indices of live nodes.
func (s *Sim) Live() []int {
	var out []int
	for _, n := range s.nodes {
		if n.alive {
			out = append(out, n.idx)
		}
	}
	return out
}

func (s *Sim) aliveMask() []bool {
	m := make([]bool, len(s.nodes))
	for i, n := range s.nodes {
		m[i] = n.alive
	}
	return m
}

// ring returns the live nodes sorted by ID.
func (s *Sim) ring() []*simNode {
	var r []*simNode
	for _, n := range s.nodes {
		if n.alive {
			r = append(r, n)
		}
	}
	slices.SortFunc(r, func(a, b *simNode) int {
		switch {
		case a.id < b.id:
			return -1
		case a.id > b.id:
			return 1
		}
		return 0
	})
	return r
}

// Consistency returns the fraction of live nodes whose successor is the true
// one and whose cached route to it exists on live links.
func (s *Sim) Consistency() float64 {
	r := s.ring()
	if len(r) < 2 {
		return 1
	}
	byID := make(map[ssr.NodeID]int, len(s.nodes))
	for _, n := range s.nodes {
		if n.alive {
			byID[n.id] = n.idx
		}
	}
	ok := 0
	for i, n := range r {
		want := r[(i+1)%len(r)]
		got, has := n.node.Successor()
		if !has || got != want.id {
			continue
		}
		if s.routeValid(n.idx, n.node.Route(got), byID) {
			ok++
		}
	}
	return float64(ok) / float64(len(r))
}

// routeValid checks that every hop of a source route is a live link.
func (s *Sim) routeValid(from int, rt []ssr.NodeID, byID map[ssr.NodeID]int) bool {
	if len(rt) == 0 {
		return false
	}
	cur := from
	for _, id := range rt {
		next, ok := byID[id]
		if !ok || !slices.Contains(s.topo.adj[cur], next) {
			return false
		}
		cur = next
	}
	return true
}

// responsible returns the live node responsible for key: the one with the
// largest ID ≤ key, wrapping (brute force, the reference for closest mode).
func responsible(r []*simNode, key ssr.NodeID) int {
	i, _ := slices.BinarySearchFunc(r, key, func(n *simNode, k ssr.NodeID) int {
		switch {
		case n.id < k:
			return -1
		case n.id > k:
			return 1
		}
		return 0
	})
	if i < len(r) && r[i].id == key {
		return r[i].idx
	}
	if i == 0 {
		return r[len(r)-1].idx
	}
	return r[i-1].idx
}

// Probe sends one tagged datagram from src: to dst's ID (exact) or to key
// (closest). The expected receiver is computed when it is sent.
func (s *Sim) Probe(src int, mode ssr.Mode, key ssr.NodeID) *probe {
	return s.probe(src, mode, key, stageFirst)
}

func (s *Sim) probe(src int, mode ssr.Mode, key ssr.NodeID, stage probeStage) *probe {
	s.seq++
	p := &probe{src: src, key: key, mode: mode, got: -1, stage: stage}
	p.want = responsible(s.ring(), key)
	s.probes[s.seq] = p
	var b [8]byte
	for i := range b {
		b[i] = byte(s.seq >> (56 - 8*i))
	}
	n := s.nodes[src]
	now := s.clock.Now()
	n.setNow(now)
	_ = n.node.Send(now, key, mode, probePort, probePort, b[:])
	n.schedule(now)
	return p
}

// established returns the established probe of the flow p started, if
// the reply arrived and it was sent.
func (p *probe) established() *probe {
	if p.next == nil {
		return nil
	}
	return p.next.next
}

// DeliveryResult summarises a batch of probes.
type DeliveryResult struct {
	Exact, Closest         float64 // fraction delivered to the right node
	StretchP50, StretchP95 float64 // exact probes: hops taken / shortest path
	HopsP50                float64
	// The established flows: each delivered exact probe was answered, and
	// the answer's arrival made its source send again (probe stages).
	// Established is the fraction of those second datagrams delivered,
	// EstablishedP50/P95 their stretch: the route a call's media keeps
	// using, where the figures above are the first datagram's (a call's
	// INVITE), which finds its way with no route known.
	Established                    float64
	EstablishedP50, EstablishedP95 float64
	// Failures counts the probes that went wrong by what happened: the
	// reason of the unreachable report that came back, "wrong node", or
	// "lost" (no report).
	Failures                 map[string]int
	exactN, closestN, failed int
}

// MeasureDelivery sends count probes of each mode between random live
// nodes, spread over spread, and waits settle for them to arrive.
func (s *Sim) MeasureDelivery(count int, spread, settle time.Duration) DeliveryResult {
	live := s.Live()
	sorted := s.ring()
	var ps []*probe
	step := spread / time.Duration(2*count)
	for i := 0; i < count; i++ {
		src := live[s.rng.IntN(len(live))]
		dst := live[s.rng.IntN(len(live))]
		ps = append(ps, s.Probe(src, ssr.Exact, s.nodes[dst].id))
		s.RunFor(step)
		ps = append(ps, s.Probe(live[s.rng.IntN(len(live))], ssr.Closest, ssr.NodeID(s.rng.Uint64())))
		s.RunFor(step)
	}
	s.RunFor(settle)
	_ = sorted
	var res DeliveryResult
	var stretch, hops, est []float64
	estSent := 0
	alive := s.aliveMask()
	dist := make([]int32, len(s.nodes))
	var queue []int
	for _, p := range ps {
		okp := p.got == p.want
		if p.mode == ssr.Exact {
			res.exactN++
			if okp {
				res.Exact++
				dist = bfs(s.topo.adj, alive, p.src, dist, queue)
				if d := dist[p.want]; d > 0 {
					stretch = append(stretch, float64(p.hops)/float64(d))
				} else if d == 0 {
					stretch = append(stretch, 1)
				}
				hops = append(hops, float64(p.hops))
				if e := p.established(); e != nil {
					estSent++
					if e.got == e.want {
						res.Established++
						if d := dist[p.want]; d > 0 {
							est = append(est, float64(e.hops)/float64(d))
						} else if d == 0 {
							est = append(est, 1)
						}
					}
				}
			}
		} else {
			res.closestN++
			if okp {
				res.Closest++
			}
		}
		if !okp {
			res.failed++
			why := p.why
			switch {
			case p.got >= 0:
				why = "wrong node"
			case why == "":
				why = "lost"
			}
			if res.Failures == nil {
				res.Failures = make(map[string]int)
			}
			res.Failures[p.mode.String()+": "+why]++
		}
	}
	res.Exact /= float64(max(res.exactN, 1))
	res.Closest /= float64(max(res.closestN, 1))
	res.StretchP50, res.StretchP95 = stats.Quantile(stretch, 0.5), stats.Quantile(stretch, 0.95)
	res.HopsP50 = stats.Quantile(hops, 0.5)
	res.Established /= float64(max(estSent, 1))
	res.EstablishedP50, res.EstablishedP95 = stats.Quantile(est, 0.5), stats.Quantile(est, 0.95)
	clear(s.probes)
	return res
}

// CacheP95 is the 95th percentile of route cache entries per live node.
func (s *Sim) CacheP95() float64 {
	var v []float64
	for _, n := range s.nodes {
		if n.alive {
			v = append(v, float64(n.node.CacheLen()))
		}
	}
	return stats.Quantile(v, 0.95)
}

// ControlFrames is the total of control frames sent by live nodes.
func (s *Sim) ControlFrames() uint64 {
	var t uint64
	for _, n := range s.nodes {
		if n.alive {
			t += n.node.Stats().ControlOut
		}
	}
	return t
}

// Kill stops node i: its links go down, as when a router loses power.
func (s *Sim) Kill(i int) {
	n := s.nodes[i]
	n.alive = false
	for _, l := range n.links {
		l.SetDown(true)
	}
	if n.timer != nil {
		n.timer.Stop()
		n.timer = nil
	}
}

// Join adds a node at a random place and links it to the live nodes in
// radio range (random topology) or to a random live node (others).
func (s *Sim) Join() int {
	i := len(s.nodes)
	s.topo.adj = append(s.topo.adj, nil)
	s.topo.x = append(s.topo.x, 0)
	s.topo.y = append(s.topo.y, 0)
	s.addNode()
	alive := s.aliveMask()
	if s.topo.cell != nil {
		s.topo.place(i, s.rng.Float64(), s.rng.Float64())
		for _, j := range s.topo.inRange(i) {
			if alive[j] {
				s.topo.addEdge(i, j)
				s.connect(i, j)
			}
		}
	}
	if len(s.topo.adj[i]) == 0 {
		live := s.Live()
		j := live[s.rng.IntN(len(live)-1)]
		if j == i {
			j = live[len(live)-1]
		}
		s.topo.addEdge(i, j)
		s.connect(i, j)
	}
	return i
}

// Reconnect links every live component to the largest by a new link, so
// the live graph stays connected after churn (the question is the ring, not
// a partitioned radio network).
func (s *Sim) Reconnect() {
	before := make([]int, len(s.topo.adj))
	for i := range s.topo.adj {
		before[i] = len(s.topo.adj[i])
	}
	s.topo.connect(s.aliveMask())
	for i := range s.topo.adj {
		for _, j := range s.topo.adj[i][before[i]:] {
			if j > i {
				s.connect(i, j)
			}
		}
	}
}
