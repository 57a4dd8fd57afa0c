package dns64

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/sipmesh/sipmesh/internal/leakcheck"
)

// TestDNS64 runs the synthesis cases against the memnet upstream with the
// issue's network-specific prefix and with the Well-Known Prefix.
func TestDNS64(t *testing.T) {
	leakcheck.Check(t)
	nsp := newRig(t, nil) // 2001:db8:64::/96
	wkp := newRig(t, func(c *Config) { c.Prefix = WellKnownPrefix })
	tests := []struct {
		name   string
		r      *rig
		qname  string
		rcode  int
		answer []string
		ttl    uint32 // of the last answer record, if not 0
	}{
		// The case: v4only.example A 198.51.100.10 under
		// 2001:db8:64::/96. TTL = min(A 300, SOA minimum 120) (§5.1.7).
		{"issue case, network-specific prefix", nsp, "v4only.example.", dns.RcodeSuccess,
			[]string{"v4only.example. 0 IN AAAA 2001:db8:64::c633:640a"}, 120},
		// The same special-use (TEST-NET-2) address is not synthesized
		// under the Well-Known Prefix (RFC 6052 §3.1): NODATA remains.
		{"special-use address under WKP", wkp, "v4only.example.", dns.RcodeSuccess, nil, 0},
		// A global address is; the private one beside it is not.
		{"global address under WKP", wkp, "global.example.", dns.RcodeSuccess,
			[]string{"global.example. 0 IN AAAA 64:ff9b::808:808"}, 0},
		{"private address under NSP", nsp, "private.example.", dns.RcodeSuccess,
			[]string{"private.example. 0 IN AAAA 2001:db8:64::a01:203"}, 0},
		{"private address under WKP", wkp, "private.example.", dns.RcodeSuccess, nil, 0},
		// Real AAAA records pass through (§5.1.1).
		{"real AAAA", nsp, "dual.example.", dns.RcodeSuccess, []string{"dual.example. 0 IN AAAA 2001:db8::44"}, 300},
		// IPv4-mapped AAAA counts as absent (§5.1.4): synthesized instead.
		{"mapped AAAA only", nsp, "mapped.example.", dns.RcodeSuccess,
			[]string{"mapped.example. 0 IN AAAA 2001:db8:64::102:304"}, 0},
		// Mapped beside a real one: the mapped one is removed.
		{"mapped and real AAAA", nsp, "mixed.example.", dns.RcodeSuccess, []string{"mixed.example. 0 IN AAAA 2001:db8::5"}, 0},
		// NXDOMAIN passes through without synthesis (§5.1.2).
		{"NXDOMAIN", nsp, "nosuch.example.", dns.RcodeNameError, nil, 0},
		// The CNAME chain is kept (§5.3.3); the AAAA is owned by the
		// chain's end.
		{"CNAME chain", nsp, "alias.example.", dns.RcodeSuccess,
			[]string{"alias.example. 0 IN CNAME v4only.example.", "v4only.example. 0 IN AAAA 2001:db8:64::c633:640a"}, 0},
		// No A either: NODATA.
		{"no addresses", nsp, "textonly.example.", dns.RcodeSuccess, nil, 0},
		// SERVFAIL for AAAA is treated as empty (§5.1.2).
		{"SERVFAIL AAAA", nsp, "servfail.example.", dns.RcodeSuccess,
			[]string{"servfail.example. 0 IN AAAA 2001:db8:64::909:909"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := tt.r.ask(t, tt.r.lan, tt.qname, dns.TypeAAAA)
			if m.Rcode != tt.rcode || !m.RecursionAvailable || m.Authoritative {
				t.Errorf("rcode %s ra %v aa %v, want %s ra", dns.RcodeToString[m.Rcode], m.RecursionAvailable, m.Authoritative, dns.RcodeToString[tt.rcode])
			}
			if got := rrStrings(m.Answer); !slices.Equal(got, tt.answer) {
				t.Errorf("answer:\n got %q\nwant %q", got, tt.answer)
			}
			if len(tt.answer) == 0 && findSOA(m.Ns) == nil {
				t.Errorf("negative answer without SOA: %v", m)
			}
			if tt.ttl != 0 && len(m.Answer) > 0 {
				if got := m.Answer[len(m.Answer)-1].Header().Ttl; got != tt.ttl {
					t.Errorf("TTL %d, want %d", got, tt.ttl)
				}
			}
		})
	}
	// NXDOMAIN needs no A query (§5.1.2); NODATA does (§5.1.6).
	if n := nsp.up.count("nosuch.example.", dns.TypeA, "udp"); n != 0 {
		t.Errorf("A queries after NXDOMAIN: %d", n)
	}
	if n := nsp.up.count("v4only.example.", dns.TypeA, "udp"); n != 1 {
		t.Errorf("A queries for v4only.example: %d", n)
	}
	// A queries and other types are forwarded as they are.
	m := nsp.ask(t, nsp.lan, "v4only.example.", dns.TypeA)
	if got := rrStrings(m.Answer); !slices.Equal(got, []string{"v4only.example. 0 IN A 198.51.100.10"}) {
		t.Errorf("A: %q", got)
	}
	m = nsp.ask(t, nsp.lan, "textonly.example.", dns.TypeTXT)
	if len(m.Answer) != 1 {
		t.Errorf("TXT: %v", m)
	}
	// Over IPv6 (the mesh socket) too.
	m = nsp.ask(t, nsp.msh, "V4ONLY.example.", dns.TypeAAAA)
	if got := rrStrings(m.Answer); !slices.Equal(got, []string{"v4only.example. 0 IN AAAA 2001:db8:64::c633:640a"}) || m.Question[0].Name != "V4ONLY.example." {
		t.Errorf("over the mesh socket: %q, question %v", got, m.Question)
	}
}

