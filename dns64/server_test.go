package dns64

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/sipmesh/sipmesh/internal/leakcheck"
)

// TestMeshZone asks the authoritative .mesh names over the LAN (IPv4) and
// the mesh (IPv6) socket of one node.
func TestMeshZone(t *testing.T) {
	leakcheck.Check(t)
	r := newRig(t, nil)
	const (
		noerror  = dns.RcodeSuccess
		nxdomain = dns.RcodeNameError
	)
	soa := "mesh. 0 IN SOA sipserver.mesh. hostmaster.mesh. 1 3600 600 86400 30"
	tests := []struct {
		name   string
		server netip.AddrPort
		qname  string
		qtype  uint16
		rcode  int
		answer []string
		extra  []string
		ns     []string
	}{
		{"sipserver A on LAN", r.lan, "sipserver.mesh.", dns.TypeA, noerror,
			[]string{"sipserver.mesh. 0 IN A 10.0.0.1"}, nil, nil},
		{"sipserver AAAA on mesh", r.msh, "sipserver.mesh.", dns.TypeAAAA, noerror,
			[]string{"sipserver.mesh. 0 IN AAAA fd00::1"}, nil, nil},
		{"sipserver AAAA on LAN is NODATA", r.lan, "sipserver.mesh.", dns.TypeAAAA, noerror, nil, nil, []string{soa}},
		{"0x20 case kept", r.lan, "SiPsErVeR.MeSh.", dns.TypeA, noerror,
			[]string{"SiPsErVeR.MeSh. 0 IN A 10.0.0.1"}, nil, nil},
		{"node name", r.lan, "node1.mesh.", dns.TypeAAAA, noerror, []string{"node1.mesh. 0 IN AAAA fd00::1"}, nil, nil},
		{"node name A is NODATA", r.lan, "node1.mesh.", dns.TypeA, noerror, nil, nil, []string{soa}},
		{"node name ANY", r.lan, "node2.mesh.", dns.TypeANY, noerror,
			[]string{"node2.mesh. 0 IN AAAA fd00::2", "node2.mesh. 0 IN A 10.0.1.1"}, nil, nil},
		{"host under node", r.msh, "phone.node1.mesh.", dns.TypeA, noerror,
			[]string{"phone.node1.mesh. 0 IN A 10.0.0.77"}, nil, nil},
		{"MX of a node is NODATA", r.lan, "node1.mesh.", dns.TypeMX, noerror, nil, nil, []string{soa}},
		{"unknown name", r.lan, "nosuch.mesh.", dns.TypeA, nxdomain, nil, nil, []string{soa}},
		{"empty non-terminal from zone", r.lan, "node3.mesh.", dns.TypeA, noerror, nil, nil, []string{soa}},
		{"below sipserver", r.lan, "x.sipserver.mesh.", dns.TypeA, nxdomain, nil, nil, []string{soa}},
		{"SRV udp", r.lan, "_sip._udp.mesh.", dns.TypeSRV, noerror,
			[]string{"_sip._udp.mesh. 0 IN SRV 0 0 5060 sipserver.mesh."},
			[]string{"sipserver.mesh. 0 IN A 10.0.0.1"}, nil},
		{"SRV tcp on mesh", r.msh, "_sip._tcp.mesh.", dns.TypeSRV, noerror,
			[]string{"_sip._tcp.mesh. 0 IN SRV 0 0 5060 sipserver.mesh."},
			[]string{"sipserver.mesh. 0 IN AAAA fd00::1"}, nil},
		{"SRV name A is NODATA", r.lan, "_sip._udp.mesh.", dns.TypeA, noerror, nil, nil, []string{soa}},
		{"_udp is an empty non-terminal", r.lan, "_udp.mesh.", dns.TypeSRV, noerror, nil, nil, []string{soa}},
		{"below _udp", r.lan, "_sips._udp.mesh.", dns.TypeSRV, nxdomain, nil, nil, []string{soa}},
		{"NAPTR", r.lan, "mesh.", dns.TypeNAPTR, noerror,
			[]string{`mesh. 0 IN NAPTR 10 10 "S" "SIP+D2U" "" _sip._udp.mesh.`, `mesh. 0 IN NAPTR 10 20 "S" "SIP+D2T" "" _sip._tcp.mesh.`},
			[]string{"_sip._udp.mesh. 0 IN SRV 0 0 5060 sipserver.mesh.", "_sip._tcp.mesh. 0 IN SRV 0 0 5060 sipserver.mesh.", "sipserver.mesh. 0 IN A 10.0.0.1"}, nil},
		{"SOA", r.lan, "mesh.", dns.TypeSOA, noerror, []string{soa}, nil, nil},
		{"NS", r.lan, "mesh.", dns.TypeNS, noerror, []string{"mesh. 0 IN NS sipserver.mesh."},
			[]string{"sipserver.mesh. 0 IN A 10.0.0.1"}, nil},
		{"apex A is NODATA", r.lan, "mesh.", dns.TypeA, noerror, nil, nil, []string{soa}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := r.ask(t, tt.server, tt.qname, tt.qtype)
			if m.Rcode != tt.rcode || !m.Authoritative || m.Truncated {
				t.Errorf("rcode %s aa %v tc %v, want %s aa", dns.RcodeToString[m.Rcode], m.Authoritative, m.Truncated, dns.RcodeToString[tt.rcode])
			}
			if m.Question[0].Name != tt.qname {
				t.Errorf("question %q, want %q", m.Question[0].Name, tt.qname)
			}
			check := func(section string, got []dns.RR, want []string) {
				if g := rrStrings(got); !slices.Equal(g, want) {
					t.Errorf("%s:\n got %q\nwant %q", section, g, want)
				}
			}
			check("answer", m.Answer, tt.answer)
			check("additional", m.Extra, tt.extra)
			check("authority", m.Ns, tt.ns)
		})
	}
	// TTLs: records get Config.TTL, the negative SOA the negative TTL.
	m := r.ask(t, r.lan, "node1.mesh.", dns.TypeAAAA)
	if ttl := m.Answer[0].Header().Ttl; ttl != 60 {
		t.Errorf("record TTL %d, want 60", ttl)
	}
	m = r.ask(t, r.lan, "nosuch.mesh.", dns.TypeA)
	if ttl := m.Ns[0].Header().Ttl; ttl != 30 {
		t.Errorf("negative SOA TTL %d, want 30", ttl)
	}
}

