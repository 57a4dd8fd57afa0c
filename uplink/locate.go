package uplink

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"

	"github.com/emiago/sipgo/sip"
	"github.com/miekg/dns"
)

// Bounds on what one answer can make the locator do.
const (
	maxNAPTR   = 8  // NAPTR records of a domain considered (RFC 3263 §4.1)
	maxSRV     = 16 // SRV targets followed, across all SRV names
	maxTargets = 32 // addresses returned
)

// Target is one place to send a request to: a transport and an address,
// with the host name it came from (the SRV target or the URI's host).
type Target struct {
	Transport string // "UDP" or "TCP"
	Addr      netip.AddrPort
	Host      string
}

func (t Target) String() string { return t.Transport + " " + t.Addr.String() + " (" + t.Host + ")" }

// Exchange sends one DNS query and returns the answer (dns64.Exchange
// bound to the gateway's upstream resolver, or a test's).
type Exchange func(ctx context.Context, q *dns.Msg) (*dns.Msg, error)

// Locator finds the SIP servers of a URI (RFC 3263 §4).
type Locator struct {
	Exchange Exchange
	// Rand orders SRV records of equal priority by weight (RFC 2782); nil
	// is math/rand/v2's global source.
	Rand *rand.Rand
	// IPv6 also returns AAAA addresses, after the A ones (an uplink with
	// only IPv4 leaves it false).
	IPv6 bool
}

// ErrNotFound is returned when DNS has no address for the URI's host.
var ErrNotFound = errors.New("uplink: no SIP server found")

// Locate returns the targets for uri in the order to try them (RFC 3263
// §4.3: on a failure — a timeout, a 503 — the next one).
func (l *Locator) Locate(ctx context.Context, uri *sip.Uri) ([]Target, error) {
	if uri.IsEncrypted() || strings.EqualFold(uri.Scheme, "sips") {
		return nil, fmt.Errorf("uplink: %s: sips (TLS) is not supported", uri.Host)
	}
	host := strings.TrimSuffix(strings.Trim(uri.Host, "[]"), ".")
	if host == "" {
		return nil, errors.New("uplink: URI without a host")
	}
	transport := ""
	if t, ok := uri.UriParams.Get("transport"); ok {
		switch strings.ToLower(t) {
		case "udp":
			transport = "UDP"
		case "tcp":
			transport = "TCP"
		default:
			return nil, fmt.Errorf("uplink: %s: transport %q is not supported", host, t)
		}
	}
	// §4.1/§4.2: a numeric host is the target itself, UDP unless a
	// transport is named, port 5060 unless one is given.
	if ip, err := netip.ParseAddr(host); err == nil {
		return []Target{{Transport: cmp.Or(transport, "UDP"), Addr: netip.AddrPortFrom(ip.Unmap(), port(uri.Port)), Host: host}}, nil
	}
	fqdn := dns.Fqdn(host)
	// §4.2: a port in the URI means an A/AAAA lookup, no SRV.
	if uri.Port != 0 {
		return l.addresses(ctx, nil, cmp.Or(transport, "UDP"), fqdn, uint16(uri.Port))
	}
	var srvs []srvName
	if transport == "" {
		// §4.1: NAPTR first.
		var err error
		if srvs, err = l.naptr(ctx, fqdn); err != nil {
			return nil, err
		}
	}
	if len(srvs) == 0 {
		// No NAPTR (or a transport named): SRV for each transport we
		// speak, UDP first (RFC 3263 §4.1 leaves the order to the client;
		// UDP is what every phone and provider answers).
		for _, t := range []string{"UDP", "TCP"} {
			if transport == "" || transport == t {
				srvs = append(srvs, srvName{transport: t, name: "_sip._" + strings.ToLower(t) + "." + fqdn})
			}
		}
	}
	var out []Target
	followed := 0
	srvs = slices.CompactFunc(srvs, func(a, b srvName) bool { return a == b })
	for _, sn := range srvs {
		recs, extra, err := l.srv(ctx, sn.name)
		if err != nil {
			return nil, err
		}
		for _, r := range recs {
			if followed++; followed > maxSRV {
				break
			}
			if r.Target == "." { // RFC 2782: the service is not offered here
				continue
			}
			if out, err = l.addresses(ctx, out, sn.transport, r.Target, r.Port, extra...); err != nil && !errors.Is(err, ErrNotFound) {
				return nil, err
			}
		}
	}
	if len(out) > 0 {
		return out, nil
	}
	if followed > 0 {
		return nil, fmt.Errorf("%w: %s: SRV targets have no address", ErrNotFound, host)
	}
	// §4.2: no SRV either: the host's own addresses, port 5060.
	return l.addresses(ctx, nil, cmp.Or(transport, "UDP"), fqdn, 5060)
}