// TestDNS64PTR: PTR for a synthesized address is a CNAME to the
// in-addr.arpa name plus the upstream's answer for it (RFC 6147 §5.3.1).
func TestDNS64PTR(t *testing.T) {
	leakcheck.Check(t)
	r := newRig(t, nil)
	name := reverseName6(netip.MustParseAddr("2001:db8:64::c633:640a"))
	m := r.ask(t, r.lan, name, dns.TypePTR)
	want := []string{name + " 0 IN CNAME 10.100.51.198.in-addr.arpa.", "10.100.51.198.in-addr.arpa. 0 IN PTR v4only.example."}
	if got := rrStrings(m.Answer); m.Rcode != dns.RcodeSuccess || !slices.Equal(got, want) {
		t.Errorf("rcode %s answer:\n got %q\nwant %q", dns.RcodeToString[m.Rcode], got, want)
	}
	// An address without a PTR: the CNAME and the upstream's NXDOMAIN.
	name = reverseName6(netip.MustParseAddr("2001:db8:64::808:808"))
	m = r.ask(t, r.lan, name, dns.TypePTR)
	if m.Rcode != dns.RcodeNameError || len(m.Answer) != 1 || m.Answer[0].Header().Rrtype != dns.TypeCNAME {
		t.Errorf("PTR without upstream data: %v", m)
	}
	// Outside the prefix: forwarded as it is.
	name = reverseName6(netip.MustParseAddr("2001:db8:65::1"))
	m = r.ask(t, r.lan, name, dns.TypePTR)
	if len(m.Answer) != 0 || r.up.count(name, dns.TypePTR, "udp") != 1 {
		t.Errorf("PTR outside the prefix: %v", m)
	}
}

// TestUpstreamTCPRetry: a truncated upstream answer is asked again over
// TCP; the full answer then reaches a TCP client, and a UDP client gets
// it truncated.
func TestUpstreamTCPRetry(t *testing.T) {
	leakcheck.Check(t)
	n := memnetRigWithExtra(t)
	m := exchange(t, n.client, "tcp", n.lan, question("big.example.", dns.TypeA))
	if m.Truncated || len(m.Answer) != 100 {
		t.Errorf("TCP client: tc %v, %d answers, want 100", m.Truncated, len(m.Answer))
	}
	if u, tc := n.up.count("big.example.", dns.TypeA, "udp"), n.up.count("big.example.", dns.TypeA, "tcp"); u != 1 || tc != 1 {
		t.Errorf("upstream saw %d UDP and %d TCP queries, want 1 and 1", u, tc)
	}
	if st := n.srv.Stats(); st.TCPRetries != 1 {
		t.Errorf("TCPRetries = %d", st.TCPRetries)
	}
	m = n.ask(t, n.lan, "big.example.", dns.TypeA)
	if !m.Truncated || len(m.Answer) >= 100 {
		t.Errorf("UDP client: tc %v, %d answers", m.Truncated, len(m.Answer))
	}
	// Synthesis from the big A set over TCP: 100 AAAA records.
	m = exchange(t, n.client, "tcp", n.lan, question("big.example.", dns.TypeAAAA))
	if len(m.Answer) != 100 {
		t.Errorf("synthesized over TCP: %d answers", len(m.Answer))
	}
}

