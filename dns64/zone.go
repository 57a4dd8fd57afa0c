package dns64

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Zone is the source of the .mesh names that nodes and DHCP clients
// publish; the node daemon backs it with the DHT.
type Zone interface {
	// LookupName returns the addresses of name, a lower-case name under
	// "mesh" without the trailing dot: "node1.mesh" (a node's name) or
	// "phone.node1.mesh" (a DHCP client's host name on node1). It is never
	// asked for the names the server answers itself (mesh, sipserver.mesh,
	// _sip._udp.mesh, _sip._tcp.mesh, _udp.mesh, _tcp.mesh and names below
	// sipserver.mesh, _udp.mesh and _tcp.mesh).
	//
	// It returns ErrNoSuchName (possibly wrapped) if the name does not exist
	// (NXDOMAIN); an empty slice and nil if the name exists without
	// addresses, e.g. a node name that only has names below it (NODATA);
	// any other error if the look-up failed (SERVFAIL). ctx carries the
	// query's deadline.
	LookupName(ctx context.Context, name string) ([]netip.Addr, error)
}

// StaticZone is a Zone from a fixed map of lower-case names (without the
// trailing dot) to addresses, for tests and static set-ups. A name that
// only has names below it in the map exists without addresses (an empty
// non-terminal, RFC 8020 §2).
type StaticZone map[string][]netip.Addr

// LookupName implements Zone.
func (z StaticZone) LookupName(_ context.Context, name string) ([]netip.Addr, error) {
	if a, ok := z[name]; ok {
		return a, nil
	}
	for k := range z {
		if strings.HasSuffix(k, "."+name) {
			return nil, nil
		}
	}
	return nil, ErrNoSuchName
}

// The names of the zone the server answers itself, lower case and fully
// qualified.
const (
	zoneApex   = "mesh."
	sipServer  = "sipserver.mesh."
	srvUDP     = "_sip._udp.mesh."
	srvTCP     = "_sip._tcp.mesh."
	entUDP     = "_udp.mesh."
	entTCP     = "_tcp.mesh."
	hostmaster = "hostmaster.mesh."
)

// inMesh reports whether name (lower case, fully qualified) is in the
// zone.
func inMesh(name string) bool { return name == zoneApex || strings.HasSuffix(name, "."+zoneApex) }

// meshAnswer fills m (a reply to q, whose lower-case name is name, inside
// the zone) authoritatively. self are the answering node's addresses on the
// socket the query came in on.
func (s *Server) meshAnswer(ctx context.Context, m *dns.Msg, q dns.Question, name string, self []netip.Addr) {
	m.Authoritative = true // RFC 1035 §4.1.1: we own the zone
	if q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY {
		m.Authoritative = false
		m.Rcode = dns.RcodeRefused
		return
	}
	switch q.Qtype {
	case dns.TypeAXFR, dns.TypeIXFR:
		// No zone transfers: the zone lives in the DHT, not in a file.
		m.Rcode = dns.RcodeRefused
		return
	}
	ttl := uint32(s.cfg.TTL / time.Second)
	want := func(t uint16) bool { return q.Qtype == t || q.Qtype == dns.TypeANY }
	switch {
	case name == zoneApex:
		if want(dns.TypeSOA) {
			m.Answer = append(m.Answer, s.soa(q.Name, ttl))
		}
		if want(dns.TypeNS) {
			m.Answer = append(m.Answer, &dns.NS{Hdr: hdr(q.Name, dns.TypeNS, ttl), Ns: sipServer})
			m.Extra = append(m.Extra, addrRRs(sipServer, self, dns.TypeANY, ttl)...)
		}
		if want(dns.TypeNAPTR) {
			// RFC 3263 §4.1: a client first asks NAPTR for the domain;
			// "S" records point to the SRV names. UDP first (lower
			// preference wins, RFC 3403 §4.1), then TCP. The SRV records
			// and their addresses go in the additional section so a
			// client needs no further query (RFC 3263 §4.1, RFC 2782).
			m.Answer = append(m.Answer,
				&dns.NAPTR{Hdr: hdr(q.Name, dns.TypeNAPTR, ttl), Order: 10, Preference: 10, Flags: "S", Service: "SIP+D2U", Replacement: srvUDP},
				&dns.NAPTR{Hdr: hdr(q.Name, dns.TypeNAPTR, ttl), Order: 10, Preference: 20, Flags: "S", Service: "SIP+D2T", Replacement: srvTCP})
			m.Extra = append(m.Extra, s.srv(srvUDP, ttl), s.srv(srvTCP, ttl))
			if !want(dns.TypeNS) {
				m.Extra = append(m.Extra, addrRRs(sipServer, self, dns.TypeANY, ttl)...)
			}
		}
	case name == sipServer:
		m.Answer = addrRRs(q.Name, self, q.Qtype, ttl)
	case name == srvUDP || name == srvTCP:
		if want(dns.TypeSRV) {
			m.Answer = append(m.Answer, s.srv(q.Name, ttl))
			m.Extra = addrRRs(sipServer, self, dns.TypeANY, ttl)
		}
	case name == entUDP || name == entTCP:
		// Empty non-terminals above the SRV names: they exist, with no
		// data (RFC 8020 §2), so NODATA.
	case strings.HasSuffix(name, "."+sipServer), strings.HasSuffix(name, "."+entUDP), strings.HasSuffix(name, "."+entTCP):
		m.Rcode = dns.RcodeNameError
	default:
		s.zoneAnswer(ctx, m, q, name, ttl)
	}
	if len(m.Answer) == 0 && (m.Rcode == dns.RcodeSuccess || m.Rcode == dns.RcodeNameError) {
		// NXDOMAIN and NODATA carry the zone's SOA in the authority
		// section so resolvers can cache them (RFC 2308 §3), its TTL
		// being the negative TTL (RFC 2308 §5).
		m.Ns = append(m.Ns, s.soa(zoneApex, uint32(s.cfg.NegativeTTL/time.Second)))
	}
}

