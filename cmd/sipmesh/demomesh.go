//go:build !router

package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/sipmesh/sipmesh/gateway"
	"github.com/sipmesh/sipmesh/memnet"
	"github.com/sipmesh/sipmesh/phones"
	"github.com/sipmesh/sipmesh/registrar"
	"github.com/sipmesh/sipmesh/ssr"
	"github.com/sipmesh/sipmesh/ssr/dht"
	"github.com/sipmesh/sipmesh/ssr/ssrsim"
)

// The telephone mesh of `sipmesh demo` and of this package's call tests:
// real gateway.Nodes (SSR router, DHT, registrar and proxy with the media
// relay, DNS and DHCP) on the in-memory network, joined by point-to-point
// radio links in a multi-hop topology, each with an IPv4 phone LAN, and
// simulated phones (phones.Phone) plugged into those LANs.

// demoParams are the SSR timers of the in-memory mesh: ten times faster
// than the defaults (which suit radio links and real routers), so that
// the ring forms in a second or two of real time instead of tens.
var demoParams = ssr.Params{
	HelloInterval: 100 * time.Millisecond,
	// Several lost beacons in a row, not one late goroutine, should end a
	// neighbourship: on a loaded machine (tests under -race) the routers
	// run late.
	NeighbourTimeout: 2 * time.Second,
	RingInterval:     100 * time.Millisecond,
	RingIntervalMax:  800 * time.Millisecond,
	FingerInterval:   3 * time.Second,
	MaxTimeout:       2 * time.Second,
}

// demoDHTParams are the DHT's: request timeouts for links of milliseconds
// rather than a radio mesh's hundreds, so a datagram lost on a lossy link
// costs a fraction of a second, not two.
var demoDHTParams = dht.Params{
	SyncInterval:   time.Second,
	RingPoll:       100 * time.Millisecond,
	RequestTimeout: 400 * time.Millisecond,
	Retries:        5,
	ConsultTimeout: 150 * time.Millisecond,
	HandoffWindow:  5 * time.Second,
}

// meshConfig describes a telephone mesh.
type meshConfig struct {
	Nodes int
	Seed  uint64
	// Loss is the datagram loss of every mesh link; Delay its one-way
	// latency (default 2 ms).
	Loss  float64
	Delay time.Duration
	// MinDiameter is the smallest hop diameter the random topology may
	// have (default 4; fewer nodes than that make a line).
	MinDiameter int
	// Log receives the nodes' logs (nil: discarded).
	Log *slog.Logger
	// RingGroups is every node's ring-group setting.
	RingGroups map[string][]string
	// Adj, if set, is the topology (node i's neighbours), instead of a
	// random one.
	Adj [][]int
	// Gateways are the nodes (indices) with an uplink: an interface
	// "up0" on the emulated Internet (telMesh.inet, 198.51.100.0/24) with
	// the address 198.51.100.i, configured as public-address, which makes
	// the node a gateway; its resolver is 198.51.100.53.
	Gateways []int
	// GatewayCount, when Gateways is nil, picks that many gateway nodes
	// in the topology (demoGatewayNodes).
	GatewayCount int
}

// telMesh is a running telephone mesh.
type telMesh struct {
	cfg   meshConfig
	nw    *memnet.Network
	dir   string // state directories of the nodes
	rmDir func() // removes dir, also when a second signal forces the exit
	adj   [][]int
	hosts []*memnet.Host
	lans  []*memnet.Link
	lanIP []netip.Prefix // node i's LAN address and subnet
	nodes []*gateway.Node
	links []*memnet.Link
	// inet is the emulated Internet the gateways' uplinks are on (nil
	// without gateways).
	inet  *memnet.Link
	admin ed25519.PrivateKey
	rng   *rand.Rand

	ctx    context.Context
	cancel context.CancelFunc
	kills  []context.CancelFunc // one per node
	wg     sync.WaitGroup
	mu     sync.Mutex
	errs   []error
	phones []*meshPhone
}

// meshPhone is a simulated phone plugged into node Node's LAN.
type meshPhone struct {
	*phones.Phone
	Ext  string
	Node int
	Hz   float64
}