// TestMeshSelfPerListener: each listen address answers sipserver.mesh
// with its own Self addresses.
func TestMeshSelfPerListener(t *testing.T) {
	leakcheck.Check(t)
	lanV6 := netip.MustParseAddr("fd00::1")
	r := newRig(t, func(c *Config) {
		c.Listen[0].Self = []netip.Addr{nodeV4, lanV6}
	})
	m := r.ask(t, r.lan, "sipserver.mesh.", dns.TypeANY)
	want := []string{"sipserver.mesh. 0 IN A 10.0.0.1", "sipserver.mesh. 0 IN AAAA fd00::1"}
	if got := rrStrings(m.Answer); !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

// TestMeshRefusals: other classes, zone transfers and non-query opcodes.
func TestMeshRefusals(t *testing.T) {
	leakcheck.Check(t)
	r := newRig(t, nil)
	m := question("node1.mesh.", dns.TypeA)
	m.Question[0].Qclass = dns.ClassCHAOS
	if got := exchange(t, r.client, "udp", r.lan, m); got.Rcode != dns.RcodeRefused {
		t.Errorf("CH class: %s", dns.RcodeToString[got.Rcode])
	}
	if got := exchange(t, r.client, "tcp", r.lan, question("mesh.", dns.TypeAXFR)); got.Rcode != dns.RcodeRefused {
		t.Errorf("AXFR: %s", dns.RcodeToString[got.Rcode])
	}
	n := question("mesh.", dns.TypeSOA)
	n.Opcode = dns.OpcodeNotify
	if got := exchange(t, r.client, "udp", r.lan, n); got.Rcode != dns.RcodeNotImplemented {
		t.Errorf("NOTIFY: %s", dns.RcodeToString[got.Rcode])
	}
	n = question("mesh.", dns.TypeSOA)
	n.Opcode = dns.OpcodeUpdate
	if got := exchange(t, r.client, "udp", r.lan, n); got.Rcode != dns.RcodeNotImplemented {
		t.Errorf("UPDATE: %s", dns.RcodeToString[got.Rcode])
	}
}

type failingZone struct{}

func (failingZone) LookupName(context.Context, string) ([]netip.Addr, error) {
	return nil, fmt.Errorf("dht: no replica answered")
}

func TestZoneFailureIsServfail(t *testing.T) {
	leakcheck.Check(t)
	r := newRig(t, func(c *Config) { c.Zone = failingZone{} })
	m := r.ask(t, r.lan, "node1.mesh.", dns.TypeAAAA)
	if m.Rcode != dns.RcodeServerFailure || m.Authoritative {
		t.Errorf("rcode %s aa %v, want SERVFAIL without AA", dns.RcodeToString[m.Rcode], m.Authoritative)
	}
	// The names the server owns do not need the zone.
	if m := r.ask(t, r.lan, "sipserver.mesh.", dns.TypeA); m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
		t.Errorf("sipserver.mesh with a failing zone: %v", m)
	}
}

