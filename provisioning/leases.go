package provisioning

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"
)

// Lease is a binding of an address to a phone, as the admin API lists it
// and as the grant hook receives it.
type Lease struct {
	MAC       net.HardwareAddr
	IP        netip.Addr
	Hostname  string    // option 12, reduced to a DNS label ("" if none usable)
	FQDN      string    // option 81 (RFC 4702), as the client sent it
	Expiry    time.Time // end of the lease
	Extension string    // from the MAC's reservation, if any
}

// Reservation ties a MAC address to a fixed address and to the telephone
// extension the phone gets (DHCP "static lease").
type Reservation struct {
	MAC       net.HardwareAddr
	IP        netip.Addr
	Extension string
	Hostname  string // optional; sent as option 12 when the client asks
}

type leaseState uint8

const (
	stateOffered  leaseState = iota + 1 // reserved for an OFFER until expiry
	stateBound                          // leased until expiry
	stateReleased                       // free; remembered so the client gets it back
	stateDeclined                       // in quarantine until expiry (RFC 2131 §4.3.3)
)

func (s leaseState) String() string {
	switch s {
	case stateOffered:
		return "offered"
	case stateBound:
		return "bound"
	case stateReleased:
		return "released"
	case stateDeclined:
		return "declined"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// clientKey identifies a DHCP client: its client identifier (option 61)
// if it sent one, else its hardware address (RFC 2131 §4.2).
type clientKey string

func keyFromID(id []byte) clientKey { return clientKey("id:" + fmt.Sprintf("%x", id)) }
func keyFromMAC(mac net.HardwareAddr) clientKey {
	return clientKey("hw:" + fmt.Sprintf("%x", []byte(mac)))
}

// entry is one address's record. Each entry holds one address and each
// client at most one entry, so the store never holds more entries than the
// pool (plus reservations) has addresses.
type entry struct {
	key      clientKey // "" for a declined address
	mac      net.HardwareAddr
	ip       netip.Addr
	state    leaseState
	expiry   time.Time
	hostname string
	fqdn     string
	// first marks a binding that is the client's first lease, granted
	// for FirstLeaseTime and not yet renewed; granted is when it was
	// granted. Under pool exhaustion such a binding whose address does
	// not answer a probe is reclaimed (reclaimable).
	first   bool
	granted time.Time
}

// free reports whether the entry's address may be given to another client.
func (e *entry) free(now time.Time) bool {
	switch e.state {
	case stateReleased:
		return true
	default: // offered, bound, declined: until expiry
		return !now.Before(e.expiry)
	}
}

// leaseTimes are the durations the store applies.
type leaseTimes struct {
	lease, first, offer, decline time.Duration
}

// Probe bookkeeping (RFC 2131 §2.2: probe a reused address before
// allocating it).
const (
	// probeValid is how long a probe that found an address free lets it be
	// offered to the client it was made for: long enough for the server
	// to re-run the DISCOVER that asked, short enough that a host which
	// comes up meanwhile is seen at the next offer.
	probeValid = 10 * time.Second
	// probeStale is when a probe in progress no longer holds its address
	// (its result never came back).
	probeStale = 5 * time.Second
	// aliveFor is how long a reclaim candidate that answered a probe is
	// left alone.
	aliveFor = time.Minute
	// reclaimAfter is the age a first lease must reach before, with the
	// pool exhausted and no answer to a probe, its address is reclaimed:
	// a real client configures its address within seconds of the ACK
	// (RFC 2131 §4.4.1) and then answers.
	reclaimAfter = 30 * time.Second
)

type probeState uint8

const (
	probing     probeState = iota + 1 // a probe for key is out
	probedFree                        // nobody answered: key may have it
	probedAlive                       // the bound holder answered
)

// probeMark is the state of probing one pool address. The map holding
// them is keyed by pool addresses only, so it is bounded by the pool.
type probeMark struct {
	key   clientKey
	state probeState
	at    time.Time
}

// leaseStore is the address pool and the bindings: a state machine without
// I/O or clock of its own (the caller passes now). Not safe for concurrent
// use; DHCPServer guards it with its mutex.
type leaseStore struct {
	subnet     netip.Prefix
	server     netip.Addr
	start, end uint32 // dynamic pool, inclusive
	times      leaseTimes

	byIP   map[netip.Addr]*entry
	byKey  map[clientKey]*entry
	resMAC map[string]Reservation // by string(mac)
	resIP  map[netip.Addr]string  // reserved address → string(mac)
	cursor uint32                 // next address to try for a fresh client
	probes map[netip.Addr]probeMark
}

func u32(a netip.Addr) uint32 { return binary.BigEndian.Uint32(a.AsSlice()) }
func addrOf32(v uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

func newLeaseStore(subnet netip.Prefix, server, start, end netip.Addr, t leaseTimes) *leaseStore {
	return &leaseStore{
		subnet: subnet, server: server, start: u32(start), end: u32(end), times: t,
		byIP: make(map[netip.Addr]*entry), byKey: make(map[clientKey]*entry),
		resMAC: make(map[string]Reservation), resIP: make(map[netip.Addr]string),
		cursor: u32(start), probes: make(map[netip.Addr]probeMark),
	}
}

// probeBusy reports whether a probe for another client holds ip.
func (s *leaseStore) probeBusy(ip netip.Addr, key clientKey, now time.Time) bool {
	m, ok := s.probes[ip]
	return ok && m.state == probing && m.key != key && now.Sub(m.at) < probeStale
}

// probedFreeFor reports whether a fresh probe found ip free for key.
func (s *leaseStore) probedFreeFor(ip netip.Addr, key clientKey, now time.Time) bool {
	m, ok := s.probes[ip]
	return ok && m.state == probedFree && m.key == key && now.Sub(m.at) < probeValid
}

// probedForKey returns an address a fresh probe found free for key and
// that is still assignable to it. O(probes), which the pool bounds.
func (s *leaseStore) probedForKey(key clientKey, mac net.HardwareAddr, now time.Time) (netip.Addr, bool) {
	for ip, m := range s.probes {
		if m.state == probedFree && m.key == key && now.Sub(m.at) < probeValid {
			if s.assignable(ip, key, mac, now) || s.reclaimCandidate(ip, key, now) {
				return ip, true
			}
		}
	}
	return netip.Addr{}, false
}

// reclaimCandidate reports whether ip holds a first lease old enough to
// be reclaimed if its address is silent.
func (s *leaseStore) reclaimCandidate(ip netip.Addr, key clientKey, now time.Time) bool {
	e := s.byIP[ip]
	return e != nil && e.state == stateBound && e.first && e.key != key && now.Sub(e.granted) >= reclaimAfter && s.inPool(ip)
}

// needProbe decides whether ip must be probed before it is offered to
// key: it returns false when it may be offered now (the client's own
// unexpired binding, or a fresh probe found it free for this client),
// and true after marking a probe for key as started; errProbing means a
// probe for this client is still out.
func (s *leaseStore) needProbe(ip netip.Addr, key clientKey, now time.Time) (bool, error) {
	if e := s.byIP[ip]; e != nil && e.key == key && e.state == stateBound && now.Before(e.expiry) {
		return false, nil
	}
	if s.probedFreeFor(ip, key, now) {
		return false, nil
	}
	if m, ok := s.probes[ip]; ok && m.state == probing && m.key == key && now.Sub(m.at) < probeStale {
		return false, errProbing
	}
	s.probes[ip] = probeMark{key: key, state: probing, at: now}
	return true, nil
}

// probed records the result of a probe of ip made for key. An address
// that answered is either a live bound client (left alone for aliveFor)
// or a host using it without a lease: then it is quarantined like a
// declined address (RFC 2131 §4.3.3) and never offered until then. It
// reports whether the store changed in a way the lease file keeps.
func (s *leaseStore) probed(ip netip.Addr, key clientKey, inUse bool, now time.Time) bool {
	m, ok := s.probes[ip]
	if !ok || m.state != probing || m.key != key {
		return false // superseded
	}
	if !inUse {
		s.probes[ip] = probeMark{key: key, state: probedFree, at: now}
		return false
	}
	if e := s.byIP[ip]; e != nil && e.state == stateBound && now.Before(e.expiry) && e.key != key {
		s.probes[ip] = probeMark{state: probedAlive, at: now}
		return false
	}
	delete(s.probes, ip)
	if e := s.byIP[ip]; e != nil && e.key != "" {
		delete(s.byKey, e.key)
	}
	s.byIP[ip] = &entry{ip: ip, state: stateDeclined, expiry: now.Add(s.times.decline)}
	return true
}

// reclaimable returns the oldest first lease, granted at least
// reclaimAfter ago and not found alive lately, whose address a probe may
// show unused; a fresh free probe result for key is preferred, so the
// DISCOVER re-run after the probe gets the address that was probed.
func (s *leaseStore) reclaimable(key clientKey, now time.Time) (netip.Addr, bool) {
	var best *entry
	for ip, e := range s.byIP {
		if !s.reclaimCandidate(ip, key, now) {
			continue
		}
		if m, ok := s.probes[ip]; ok && (m.state == probedAlive && now.Sub(m.at) < aliveFor || s.probeBusy(ip, key, now)) {
			continue
		}
		if best == nil || e.granted.Before(best.granted) || e.granted.Equal(best.granted) && e.ip.Less(best.ip) {
			best = e
		}
	}
	if best == nil {
		return netip.Addr{}, false
	}
	return best.ip, true
}

// known reports whether the store has any record of the client or its
// MAC is reserved: such clients are not new clients for rate limiting.
func (s *leaseStore) known(key clientKey, mac net.HardwareAddr) bool {
	if _, ok := s.resMAC[string(mac)]; ok {
		return true
	}
	e := s.byKey[key]
	// An offer alone does not make a client known: a DISCOVER flood
	// would otherwise make its MACs known with one offer each.
	return e != nil && !(e.state == stateOffered && e.first)
}

// grantTime is the lease a REQUEST from key would get now: the full lease
// for a client with a binding that is not a first lease (a renewal, or a
// returning client), FirstLeaseTime otherwise (RFC 2131 §3.3 leaves the
// lease length to the server).
func (s *leaseStore) grantTime(key clientKey) (time.Duration, bool) {
	if e := s.byKey[key]; e != nil && !e.first {
		return s.times.lease, false
	}
	return s.times.first, true
}

func (s *leaseStore) inPool(ip netip.Addr) bool {
	if !ip.Is4() || ip == s.server {
		return false
	}
	v := u32(ip)
	return v >= s.start && v <= s.end
}

// setReservations replaces the reservations. Bindings that contradict a new
// reservation are left to expire: the phone is NAKed at its next renewal
// and then gets its reserved address.
func (s *leaseStore) setReservations(rs []Reservation) error {
	byMAC := make(map[string]Reservation, len(rs))
	byIP := make(map[netip.Addr]string, len(rs))
	for i, r := range rs {
		if len(r.MAC) != 6 {
			return fmt.Errorf("provisioning: reservation %d: MAC %q is not a 6-byte Ethernet address", i, r.MAC)
		}
		if !r.IP.Is4() || !s.subnet.Contains(r.IP) || r.IP == s.server ||
			r.IP == s.subnet.Masked().Addr() || r.IP == broadcastOf(s.subnet) {
			return fmt.Errorf("provisioning: reservation %d (%v): address %v is not a host address of %v other than the node's %v", i, r.MAC, r.IP, s.subnet, s.server)
		}
		if _, dup := byMAC[string(r.MAC)]; dup {
			return fmt.Errorf("provisioning: reservation %d: MAC %v reserved twice", i, r.MAC)
		}
		if other, dup := byIP[r.IP]; dup {
			return fmt.Errorf("provisioning: reservation %d: %v already reserved for %v", i, r.IP, net.HardwareAddr(other))
		}
		r.MAC = append(net.HardwareAddr(nil), r.MAC...)
		byMAC[string(r.MAC)] = r
		byIP[r.IP] = string(r.MAC)
	}
	s.resMAC, s.resIP = byMAC, byIP
	return nil
}

// assignable reports whether ip may be bound to the client (key, mac).
func (s *leaseStore) assignable(ip netip.Addr, key clientKey, mac net.HardwareAddr, now time.Time) bool {
	if r, ok := s.resMAC[string(mac)]; ok {
		if ip != r.IP {
			return false // a reserved phone gets its reserved address only
		}
	} else if owner, ok := s.resIP[ip]; ok && owner != string(mac) {
		return false
	} else if !ok && !s.inPool(ip) {
		return false
	}
	if s.probeBusy(ip, key, now) {
		return false
	}
	e := s.byIP[ip]
	switch {
	case e == nil:
		return true
	case e.state == stateDeclined:
		return !now.Before(e.expiry)
	case e.key == key:
		return true
	default:
		return e.free(now)
	}
}

// take gives ip to the client, dropping the client's record of any other
// address and the previous holder's record of this one.
func (s *leaseStore) take(ip netip.Addr, key clientKey, mac net.HardwareAddr) *entry {
	if old := s.byKey[key]; old != nil && old.ip != ip {
		delete(s.byIP, old.ip)
		delete(s.byKey, key)
	}
	e := s.byIP[ip]
	if e != nil && e.key != key {
		if e.key != "" {
			delete(s.byKey, e.key)
		}
		e = nil
	}
	if e == nil {
		e = &entry{ip: ip}
		s.byIP[ip] = e
	}
	e.key, e.mac = key, append(e.mac[:0], mac...)
	s.byKey[key] = e
	return e
}

// offer picks the address to offer (RFC 2131 §4.3.1, in its order of
// preference: the client's reservation, its current or previous binding,
// the address it asked for, a free one) and holds it for the offer time.
//
// With probing on, an address not already bound to the client is first
// probed (RFC 2131 §2.2): offer returns the address in probe and no entry,
// and the caller re-runs the DISCOVER once the probe result is recorded
// (probed). If the pool is exhausted, the oldest first lease whose
// address does not answer a probe is reclaimed: a DORA flood from made-up
// MACs holds addresses no host uses.
func (s *leaseStore) offer(key clientKey, mac net.HardwareAddr, requested netip.Addr, now time.Time, probe bool) (e *entry, probeIP netip.Addr, err error) {
	var ip netip.Addr
	if r, ok := s.resMAC[string(mac)]; ok {
		if !s.assignable(r.IP, key, mac, now) {
			return nil, netip.Addr{}, fmt.Errorf("%w: reserved %v is still leased to another client", ErrNotAssignable, r.IP)
		}
		ip = r.IP
	} else if e := s.byKey[key]; e != nil && s.assignable(e.ip, key, mac, now) {
		ip = e.ip
	} else if requested.IsValid() && s.assignable(requested, key, mac, now) {
		ip = requested
	} else if p, ok := s.probedForKey(key, mac, now); ok {
		ip = p // the DISCOVER re-run after its probe
	} else {
		var ok bool
		if ip, ok = s.pick(key, mac, now); !ok {
			if !probe {
				return nil, netip.Addr{}, ErrPoolExhausted
			}
			if ip, ok = s.reclaimable(key, now); !ok {
				return nil, netip.Addr{}, ErrPoolExhausted
			}
		}
	}
	if probe {
		need, err := s.needProbe(ip, key, now)
		if err != nil {
			return nil, netip.Addr{}, err
		}
		if need {
			return nil, ip, nil
		}
	}
	prev := s.byKey[key]
	first := prev == nil || prev.first // a new client, until it renews
	e = s.take(ip, key, mac)
	e.first = first
	if e.state == stateBound && now.Before(e.expiry) {
		return e, netip.Addr{}, nil // a bound client that rebooted keeps its lease as is
	}
	e.state, e.expiry = stateOffered, now.Add(s.times.offer)
	return e, netip.Addr{}, nil
}

// pick finds a free pool address: a never-used one first (scanning from a
// cursor, so consecutive clients get consecutive addresses), else the one
// released or expired longest ago, which keeps recent clients' addresses
// available to them for as long as possible.
func (s *leaseStore) pick(key clientKey, mac net.HardwareAddr, now time.Time) (netip.Addr, bool) {
	n := s.end - s.start + 1
	var oldest *entry
	for i := uint32(0); i < n; i++ {
		v := s.cursor
		if s.cursor == s.end {
			s.cursor = s.start
		} else {
			s.cursor++
		}
		ip := addrOf32(v)
		if ip == s.server {
			continue
		}
		if _, reserved := s.resIP[ip]; reserved {
			continue
		}
		if s.probeBusy(ip, key, now) {
			continue
		}
		e := s.byIP[ip]
		if e == nil {
			return ip, true
		}
		if e.free(now) && (oldest == nil || e.expiry.Before(oldest.expiry)) {
			oldest = e
		}
	}
	if oldest == nil {
		return netip.Addr{}, false
	}
	return oldest.ip, true
}

// requestKind is the client state a DHCPREQUEST comes from (RFC 2131
// §4.3.2).
type requestKind uint8

const (
	reqSelecting  requestKind = iota + 1 // answers our OFFER
	reqInitReboot                        // verifies a remembered address
	reqRenewing                          // extends a lease (unicast or broadcast)
)

// request binds ip to the client for a lease time, or says why not:
// ErrNotAssignable means DHCPNAK, ErrNoRecord means silence.
func (s *leaseStore) request(kind requestKind, key clientKey, mac net.HardwareAddr, ip netip.Addr, now time.Time) (*entry, error) {
	if kind == reqInitReboot {
		// §4.3.2: "If the DHCP server has no record of this client, then
		// it MUST remain silent". A reservation is a record.
		_, reserved := s.resMAC[string(mac)]
		if s.byKey[key] == nil && !reserved {
			return nil, ErrNoRecord
		}
	}
	if !s.assignable(ip, key, mac, now) {
		return nil, ErrNotAssignable
	}
	// SELECTING after an offer expired, RENEWING after a restart that lost
	// state: an address nobody else holds is granted again (the server is
	// authoritative for its LAN). A client's first lease is short (see
	// grantTime); renewing it gives the full lease.
	d, first := s.grantTime(key)
	if e := s.byIP[ip]; e != nil && e.key == key && e.state == stateBound && now.Before(e.expiry) {
		d, first = s.times.lease, false // renewing a lease it holds
	}
	e := s.take(ip, key, mac)
	e.state, e.expiry, e.first = stateBound, now.Add(d), first
	if first {
		e.granted = now
	}
	delete(s.probes, ip)
	return e, nil
}

// release frees the client's binding of ip (RFC 2131 §4.3.4); the entry is
// remembered so the client gets the address back later.
func (s *leaseStore) release(key clientKey, ip netip.Addr, now time.Time) bool {
	e := s.byIP[ip]
	if e == nil || e.key != key || e.state == stateReleased || e.state == stateDeclined {
		return false
	}
	e.state, e.expiry = stateReleased, now
	return true
}

// cancelOffer drops an offer the client turned down by choosing another
// server (RFC 2131 §4.3.2, SELECTING with someone else's server identifier).
func (s *leaseStore) cancelOffer(key clientKey, now time.Time) {
	if e := s.byKey[key]; e != nil && e.state == stateOffered {
		e.state, e.expiry = stateReleased, now
	}
}

// decline quarantines ip, which the client found in use by someone else
// (RFC 2131 §4.3.3), if the client held it.
func (s *leaseStore) decline(key clientKey, ip netip.Addr, now time.Time) bool {
	e := s.byIP[ip]
	if e == nil || e.key != key || e.state == stateDeclined {
		return false
	}
	delete(s.byKey, key)
	*e = entry{ip: ip, state: stateDeclined, expiry: now.Add(s.times.decline)}
	return true
}

// bound returns the client's unexpired binding, if any.
func (s *leaseStore) bound(key clientKey, now time.Time) *entry {
	if e := s.byKey[key]; e != nil && e.state == stateBound && now.Before(e.expiry) {
		return e
	}
	return nil
}

func (s *leaseStore) leaseOf(e *entry) Lease {
	l := Lease{MAC: append(net.HardwareAddr(nil), e.mac...), IP: e.ip,
		Hostname: e.hostname, FQDN: e.fqdn, Expiry: e.expiry}
	if r, ok := s.resMAC[string(e.mac)]; ok {
		l.Extension = r.Extension
	}
	return l
}

// leases lists the unexpired bindings in address order.
func (s *leaseStore) leases(now time.Time) []Lease {
	out := make([]Lease, 0, len(s.byKey))
	for _, e := range s.byIP {
		if e.state == stateBound && now.Before(e.expiry) {
			out = append(out, s.leaseOf(e))
		}
	}
	slices.SortFunc(out, func(a, b Lease) int { return a.IP.Compare(b.IP) })
	return out
}

// record is an entry as the lease file stores it.
type record struct {
	Key      string    `json:"key,omitempty"`
	MAC      string    `json:"mac,omitempty"`
	IP       string    `json:"ip"`
	State    string    `json:"state"`
	Expiry   time.Time `json:"expiry"`
	Hostname string    `json:"hostname,omitempty"`
	FQDN     string    `json:"fqdn,omitempty"`
	First    bool      `json:"first,omitempty"` // a first lease, not yet renewed
}

// snapshot returns the entries worth keeping across a restart: bindings
// (also expired ones, so their clients get their addresses back),
// released addresses and quarantined ones. Offers are not kept: a client
// whose offer is lost retransmits its DISCOVER.
func (s *leaseStore) snapshot() []record {
	out := make([]record, 0, len(s.byIP))
	for _, e := range s.byIP {
		if e.state == stateOffered {
			continue
		}
		r := record{Key: string(e.key), IP: e.ip.String(), State: e.state.String(),
			Expiry: e.expiry.UTC(), Hostname: e.hostname, FQDN: e.fqdn, First: e.first}
		if len(e.mac) > 0 {
			r.MAC = e.mac.String()
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b record) int { return cmp.Compare(a.IP, b.IP) })
	return out
}

// restore loads records into an empty store. Records that do not fit the
// current configuration (address outside the subnet, say, after the LAN
// moved) are returned as errors and skipped; the rest load.
func (s *leaseStore) restore(recs []record) []error {
	var errs []error
	for i, r := range recs {
		ip, err := netip.ParseAddr(r.IP)
		if err != nil || !ip.Is4() || !s.subnet.Contains(ip) || ip == s.server {
			errs = append(errs, fmt.Errorf("record %d: address %q is not in %v", i, r.IP, s.subnet))
			continue
		}
		if s.byIP[ip] != nil {
			errs = append(errs, fmt.Errorf("record %d: address %v listed twice", i, ip))
			continue
		}
		e := &entry{ip: ip, expiry: r.Expiry, hostname: r.Hostname, fqdn: r.FQDN, first: r.First}
		if e.first {
			e.granted = r.Expiry.Add(-s.times.first)
		}
		switch r.State {
		case "bound":
			e.state = stateBound
		case "released":
			e.state = stateReleased
		case "declined":
			e.state = stateDeclined
		default:
			errs = append(errs, fmt.Errorf("record %d (%v): unknown state %q", i, ip, r.State))
			continue
		}
		if e.state != stateDeclined {
			mac, err := net.ParseMAC(r.MAC)
			if err != nil || len(mac) != 6 || r.Key == "" {
				errs = append(errs, fmt.Errorf("record %d (%v): bad client MAC %q or key %q", i, ip, r.MAC, r.Key))
				continue
			}
			if s.byKey[clientKey(r.Key)] != nil {
				errs = append(errs, fmt.Errorf("record %d (%v): client %s listed twice", i, ip, r.Key))
				continue
			}
			e.key, e.mac = clientKey(r.Key), mac
			s.byKey[e.key] = e
		}
		s.byIP[ip] = e
	}
	return errs
}
