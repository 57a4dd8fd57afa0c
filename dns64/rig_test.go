package dns64

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/sipmesh/sipmesh/memnet"
	"github.com/sipmesh/sipmesh/netx"
)

// upstreamZone is the test resolver's data: an authoritative server for
// example. and in-addr.arpa. with CNAME following, NXDOMAIN/NODATA with
// SOA, and truncation over UDP, like a real recursive resolver's answers.
const upstreamZone = `
example.                 3600 IN SOA ns.example. host.example. 1 3600 600 86400 120
v4only.example.           300 IN A 198.51.100.10
global.example.           300 IN A 8.8.8.8
global.example.           300 IN A 192.168.1.1
dual.example.             300 IN A 8.8.4.4
dual.example.             300 IN AAAA 2001:db8::44
mapped.example.           300 IN AAAA ::ffff:1.2.3.4
mapped.example.           300 IN A 1.2.3.4
mixed.example.            300 IN AAAA ::ffff:1.2.3.4
mixed.example.            300 IN AAAA 2001:db8::5
mixed.example.            300 IN A 1.2.3.5
alias.example.            200 IN CNAME v4only.example.
textonly.example.         300 IN TXT "no addresses"
servfail.example.         300 IN A 9.9.9.9
private.example.          300 IN A 10.1.2.3
10.100.51.198.in-addr.arpa. 300 IN PTR v4only.example.
`

type upstream struct {
	mu      sync.Mutex
	rrs     map[string][]dns.RR // by lower-case owner
	queries map[string]int      // "name type proto"
}

func newUpstream(t testing.TB, extra ...string) *upstream {
	u := &upstream{rrs: map[string][]dns.RR{}, queries: map[string]int{}}
	lines := strings.Split(upstreamZone, "\n")
	lines = append(lines, extra...)
	for _, line := range lines {
		if strings.TrimSpace(line) == "" {
			continue
		}
		rr, err := dns.NewRR(line)
		if err != nil {
			t.Fatalf("upstream zone %q: %v", line, err)
		}
		n := strings.ToLower(rr.Header().Name)
		u.rrs[n] = append(u.rrs[n], rr)
	}
	return u
}

func (u *upstream) count(name string, qtype uint16, proto string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.queries[fmt.Sprintf("%s %s %s", name, dns.TypeToString[qtype], proto)]
}

func (u *upstream) total() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for _, c := range u.queries {
		n += c
	}
	return n
}

func (u *upstream) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	proto := "udp"
	if isTCP(w) {
		proto = "tcp"
	}
	u.mu.Lock()
	u.queries[fmt.Sprintf("%s %s %s", name, dns.TypeToString[q.Qtype], proto)]++
	u.mu.Unlock()

	m := new(dns.Msg)
	m.SetReply(req)
	m.RecursionAvailable = true
	if name == "servfail.example." && q.Qtype == dns.TypeAAAA {
		m.Rcode = dns.RcodeServerFailure
		w.WriteMsg(m)
		return
	}
	for range 8 { // follow CNAMEs
		rrs, ok := u.rrs[name]
		if !ok {
			m.Rcode = dns.RcodeNameError
			break
		}
		var cname *dns.CNAME
		for _, rr := range rrs {
			if rr.Header().Rrtype == q.Qtype {
				m.Answer = append(m.Answer, dns.Copy(rr))
			}
			if c, ok := rr.(*dns.CNAME); ok {
				cname = c
			}
		}
		if len(m.Answer) > 0 && m.Answer[len(m.Answer)-1].Header().Rrtype == q.Qtype || cname == nil || q.Qtype == dns.TypeCNAME {
			break
		}
		m.Answer = append(m.Answer, dns.Copy(cname))
		name = strings.ToLower(cname.Target)
	}
	hasData := false
	for _, rr := range m.Answer {
		hasData = hasData || rr.Header().Rrtype == q.Qtype
	}
	if !hasData {
		soa := u.rrs["example."][0]
		if strings.HasSuffix(name, ".in-addr.arpa.") {
			soa, _ = dns.NewRR("in-addr.arpa. 3600 IN SOA ns.example. host.example. 1 3600 600 86400 120")
		}
		m.Ns = append(m.Ns, soa)
	}
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(opt.UDPSize(), false)
	}
	if !isTCP(w) {
		size := dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			size = int(opt.UDPSize())
		}
		m.Truncate(size)
	}
	w.WriteMsg(m)
}

func isTCP(w dns.ResponseWriter) bool {
	_, ok := w.RemoteAddr().(*net.TCPAddr)
	return ok
}

// serveMiekg runs a miekg server for h on the given sockets until the test
// ends.
func serveMiekg(t testing.TB, h dns.Handler, pc net.PacketConn, ln net.Listener) {
	t.Helper()
	var wg sync.WaitGroup
	var servers []*dns.Server
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		if srv.PacketConn == nil && srv.Listener == nil {
			continue
		}
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		wg.Go(func() { srv.ActivateAndServe() })
		<-started
		servers = append(servers, srv)
	}
	t.Cleanup(func() {
		for _, srv := range servers {
			srv.Shutdown()
		}
		wg.Wait()
	})
}

