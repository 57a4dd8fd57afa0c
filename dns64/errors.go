package dns64

import "errors"

var (
	// ErrNoSuchName is what a Zone returns for a name that does not exist;
	// the server answers NXDOMAIN (RFC 1035 §4.1.1, RCODE 3).
	ErrNoSuchName = errors.New("dns64: no such name")

	// errBusy: the bound on concurrent upstream and zone look-ups is
	// reached; the query gets SERVFAIL instead of queueing without limit.
	errBusy = errors.New("dns64: too many look-ups in flight")

	// errNoUpstream: every configured upstream failed or timed out.
	errNoUpstream = errors.New("dns64: no upstream answered")
)