// TestEDNS: the OPT record is echoed with our size and the DO bit, an
// unknown version gets BADVERS, a query without EDNS gets no OPT.
func TestEDNS(t *testing.T) {
	leakcheck.Check(t)
	r := newRig(t, nil)
	m := question("sipserver.mesh.", dns.TypeA)
	m.SetEdns0(4096, true)
	got := exchange(t, r.client, "udp", r.lan, m)
	opt := got.IsEdns0()
	if opt == nil || opt.UDPSize() != 1232 || !opt.Do() || opt.Version() != 0 || got.Rcode != dns.RcodeSuccess {
		t.Errorf("EDNS reply: opt %v rcode %s", opt, dns.RcodeToString[got.Rcode])
	}

	m = question("sipserver.mesh.", dns.TypeA)
	m.SetEdns0(1232, false)
	m.IsEdns0().SetVersion(1)
	got = exchange(t, r.client, "udp", r.lan, m)
	if got.Rcode != dns.RcodeBadVers || got.IsEdns0() == nil || len(got.Answer) != 0 {
		t.Errorf("EDNS version 1: rcode %s opt %v answer %v", dns.RcodeToString[got.Rcode], got.IsEdns0(), got.Answer)
	}

	got = exchange(t, r.client, "udp", r.lan, question("sipserver.mesh.", dns.TypeA))
	if got.IsEdns0() != nil {
		t.Errorf("reply to a query without EDNS has an OPT: %v", got)
	}
}

// TestTruncation: an answer larger than the client's UDP size is truncated
// with TC set (at 512 bytes without EDNS, at the advertised size with it),
// and complete over TCP.
func TestTruncation(t *testing.T) {
	leakcheck.Check(t)
	var many []netip.Addr
	for i := range 80 {
		many = append(many, netip.AddrFrom16([16]byte{0xfd, 15: byte(i + 1)}))
	}
	zone := StaticZone{"big.node1.mesh": many}
	r := newRig(t, func(c *Config) { c.Zone = zone })

	m := r.ask(t, r.lan, "big.node1.mesh.", dns.TypeAAAA)
	if !m.Truncated || len(m.Answer) == 0 || len(m.Answer) >= 80 {
		t.Errorf("UDP without EDNS: tc %v, %d answers", m.Truncated, len(m.Answer))
	}
	m.Compress = true
	if b, _ := m.Pack(); len(b) > 512 {
		t.Errorf("UDP reply without EDNS is %d bytes", len(b))
	}
	small := len(m.Answer)

	q := question("big.node1.mesh.", dns.TypeAAAA)
	q.SetEdns0(4096, false)
	m = exchange(t, r.client, "udp", r.lan, q)
	if !m.Truncated || len(m.Answer) <= small || m.IsEdns0() == nil {
		t.Errorf("UDP with EDNS 4096 (capped at 1232): tc %v, %d answers, opt %v", m.Truncated, len(m.Answer), m.IsEdns0())
	}
	m.Compress = true
	if b, _ := m.Pack(); len(b) > 1232 {
		t.Errorf("UDP reply with EDNS is %d bytes", len(b))
	}

	m = exchange(t, r.client, "tcp", r.lan, question("big.node1.mesh.", dns.TypeAAAA))
	if m.Truncated || len(m.Answer) != 80 {
		t.Errorf("TCP: tc %v, %d answers, want 80", m.Truncated, len(m.Answer))
	}
}

