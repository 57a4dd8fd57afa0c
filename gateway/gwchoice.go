package gateway

import (
	"cmp"
	"context"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sipmesh/sipmesh/registrar"
	"github.com/sipmesh/sipmesh/sipalg"
	"github.com/sipmesh/sipmesh/ssr"
	"github.com/sipmesh/sipmesh/ssr/dht"
)

// Choosing a gateway (issue 14). A node that sends a call out of the
// mesh reads the gateways' announcements from the DHT (announce.go) and
// measures the mesh path to each live one itself, with SSR pings
// (hops and round trip; loss over the last probeWindow probes). It then
// rates the whole path of the call's media as a voice connection, with the
// ITU-T G.107 E-model the relay already uses for calls (sipalg.RFactor,
// G.711 with packet loss concealment):
//
//	one-way delay  = endDelay + mesh RTT/2 + uplink RTT/2
//	loss           = 1 − (1 − mesh loss)(1 − uplink loss)
//	R              = RFactor(G.711 PLC, delay, loss)
//
// where the uplink RTT and loss are what the gateway measured to its
// STUN server and announced, and endDelay (packetisation and the phones'
// jitter buffers) is the same for every gateway. The far end's own path
// beyond the gateway's uplink is unknown and alike for all. The gateway
// with the highest R wins; gateways within rSpread of the best (no
// difference a listener hears: about 0.1 MOS) take new calls in turn, so
// calls spread over equally good doors. A gateway whose uplink is down,
// which offers nothing of the kind asked for, whose record expired, or
// whose last unreachableAfter probes all failed, is never chosen. A
// gateway not probed yet counts with unprobedRTT, so a measured one is
// preferred but a new one still serves when it is the only one.
const (
	endDelay         = 40 * time.Millisecond
	rSpread          = 3.0
	probeWindow      = 10
	unreachableAfter = 3
	unprobedRTT      = 200 * time.Millisecond
	probeTimeout     = 2 * time.Second
	// maxGateways bounds the gateways a node keeps and probes (the DHT
	// keeps at most MaxPerKey writers under "gateways" anyway).
	maxGateways = 16
)

// Kinds of call a gateway is chosen for.
const (
	KindURI   = "uri"   // an Internet SIP URI
	KindTrunk = "trunk" // a number by dial prefix
	KindNAT64 = "nat64" // packets to a NAT64 prefix (nat64exit.go)
)

// GatewayInfo is one live gateway as this node sees it (GET /gateways,
// `sipmesh gateways`).
type GatewayInfo struct {
	Name       string   `json:"name"`
	ID         string   `json:"id"`
	Addr       string   `json:"addr"`
	Offers     []string `json:"offers"`
	Domain     string   `json:"domain,omitempty"`
	DialPrefix string   `json:"dial_prefix,omitempty"`
	NAT64      string   `json:"nat64,omitempty"` // its NAT64 prefix
	// Up, UplinkRTTMs, UplinkLossPct and UplinkProbes are the gateway's
	// own measurement of its uplink.
	Up            bool    `json:"up"`
	UplinkRTTMs   float64 `json:"uplink_rtt_ms"`
	UplinkLossPct float64 `json:"uplink_loss_pct"`
	UplinkProbes  int     `json:"uplink_probes"`
	ExpiresInMs   int64   `json:"expires_in_ms"`
	// The mesh path from this node, measured here (MeshProbes 0: not yet).
	MeshRTTMs   float64 `json:"mesh_rtt_ms"`
	MeshHops    int     `json:"mesh_hops"`
	MeshLossPct float64 `json:"mesh_loss_pct"`
	MeshProbes  int     `json:"mesh_probes"`
	// R and MOS rate the whole path (G.107); Usable says the gateway may
	// be chosen; Best marks the one a call would take now.
	R      float64 `json:"r"`
	MOS    float64 `json:"mos"`
	Usable bool    `json:"usable"`
	Best   bool    `json:"best"`
}

// probe is one mesh ping to a gateway.
type probe struct {
	ok   bool
	rtt  time.Duration
	hops int
}

type gwEntry struct {
	id      ssr.NodeID
	ann     Announcement
	expires time.Time // on this node's clock: now + the record's remaining life
	probes  []probe   // the last probeWindow, oldest first
	// suspect: a call found the gateway silent (proxy's GatewayFailed);
	// not chosen until then, or until a ping is answered.
	suspect time.Time
}