// newTelMesh builds the topology and the nodes; start runs them.
func newTelMesh(cfg meshConfig) (*telMesh, error) {
	if cfg.Nodes < 1 || cfg.Nodes > 250 {
		return nil, fmt.Errorf("%d nodes: want 1 to 250", cfg.Nodes)
	}
	if cfg.Loss < 0 || cfg.Loss >= 1 {
		return nil, fmt.Errorf("loss %v: want a fraction in [0, 1)", cfg.Loss)
	}
	if cfg.Delay <= 0 {
		cfg.Delay = 2 * time.Millisecond
	}
	if cfg.MinDiameter == 0 {
		cfg.MinDiameter = 4
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	reapDemoDirs()
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", demoDirPrefix, os.Getpid()))
	if err != nil {
		return nil, err
	}
	// The directory holds the nodes' and the administrator's private keys.
	rmDir := atExit(func() { os.RemoveAll(dir) })
	m := &telMesh{cfg: cfg, dir: dir, rmDir: rmDir, rng: rand.New(rand.NewPCG(cfg.Seed, 0xde30)),
		// Socket queues of a router's size rather than memnet's small
		// default: one process emulates the whole mesh, so a burst of
		// calls makes the routers' goroutines late, not the links full.
		nw: memnet.New(memnet.Config{Seed: int64(cfg.Seed), SocketQueue: 4096, LinkQueue: 4096})}
	m.adj = cfg.Adj
	if m.adj == nil {
		m.adj = meshTopology(cfg.Nodes, cfg.MinDiameter, m.rng)
	}
	if cfg.GatewayCount > 0 && cfg.Gateways == nil {
		m.cfg.Gateways = demoGatewayNodes(m.adj, cfg.GatewayCount)
	}
	if err := m.build(); err != nil {
		rmDir()
		return nil, err
	}
	return m, nil
}

// demoDirPrefix names the demo's temporary directories, followed by the
// PID of the process that made them.
const demoDirPrefix = "sipmesh-demo-"

// reapDemoDirs removes the temporary directories of demo processes that
// no longer exist: SIGKILL (or a crash) gives a process no chance to
// remove its own, and they hold private keys.
func reapDemoDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), demoDirPrefix+"*-*"))
	for _, d := range dirs {
		rest := strings.TrimPrefix(filepath.Base(d), demoDirPrefix)
		pid, err := strconv.Atoi(rest[:strings.IndexByte(rest, '-')])
		if err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		// Signal 0 checks existence; EPERM means alive, another user's.
		if errors.Is(unix.Kill(pid, 0), unix.ESRCH) {
			os.RemoveAll(d)
		}
	}
}

func (m *telMesh) build() error {
	n := m.cfg.Nodes
	var err error
	adminPath := filepath.Join(m.dir, "admin.key")
	if m.admin, _, err = gateway.LoadOrCreateAdminKey(adminPath); err != nil {
		return err
	}
	adminPub := m.admin.Public().(ed25519.PublicKey)
	ifcs := make([][]string, n)
	for i := range n {
		h := m.nw.AddHost(fmt.Sprintf("n%d", i+1))
		m.hosts = append(m.hosts, h)
		// Node i's phone LAN: 10.64.i.0/24 (its address .1), as the
		// derived subnets of a real mesh look.
		lan := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 64, byte(i + 1), 1}), 24)
		m.lanIP = append(m.lanIP, lan)
		seg := m.nw.NewSegment(fmt.Sprintf("lan%d", i+1), memnet.LinkConfig{Delay: 200 * time.Microsecond})
		seg.Attach(h.AddInterface("lan0", 1500, lan))
		m.lans = append(m.lans, seg)
	}
	for a := range n {
		for _, b := range m.adj[a] {
			if b < a {
				continue
			}
			ia := m.hosts[a].AddInterface(fmt.Sprintf("m%d", len(ifcs[a])), 1500)
			ib := m.hosts[b].AddInterface(fmt.Sprintf("m%d", len(ifcs[b])), 1500)
			ifcs[a], ifcs[b] = append(ifcs[a], ia.Name()), append(ifcs[b], ib.Name())
			m.links = append(m.links, m.nw.Connect(ia, ib, memnet.LinkConfig{Delay: m.cfg.Delay, Loss: m.cfg.Loss}))
		}
	}
	for i := range n {
		o := gateway.DefaultOptions()
		o.Name = fmt.Sprintf("n%d", i+1)
		o.StateDir = filepath.Join(m.dir, o.Name)
		o.MeshInterfaces = ifcs[i]
		o.Control = ""
		o.LANInterface = "lan0"
		o.LANAddress = m.lanIP[i]
		o.AdminPublicKey = adminPub
		if i == 0 {
			o.AdminKey = adminPath // node 1 manages the subscribers
		}
		o.RingGroups = m.cfg.RingGroups
		if slices.Contains(m.cfg.Gateways, i) {
			pub := netip.AddrFrom4([4]byte{198, 51, 100, byte(i + 1)})
			if m.inet == nil {
				m.inet = m.nw.NewSegment("internet", memnet.LinkConfig{Delay: time.Millisecond})
			}
			m.inet.Attach(m.hosts[i].AddInterface("up0", 1500, netip.PrefixFrom(pub, 24)))
			o.UplinkInterface, o.PublicAddress = "up0", pub
			o.SIPDomain = "voice.example.org"
			// The Internet's resolver, on the uplink segment (a test's).
			o.DNSUpstreams = []netip.AddrPort{netip.MustParseAddrPort("198.51.100.53:53")}
		}
		o.SetRouterParams(demoParams)
		o.SetDHTParams(demoDHTParams)
		node, err := gateway.NewNode(o, m.hosts[i], m.cfg.Log)
		if err != nil {
			return err
		}
		m.nodes = append(m.nodes, node)
	}
	return nil
}

