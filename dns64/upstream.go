package dns64

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/sipmesh/sipmesh/netx"
)

// forwardAnswer fills m, a reply to q (lower-case name name, outside the
// mesh zone), from the upstream resolvers, with DNS64 synthesis for AAAA
// (RFC 6147 §5.1) and PTR (§5.3.1).
func (s *Server) forwardAnswer(ctx context.Context, m *dns.Msg, q dns.Question, name string) {
	if len(s.cfg.Upstreams) == 0 {
		m.Rcode = dns.RcodeRefused
		return
	}
	m.RecursionAvailable = true
	switch q.Qtype {
	case dns.TypeAXFR, dns.TypeIXFR:
		m.Rcode = dns.RcodeRefused
		return
	}
	if q.Qclass == dns.ClassINET {
		switch q.Qtype {
		case dns.TypeAAAA:
			s.synthesizeAAAA(ctx, m, name)
			return
		case dns.TypePTR:
			if s.synthesizePTR(ctx, m, q, name) {
				return
			}
		}
	}
	r, err := s.resolve(ctx, name, q.Qtype, q.Qclass)
	if err != nil {
		m.Rcode = dns.RcodeServerFailure
		return
	}
	copyResponse(m, r)
}

// copyResponse copies r's RCODE and sections into m, leaving out r's OPT
// record: EDNS(0) is hop by hop (RFC 6891 §6.1.1).
func copyResponse(m, r *dns.Msg) {
	m.Rcode = r.Rcode
	m.Answer = r.Answer
	m.Ns = r.Ns
	for _, rr := range r.Extra {
		if rr.Header().Rrtype != dns.TypeOPT {
			m.Extra = append(m.Extra, rr)
		}
	}
}

// DynamicPrefixTTL caps the TTL of records synthesized with
// Config.PrefixFunc: the prefix follows the NAT64 gateway in use, and a
// host must not hold an address under a prefix no gateway serves much
// longer than the mesh takes to notice a dead gateway.
const DynamicPrefixTTL = 30

// prefix returns the synthesis prefix now, and whether there is one.
func (s *Server) prefix() (netip.Prefix, bool) {
	if s.cfg.PrefixFunc == nil {
		return s.cfg.Prefix, true
	}
	p, ok := s.cfg.PrefixFunc()
	if ok && ValidatePrefix(p) != nil {
		return netip.Prefix{}, false // a bad prefix synthesizes nothing
	}
	return p, ok
}

// synthesizeAAAA is the DNS64 algorithm of RFC 6147 §5.1.
func (s *Server) synthesizeAAAA(ctx context.Context, m *dns.Msg, name string) {
	r, err := s.resolve(ctx, name, dns.TypeAAAA, dns.ClassINET)
	if err != nil {
		m.Rcode = dns.RcodeServerFailure
		return
	}
	// §5.1.2: NXDOMAIN is passed on as it is.
	if r.Rcode == dns.RcodeNameError {
		copyResponse(m, r)
		return
	}
	if r.Rcode == dns.RcodeSuccess {
		// §5.1.4: AAAA records in the exclusion set (::ffff:0:0/96 by
		// default) count as absent. If real ones remain, they are the
		// answer (§5.1.1); if none remain, synthesize as for NODATA.
		kept := r.Answer[:0:0]
		real := false
		for _, rr := range r.Answer {
			if aaaa, ok := rr.(*dns.AAAA); ok {
				if a, ok := addrFrom(aaaa.AAAA); ok && excludedAAAA(a) {
					continue
				}
				real = true
			}
			kept = append(kept, rr)
		}
		if real {
			r.Answer = kept
			copyResponse(m, r)
			return
		}
		r.Answer = kept
	}
	// §5.1.2: "any other RCODE is treated as though the RCODE were 0 and
	// the answer section were empty"; §5.1.6: ask for A records.
	a, err := s.resolve(ctx, name, dns.TypeA, dns.ClassINET)
	if err != nil || a.Rcode != dns.RcodeSuccess {
		copyResponse(m, r)
		return
	}
	// §5.1.7: the synthesized TTL is the minimum of the A record's TTL and
	// the negative-caching TTL of the SOA that came with the AAAA answer,
	// or at most 600 s without one.
	limit := uint32(600)
	if soa := findSOA(r.Ns); soa != nil && r.Rcode == dns.RcodeSuccess {
		limit = min(soa.Hdr.Ttl, soa.Minttl)
	}
	prefix, ok := s.prefix()
	if !ok {
		// No NAT64 reachable: nothing to synthesize with.
		copyResponse(m, r)
		return
	}
	if s.cfg.PrefixFunc != nil {
		limit = min(limit, DynamicPrefixTTL)
	}
	wkp := prefix == WellKnownPrefix
	var answer []dns.RR
	synthesized := 0
	for _, rr := range a.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			v4, ok := addrFrom(rr.A)
			v4 = v4.Unmap()
			if !ok || !v4.Is4() {
				continue
			}
			// RFC 6052 §3.1: the Well-Known Prefix must not represent
			// non-global IPv4 addresses; such A records get no AAAA.
			if wkp && !IsGlobal4(v4) {
				continue
			}
			answer = append(answer, &dns.AAAA{
				Hdr:  dns.RR_Header{Name: rr.Hdr.Name, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: min(rr.Hdr.Ttl, limit)},
				AAAA: Embed(prefix, v4).AsSlice(),
			})
			synthesized++
		default:
			// §5.3.3 (and §5.1.3): the CNAME/DNAME chain leading to the A
			// records is kept unchanged.
			if t := rr.Header().Rrtype; t == dns.TypeCNAME || t == dns.TypeDNAME {
				answer = append(answer, rr)
			}
		}
	}
	if synthesized == 0 {
		// Nothing to synthesize from: the (filtered) AAAA answer stands.
		copyResponse(m, r)
		return
	}
	s.stats.synthesized.Add(1)
	m.Rcode = dns.RcodeSuccess
	m.Answer = answer
	// §5.3.2: the authority section comes from the A response; the
	// additional section is left empty (it would describe A data).
	m.Ns = a.Ns
}