// TestAdditionalDroppedWithoutTC: glue that does not fit is left out
// without TC (RFC 2181 §9).
func TestAdditionalDroppedWithoutTC(t *testing.T) {
	m := new(dns.Msg)
	m.SetQuestion("_sip._udp.mesh.", dns.TypeSRV)
	m.Answer = []dns.RR{&dns.SRV{Hdr: hdr("_sip._udp.mesh.", dns.TypeSRV, 60), Port: 5060, Target: sipServer}}
	for i := range 40 {
		m.Extra = append(m.Extra, &dns.AAAA{Hdr: hdr(sipServer, dns.TypeAAAA, 60), AAAA: netip.AddrFrom16([16]byte{0xfd, 15: byte(i)}).AsSlice()})
	}
	fit(m, 512)
	if m.Truncated || len(m.Answer) != 1 || len(m.Extra) != 0 {
		t.Errorf("tc %v answers %d extra %d", m.Truncated, len(m.Answer), len(m.Extra))
	}
}

// TestMalformed sends bytes that are not a DNS query: a header with a bad
// body gets FORMERR, a runt gets nothing, and the server keeps serving.
func TestMalformed(t *testing.T) {
	leakcheck.Check(t)
	r := newRig(t, nil)
	ctx := context.Background()
	c, err := r.client.Dial(ctx, "udp", r.lan.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// ID 0x1234, RD, one question whose name runs off the end.
	bad := []byte{0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 7, 'e', 'x'}
	runt := []byte{1, 2, 3}
	for _, b := range [][]byte{runt, bad} {
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	var m dns.Msg
	if err := m.Unpack(buf[:n]); err != nil {
		t.Fatalf("reply to garbage does not parse: %v", err)
	}
	if m.Id != 0x1234 || m.Rcode != dns.RcodeFormatError {
		t.Errorf("reply id %#x rcode %s, want 0x1234 FORMERR", m.Id, dns.RcodeToString[m.Rcode])
	}
	if got := r.ask(t, r.lan, "sipserver.mesh.", dns.TypeA); len(got.Answer) != 1 {
		t.Errorf("server stopped answering after garbage")
	}
	if st := r.srv.Stats(); st.Malformed != 2 {
		t.Errorf("Malformed = %d, want 2", st.Malformed)
	}
}

// TestRateLimit: beyond the burst, queries from one source are dropped;
// another source is unaffected.
func TestRateLimit(t *testing.T) {
	leakcheck.Check(t)
	now := time.Unix(1e9, 0)
	r := newRig(t, func(c *Config) {
		c.Rate, c.Burst = 1, 3
		c.Now = func() time.Time { return now } // frozen: no refill
	})
	for i := range 3 {
		if _, err := tryExchange(r.client, "udp", r.lan, question("sipserver.mesh.", dns.TypeA), 5*time.Second); err != nil {
			t.Fatalf("query %d within the burst: %v", i, err)
		}
	}
	if _, err := tryExchange(r.client, "udp", r.lan, question("sipserver.mesh.", dns.TypeA), 300*time.Millisecond); err == nil {
		t.Error("query beyond the burst was answered")
	}
	if st := r.srv.Stats(); st.RateLimited != 1 {
		t.Errorf("RateLimited = %d, want 1", st.RateLimited)
	}
	// The node itself (another source) still gets answers.
	if _, err := tryExchange(r.node, "udp", r.lan, question("sipserver.mesh.", dns.TypeA), 5*time.Second); err != nil {
		t.Errorf("other source: %v", err)
	}
	// Over TCP the limited source's connection is closed.
	if _, err := tryExchange(r.client, "tcp", r.lan, question("sipserver.mesh.", dns.TypeA), 2*time.Second); err == nil {
		t.Error("TCP query beyond the burst was answered")
	}
}

func TestConfigErrors(t *testing.T) {
	good := func() Config {
		return Config{Network: newTestHost(), Listen: []Listen{{Addr: nodeV4}}, Zone: testZone}
	}
	tests := []struct {
		field string
		mod   func(*Config)
	}{
		{"Network", func(c *Config) { c.Network = nil }},
		{"Zone", func(c *Config) { c.Zone = nil }},
		{"Listen", func(c *Config) { c.Listen = nil }},
		{"Listen[0].Addr", func(c *Config) { c.Listen[0].Addr = netip.IPv4Unspecified() }},
		{"Upstreams[0]", func(c *Config) { c.Upstreams = []netip.AddrPort{netip.AddrPortFrom(upV4, 0)} }},
		{"Prefix", func(c *Config) { c.Prefix = netip.MustParsePrefix("2001:db8::/44") }},
		{"TTL", func(c *Config) { c.TTL = time.Millisecond }},
		{"Port", func(c *Config) { c.Port = 70000 }},
		{"UDPSize", func(c *Config) { c.UDPSize = 100 }},
	}
	for _, tt := range tests {
		c := good()
		tt.mod(&c)
		_, err := New(c)
		if err == nil || !strings.Contains(err.Error(), tt.field) {
			t.Errorf("%s: error %v does not name the field", tt.field, err)
		}
	}
	if _, err := New(good()); err != nil {
		t.Errorf("good config: %v", err)
	}
}

// TestRunTwiceAndListenError: Run refuses a second call, and a port in use
// is an error naming the address, with nothing left open.
func TestRunTwiceAndListenError(t *testing.T) {
	leakcheck.Check(t)
	r := newRig(t, nil)
	if err := r.srv.Run(context.Background()); err == nil {
		t.Error("second Run succeeded")
	}
	s, err := New(Config{Network: r.node, Listen: []Listen{{Addr: nodeV4}}, Zone: testZone})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "10.0.0.1") {
		t.Errorf("Run on a used port: %v", err)
	}
}

// TestLimiter: a bucket per source refilling at the rate, a bounded table,
// unknown sources sharing one bucket when it is full of active ones, and
// idle sources reclaimed.
func TestLimiter(t *testing.T) {
	now := time.Unix(1e9, 0)
	l := newLimiter(10, 2, 3, func() time.Time { return now })
	a := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}) }
	for range 2 {
		if !l.allow(a(1)) {
			t.Fatal("within the burst: refused")
		}
	}
	if l.allow(a(1)) {
		t.Error("beyond the burst: allowed")
	}
	now = now.Add(100 * time.Millisecond) // one token at 10/s
	if !l.allow(a(1)) || l.allow(a(1)) {
		t.Error("refill: want exactly one more")
	}
	// Fill the table with active sources; newcomers share the overflow
	// bucket (burst 2) and the table does not grow.
	l.allow(a(2))
	l.allow(a(3))
	allowed := 0
	for i := 4; i < 104; i++ {
		if l.allow(a(i)) {
			allowed++
		}
	}
	if allowed != 2 || l.size() != 3 {
		t.Errorf("overflow: %d newcomers allowed, table %d; want 2 and 3", allowed, l.size())
	}
	// Once the known sources are idle (full again), they are reclaimed.
	now = now.Add(time.Second)
	if !l.allow(a(200)) || l.size() != 1 {
		t.Errorf("after idle sweep: table %d, want 1", l.size())
	}
	// IPv4-mapped and plain IPv4 are one source.
	mapped := netip.AddrFrom16(a(200).As16())
	l.allow(mapped)
	if l.size() != 1 {
		t.Errorf("mapped address counted separately: table %d", l.size())
	}
}