// start runs every node until stop (or its kill).
func (m *telMesh) start(ctx context.Context) {
	m.ctx, m.cancel = context.WithCancel(ctx)
	for i, node := range m.nodes {
		nctx, kill := context.WithCancel(m.ctx)
		m.kills = append(m.kills, kill)
		m.wg.Go(func() {
			if err := node.Run(nctx); err != nil {
				m.fail(fmt.Errorf("node n%d: %w", i+1, err))
			}
		})
	}
}

// kill stops node i at once, as a power cut would; its phones stay.
func (m *telMesh) kill(i int) { m.kills[i]() }

func (m *telMesh) fail(err error) {
	m.mu.Lock()
	m.errs = append(m.errs, err)
	m.mu.Unlock()
}

// stop stops the phones and the nodes, waits for them and removes the
// state directories. It returns what failed while they ran.
func (m *telMesh) stop() error {
	if m.cancel != nil {
		m.cancel()
	}
	m.wg.Wait()
	m.rmDir()
	m.mu.Lock()
	defer m.mu.Unlock()
	return errors.Join(m.errs...)
}

// waitRing waits until the ring is consistent: every node's successor is
// the next node ID clockwise, the state the DHT needs to find records.
func (m *telMesh) waitRing(ctx context.Context) error {
	ids := make([]ssr.NodeID, len(m.nodes))
	for i, n := range m.nodes {
		ids[i] = n.Router().ID()
	}
	sorted := slices.Clone(ids)
	slices.Sort(sorted)
	next := make(map[ssr.NodeID]string, len(ids))
	for i, id := range sorted {
		next[id] = sorted[(i+1)%len(sorted)].String()
	}
	t := time.NewTicker(25 * time.Millisecond)
	defer t.Stop()
	for {
		ok := true
		for i, n := range m.nodes {
			if len(m.nodes) == 1 {
				break
			}
			st := n.Router().Status()
			if len(st.Successors) == 0 || st.Successors[0].ID != next[ids[i]] {
				ok = false
				break
			}
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the ring did not form: %w", context.Cause(ctx))
		case <-t.C:
		}
	}
}

// addAccounts stores accounts for exts (password "secret"+ext) through
// node 1, which holds the administrator key, as `sipmesh user add` does.
// progress, if not nil, gets the number stored after each.
func (m *telMesh) addAccounts(ctx context.Context, exts []string, progress func(done int)) error {
	for i, ext := range exts {
		a, err := registrar.NewAccount(ext, phonePassword(ext), "Phone "+ext)
		if err != nil {
			return err
		}
		rec, err := registrar.SignAccount(m.admin, a, false)
		if err != nil {
			return err
		}
		// The DHT may still be settling: a few tries.
		for try := 0; ; try++ {
			cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			err = m.nodes[0].Accounts().PutRecord(cctx, rec)
			cancel()
			if try > 0 && errors.Is(err, registrar.ErrStaleRecord) {
				// An earlier try stored it; only its answer was lost.
				err = nil
			}
			if err == nil || try == 4 || ctx.Err() != nil {
				break
			}
		}
		if err != nil {
			return err // the store names the account
		}
		if progress != nil {
			progress(i + 1)
		}
	}
	return nil
}

func phonePassword(ext string) string { return "secret" + ext }

