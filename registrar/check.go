package registrar

import "github.com/emiago/sipgo/sip"

// What the proxy of the same node shares with the registrar: the request
// checks every SIP role applies first and the responses a node builds of
// its own, so that a request gets the same answer whichever role it
// reaches. The registrar keeps them because it answers most requests
// without sipgo's transaction layer and builds its responses by hand.

// CheckRequest validates what RFC 3261 §8.2 and §16.3 require of any
// request, after sipgo parsed it: 0 when the request is fine, else the
// status and reason phrase to answer.
func CheckRequest(req *sip.Request) (int, string) { return checkRequest(req, &reqHeaders{}) }

// Answerable reports whether a response to req can be addressed: a Via
// that names a SIP transport and host (RFC 3261 §18.2.2).
func Answerable(req *sip.Request) bool { return answerable(req) }

// CanonHost lower-cases a host and writes IP literals (with or without
// brackets) in netip's canonical form, for comparing URI hosts.
func CanonHost(h string) string { return canonHost(h) }

// Response builds a response of this node to req: the Vias with
// received and rport (RFC 3261 §18.2.1, RFC 3581), a To tag, and the
// registrar's Server header.
func (r *Registrar) Response(req *sip.Request, code int, reason string) *sip.Response {
	return r.response(req, code, reason)
}