func memnetRigWithExtra(t *testing.T) *rig {
	r := newRig(t, nil)
	for i := range 100 {
		rr, err := dns.NewRR(fmt.Sprintf("big.example. 300 IN A 8.8.%d.%d", i/250, i%250+1))
		if err != nil {
			t.Fatal(err)
		}
		r.up.mu.Lock()
		r.up.rrs["big.example."] = append(r.up.rrs["big.example."], rr)
		r.up.mu.Unlock()
	}
	return r
}

// TestCache: positive and negative answers are served from the cache until
// their TTL runs out, with TTLs counting down.
func TestCache(t *testing.T) {
	leakcheck.Check(t)
	var mu sync.Mutex
	now := time.Unix(1e9, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	r := newRig(t, func(c *Config) { c.Now = clock })

	for range 3 {
		m := r.ask(t, r.lan, "v4only.example.", dns.TypeA)
		if len(m.Answer) != 1 {
			t.Fatalf("A: %v", m)
		}
	}
	if n := r.up.count("v4only.example.", dns.TypeA, "udp"); n != 1 {
		t.Errorf("upstream A queries: %d, want 1", n)
	}
	advance(100 * time.Second)
	m := r.ask(t, r.lan, "v4only.example.", dns.TypeA)
	if ttl := m.Answer[0].Header().Ttl; ttl != 200 {
		t.Errorf("cached TTL after 100 s: %d, want 200", ttl)
	}
	// Negative: NXDOMAIN with SOA, cached for min(SOA TTL, MINIMUM) = 120.
	r.ask(t, r.lan, "nosuch.example.", dns.TypeA)
	r.ask(t, r.lan, "nosuch.example.", dns.TypeA)
	if n := r.up.count("nosuch.example.", dns.TypeA, "udp"); n != 1 {
		t.Errorf("upstream NXDOMAIN queries: %d, want 1", n)
	}
	advance(121 * time.Second)
	r.ask(t, r.lan, "nosuch.example.", dns.TypeA)
	if n := r.up.count("nosuch.example.", dns.TypeA, "udp"); n != 2 {
		t.Errorf("upstream NXDOMAIN queries after the negative TTL: %d, want 2", n)
	}
	advance(200 * time.Second) // v4only: 300 s TTL over
	r.ask(t, r.lan, "v4only.example.", dns.TypeA)
	if n := r.up.count("v4only.example.", dns.TypeA, "udp"); n != 2 {
		t.Errorf("upstream A queries after expiry: %d, want 2", n)
	}
	// Synthesis reuses the cached A answer.
	r.ask(t, r.lan, "v4only.example.", dns.TypeAAAA)
	if n := r.up.count("v4only.example.", dns.TypeA, "udp"); n != 2 {
		t.Errorf("upstream A queries after synthesis: %d, want 2", n)
	}
	if st := r.srv.Stats(); st.CacheHits < 4 {
		t.Errorf("CacheHits = %d", st.CacheHits)
	}
}

// TestCacheBounds: entries beyond the size go least recently used first;
// uncacheable answers are not stored.
func TestCacheBounds(t *testing.T) {
	c := newCache(3, time.Hour)
	now := time.Unix(1e9, 0)
	pos := func(name string) *dns.Msg {
		m := new(dns.Msg)
		rr, _ := dns.NewRR(name + " 60 IN A 192.0.2.1")
		m.Answer = []dns.RR{rr}
		return m
	}
	for _, n := range []string{"a.", "b.", "c."} {
		c.put(cacheKey{n, dns.TypeA, 1}, pos(n), now)
	}
	c.get(cacheKey{"a.", dns.TypeA, 1}, now) // a is now the most recent
	c.put(cacheKey{"d.", dns.TypeA, 1}, pos("d."), now)
	if c.len() != 3 || c.get(cacheKey{"b.", dns.TypeA, 1}, now) != nil || c.get(cacheKey{"a.", dns.TypeA, 1}, now) == nil {
		t.Errorf("LRU eviction: len %d", c.len())
	}
	if c.get(cacheKey{"a.", dns.TypeA, 1}, now.Add(60*time.Second)) != nil {
		t.Error("entry served after its TTL")
	}
	// Not cached: SERVFAIL, negative without SOA, truncated, TTL 0.
	sf := new(dns.Msg)
	sf.Rcode = dns.RcodeServerFailure
	nx := new(dns.Msg)
	nx.Rcode = dns.RcodeNameError
	tc := pos("t.")
	tc.Truncated = true
	zero := pos("z.")
	zero.Answer[0].Header().Ttl = 0
	for i, m := range []*dns.Msg{sf, nx, tc, zero} {
		if ttl := cacheTTL(m, dns.TypeA); ttl != 0 {
			t.Errorf("case %d: cacheTTL %v, want 0", i, ttl)
		}
	}
	// Capped by maxTTL.
	c2 := newCache(10, 10*time.Second)
	c2.put(cacheKey{"a.", dns.TypeA, 1}, pos("a."), now)
	if c2.get(cacheKey{"a.", dns.TypeA, 1}, now.Add(11*time.Second)) != nil {
		t.Error("maxTTL not applied")
	}
}

// TestUpstreamDown: with no upstream answering, the client gets SERVFAIL
// after the upstream timeout, and the next upstream in the list is tried.
func TestUpstreamDown(t *testing.T) {
	leakcheck.Check(t)
	dead := netip.MustParseAddrPort("10.0.0.99:53")
	r := newRig(t, func(c *Config) {
		c.Upstreams = []netip.AddrPort{dead}
		c.UpstreamTimeout = 100 * time.Millisecond
	})
	m := r.ask(t, r.lan, "v4only.example.", dns.TypeAAAA)
	if m.Rcode != dns.RcodeServerFailure {
		t.Errorf("rcode %s, want SERVFAIL", dns.RcodeToString[m.Rcode])
	}
	r2 := newRig(t, func(c *Config) {
		c.Upstreams = []netip.AddrPort{dead, netip.AddrPortFrom(upV4, 53)}
		c.UpstreamTimeout = 100 * time.Millisecond
	})
	m = r2.ask(t, r2.lan, "v4only.example.", dns.TypeAAAA)
	if got := rrStrings(m.Answer); !slices.Equal(got, []string{"v4only.example. 0 IN AAAA 2001:db8:64::c633:640a"}) {
		t.Errorf("failover: %q", got)
	}
	// Without upstreams, names outside .mesh are refused.
	r3 := newRig(t, func(c *Config) { c.Upstreams = nil })
	if m := r3.ask(t, r3.lan, "v4only.example.", dns.TypeA); m.Rcode != dns.RcodeRefused || m.RecursionAvailable {
		t.Errorf("no upstream: rcode %s ra %v", dns.RcodeToString[m.Rcode], m.RecursionAvailable)
	}
}

// TestPrefixFunc: with Config.PrefixFunc each query synthesizes with the
// prefix of the moment (the NAT64 gateway the node would use, RFC 6147
// §5.2), capped to DynamicPrefixTTL; with no NAT64 reachable nothing is
// synthesized.
func TestPrefixFunc(t *testing.T) {
	leakcheck.Check(t)
	var mu sync.Mutex
	cur, ok := netip.MustParsePrefix("2001:db8:64::/96"), true
	r := newRig(t, func(c *Config) {
		c.Prefix = netip.Prefix{}
		c.PrefixFunc = func() (netip.Prefix, bool) { mu.Lock(); defer mu.Unlock(); return cur, ok }
	})
	set := func(p netip.Prefix, on bool) { mu.Lock(); cur, ok = p, on; mu.Unlock() }
	check := func(want []string) {
		t.Helper()
		m := r.ask(t, r.lan, "v4only.example.", dns.TypeAAAA)
		if got := rrStrings(m.Answer); m.Rcode != dns.RcodeSuccess || !slices.Equal(got, want) {
			t.Fatalf("answer %v (rcode %d), want %v", got, m.Rcode, want)
		}
		for _, rr := range m.Answer {
			if rr.Header().Ttl > DynamicPrefixTTL {
				t.Errorf("TTL %d above %d: %v", rr.Header().Ttl, DynamicPrefixTTL, rr)
			}
		}
	}
	check([]string{"v4only.example. 0 IN AAAA 2001:db8:64::c633:640a"})
	set(netip.MustParsePrefix("2001:db8:1::/48"), true)
	check([]string{"v4only.example. 0 IN AAAA 2001:db8:1:c633:64:a00::"})
	set(netip.Prefix{}, false)
	check(nil)
	// A broken func (an invalid prefix) synthesizes nothing either.
	set(netip.MustParsePrefix("2001:db8::/80"), true)
	check(nil)
}