// synthesizePTR answers a PTR query for an address under the synthesis
// prefix by a CNAME to the in-addr.arpa name of the embedded IPv4 address
// and the upstream's answer for that name (RFC 6147 §5.3.1, the
// "synthesized CNAME" method). It returns false for names it does not
// handle, which are forwarded as they are.
func (s *Server) synthesizePTR(ctx context.Context, m *dns.Msg, q dns.Question, name string) bool {
	a, ok := parseReverse6(name)
	if !ok {
		return false
	}
	prefix, ok := s.prefix()
	if !ok {
		return false
	}
	v4, ok := Extract(prefix, a)
	if !ok || (prefix == WellKnownPrefix && !IsGlobal4(v4)) {
		// Not an address we would synthesize: the upstream owns it.
		return false
	}
	target := reverseName4(v4)
	r, err := s.resolve(ctx, target, dns.TypePTR, dns.ClassINET)
	if err != nil {
		m.Rcode = dns.RcodeServerFailure
		return true
	}
	copyResponse(m, r)
	cname := &dns.CNAME{Hdr: hdr(q.Name, dns.TypeCNAME, 600), Target: target}
	m.Answer = append([]dns.RR{cname}, r.Answer...)
	return true
}

// resolve returns the upstream response to (name, qtype, qclass), from the
// cache if it has one. The returned message is the caller's to modify.
//
// A cache miss joins an identical look-up in progress if there is one;
// else it needs a slot of MaxInflight (errBusy without) and a token of the
// node's forwarding cap (errCapped without), so the upstream sees at most
// ForwardBurst + ForwardRate·t look-ups whatever the LAN sends.
func (s *Server) resolve(ctx context.Context, name string, qtype, qclass uint16) (*dns.Msg, error) {
	k := cacheKey{name: name, qtype: qtype, qclass: qclass}
	if r := s.cache.get(k, s.cfg.Now()); r != nil {
		s.stats.cacheHits.Add(1)
		return r, nil
	}
	s.flightMu.Lock()
	if f, ok := s.flights[k]; ok {
		s.flightMu.Unlock()
		s.stats.coalesced.Add(1)
		select {
		case <-f.done:
			if f.err != nil {
				return nil, f.err
			}
			return f.r.Copy(), nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if !acquire(s.sem) {
		s.flightMu.Unlock()
		s.stats.busy.Add(1)
		return nil, errBusy
	}
	if !s.fwd.allow() {
		s.flightMu.Unlock()
		<-s.sem
		s.stats.capped.Add(1)
		return nil, errCapped
	}
	f := &flight{done: make(chan struct{})}
	s.flights[k] = f
	s.flightMu.Unlock()
	defer func() {
		s.flightMu.Lock()
		delete(s.flights, k)
		s.flightMu.Unlock()
		close(f.done)
		<-s.sem
	}()

	q := &dns.Msg{}
	q.SetQuestion(name, qtype)
	q.Question[0].Qclass = qclass
	q.RecursionDesired = true
	// Advertise our buffer size upstream too (RFC 6891 §6.2.5); DO stays
	// clear: this server does not validate and strips DNSSEC records.
	q.SetEdns0(s.cfg.UDPSize, false)
	r, err := s.exchange(ctx, q)
	if err == nil {
		err = reencodes(r)
	}
	if err != nil {
		f.err = err
		// The name is a client's: the line is rate-limited and bounded.
		s.peerLog.Warn("upstream query failed", "name", name, "type", dns.TypeToString[qtype], "err", err)
		return nil, err
	}
	s.cache.put(k, r, s.cfg.Now())
	f.r = r.Copy()
	return r, nil
}

// reencodes checks that r packs into a message that parses again. miekg
// accepts records it cannot write back faithfully (an SOA with empty
// RDATA unpacks, then packs into bytes no parser reads); relayed to a
// client, such an answer would be unreadable (found by FuzzServer). An
// upstream answer that fails is treated as no answer (SERVFAIL).
func reencodes(r *dns.Msg) error {
	b, err := r.Pack()
	if err == nil {
		err = new(dns.Msg).Unpack(b)
	}
	if err != nil {
		return fmt.Errorf("upstream answer does not re-encode: %w", err)
	}
	return nil
}

// flight is an upstream look-up in progress that identical ones wait for.
// r and err are set before done is closed.
type flight struct {
	done chan struct{}
	r    *dns.Msg
	err  error
}

// forwardCap is the node-wide token bucket on upstream look-ups.
type forwardCap struct {
	rate, burst float64 // rate < 0: no cap
	now         func() time.Time

	mu sync.Mutex
	b  bucket
}

func newForwardCap(rate float64, burst int, now func() time.Time) *forwardCap {
	return &forwardCap{rate: rate, burst: float64(burst), now: now, b: bucket{tokens: float64(burst), last: now()}}
}

func (c *forwardCap) allow() bool {
	if c.rate < 0 {
		return true
	}
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.b.take(now, c.rate, c.burst)
}

// exchange asks the upstreams in order until one gives a usable answer:
// over UDP first, and over TCP when the UDP answer is truncated (RFC 7766
// §6.2.1). A SERVFAIL or REFUSED moves on to the next upstream; the last
// one's answer is returned if none does better.
func (s *Server) exchange(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
	if s.exchangeHook != nil {
		return s.exchangeHook(ctx, q)
	}
	var last *dns.Msg
	var errs []error
	for _, up := range s.cfg.Upstreams {
		if ctx.Err() != nil {
			break
		}
		r, err := s.exchangeOne(ctx, "udp", up.String(), q)
		if err == nil && r.Truncated {
			s.stats.tcpRetries.Add(1)
			r, err = s.exchangeOne(ctx, "tcp", up.String(), q)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%v: %w", up, err))
			continue
		}
		if r.Rcode == dns.RcodeServerFailure || r.Rcode == dns.RcodeRefused {
			last = r
			continue
		}
		return r, nil
	}
	if last != nil {
		return last, nil
	}
	if err := ctx.Err(); err != nil {
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("%w: %w", errNoUpstream, errors.Join(errs...))
}

// exchangeOne sends q to one upstream over network and checks that the
// answer matches it.
func (s *Server) exchangeOne(ctx context.Context, network, addr string, q *dns.Msg) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.UpstreamTimeout)
	defer cancel()
	return Exchange(ctx, s.cfg.Network, network, addr, s.cfg.UDPSize, q)
}

// Exchange sends a copy of q, with a fresh random ID (RFC 5452 §9.2), to
// the server at addr over network ("udp" or "tcp") on nw, and returns
// the answer if it answers the question asked (RFC 5452 §9.1). ctx bounds
// the exchange: its end closes the socket. udpSize is the EDNS(0)
// payload size the caller advertised (0: 512). It is the one DNS client
// of sipmesh: the DNS64 forwarder and the uplink's RFC 3263 server
// location both use it.
func Exchange(ctx context.Context, nw netx.Network, network, addr string, udpSize uint16, q *dns.Msg) (*dns.Msg, error) {
	c, err := nw.Dial(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	// The miekg client only takes deadlines from ctx; closing the socket
	// makes a cancelled ctx (server shutdown) end the read at once.
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	q = q.Copy()
	q.Id = dns.Id()
	cl := dns.Client{Net: network, UDPSize: udpSize}
	if dl, ok := ctx.Deadline(); ok {
		cl.Timeout = time.Until(dl)
	}
	r, _, err := cl.ExchangeWithConnContext(ctx, q, &dns.Conn{Conn: c, UDPSize: udpSize})
	if err != nil {
		return nil, err
	}
	if !r.Response || len(r.Question) != 1 || !strings.EqualFold(r.Question[0].Name, q.Question[0].Name) ||
		r.Question[0].Qtype != q.Question[0].Qtype || r.Question[0].Qclass != q.Question[0].Qclass {
		return nil, errors.New("answer does not match the question")
	}
	return r, nil
}

// addrFrom converts a record's address. An A record's may be 16 bytes
// long (IPv4-mapped); callers unmap those.
func addrFrom(ip net.IP) (netip.Addr, bool) { return netip.AddrFromSlice(ip) }
