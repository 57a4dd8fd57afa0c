package dns64

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/sipmesh/sipmesh/netx"
)

// Config configures a Server. Zero fields take the defaults documented on
// them; Network, Listen and Zone are required.
type Config struct {
	// Network opens the server's sockets and the upstream connections.
	Network netx.Network
	// Listen lists the local addresses to serve on, one UDP socket and one
	// TCP listener each (RFC 7766 §5: TCP is mandatory). One socket per
	// address, never a wildcard bind, so a query's local address is known
	// without IP_PKTINFO and sipserver.mesh can name the address the query
	// arrived on.
	Listen []Listen
	// Port is the port on every Listen address; default 53. -1 picks an
	// ephemeral port per address (tests, benchmarks); Addrs reports it.
	Port int
	// Zone answers <node>.mesh and <host>.<node>.mesh.
	Zone Zone

	// Upstreams are the recursive resolvers for names outside .mesh, tried
	// in order. Empty: such queries are REFUSED (no recursion offered).
	Upstreams []netip.AddrPort
	// Prefix is the NAT64 prefix for synthesized AAAA records (RFC 6052
	// §2.2: length 32, 40, 48, 56, 64 or 96); default WellKnownPrefix.
	Prefix netip.Prefix
	// PrefixFunc, when set, replaces Prefix: each query synthesizes with
	// the prefix it returns then, so the prefix can follow the NAT64 the
	// node would send the packets to (RFC 6147 §5.2: the DNS64 and the
	// NAT64 must agree on it). ok false means no NAT64 is reachable now:
	// nothing is synthesized (an address leading nowhere is worse than
	// none) and AAAA answers pass as they are. Synthesized records then
	// live at most DynamicPrefixTTL, so hosts learn a changed prefix soon.
	// It must not block and must return a valid prefix when ok.
	PrefixFunc func() (netip.Prefix, bool)
	// UpstreamTimeout bounds one exchange with one upstream; default 2 s.
	UpstreamTimeout time.Duration
	// QueryTimeout bounds all work for one client query (zone look-up or
	// every upstream attempt); default 5 s, about when stubs retry.
	QueryTimeout time.Duration
	// MaxInflight bounds concurrent upstream look-ups, and separately
	// concurrent zone look-ups; default 256 each. Beyond it queries get
	// SERVFAIL. Concurrent look-ups of the same name and type share one
	// upstream exchange (and one slot).
	MaxInflight int
	// ForwardRate caps the upstream look-ups of the whole node per second
	// (a token bucket of ForwardBurst), on top of the per-source Rate:
	// without it 64 LAN sources asking random names each within their own
	// rate had every query forwarded. Defaults 200/s and 400: a LAN of 250
	// hosts making one uncached look-up every second or two stays under
	// it, and 200 queries/s (about 20 KB/s) is what a gateway's resolver
	// across a few radio hops can take from one node. Cache hits and the
	// .mesh zone are never capped. Look-ups over the cap get SERVFAIL at
	// once (see errCapped). -1 disables the cap.
	ForwardRate  float64
	ForwardBurst int
	// CacheSize bounds the upstream answer cache in entries; default 4096.
	// Negative: no cache.
	CacheSize int
	// CacheMaxTTL caps how long an upstream answer is cached; default 1 h.
	CacheMaxTTL time.Duration

	// TTL of the .mesh records; default 60 s. Names move between nodes,
	// so it is short.
	TTL time.Duration
	// NegativeTTL is the SOA MINIMUM of the mesh zone, how long resolvers
	// cache NXDOMAIN/NODATA (RFC 2308 §4); default 30 s.
	NegativeTTL time.Duration
	// SIPPort is the port in the _sip._udp/_sip._tcp SRV records; default
	// 5060 (RFC 3261 §19.1.2).
	SIPPort uint16
	// UDPSize is the EDNS(0) payload size the server advertises and the
	// largest UDP response it sends (RFC 6891 §6.2.5); default 1232, the
	// size that avoids IP fragmentation on common paths.
	UDPSize uint16

	// Rate is the sustained queries per second allowed from one source
	// address, Burst the bucket size; defaults DefaultRate and
	// DefaultBurst; -1 disables the limit. Excess queries are dropped. It
	// is a ceiling, not a share: one client alone (a busy PBX, a LAN's
	// caching resolver, dnsperf) is answered as fast as the node can
	// (issue 12), while what it can cost the node is bounded by
	// MaxInflight and, for names outside .mesh, by the node-wide
	// ForwardRate.
	Rate  float64
	Burst int
	// MaxSources bounds the rate limiter's table; default 4096. When it is
	// full of active sources, new ones share one bucket.
	MaxSources int
	// MaxTCPConns bounds concurrent TCP connections per listener; default 64.
	MaxTCPConns int

	// Logger gets the server's log lines; default slog.Default(). The
	// server adds component=dns64.
	Logger *slog.Logger
	// Now is the clock of the cache and the rate limiter; default time.Now.
	Now func() time.Time
}

