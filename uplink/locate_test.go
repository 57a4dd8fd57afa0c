package uplink

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/miekg/dns"

	"github.com/sipmesh/sipmesh/dns64"
	"github.com/sipmesh/sipmesh/netx"
)

// zone is the test's DNS data, served by a real miekg/dns server on
// loopback and asked through dns64.Exchange as the gateway does.
const zone = `
example.net.          60 IN NAPTR 10 50 "s" "SIPS+D2T" "" _sips._tcp.example.net.
example.net.          60 IN NAPTR 20 50 "s" "SIP+D2T"  "" _sip._tcp.example.net.
example.net.          60 IN NAPTR 20 10 "s" "SIP+D2U"  "" _sip._udp.example.net.
example.net.          60 IN NAPTR 30 10 "s" "SIP+D2W"  "" _sip._ws.example.net.
_sip._udp.example.net. 60 IN SRV 10 0 5060 sip1.example.net.
_sip._udp.example.net. 60 IN SRV 20 0 5070 backup.example.net.
_sip._tcp.example.net. 60 IN SRV 10 0 5060 sip1.example.net.
sip1.example.net.     60 IN A 192.0.2.10
sip1.example.net.     60 IN AAAA 2001:db8::10
backup.example.net.   60 IN A 192.0.2.20
srvonly.org.          60 IN A 198.51.100.99
_sip._udp.srvonly.org. 60 IN SRV 0 0 5080 pbx.srvonly.org.
pbx.srvonly.org.      60 IN CNAME real.srvonly.org.
real.srvonly.org.     60 IN A 198.51.100.7
plain.com.            60 IN A 203.0.113.5
noaaaa.example.net.   60 IN A 192.0.2.50
noa.example.net.      60 IN AAAA 2001:db8::51
plain.com.            60 IN A 127.0.0.1
dead.com.             60 IN NAPTR 10 10 "s" "SIP+D2U" "" _sip._udp.dead.com.
_sip._udp.dead.com.   60 IN SRV 10 0 5060 nowhere.dead.com.
noservice.com.        60 IN SRV 0 0 0 .
weights.net.          60 IN NAPTR 10 10 "s" "SIP+D2U" "" _sip._udp.weights.net.
_sip._udp.weights.net. 60 IN SRV 10 90 5060 heavy.weights.net.
_sip._udp.weights.net. 60 IN SRV 10 10 5060 light.weights.net.
heavy.weights.net.    60 IN A 192.0.2.90
light.weights.net.    60 IN A 192.0.2.91
`

func startDNS(t *testing.T) (Exchange, *int) {
	t.Helper()
	var rrs []dns.RR
	zp := dns.NewZoneParser(strings.NewReader(zone), "", "")
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		rrs = append(rrs, rr)
	}
	if err := zp.Err(); err != nil {
		t.Fatal(err)
	}
	queries := new(int)
	mux := dns.NewServeMux()
	mux.HandleFunc(".", func(w dns.ResponseWriter, q *dns.Msg) {
		*queries++
		m := new(dns.Msg)
		m.SetReply(q)
		name, known := q.Question[0].Name, false
		for _, rr := range rrs {
			if strings.EqualFold(rr.Header().Name, name) {
				known = true
				if rr.Header().Rrtype == q.Question[0].Qtype || rr.Header().Rrtype == dns.TypeCNAME {
					m.Answer = append(m.Answer, rr)
					if c, ok := rr.(*dns.CNAME); ok {
						for _, r2 := range rrs {
							if strings.EqualFold(r2.Header().Name, c.Target) && r2.Header().Rrtype == q.Question[0].Qtype {
								m.Answer = append(m.Answer, r2)
							}
						}
					}
				}
			}
		}
		if !known && !strings.HasSuffix(name, "srvonly.org.") && !strings.HasSuffix(name, "example.net.") {
			m.Rcode = dns.RcodeNameError
		}
		if name == "fail.example." {
			m.Rcode = dns.RcodeServerFailure
		}
		// One family's query fails, the other's answers.
		if name == "noaaaa.example.net." && q.Question[0].Qtype == dns.TypeAAAA ||
			name == "noa.example.net." && q.Question[0].Qtype == dns.TypeA {
			m.Answer, m.Rcode = nil, dns.RcodeRefused
		}
		w.WriteMsg(m)
	})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: mux}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	addr := pc.LocalAddr().String()
	return func(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return dns64.Exchange(ctx, netx.Kernel{}, "udp", addr, 1232, q)
	}, queries
}