func port(p int) uint16 {
	if p <= 0 || p > 65535 {
		return 5060
	}
	return uint16(p)
}

type srvName struct{ transport, name string }

// naptr returns the SRV names of host's NAPTR records for the transports
// we speak, in order and preference (RFC 3263 §4.1, RFC 3403 §4.1).
func (l *Locator) naptr(ctx context.Context, fqdn string) ([]srvName, error) {
	r, err := l.query(ctx, fqdn, dns.TypeNAPTR)
	if err != nil {
		return nil, err
	}
	var recs []*dns.NAPTR
	for _, rr := range r.Answer {
		if n, ok := rr.(*dns.NAPTR); ok && len(recs) < maxNAPTR && strings.EqualFold(n.Hdr.Name, fqdn) {
			recs = append(recs, n)
		}
	}
	slices.SortStableFunc(recs, func(a, b *dns.NAPTR) int {
		return cmp.Or(cmp.Compare(a.Order, b.Order), cmp.Compare(a.Preference, b.Preference))
	})
	var out []srvName
	for _, n := range recs {
		// Only terminal "s" records with a replacement lead to SRV.
		if !strings.EqualFold(n.Flags, "s") || n.Replacement == "" || n.Replacement == "." {
			continue
		}
		var t string
		switch strings.ToUpper(n.Service) {
		case "SIP+D2U":
			t = "UDP"
		case "SIP+D2T":
			t = "TCP"
		default:
			continue // TLS, SCTP, WebSocket: not spoken here
		}
		out = append(out, srvName{transport: t, name: dns.Fqdn(n.Replacement)})
	}
	return out, nil
}

// srv returns name's SRV records in the order to try them: priority,
// then weighted random order within a priority (RFC 2782), and the
// answer's additional records (addresses of the targets, often sent
// along).
func (l *Locator) srv(ctx context.Context, name string) ([]*dns.SRV, []dns.RR, error) {
	r, err := l.query(ctx, name, dns.TypeSRV)
	if err != nil {
		return nil, nil, err
	}
	var recs []*dns.SRV
	for _, rr := range r.Answer {
		if s, ok := rr.(*dns.SRV); ok && len(recs) < maxSRV && strings.EqualFold(s.Hdr.Name, name) {
			recs = append(recs, s)
		}
	}
	slices.SortStableFunc(recs, func(a, b *dns.SRV) int { return cmp.Compare(a.Priority, b.Priority) })
	out := make([]*dns.SRV, 0, len(recs))
	for i := 0; i < len(recs); {
		j := i
		for j < len(recs) && recs[j].Priority == recs[i].Priority {
			j++
		}
		out = append(out, l.weighted(recs[i:j])...)
		i = j
	}
	return out, r.Extra, nil
}