// addPhone plugs a phone for ext with tone hz into node's LAN (node is
// 0-based) and runs it. Its SIP server is the node's LAN address, what
// DHCP option 120 hands out.
func (m *telMesh) addPhone(node int, ext string, hz float64, policy phones.Policy) (*meshPhone, error) {
	k := 0
	for _, p := range m.phones {
		if p.Node == node {
			k++
		}
	}
	lan := m.lanIP[node]
	ip := lan.Addr().As4()
	ip[3] = byte(10 + k)
	addr := netip.AddrFrom4(ip)
	h := m.nw.AddHost("phone-" + ext)
	m.lans[node].Attach(h.AddInterface("eth0", 1500, netip.PrefixFrom(addr, lan.Bits())))
	// The phone finds its SIP server as a provisioned phone does: the name
	// sipserver.mesh (DHCP option 120, RFC 3361) resolved by the DNS
	// server DHCP names, the node's LAN address (RFC 3263 §4.2, A record).
	server, err := resolveSIPServer(m.ctx, h, lan.Addr())
	if err != nil {
		return nil, fmt.Errorf("phone %s: %w", ext, err)
	}
	p, err := phones.New(phones.Config{
		Settings: phones.Settings{User: ext, Password: phonePassword(ext), DisplayName: "Phone " + ext,
			Server: netip.AddrPortFrom(server, 5060), LocalAddr: addr, ToneHz: hz, MaxCalls: 16,
			ToneAmplitude: demoToneAmplitude},
		Policy:  policy,
		Network: h,
		Logger:  m.cfg.Log,
	})
	if err != nil {
		return nil, err
	}
	mp := &meshPhone{Phone: p, Ext: ext, Node: node, Hz: hz}
	m.phones = append(m.phones, mp)
	m.wg.Go(func() {
		if err := p.Run(m.ctx); err != nil {
			m.fail(fmt.Errorf("phone %s: %w", ext, err))
		}
	})
	return mp, nil
}

// resolveSIPServer asks the DNS server at dnsServer (port 53) for the A
// record of sipserver.mesh from host h, retrying a lost datagram.
func resolveSIPServer(ctx context.Context, h *memnet.Host, dnsServer netip.Addr) (netip.Addr, error) {
	pc, err := h.ListenPacket(ctx, "udp4", "0.0.0.0:0")
	if err != nil {
		return netip.Addr{}, err
	}
	defer pc.Close()
	q := new(dns.Msg)
	q.SetQuestion("sipserver.mesh.", dns.TypeA)
	out, err := q.Pack()
	if err != nil {
		return netip.Addr{}, err
	}
	buf := make([]byte, 1500)
	to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(dnsServer, 53))
	for range 5 {
		if _, err := pc.WriteTo(out, to); err != nil {
			return netip.Addr{}, err
		}
		pc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				break // timeout: ask again
			}
			var r dns.Msg
			if r.Unpack(buf[:n]) != nil || r.Id != q.Id {
				continue
			}
			for _, rr := range r.Answer {
				if a, ok := rr.(*dns.A); ok {
					if addr, ok := netip.AddrFromSlice(a.A.To4()); ok {
						return addr, nil
					}
				}
			}
			return netip.Addr{}, fmt.Errorf("sipserver.mesh: no A record (rcode %s)", dns.RcodeToString[r.Rcode])
		}
		if ctx.Err() != nil {
			return netip.Addr{}, ctx.Err()
		}
	}
	return netip.Addr{}, fmt.Errorf("sipserver.mesh: no answer from %v", dnsServer)
}

// register registers p, retrying while the registrar cannot yet read
// the account from the DHT.
func (m *telMesh) register(ctx context.Context, p *meshPhone) error {
	var err error
	for try := 0; try < 5; try++ {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err = p.Register(cctx)
		cancel()
		if err == nil || ctx.Err() != nil {
			return err
		}
	}
	return err
}

// hops is the shortest physical path between two nodes, in mesh hops.
func (m *telMesh) hops(a, b int) int {
	return int(ssrsim.HopDistances(m.adj, a)[b])
}

// diameter is the longest shortest path of the mesh, in hops.
func (m *telMesh) diameter() int { return diameter(m.adj) }

// meshTopology returns the adjacency of a connected radio mesh of n nodes
// with a hop diameter of at least minDiam: ssrsim's random radio mesh on a
// 3:1 strip with about three neighbours per node, redrawn until it is wide
// enough; after 50 draws (or with n ≤ minDiam) a line.
func meshTopology(n, minDiam int, rng *rand.Rand) [][]int {
	if n > minDiam {
		const width, degree = 3.0, 3.0
		for range 50 {
			if adj := ssrsim.RadioMesh(n, width, degree, rng); diameter(adj) >= minDiam {
				return adj
			}
		}
	}
	adj := make([][]int, n)
	for i := 0; i+1 < n; i++ {
		adj[i], adj[i+1] = append(adj[i], i+1), append(adj[i+1], i)
	}
	return adj
}

// diameter is the longest shortest path of the mesh adj, in hops.
func diameter(adj [][]int) int {
	d := 0
	for s := range adj {
		for _, h := range ssrsim.HopDistances(adj, s) {
			d = max(d, int(h))
		}
	}
	return d
}