func uri(t *testing.T, s string) *sip.Uri {
	t.Helper()
	var u sip.Uri
	if err := sip.ParseUri(s, &u); err != nil {
		t.Fatal(err)
	}
	return &u
}

func TestLocate(t *testing.T) {
	ex, _ := startDNS(t)
	l := &Locator{Exchange: ex, Rand: rand.New(rand.NewPCG(1, 2))}
	ctx := context.Background()
	for _, tc := range []struct {
		uri  string
		ipv6 bool
		want []string
	}{
		// NAPTR: SIPS and WS skipped; order 20: UDP (pref 10) before TCP
		// (pref 50); SRV priority 10 before 20.
		{"sip:bob@example.net", false, []string{"UDP 192.0.2.10:5060", "UDP 192.0.2.20:5070", "TCP 192.0.2.10:5060"}},
		{"sip:bob@example.net", true, []string{"UDP 192.0.2.10:5060", "UDP [2001:db8::10]:5060", "UDP 192.0.2.20:5070", "TCP 192.0.2.10:5060", "TCP [2001:db8::10]:5060"}},
		// A transport named: SRV of that transport only, no NAPTR.
		{"sip:bob@example.net;transport=tcp", false, []string{"TCP 192.0.2.10:5060"}},
		// No NAPTR: SRV (through a CNAME), not the domain's own A record.
		{"sip:alice@srvonly.org", false, []string{"UDP 198.51.100.7:5080"}},
		// A port: A/AAAA of the host, no SRV.
		{"sip:alice@srvonly.org:5099", false, []string{"UDP 198.51.100.99:5099"}},
		// Neither NAPTR nor SRV: the host's addresses on 5060; loopback
		// from someone's DNS is never a target.
		{"sip:carol@plain.com", false, []string{"UDP 203.0.113.5:5060"}},
		// A numeric host is its own target.
		{"sip:dave@192.0.2.44:5062;transport=tcp", false, []string{"TCP 192.0.2.44:5062"}},
		{"sip:dave@[2001:db8::44]", false, []string{"UDP [2001:db8::44]:5060"}},
		// A resolver that refuses one family's query: the other's
		// addresses still count.
		{"sip:erin@noaaaa.example.net", true, []string{"UDP 192.0.2.50:5060"}},
		{"sip:erin@noa.example.net", true, []string{"UDP [2001:db8::51]:5060"}},
	} {
		l.IPv6 = tc.ipv6
		got, err := l.Locate(ctx, uri(t, tc.uri))
		if err != nil {
			t.Errorf("%s: %v", tc.uri, err)
			continue
		}
		var s []string
		for _, g := range got {
			s = append(s, g.Transport+" "+g.Addr.String())
		}
		if strings.Join(s, ", ") != strings.Join(tc.want, ", ") {
			t.Errorf("%s (IPv6 %v):\n got %v\nwant %v", tc.uri, tc.ipv6, s, tc.want)
		}
	}
}

func TestLocateFailures(t *testing.T) {
	ex, _ := startDNS(t)
	l := &Locator{Exchange: ex}
	ctx := context.Background()
	for _, tc := range []struct{ uri, want string }{
		{"sip:x@dead.com", "SRV targets have no address"},
		{"sip:x@nosuch.invalid", "no SIP server found"},
		{"sip:x@noservice.com", "no SIP server found"},
		{"sips:x@example.net", "sips (TLS) is not supported"},
		{"sip:x@example.net;transport=sctp", "not supported"},
		{"sip:x@fail.example", "SERVFAIL"},
	} {
		_, err := l.Locate(ctx, uri(t, tc.uri))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", tc.uri, err, tc.want)
		}
	}
	if _, err := l.Locate(ctx, uri(t, "sip:x@nosuch.invalid")); !errors.Is(err, ErrNotFound) {
		t.Errorf("NXDOMAIN: %v, want ErrNotFound", err)
	}
	// A resolver that does not answer is an error, not "not found".
	dead := &Locator{Exchange: func(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
		return nil, errors.New("timeout")
	}}
	if _, err := dead.Locate(ctx, uri(t, "sip:x@example.net")); err == nil || errors.Is(err, ErrNotFound) {
		t.Errorf("dead resolver: %v", err)
	}
}

