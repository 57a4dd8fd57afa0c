// Package phones owns the dial plan and telephone features: extensions and
// aliases, the echo test (3246), the party line (426), ring groups, call
// forwarding and the phonebook. It also provides a simulated phone, a SIP
// user agent (RFC 3261) with G.711 RTP (RFC 3550/3551), a tone generator and
// a tone detector, used by the demo and the tests.
//
// The simulated phone (Phone, on emiago/sipgo) behaves like a desk phone
// behind a proxy: it registers with digest authentication (MD5, SHA-256 per
// RFC 8760), places calls with an SDP offer (RFC 3264) and answers them,
// keeps the dialog's route set (Record-Route, RFC 3261 §12), sends rport
// (RFC 3581), cancels, hangs up and answers re-INVITEs. Each call sends the
// phone's own tone and detects the other side's, so a test proves two-way
// audio, and reports setup time, post-dial delay, final status and the
// E-model MOS of what it received.
package phones
