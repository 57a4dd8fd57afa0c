// Package sipalg handles everything of a call that crosses the boundary
// between a phone's IPv4 LAN, the IPv6 mesh and the gateway's NAT: it rewrites
// Via, Contact and Record-Route headers (RFC 3261, with rport per RFC 3581)
// and the SDP connection, media, RTCP and origin lines (c=, m=, a=rtcp, o=;
// RFC 4566, offer/answer per RFC 3264), and runs the RTP/RTCP relay that
// anchors media on each side (RFC 3550/3551, G.711 payload types 0 and 8),
// keeping per-stream loss, jitter and an E-model MOS (ITU-T G.107, G.114).
// SRTP/ZRTP payloads and a=crypto / a=zrtp-hash attributes pass untouched.
package sipalg