// TestSRVWeights: within a priority, RFC 2782's weighted selection puts
// the weight-90 target first about 90 % of the time.
func TestSRVWeights(t *testing.T) {
	ex, _ := startDNS(t)
	l := &Locator{Exchange: ex, Rand: rand.New(rand.NewPCG(7, 7))}
	heavy := 0
	const n = 300
	for range n {
		got, err := l.Locate(context.Background(), uri(t, "sip:x@weights.net"))
		if err != nil || len(got) != 2 {
			t.Fatalf("%v %v", got, err)
		}
		if got[0].Host == "heavy.weights.net" {
			heavy++
		}
	}
	if heavy < n*80/100 || heavy > n*97/100 {
		t.Errorf("weight-90 target first in %d of %d", heavy, n)
	}
}

// TestLocateBounded: an answer with thousands of records is read only up
// to the bounds.
func TestLocateBounded(t *testing.T) {
	calls := 0
	ex := func(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
		calls++
		m := new(dns.Msg)
		m.SetReply(q)
		name := q.Question[0].Name
		switch q.Question[0].Qtype {
		case dns.TypeNAPTR:
			for i := range 1000 {
				m.Answer = append(m.Answer, &dns.NAPTR{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeNAPTR, Class: dns.ClassINET, Ttl: 60},
					Order: uint16(i), Flags: "s", Service: "SIP+D2U", Replacement: "_sip._udp.big.net."})
			}
		case dns.TypeSRV:
			for i := range 1000 {
				m.Answer = append(m.Answer, &dns.SRV{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: 60},
					Priority: uint16(i), Port: 5060, Target: "t.big.net."})
			}
		case dns.TypeA:
			for i := range 1000 {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
					A: net.IPv4(192, 0, byte(2+i/250), byte(1+i%250))})
			}
		}
		return m, nil
	}
	l := &Locator{Exchange: ex}
	got, err := l.Locate(context.Background(), uri(t, "sip:x@big.net"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) > maxTargets || calls > 1+maxNAPTR+maxSRV {
		t.Fatalf("%d targets after %d queries", len(got), calls)
	}
}

// FuzzLocate: whatever bytes a resolver answers with, the locator returns
// targets or an error, never panics, and stays within its bounds.
func FuzzLocate(f *testing.F) {
	m := new(dns.Msg)
	m.SetQuestion("example.net.", dns.TypeNAPTR)
	m.Answer = append(m.Answer, &dns.NAPTR{Hdr: dns.RR_Header{Name: "example.net.", Rrtype: dns.TypeNAPTR, Class: dns.ClassINET},
		Flags: "s", Service: "SIP+D2U", Replacement: "_sip._udp.example.net."})
	seed, _ := m.Pack()
	f.Add(seed, "sip:bob@example.net")
	f.Add([]byte{}, "sip:bob@example.net:5070")
	f.Fuzz(func(t *testing.T, answer []byte, target string) {
		var u sip.Uri
		if sip.ParseUri(target, &u) != nil {
			return
		}
		l := &Locator{Exchange: func(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
			r := new(dns.Msg)
			if err := r.Unpack(answer); err != nil {
				return nil, err
			}
			r.Question = q.Question
			return r, nil
		}, IPv6: true}
		got, err := l.Locate(context.Background(), &u)
		if err == nil && (len(got) == 0 || len(got) > maxTargets) {
			t.Fatalf("%d targets and no error", len(got))
		}
		for _, g := range got {
			if !g.Addr.IsValid() || (g.Transport != "UDP" && g.Transport != "TCP") {
				t.Fatalf("bad target %v", g)
			}
		}
	})
}