// zoneAnswer answers a name the Zone owns.
func (s *Server) zoneAnswer(ctx context.Context, m *dns.Msg, q dns.Question, name string, ttl uint32) {
	key := strings.TrimSuffix(name, ".")
	e, hit := s.zcache.Get(key, s.cfg.Now())
	addrs, err := e.addrs, e.err
	if !hit {
		if !acquire(s.zsem) {
			s.stats.busy.Add(1)
			m.Authoritative = false
			m.Rcode = dns.RcodeServerFailure
			return
		}
		addrs, err = s.cfg.Zone.LookupName(ctx, key)
		<-s.zsem
		if err == nil || errors.Is(err, ErrNoSuchName) {
			now := s.cfg.Now()
			s.zcache.Put(key, zoneEntry{slices.Clone(addrs), err}, now.Add(zoneCacheTTL), now)
		}
	}
	switch {
	case errors.Is(err, ErrNoSuchName):
		m.Rcode = dns.RcodeNameError
	case err != nil:
		s.peerLog.Warn("zone look-up failed", "name", name, "err", err)
		m.Authoritative = false
		m.Rcode = dns.RcodeServerFailure
	default:
		m.Answer = addrRRs(q.Name, addrs, q.Qtype, ttl)
	}
}

func (s *Server) soa(owner string, ttl uint32) *dns.SOA {
	return &dns.SOA{Hdr: hdr(owner, dns.TypeSOA, ttl), Ns: sipServer, Mbox: hostmaster,
		// The zone is not transferred (no secondaries), so serial and
		// timers only have to be well-formed (RFC 1035 §3.3.13).
		Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400,
		Minttl: uint32(s.cfg.NegativeTTL / time.Second)}
}

func (s *Server) srv(owner string, ttl uint32) *dns.SRV {
	return &dns.SRV{Hdr: hdr(owner, dns.TypeSRV, ttl), Priority: 0, Weight: 0, Port: s.cfg.SIPPort, Target: sipServer}
}

func hdr(name string, t uint16, ttl uint32) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
}

// addrRRs returns A records for the IPv4 and AAAA records for the IPv6
// addresses in addrs, as qtype asks (TypeANY: both).
func addrRRs(owner string, addrs []netip.Addr, qtype uint16, ttl uint32) []dns.RR {
	var out []dns.RR
	for _, a := range addrs {
		a = a.Unmap()
		switch {
		case a.Is4() && (qtype == dns.TypeA || qtype == dns.TypeANY):
			out = append(out, &dns.A{Hdr: hdr(owner, dns.TypeA, ttl), A: a.AsSlice()})
		case a.Is6() && (qtype == dns.TypeAAAA || qtype == dns.TypeANY):
			out = append(out, &dns.AAAA{Hdr: hdr(owner, dns.TypeAAAA, ttl), AAAA: a.WithZone("").AsSlice()})
		}
	}
	return out
}

// Zone answers are looked up in the DHT (a node's name, a host's claim),
// a round trip across the mesh for every query otherwise; a resolver
// asking for the same name again and again — every phone's stub resolver
// without a cache — would cost one each. zoneCache keeps an answer (and
// a "no such name") for zoneCacheTTL: short, as names move between nodes,
// and well under the TTL the answer itself carries (Config.TTL), so no
// client sees older data than its own cache would give it. Failures are
// not kept.
const (
	zoneCacheTTL  = 5 * time.Second
	zoneCacheSize = 1024
)

// zoneEntry is one kept answer.
type zoneEntry struct {
	addrs []netip.Addr
	err   error // nil or ErrNoSuchName
}
