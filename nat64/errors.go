package nat64

import "errors"

// Reasons a packet was not translated. They are sentinels so the packet
// path returns them without allocating; callers count them.
var (
	ErrShortBuffer   = errors.New("nat64: output buffer too small")
	ErrTruncated     = errors.New("nat64: packet truncated")
	ErrMalformed     = errors.New("nat64: malformed packet")
	ErrVersion       = errors.New("nat64: wrong IP version")
	ErrChecksum      = errors.New("nat64: bad checksum")
	ErrNotPrefix     = errors.New("nat64: destination outside the NAT64 prefix")
	ErrNotPool       = errors.New("nat64: destination outside the IPv4 pool")
	ErrBadAddr       = errors.New("nat64: source or destination not a unicast address")
	ErrProto         = errors.New("nat64: protocol not translated")
	ErrICMPType      = errors.New("nat64: ICMP type not translated")
	ErrHopLimit      = errors.New("nat64: hop limit exceeded")
	ErrTooBig        = errors.New("nat64: packet exceeds the outgoing MTU")
	ErrNeedFragment  = errors.New("nat64: packet needs fragmenting (not implemented)")
	ErrFragment      = errors.New("nat64: fragment cannot be translated")
	ErrSourceRoute   = errors.New("nat64: IPv4 source route option")
	ErrRoutingHeader = errors.New("nat64: IPv6 routing header with segments left")
	ErrNoMapping     = errors.New("nat64: no binding for the packet")
	ErrFiltered      = errors.New("nat64: packet filtered (address-dependent filtering)")
	ErrNotSYN        = errors.New("nat64: TCP packet without session is not a SYN")
	ErrPoolExhausted = errors.New("nat64: IPv4 port pool exhausted")
	ErrTableFull     = errors.New("nat64: session table full")
	ErrSourceLimit   = errors.New("nat64: per-source session limit reached")
)
