package dns64

import "errors"

var (
	// ErrNoSuchName is what a Zone returns for a name that does not exist;
	// the server answers NXDOMAIN (RFC 1035 §4.1.1, RCODE 3).
	ErrNoSuchName = errors.New("dns64: no such name")

	// errBusy: the bound on concurrent upstream and zone look-ups is
	// reached; the query gets SERVFAIL instead of queueing without limit.
	errBusy = errors.New("dns64: too many look-ups in flight")

	// errCapped: the node's upstream look-ups are over Config.ForwardRate.
	// The query gets SERVFAIL at once rather than silence or REFUSED.
	// RFC 8906 (BCP 231): a server answers every query, since silence
	// makes clients retry and so adds load. RFC 1035 §4.1.1: REFUSED is
	// for "policy reasons" (this server will not serve this client or
	// name), SERVFAIL for a "problem with the name server"; the cap is a
	// momentary load condition of the node, and a stub that gets SERVFAIL
	// retries or moves to its next server, where REFUSED tells it this
	// server is not one to ask at all.
	errCapped = errors.New("dns64: node's upstream query rate cap reached")

	// errNoUpstream: every configured upstream failed or timed out.
	errNoUpstream = errors.New("dns64: no upstream answered")
)
