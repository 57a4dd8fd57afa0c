package provisioning

import (
	"context"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// fakeProber answers probes from a set of addresses in use (static hosts
// and the phones that configured their leases).
type fakeProber struct {
	inUse  map[netip.Addr]bool
	probes int
}

// Probe implements Prober (for Run; the Handle-level tests call it
// through handleProbing).
func (p *fakeProber) Probe(_ context.Context, a netip.Addr) (bool, error) { return p.inUse[a], nil }

// handleProbing runs m through Handle as Run does: a probe the server
// asks for is answered by p (taking no virtual time) and the datagram
// handled again, for three probes at most, after which Run gives up (the
// client retransmits).
func (e *testEnv) handleProbing(p *fakeProber, m *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
	e.t.Helper()
	pkt := m.ToBytes()
	r, ok := e.srv.Handle(pkt, clientPort)
	for range 3 {
		if ok || !r.Probe.IsValid() {
			break
		}
		p.probes++
		e.srv.ProbeResult(r, p.inUse[r.Probe])
		r, ok = e.srv.Handle(pkt, clientPort)
	}
	if !ok {
		if r.Probe.IsValid() {
			e.srv.ProbeAbandoned(r)
		}
		return nil
	}
	resp, err := dhcpv4.FromBytes(r.Packet)
	if err != nil {
		e.t.Fatalf("undecodable reply: %v", err)
	}
	if resp.TransactionID != m.TransactionID || resp.OpCode != dhcpv4.OpcodeBootReply {
		e.t.Fatalf("reply %v to %v", resp.Summary(), m.Summary())
	}
	return resp
}

func randomMAC(rng *rand.Rand) net.HardwareAddr {
	m := make(net.HardwareAddr, 6)
	for i := range m {
		m[i] = byte(rng.Uint32())
	}
	m[0] = m[0]&^1 | 2 // unicast, locally administered: what a flooder makes up
	return m
}

// phone is a DHCP client as RFC 2131 §4.1 has it retransmit: DISCOVER
// after 0, 4, 12, 28, 60 s (doubling back-off), REQUEST at once after an
// OFFER.
type phone struct {
	hw      net.HardwareAddr
	start   time.Time
	next    time.Time
	backoff time.Duration
	tries   int
	bound   netip.Addr
	at      time.Time
}

func newPhone(hw net.HardwareAddr, start time.Time) *phone {
	return &phone{hw: hw, start: start, next: start, backoff: 4 * time.Second}
}

// step sends the phone's DISCOVER if it is due and completes the DORA.
func (ph *phone) step(e *testEnv, p *fakeProber) {
	now := e.clock.Now()
	if ph.bound.IsValid() || now.Before(ph.next) {
		return
	}
	ph.tries++
	ph.next = now.Add(ph.backoff)
	ph.backoff *= 2
	offer := e.handleProbing(p, discover(e.t, ph.hw))
	if offer == nil || offer.MessageType() != dhcpv4.MessageTypeOffer {
		return
	}
	req, err := dhcpv4.NewRequestFromOffer(offer)
	if err != nil {
		e.t.Fatal(err)
	}
	ack := e.handleProbing(p, req)
	if ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck {
		return
	}
	ph.bound, ph.at = addr(ack.YourIPAddr), now
	p.inUse[ph.bound] = true // it configures the address and answers
}

// floodResult is what a flood test measured.
type floodResult struct {
	sent, offers, acks int
	maxOffered         int // addresses held by unconfirmed offers at once
	exhaustedAt        time.Duration
	phoneWait          time.Duration
	phoneTries         int
	stats              DHCPStats
}

// runFlood floods the server with DISCOVERs from random MACs at rate per
// second for d (each answered OFFER followed by a REQUEST if dora), with
// a new phone starting at phoneAt, in virtual time.
func runFlood(t *testing.T, e *testEnv, p *fakeProber, rate int, d, phoneAt time.Duration, dora bool) floodResult {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	start := e.clock.Now()
	ph := newPhone(mac(200), start.Add(phoneAt))
	var res floodResult
	tick := time.Second / time.Duration(rate)
	for e.clock.Now().Before(start.Add(d)) {
		res.sent++
		offer := e.handleProbing(p, discover(t, randomMAC(rng)))
		if offer != nil && offer.MessageType() == dhcpv4.MessageTypeOffer {
			res.offers++
			if dora {
				req, err := dhcpv4.NewRequestFromOffer(offer)
				if err != nil {
					t.Fatal(err)
				}
				if ack := e.handleProbing(p, req); ack != nil && ack.MessageType() == dhcpv4.MessageTypeAck {
					res.acks++
				}
			}
		}
		if res.sent%rate == 0 {
			// Once a second: how much of the pool do offers hold, and is
			// any address left?
			e.srv.mu.Lock()
			now := e.clock.Now()
			held, free := 0, 0
			st := e.srv.store
			for v := st.start; v <= st.end; v++ {
				ip := addrOf32(v)
				en := st.byIP[ip]
				switch {
				case ip == st.server:
				case en == nil || en.free(now):
					free++
				case en.state == stateOffered:
					held++
				}
			}
			e.srv.mu.Unlock()
			res.maxOffered = max(res.maxOffered, held)
			if free == 0 && res.exhaustedAt == 0 {
				res.exhaustedAt = now.Sub(start)
			}
		}
		ph.step(e, p)
		e.clock.Advance(tick)
	}
	res.stats = e.srv.Stats()
	res.phoneTries = ph.tries
	res.phoneWait = -1
	if ph.bound.IsValid() {
		res.phoneWait = ph.at.Sub(ph.start)
	}
	return res
}

func newFloodServer(t *testing.T) (*testEnv, *fakeProber) {
	p := &fakeProber{inUse: map[netip.Addr]bool{}}
	e := newTestServerFile(t, "", func(c *DHCPConfig) {
		c.LeaseTime, c.FirstLeaseTime = 12*time.Hour, 0 // production defaults
		c.Prober = p
	})
	return e, p
}

// TestDiscoverFlood: 200 DISCOVERs/s from random MACs for two minutes.
// Offers to new clients are limited and expire in 10 s, so they never
// hold more than a fraction of the 253-address pool, and a phone that
// starts during the flood gets an address within a minute.
func TestDiscoverFlood(t *testing.T) {
	e, p := newFloodServer(t)
	res := runFlood(t, e, p, 200, 2*time.Minute, 30*time.Second, false)
	t.Logf("DISCOVER flood: %d sent, %d offered (at most %d addresses held by offers), throttled %d; phone bound after %v (%d DISCOVERs)",
		res.sent, res.offers, res.maxOffered, res.stats.Throttled, res.phoneWait, res.phoneTries)
	if res.exhaustedAt != 0 {
		t.Errorf("pool exhausted after %v", res.exhaustedAt)
	}
	// Burst 20 + 2/s for the 10 s an offer lives, plus rounding.
	if res.maxOffered > 45 {
		t.Errorf("offers held %d addresses at once, want ≤ 45", res.maxOffered)
	}
	if res.phoneWait < 0 || res.phoneWait > time.Minute {
		t.Errorf("phone bound after %v, want within a minute", res.phoneWait)
	}
}

// TestDORAFlood: 200 DORAs/s from random MACs for five minutes. New
// clients get addresses at 2/s, so the pool runs out after about two
// minutes; from then on the oldest first leases, whose addresses no host
// answers, are reclaimed. A phone that starts at minute three gets an
// address within a minute, and a phone bound before the flood keeps its
// address.
func TestDORAFlood(t *testing.T) {
	e, p := newFloodServer(t)
	before := newPhone(mac(100), e.clock.Now())
	before.step(e, p)
	if !before.bound.IsValid() {
		t.Fatal("phone before the flood got no address")
	}
	res := runFlood(t, e, p, 200, 5*time.Minute, 3*time.Minute, true)
	t.Logf("DORA flood: %d sent, %d offered, %d bound, throttled %d, probes %d; pool exhausted after %v; phone bound after %v (%d DISCOVERs)",
		res.sent, res.offers, res.acks, res.stats.Throttled, p.probes, res.exhaustedAt, res.phoneWait, res.phoneTries)
	if res.exhaustedAt == 0 || res.exhaustedAt < 90*time.Second {
		t.Errorf("pool exhausted after %v, want after 90 s (new clients limited to 2/s)", res.exhaustedAt)
	}
	if res.phoneWait < 0 || res.phoneWait > time.Minute {
		t.Errorf("phone bound after %v, want within a minute", res.phoneWait)
	}
	if l, ok := e.srv.LeaseByMAC(before.hw); !ok || l.IP != before.bound {
		t.Errorf("phone bound before the flood lost its lease: %+v %v", l, ok)
	}
	checkStore(t, e.srv.store)
	if n := len(e.srv.store.probes); n > 253 {
		t.Errorf("probe table holds %d entries", n)
	}
	if n := len(e.srv.admit.macs); n > DefaultMaxNewClients {
		t.Errorf("admission table holds %d MACs", n)
	}
}

// TestStaticHostNotOffered: an address a host uses without a lease (it
// answers the probe) is not offered, and stays out of the pool for
// DeclineHold; then it is probed again.
func TestStaticHostNotOffered(t *testing.T) {
	e, p := newFloodServer(t)
	static := netip.MustParseAddr("10.64.7.2") // the first the pool would give
	p.inUse[static] = true
	for i := range 5 {
		e.clock.Advance(time.Second)
		offer := e.handleProbing(p, discover(t, mac(byte(i+1))))
		if offer == nil {
			t.Fatalf("client %d: no offer", i)
		}
		if got := addr(offer.YourIPAddr); got == static {
			t.Fatalf("client %d offered %v, which a static host uses", i, got)
		}
	}
	if st := e.srv.Stats(); st.InUse != 1 {
		t.Errorf("InUse = %d, want 1 (quarantined, not probed again)", st.InUse)
	}
	// Asking for it by option 50 does not get it either.
	e.clock.Advance(perMACInterval)
	offer := e.handleProbing(p, discover(t, mac(9), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(static.AsSlice()))))
	if addr(offer.YourIPAddr) == static {
		t.Fatal("requested static address offered")
	}
	// After the quarantine the host is gone: the address is offered again
	// after a fresh probe.
	delete(p.inUse, static)
	e.clock.Advance(DefaultDeclineHold)
	offer = e.handleProbing(p, discover(t, mac(10), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(static.AsSlice()))))
	if addr(offer.YourIPAddr) != static {
		t.Fatalf("after the quarantine got %v, want %v", offer.YourIPAddr, static)
	}
}