// rig is a memnet LAN with a node (the server under test), a client and an
// upstream resolver.
type rig struct {
	n        *memnet.Network
	node     *memnet.Host
	client   *memnet.Host
	up       *upstream
	srv      *Server
	lan, msh netip.AddrPort // the server's two addresses
	done     chan error
}

var (
	nodeV4   = netip.MustParseAddr("10.0.0.1")
	nodeV6   = netip.MustParseAddr("fd00::1")
	clientV4 = netip.MustParseAddr("10.0.0.2")
	upV4     = netip.MustParseAddr("10.0.0.53")
)

var testZone = StaticZone{
	"node1.mesh":       {nodeV6},
	"node2.mesh":       {netip.MustParseAddr("fd00::2"), netip.MustParseAddr("10.0.1.1")},
	"phone.node1.mesh": {netip.MustParseAddr("10.0.0.77")},
	"empty.node3.mesh": {},
}

type testNet struct {
	n                 *memnet.Network
	node, client, uph *memnet.Host
}

// newTestNet is the LAN: node, client and upstream host on one segment.
func newTestNet(t testing.TB) *testNet {
	n := memnet.New(memnet.Config{Seed: 1})
	seg := n.NewSegment("lan", memnet.LinkConfig{})
	node, client, uph := n.AddHost("node"), n.AddHost("client"), n.AddHost("up")
	seg.Attach(node.AddInterface("eth0", 1500, netip.PrefixFrom(nodeV4, 24), netip.PrefixFrom(nodeV6, 64)))
	seg.Attach(client.AddInterface("eth0", 1500, netip.PrefixFrom(clientV4, 24), netip.MustParsePrefix("fd00::2/64")))
	seg.Attach(uph.AddInterface("eth0", 1500, netip.PrefixFrom(upV4, 24)))
	return &testNet{n, node, client, uph}
}

func newRig(t *testing.T, mod func(*Config)) *rig {
	t.Helper()
	tn := newTestNet(t)
	n, node, client, uph := tn.n, tn.node, tn.client, tn.uph

	up := newUpstream(t)
	ctx := context.Background()
	pc, err := uph.ListenPacket(ctx, "udp", "10.0.0.53:53")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := uph.Listen(ctx, "tcp", "10.0.0.53:53")
	if err != nil {
		t.Fatal(err)
	}
	serveMiekg(t, up, pc, ln)

	cfg := Config{
		Network:   node,
		Listen:    []Listen{{Addr: nodeV4}, {Addr: nodeV6}},
		Zone:      testZone,
		Upstreams: []netip.AddrPort{netip.AddrPortFrom(upV4, 53)},
		Prefix:    netip.MustParsePrefix("2001:db8:64::/96"),
	}
	cfg.Logger = testLogger(t)
	if mod != nil {
		mod(&cfg)
	}
	r := &rig{n: n, node: node, client: client, up: up, done: make(chan error, 1)}
	r.srv = startServer(t, cfg, r.done)
	addrs := r.srv.Addrs()
	r.lan, r.msh = addrs[0], addrs[1]
	return r
}

// startServer runs a Server until the test ends; Run's error goes to done.
func startServer(t testing.TB, cfg Config, done chan error) *Server {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-s.Ready():
	case err := <-done:
		t.Fatalf("Run: %v", err)
	}
	return s
}

// exchange sends m from net over network to server and returns the reply.
func exchange(t testing.TB, nw netx.Network, network string, server netip.AddrPort, m *dns.Msg) *dns.Msg {
	t.Helper()
	r, err := tryExchange(nw, network, server, m, 5*time.Second)
	if err != nil {
		t.Fatalf("%s %v %s %s: %v", network, server, m.Question[0].Name, dns.TypeToString[m.Question[0].Qtype], err)
	}
	return r
}

func tryExchange(nw netx.Network, network string, server netip.AddrPort, m *dns.Msg, timeout time.Duration) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := nw.Dial(ctx, network, server.String())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	cl := dns.Client{Net: network, Timeout: timeout}
	r, _, err := cl.ExchangeWithConnContext(ctx, m, &dns.Conn{Conn: c, UDPSize: 65535})
	return r, err
}

func question(name string, qtype uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.RecursionDesired = true
	return m
}

func (r *rig) ask(t testing.TB, server netip.AddrPort, name string, qtype uint16) *dns.Msg {
	t.Helper()
	return exchange(t, r.client, "udp", server, question(name, qtype))
}

// rrStrings renders records without TTLs for comparison.
func rrStrings(rrs []dns.RR) []string {
	var out []string
	for _, rr := range rrs {
		if rr.Header().Rrtype == dns.TypeOPT {
			continue
		}
		rr = dns.Copy(rr)
		rr.Header().Ttl = 0
		out = append(out, strings.ReplaceAll(rr.String(), "\t", " "))
	}
	return out
}

func newTestHost() *memnet.Host { return memnet.New(memnet.Config{}).AddHost("x") }

// testLogger logs warnings and errors into the test's output.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}
