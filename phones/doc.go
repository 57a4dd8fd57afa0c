// Package phones owns the dial plan and telephone features: extensions and
// aliases, the echo test (3246), the party line (426), ring groups, call
// forwarding and the phonebook. It also provides a simulated phone, a SIP
// user agent (RFC 3261) with G.711 RTP (RFC 3550/3551), a tone generator and
// a tone detector, used by the demo and the tests.
package phones
