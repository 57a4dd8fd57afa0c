package provisioning

import (
	"net"
	"time"
)

// admission rate-limits what new clients (MACs the lease store has no
// record of) may obtain on one LAN: offers, and bindings made without an
// offer. Known clients are never limited. A DISCOVER flood from made-up
// MACs then holds at most NewClientBurst + NewClientRate × OfferHold
// addresses with offers, and a DORA flood gains addresses no faster than
// NewClientRate.
//
// Fairness: a flood of first-time MACs would take every token before a
// real phone's DISCOVER arrives. A real client retransmits (RFC 2131
// §4.1: after about 4 s, then 8 s...) with the same MAC, so the last
// reserve tokens go only to MACs already refused once and still
// remembered, and a new phone gets an offer on its first or second
// retransmission during a flood of made-up MACs. Each MAC also gets at
// most one offer per perMACInterval. The table of MACs is bounded.
type admission struct {
	rate, burst, reserve float64
	max                  int

	tokens float64
	last   time.Time
	macs   map[string]*macState
	ring   []string // MACs in the order they entered macs; the oldest goes first
	head   int
}

type macState struct {
	lastOffer time.Time
	refused   bool      // refused once: a retransmission may use the reserve
	passUntil time.Time // admitted, waiting for a probe: re-runs pass
}

const (
	// perMACInterval: one offer per MAC in this time; a client
	// retransmits its DISCOVER after 4 s at the earliest (RFC 2131 §4.1).
	perMACInterval = 2 * time.Second
	// DefaultMaxNewClients bounds the table of new clients' MACs (about
	// 150 bytes each). A refused MAC must still be in it when it
	// retransmits, 4 s later: 2048 entries last 10 s of a 200/s flood of
	// made-up MACs.
	DefaultMaxNewClients = 2048
)

func newAdmission(rate float64, burst, max int, now time.Time) *admission {
	return &admission{rate: rate, burst: float64(burst), reserve: max64(1, float64(burst)/4), max: max,
		tokens: float64(burst), last: now, macs: make(map[string]*macState), ring: make([]string, max)}
}

func max64(a, b float64) float64 {
	if a > b {
		return a
	}
	return b
}

// admit decides whether a new client's message may be answered with an
// offer or a binding; commit is called when one is actually sent.
func (a *admission) admit(mac net.HardwareAddr, now time.Time) bool {
	if el := now.Sub(a.last).Seconds(); el > 0 {
		a.tokens = min(a.burst, a.tokens+el*a.rate)
		a.last = now
	}
	m := a.macs[string(mac)]
	if m == nil {
		// O(1) eviction of the MAC that entered first.
		if len(a.macs) >= a.max {
			delete(a.macs, a.ring[a.head])
		}
		k := string(mac)
		a.ring[a.head] = k
		a.head = (a.head + 1) % a.max
		m = &macState{}
		a.macs[k] = m
	}
	if now.Before(m.passUntil) {
		return true
	}
	if !m.lastOffer.IsZero() && now.Sub(m.lastOffer) < perMACInterval {
		return false
	}
	need := 1.0
	if !m.refused {
		need += a.reserve
	}
	if a.tokens < need {
		m.refused = true
		return false
	}
	a.tokens--
	m.passUntil = now.Add(probeStale) // covers the re-run after a probe
	return true
}

// offered records an offer to mac.
func (a *admission) offered(mac net.HardwareAddr, now time.Time) {
	if m := a.macs[string(mac)]; m != nil {
		m.lastOffer, m.refused, m.passUntil = now, false, time.Time{}
	}
}