// blockingZone blocks look-ups until their context ends.
type blockingZone struct {
	entered chan struct{}
	once    *sync.Once
}

func newBlockingZone() blockingZone { return blockingZone{make(chan struct{}), new(sync.Once)} }

func (z blockingZone) LookupName(ctx context.Context, _ string) ([]netip.Addr, error) {
	z.once.Do(func() { close(z.entered) })
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestBusy: beyond MaxInflight zone look-ups, a query gets SERVFAIL at
// once instead of queueing; the server's own names still answer.
func TestBusy(t *testing.T) {
	leakcheck.Check(t)
	z := newBlockingZone()
	r := newRig(t, func(c *Config) { c.Zone, c.MaxInflight, c.QueryTimeout = z, 1, time.Hour })
	// The first look-up blocks until the server stops at the end of the
	// test; its client then gets SERVFAIL and returns (leakcheck waits).
	go tryExchange(r.client, "udp", r.lan, question("node1.mesh.", dns.TypeA), 5*time.Second)
	<-z.entered
	m := r.ask(t, r.lan, "node2.mesh.", dns.TypeA)
	if m.Rcode != dns.RcodeServerFailure || r.srv.Stats().Busy != 1 {
		t.Errorf("second look-up: rcode %s, busy %d", dns.RcodeToString[m.Rcode], r.srv.Stats().Busy)
	}
	if m := r.ask(t, r.lan, "sipserver.mesh.", dns.TypeA); len(m.Answer) != 1 {
		t.Errorf("sipserver.mesh while busy: %v", m)
	}
}

// TestShutdownWithQueryInFlight: cancelling Run ends a look-up in progress
// at once (not after QueryTimeout) and Run returns with nothing left
// running.
func TestShutdownWithQueryInFlight(t *testing.T) {
	leakcheck.Check(t)
	n := newTestNet(t)
	z := newBlockingZone()
	s, err := New(Config{Network: n.node, Listen: []Listen{{Addr: nodeV4}}, Zone: z, QueryTimeout: time.Hour, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	<-s.Ready()
	client := make(chan struct{})
	go func() {
		defer close(client)
		tryExchange(n.client, "udp", s.Addrs()[0], question("node1.mesh.", dns.TypeA), 10*time.Second)
	}()
	<-z.entered
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel with a look-up in flight")
	}
	<-client
}

// TestForwardCap: 64 LAN sources ask random names, each within its own
// rate: the upstream sees at most ForwardBurst + ForwardRate·t look-ups,
// the rest get SERVFAIL at once, and .mesh names and cached answers are
// still answered while the cap bites.
func TestForwardCap(t *testing.T) {
	leakcheck.Check(t)
	var mu sync.Mutex
	now := time.Unix(1e9, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	const rate, burst, sources, rounds, perRound = 50, 100, 64, 5, 10
	r := newRig(t, func(c *Config) {
		c.Rate, c.Burst = 1000, 1000 // per source: not what this test is about
		c.ForwardRate, c.ForwardBurst = rate, burst
		c.Now = clock
	})
	// Cached before the flood.
	if m := r.ask(t, r.lan, "v4only.example.", dns.TypeA); m.Rcode != dns.RcodeSuccess {
		t.Fatalf("v4only.example: %v", m)
	}
	before := r.up.total()

	ifc := r.client.Interface("eth0")
	conns := make([]net.PacketConn, sources)
	for i := range conns {
		a := netip.AddrFrom4([4]byte{10, 0, 0, byte(100 + i)})
		r.client.AddAddress(ifc, netip.PrefixFrom(a, 24))
		pc, err := r.client.ListenPacket(context.Background(), "udp4", netip.AddrPortFrom(a, 0).String())
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		conns[i] = pc
	}
	var rcodes [dns.RcodeBadCookie + 1]atomic.Int64
	for round := range rounds {
		var wg sync.WaitGroup
		for i, pc := range conns {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(round), uint64(i)))
				buf := make([]byte, 1500)
				for range perRound {
					q := question(fmt.Sprintf("r%x.example.", rng.Uint64()), dns.TypeA)
					b, _ := q.Pack()
					if _, err := pc.WriteTo(b, net.UDPAddrFromAddrPort(r.lan)); err != nil {
						t.Error(err)
						return
					}
					pc.SetReadDeadline(time.Now().Add(5 * time.Second))
					n, _, err := pc.ReadFrom(buf)
					if err != nil {
						t.Errorf("source %d: no answer: %v", i, err)
						return
					}
					var m dns.Msg
					if err := m.Unpack(buf[:n]); err != nil || m.Id != q.Id {
						t.Errorf("source %d: bad answer %v", i, err)
						return
					}
					rcodes[m.Rcode].Add(1)
				}
			})
		}
		wg.Wait()
		// While the cap bites: the zone and the cache still answer.
		if m := r.ask(t, r.lan, "sipserver.mesh.", dns.TypeA); len(m.Answer) != 1 {
			t.Errorf("round %d: sipserver.mesh: %v", round, m)
		}
		if m := r.ask(t, r.lan, "node2.mesh.", dns.TypeAAAA); len(m.Answer) != 1 {
			t.Errorf("round %d: node2.mesh: %v", round, m)
		}
		if m := r.ask(t, r.lan, "v4only.example.", dns.TypeA); m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
			t.Errorf("round %d: cached v4only.example: %v", round, m)
		}
		mu.Lock()
		now = now.Add(time.Second)
		mu.Unlock()
	}
	sent := sources * rounds * perRound
	up := r.up.total() - before
	limit := burst + rate*(rounds-1)
	st := r.srv.Stats()
	t.Logf("%d queries from %d sources over %d s: upstream saw %d (cap %d), NXDOMAIN %d, SERVFAIL %d; stats %+v",
		sent, sources, rounds, up, limit, rcodes[dns.RcodeNameError].Load(), rcodes[dns.RcodeServerFailure].Load(), st)
	if up > limit {
		t.Errorf("upstream saw %d look-ups, cap %d", up, limit)
	}
	if up < limit*9/10 {
		t.Errorf("upstream saw %d look-ups, want about the cap %d (the cap must not bite early)", up, limit)
	}
	if got := rcodes[dns.RcodeNameError].Load() + rcodes[dns.RcodeServerFailure].Load(); got != int64(sent) {
		t.Errorf("%d of %d queries answered NXDOMAIN or SERVFAIL", got, sent)
	}
	if int(st.Capped) != sent-up {
		t.Errorf("Capped = %d, want %d", st.Capped, sent-up)
	}
}