// weighted orders records of one priority by RFC 2782's selection: pick
// one with probability proportional to weight (zero-weight ones first in
// the running sum, so they have a small chance), remove it, repeat.
func (l *Locator) weighted(group []*dns.SRV) []*dns.SRV {
	left := slices.Clone(group)
	slices.SortStableFunc(left, func(a, b *dns.SRV) int { return cmp.Compare(a.Weight, b.Weight) })
	out := make([]*dns.SRV, 0, len(left))
	for len(left) > 0 {
		total := 0
		for _, s := range left {
			total += int(s.Weight)
		}
		pick := 0
		if total > 0 {
			n := l.intN(total + 1)
			sum := 0
			for i, s := range left {
				sum += int(s.Weight)
				if sum >= n {
					pick = i
					break
				}
			}
		}
		out = append(out, left[pick])
		left = slices.Delete(left, pick, pick+1)
	}
	return out
}

func (l *Locator) intN(n int) int {
	if l.Rand != nil {
		return l.Rand.IntN(n)
	}
	return rand.IntN(n)
}

// addresses appends host's addresses (A, then AAAA if IPv6) to out as
// targets of transport and port, taking them from extra (the SRV
// answer's additional section) when it has them.
func (l *Locator) addresses(ctx context.Context, out []Target, transport, host string, p uint16, extra ...dns.RR) ([]Target, error) {
	types := []uint16{dns.TypeA}
	if l.IPv6 {
		types = append(types, dns.TypeAAAA)
	}
	before := len(out)
	var qerr error
	for _, qt := range types {
		addrs := addrsOf(extra, host, qt)
		if len(addrs) == 0 {
			r, err := l.query(ctx, host, qt)
			if err != nil {
				// One family's failure does not hide the other's
				// addresses: resolvers and middleboxes that answer A but
				// fail AAAA (or the reverse) are common.
				qerr = cmp.Or(qerr, err)
				continue
			}
			addrs = addrsOf(r.Answer, host, qt)
		}
		for _, a := range addrs {
			if len(out) >= maxTargets {
				return out, nil
			}
			t := Target{Transport: transport, Addr: netip.AddrPortFrom(a, p), Host: strings.TrimSuffix(host, ".")}
			if !slices.Contains(out, t) {
				out = append(out, t)
			}
		}
	}
	if len(out) == before {
		if qerr != nil {
			return out, qerr
		}
		return out, fmt.Errorf("%w: %s has no address", ErrNotFound, strings.TrimSuffix(host, "."))
	}
	return out, nil
}

// addrsOf returns the addresses of host's records of type qt in rrs,
// following one CNAME (resolvers put the chain in the answer).
func addrsOf(rrs []dns.RR, host string, qt uint16) []netip.Addr {
	names := []string{host}
	for _, rr := range rrs {
		if c, ok := rr.(*dns.CNAME); ok && strings.EqualFold(c.Hdr.Name, host) {
			names = append(names, c.Target)
		}
	}
	var out []netip.Addr
	for _, rr := range rrs {
		if !slices.ContainsFunc(names, func(n string) bool { return strings.EqualFold(rr.Header().Name, n) }) {
			continue
		}
		var ip []byte
		switch r := rr.(type) {
		case *dns.A:
			if qt == dns.TypeA {
				ip = r.A
			}
		case *dns.AAAA:
			if qt == dns.TypeAAAA {
				ip = r.AAAA
			}
		}
		// Never loopback, link-local, multicast or unspecified: a name
		// in someone's DNS must not make the gateway send to itself or
		// its links.
		if a, ok := netip.AddrFromSlice(ip); ok && a.Unmap().IsGlobalUnicast() {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// query asks for name's records of type qt. NXDOMAIN and an empty answer
// are not errors (the caller falls back, RFC 3263 §4.1/§4.2); a failure
// to get any answer is.
func (l *Locator) query(ctx context.Context, name string, qt uint16) (*dns.Msg, error) {
	q := new(dns.Msg)
	q.SetQuestion(name, qt)
	q.RecursionDesired = true
	r, err := l.Exchange(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("uplink: %s %s: %w", dns.TypeToString[qt], name, err)
	}
	switch r.Rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
		return r, nil
	}
	return nil, fmt.Errorf("uplink: %s %s: %s", dns.TypeToString[qt], name, dns.RcodeToString[r.Rcode])
}
