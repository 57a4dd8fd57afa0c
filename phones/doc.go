// Package phones owns the telephone features a node answers itself and a
// simulated phone.
//
// Features: the echo test (3246 or "echo", echo.go), a small UAS that
// answers a LAN phone's call with an RTP endpoint echoing its G.711 audio.
// The node's SIP service (package proxy) hands a feature its requests and
// lends it what it needs of a SIP stack through an interface (EchoHost);
// a feature imports neither the proxy, the registrar nor the daemon.
// Planned, not here yet: the dial plan (aliases, short codes), the party
// line (426), ring groups, call forwarding and the phone book; extension
// numbers are today only checked by the registrar (registrar.ValidExt).
//
// The simulated phone (Phone, on emiago/sipgo) behaves like a desk phone
// behind a proxy: it registers with digest authentication (MD5, SHA-256 per
// RFC 8760), places calls with an SDP offer (RFC 3264) and answers them,
// keeps the dialog's route set (Record-Route, RFC 3261 §12), sends rport
// (RFC 3581), cancels, hangs up and answers re-INVITEs. Each call sends the
// phone's own tone and detects the other side's, so a test proves two-way
// audio, and reports setup time, post-dial delay, final status and the
// E-model MOS of what it received. Its media (MediaEndpoint: G.711 RTP per
// RFC 3550/3551, a tone generator and a Goertzel tone detector) serves the
// echo test too; the demo and the tests use the phone.
package phones