// Listen is one local address the server serves on.
type Listen struct {
	// Addr is the address to bind, e.g. the node's LAN IPv4 address or its
	// mesh IPv6 address. It must not be unspecified (see Config.Listen).
	Addr netip.Addr
	// Self lists the addresses sipserver.mesh resolves to for queries that
	// arrive on Addr (A for the IPv4 ones, AAAA for the IPv6 ones): the
	// node's own addresses on that interface. Default: Addr alone.
	Self []netip.Addr
}

func (c *Config) setDefaults() {
	if c.Port == 0 {
		c.Port = 53
	}
	if c.Prefix == (netip.Prefix{}) {
		c.Prefix = WellKnownPrefix
	}
	if c.UpstreamTimeout == 0 {
		c.UpstreamTimeout = 2 * time.Second
	}
	if c.QueryTimeout == 0 {
		c.QueryTimeout = 5 * time.Second
	}
	if c.MaxInflight == 0 {
		c.MaxInflight = 256
	}
	if c.ForwardRate == 0 {
		c.ForwardRate = 200
	}
	if c.ForwardBurst == 0 {
		c.ForwardBurst = 400
	}
	if c.CacheSize == 0 {
		c.CacheSize = 4096
	}
	if c.CacheMaxTTL == 0 {
		c.CacheMaxTTL = time.Hour
	}
	if c.TTL == 0 {
		c.TTL = 60 * time.Second
	}
	if c.NegativeTTL == 0 {
		c.NegativeTTL = 30 * time.Second
	}
	if c.SIPPort == 0 {
		c.SIPPort = 5060
	}
	if c.UDPSize == 0 {
		c.UDPSize = 1232
	}
	if c.Rate == 0 {
		c.Rate = DefaultRate
	}
	if c.Burst == 0 {
		c.Burst = DefaultBurst
	}
	if c.MaxSources == 0 {
		c.MaxSources = 4096
	}
	if c.MaxTCPConns == 0 {
		c.MaxTCPConns = 64
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// validate reports the first bad field by name.
func (c *Config) validate() error {
	if c.Network == nil {
		return errors.New("dns64: config: Network is required")
	}
	if c.Zone == nil {
		return errors.New("dns64: config: Zone is required")
	}
	if len(c.Listen) == 0 {
		return errors.New("dns64: config: Listen needs at least one address")
	}
	for i, l := range c.Listen {
		if !l.Addr.IsValid() || l.Addr.IsUnspecified() {
			return fmt.Errorf("dns64: config: Listen[%d].Addr %v: need a specific local address (sipserver.mesh answers with it)", i, l.Addr)
		}
		for _, a := range l.Self {
			if !a.IsValid() || a.IsUnspecified() {
				return fmt.Errorf("dns64: config: Listen[%d].Self: bad address %v", i, a)
			}
		}
	}
	for i, u := range c.Upstreams {
		if !u.IsValid() || u.Port() == 0 {
			return fmt.Errorf("dns64: config: Upstreams[%d] %v: need address and port", i, u)
		}
	}
	if err := ValidatePrefix(c.Prefix); err != nil {
		return fmt.Errorf("dns64: config: Prefix: %w", err)
	}
	switch {
	case c.Port < -1 || c.Port > 65535:
		return fmt.Errorf("dns64: config: Port %d: want 1..65535, or -1 for ephemeral", c.Port)
	case c.UpstreamTimeout < 0:
		return errors.New("dns64: config: UpstreamTimeout is negative")
	case c.QueryTimeout < 0:
		return errors.New("dns64: config: QueryTimeout is negative")
	case c.MaxInflight < 0:
		return errors.New("dns64: config: MaxInflight is negative")
	case c.CacheMaxTTL < 0:
		return errors.New("dns64: config: CacheMaxTTL is negative")
	case c.TTL < time.Second || c.TTL > 24*time.Hour:
		return fmt.Errorf("dns64: config: TTL %v: want 1s..24h", c.TTL)
	case c.NegativeTTL < time.Second || c.NegativeTTL > 3*time.Hour:
		return fmt.Errorf("dns64: config: NegativeTTL %v: want 1s..3h (RFC 2308 §5)", c.NegativeTTL)
	case c.UDPSize < 512:
		return fmt.Errorf("dns64: config: UDPSize %d: below 512 (RFC 6891 §6.2.5)", c.UDPSize)
	case c.ForwardRate < 0 && c.ForwardRate != -1 || c.ForwardBurst < 1:
		return errors.New("dns64: config: ForwardRate must be > 0 (or -1: no cap) and ForwardBurst ≥ 1")
	case c.Rate < 0 && c.Rate != -1 || c.Burst < 1:
		return errors.New("dns64: config: Rate must be > 0 (or -1: no limit) and Burst ≥ 1")
	case c.MaxSources < 1:
		return errors.New("dns64: config: MaxSources must be ≥ 1")
	case c.MaxTCPConns < 1:
		return errors.New("dns64: config: MaxTCPConns must be ≥ 1")
	}
	return nil
}