// TestCoalesce: identical look-ups in progress share one upstream
// exchange.
func TestCoalesce(t *testing.T) {
	leakcheck.Check(t)
	s, err := New(Config{Network: newTestHost(), Listen: []Listen{{Addr: nodeV4}}, Zone: testZone,
		Upstreams: []netip.AddrPort{netip.AddrPortFrom(upV4, 53)}, CacheSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	var calls atomic.Int64
	s.exchangeHook = func(_ context.Context, q *dns.Msg) (*dns.Msg, error) {
		calls.Add(1)
		<-release
		m := new(dns.Msg)
		m.SetReply(q)
		m.Answer = []dns.RR{&dns.A{Hdr: hdr(q.Question[0].Name, dns.TypeA, 60), A: net.IPv4(192, 0, 2, 1)}}
		return m, nil
	}
	var wg sync.WaitGroup
	const n = 20
	for range n {
		wg.Go(func() {
			r, err := s.resolve(context.Background(), "same.example.", dns.TypeA, dns.ClassINET)
			if err != nil || len(r.Answer) != 1 {
				t.Errorf("resolve: %v %v", r, err)
			}
		})
	}
	for s.Stats().Coalesced < n-1 {
		runtime.Gosched() // wait until all but the leader have joined
	}
	close(release)
	wg.Wait()
	if c := calls.Load(); c != 1 {
		t.Errorf("%d upstream exchanges for %d identical look-ups", c, n)
	}
	if len(s.flights) != 0 || len(s.sem) != 0 {
		t.Errorf("flight table %d, slots %d after the look-ups", len(s.flights), len(s.sem))
	}
}

// countingZone answers node1.mesh with one address that the test can
// change, and counts the look-ups.
type countingZone struct {
	mu    sync.Mutex
	addr  netip.Addr
	calls int
}

func (z *countingZone) LookupName(_ context.Context, name string) ([]netip.Addr, error) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.calls++
	if name != "node1.mesh" {
		return nil, ErrNoSuchName
	}
	return []netip.Addr{z.addr}, nil
}

func (z *countingZone) set(a netip.Addr) (calls int) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.addr = a
	return z.calls
}