// meshPath sums up the probes: the mean RTT and last hops of the
// answered ones, the share lost, and whether the last unreachableAfter
// all failed.
func (e *gwEntry) meshPath() (rtt time.Duration, hops int, loss float64, dead bool) {
	var sum time.Duration
	ok := 0
	for _, p := range e.probes {
		if p.ok {
			sum += p.rtt
			hops = p.hops
			ok++
		}
	}
	n := len(e.probes)
	if n == 0 {
		return unprobedRTT, 0, 0, false
	}
	if n >= unreachableAfter {
		dead = !slices.ContainsFunc(e.probes[n-unreachableAfter:], func(p probe) bool { return p.ok })
	}
	if ok == 0 {
		return unprobedRTT, 0, 1, dead
	}
	return sum / time.Duration(ok), hops, 1 - float64(ok)/float64(n), dead
}

// rate is the G.107 rating of the whole path through e.
func (e *gwEntry) rate(self ssr.NodeID) (r float64, usable bool) {
	rtt, _, loss, dead := e.meshPath()
	if e.id == self {
		rtt, loss, dead = 0, 0, false // this node is the gateway
	}
	delay := endDelay + rtt/2 + e.ann.RTT/2
	ppl := 100 * (1 - (1-loss)*(1-e.ann.Loss))
	return sipalg.RFactor(sipalg.G711PLC, delay, ppl), e.ann.Up && !dead
}

func (e *gwEntry) offers(kind string) bool {
	switch kind {
	case KindURI:
		return e.ann.URIs
	case KindTrunk:
		return e.ann.Trunk
	case KindNAT64:
		return e.ann.NAT64.IsValid()
	}
	return false
}

// gatewayDir is a node's view of the mesh's gateways.
type gatewayDir struct {
	dht  registrar.DHT
	self ssr.NodeID
	// ping measures the mesh path to a node (ssr.Router.Ping).
	ping func(ctx context.Context, id ssr.NodeID) (rtt time.Duration, hops int, err error)
	now  func() time.Time

	mu      sync.Mutex
	gws     map[ssr.NodeID]*gwEntry
	read    time.Time // last successful read of the announcements
	turn    uint64    // rotates calls among equally good gateways
	reading sync.Mutex
	// The sticky NAT64 exits by prefix and the DNS64 prefix
	// (nat64exit.go), computed at exitsAt (zero: recompute).
	exits     map[netip.Prefix]exitChoice
	dnsPrefix netip.Prefix
	exitsAt   time.Time
}

func newGatewayDir(d registrar.DHT, self ssr.NodeID, ping func(context.Context, ssr.NodeID) (time.Duration, int, error)) *gatewayDir {
	return &gatewayDir{dht: d, self: self, ping: ping, now: time.Now, gws: make(map[ssr.NodeID]*gwEntry)}
}

// refresh reads the announcements. A gateway missing from the answer or
// whose record expired is forgotten, its probes too; a failed read keeps
// what was known until each record's own expiry.
func (g *gatewayDir) refresh(ctx context.Context) error {
	g.reading.Lock() // one read at a time; callers arriving meanwhile wait for it
	defer g.reading.Unlock()
	recs, err := g.dht.Get(ctx, gatewaysKey)
	now := g.now()
	g.mu.Lock()
	defer g.mu.Unlock()
	if err != nil {
		g.expireLocked(now)
		return err
	}
	seen := make(map[ssr.NodeID]bool, len(recs))
	for _, r := range recs {
		if r.Tombstone || r.Remaining <= 0 || len(seen) == maxGateways {
			continue
		}
		a, err := decodeAnnouncement(r.Value)
		if err != nil {
			continue
		}
		id := dht.WriterID(r.Writer)
		seen[id] = true
		e := g.gws[id]
		if e == nil {
			e = &gwEntry{id: id}
			g.gws[id] = e
		}
		e.ann, e.expires = a, now.Add(r.Remaining)
	}
	for id := range g.gws {
		if !seen[id] {
			delete(g.gws, id)
		}
	}
	g.expireLocked(now)
	g.read = now
	g.exitsAt = time.Time{} // the NAT64 exits see the new view at once
	return nil
}

func (g *gatewayDir) expireLocked(now time.Time) {
	for id, e := range g.gws {
		if !now.Before(e.expires) {
			delete(g.gws, id)
		}
	}
}

// probeAll pings every known gateway but this node once, in parallel, and
// records the results.
func (g *gatewayDir) probeAll(ctx context.Context) {
	g.mu.Lock()
	ids := make([]ssr.NodeID, 0, len(g.gws))
	for id := range g.gws {
		if id != g.self {
			ids = append(ids, id)
		}
	}
	g.mu.Unlock()
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Go(func() {
			pctx, cancel := context.WithTimeout(ctx, probeTimeout)
			rtt, hops, err := g.ping(pctx, id)
			cancel()
			if ctx.Err() != nil {
				return // stopping: not the gateway's fault
			}
			g.mu.Lock()
			if e := g.gws[id]; e != nil {
				e.probes = append(e.probes, probe{ok: err == nil, rtt: rtt, hops: hops})
				if err == nil {
					e.suspect = time.Time{} // alive after all
				}
				if len(e.probes) > probeWindow {
					e.probes = slices.Delete(e.probes, 0, len(e.probes)-probeWindow)
				}
				g.exitsAt = time.Time{}
			}
			g.mu.Unlock()
		})
	}
	wg.Wait()
}