// TestFirstLease: a client's first lease is FirstLeaseTime (T1, T2 scaled
// to it); its renewal gets the full lease, and so does its next binding
// after a restart of the server.
func TestFirstLease(t *testing.T) {
	e := newTestServer(t, func(c *DHCPConfig) { c.LeaseTime, c.FirstLeaseTime = 12*time.Hour, 10*time.Minute })
	offer, _ := e.mustReply(discover(t, mac(1)), dhcpv4.MessageTypeOffer)
	if got := offer.IPAddressLeaseTime(0); got != 10*time.Minute {
		t.Errorf("OFFER lease %v, want 10m", got)
	}
	req, _ := dhcpv4.NewRequestFromOffer(offer)
	ack, _ := e.mustReply(req, dhcpv4.MessageTypeAck)
	if got, t1 := ack.IPAddressLeaseTime(0), ack.IPAddressRenewalTime(0); got != 10*time.Minute || t1 != 5*time.Minute {
		t.Errorf("first ACK lease %v T1 %v, want 10m and 5m", got, t1)
	}
	e.clock.Advance(5 * time.Minute)
	e.restart() // the first-lease mark survives in the lease file
	ren, _ := e.mustReply(renew(t, ack), dhcpv4.MessageTypeAck)
	if got := ren.IPAddressLeaseTime(0); got != 12*time.Hour {
		t.Errorf("renewal lease %v, want 12h", got)
	}
	if got := ren.IPAddressRenewalTime(0); got != 6*time.Hour {
		t.Errorf("renewal T1 %v, want 6h", got)
	}
	// Released and back: a known client gets the full lease at once.
	e.send(message(t, dhcpv4.MessageTypeRelease, mac(1), dhcpv4.WithClientIP(ack.YourIPAddr),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(testServer.AsSlice()))))
	e.clock.Advance(time.Minute)
	ack2 := e.lease(mac(1))
	if got := ack2.IPAddressLeaseTime(0); got != 12*time.Hour {
		t.Errorf("returning client's lease %v, want 12h", got)
	}
}

// TestSelectingWithoutOffer: a REQUEST naming this server for an address
// it never offered to the client is NAKed, so a flooder cannot bind
// addresses without going through the limited DISCOVER.
func TestSelectingWithoutOffer(t *testing.T) {
	e := newTestServer(t, nil)
	req := message(t, dhcpv4.MessageTypeRequest, mac(7),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(testServer.AsSlice())),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("10.64.7.50"))))
	e.mustReply(req, dhcpv4.MessageTypeNak)
	if ls := e.srv.Leases(); len(ls) != 0 {
		t.Fatalf("leases %+v", ls)
	}
}