// TestZoneCache: a zone answer (and a "no such name") is kept for
// zoneCacheTTL, so repeated queries cost one look-up; after that the
// zone is asked again and a moved name is seen. Failures are not kept
// (TestZoneFailureIsServfail asks again each time).
func TestZoneCache(t *testing.T) {
	leakcheck.Check(t)
	z := &countingZone{addr: netip.MustParseAddr("fd00::1")}
	var mu sync.Mutex
	now := time.Unix(1e9, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	r := newRig(t, func(c *Config) { c.Zone = z; c.Now = clock })
	answer := func() string {
		m := r.ask(t, r.lan, "node1.mesh.", dns.TypeAAAA)
		if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
			t.Fatalf("node1.mesh: %v", m)
		}
		return m.Answer[0].(*dns.AAAA).AAAA.String()
	}
	for range 10 {
		if got := answer(); got != "fd00::1" {
			t.Fatalf("answer %s", got)
		}
		r.ask(t, r.lan, "gone.mesh.", dns.TypeAAAA)
	}
	if calls := z.set(netip.MustParseAddr("fd00::2")); calls != 2 {
		t.Fatalf("%d zone look-ups for 20 queries of 2 names, want 2", calls)
	}
	advance(zoneCacheTTL - time.Second)
	if got := answer(); got != "fd00::1" {
		t.Fatalf("within the cache time: %s, want the kept fd00::1", got)
	}
	advance(time.Second)
	if got := answer(); got != "fd00::2" {
		t.Fatalf("after the cache time: %s, want the moved fd00::2", got)
	}
	for i := range 3 * zoneCacheSize {
		r.ask(t, r.lan, fmt.Sprintf("h%d.node1.mesh.", i), dns.TypeAAAA)
	}
	if n := r.srv.zcache.Len(); n > zoneCacheSize {
		t.Fatalf("%d names kept, bound %d", n, zoneCacheSize)
	}
}