// choose returns the gateway for a call of kind (rule above), reading
// the announcements first when the last read is older than
// announceEvery; ok is false when no usable gateway offers it.
func (g *gatewayDir) choose(ctx context.Context, kind string) (ssr.NodeID, bool) {
	return g.chooseWhere(ctx, kind, nil)
}

// trunkPrefix reports whether user is a number dialled with the prefix
// of a gateway this node knows (without reading the DHT: an extension
// must not wait for it).
func (g *gatewayDir) trunkPrefix(user string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, e := range g.gws {
		if dialled(e.ann, user) {
			return true
		}
	}
	return false
}

// dialled reports user as a number with a's dial prefix.
func dialled(a Announcement, user string) bool {
	num, ok := strings.CutPrefix(user, a.DialPrefix)
	return a.Trunk && a.DialPrefix != "" && ok && digits(num)
}

// chooseWhere is choose among the gateways whose announcement passes
// keep (nil: all).
func (g *gatewayDir) chooseWhere(ctx context.Context, kind string, keep func(Announcement) bool) (ssr.NodeID, bool) {
	g.mu.Lock()
	stale := g.now().Sub(g.read) >= announceEvery
	g.mu.Unlock()
	if stale {
		g.refresh(ctx) // on failure, what is known and unexpired serves
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.expireLocked(g.now())
	type cand struct {
		id ssr.NodeID
		r  float64
	}
	var cs []cand
	for id, e := range g.gws {
		if r, ok := e.rate(g.self); ok && e.offers(kind) && (keep == nil || keep(e.ann)) && !e.suspect.After(g.now()) {
			cs = append(cs, cand{id, r})
		}
	}
	if len(cs) == 0 {
		return 0, false
	}
	slices.SortFunc(cs, func(a, b cand) int {
		if c := cmp.Compare(b.r, a.r); c != 0 {
			return c
		}
		return cmp.Compare(a.id, b.id)
	})
	n := 1
	for n < len(cs) && cs[0].r-cs[n].r <= rSpread {
		n++
	}
	g.turn++
	return cs[int(g.turn%uint64(n))].id, true
}

// failed marks the gateway at mesh address a suspect for
// announceLifetime: a call found it silent (proxy's GatewayFailed).
func (g *gatewayDir) failed(a netip.Addr) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for id, e := range g.gws {
		if id.Addr() == a {
			e.suspect = g.now().Add(announceLifetime)
		}
	}
}

// list returns the live gateways, best first, for status and the
// control socket; best is the one a call to a URI would take now (the
// first of the equally good).
func (g *gatewayDir) list() []GatewayInfo {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	g.expireLocked(now)
	out := make([]GatewayInfo, 0, len(g.gws))
	for id, e := range g.gws {
		rtt, hops, loss, _ := e.meshPath()
		r, usable := e.rate(g.self)
		gi := GatewayInfo{
			Name: e.ann.Name, ID: id.String(), Addr: id.Addr().String(),
			Domain: e.ann.Domain, DialPrefix: e.ann.DialPrefix,
			Up: e.ann.Up, UplinkRTTMs: ms(e.ann.RTT), UplinkLossPct: 100 * e.ann.Loss, UplinkProbes: e.ann.Probes,
			ExpiresInMs: e.expires.Sub(now).Milliseconds(),
			MeshHops:    hops, MeshLossPct: 100 * loss, MeshProbes: len(e.probes),
			R: r, MOS: sipalg.MOS(r), Usable: usable && (e.ann.URIs || e.ann.Trunk || e.ann.NAT64.IsValid()) && !e.suspect.After(now),
		}
		if e.ann.NAT64.IsValid() {
			gi.NAT64 = e.ann.NAT64.String()
		}
		if len(e.probes) > 0 {
			gi.MeshRTTMs = ms(rtt)
		}
		if id == g.self {
			gi.MeshRTTMs, gi.MeshLossPct = 0, 0
		}
		for _, o := range []struct {
			on   bool
			name string
		}{{e.ann.URIs, "uris"}, {e.ann.Trunk, "trunk"}, {e.ann.Inbound, "inbound"}, {e.ann.NAT64.IsValid(), "nat64"}} {
			if o.on {
				gi.Offers = append(gi.Offers, o.name)
			}
		}
		out = append(out, gi)
	}
	slices.SortFunc(out, func(a, b GatewayInfo) int {
		if a.Usable != b.Usable {
			if a.Usable {
				return -1
			}
			return 1
		}
		if c := cmp.Compare(b.R, a.R); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	if len(out) > 0 && out[0].Usable {
		out[0].Best = true
	}
	return out
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
