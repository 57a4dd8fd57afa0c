// Package sipalg handles everything of a call that crosses the boundary
// between a phone's IPv4 LAN, the IPv6 mesh and the gateway's NAT: it rewrites
// Via, Contact and Record-Route headers (RFC 3261, with rport per RFC 3581)
// and the SDP connection, media, RTCP and origin lines (c=, m=, a=rtcp, o=;
// RFC 4566, offer/answer per RFC 3264), and runs the RTP/RTCP relay that
// anchors media on each side (RFC 3550/3551, G.711 payload types 0 and 8),
// keeping per-stream loss, jitter and an E-model MOS (ITU-T G.107, G.114).
// SRTP/ZRTP payloads and a=crypto / a=zrtp-hash attributes pass untouched.
//
// SDP: Parse and Rewrite work on lines and touch only the o= address and
// version, c= addresses, m= ports and a=rtcp (RFC 3605); every other byte,
// line endings included, is copied, which pion/sdp's Marshal cannot promise
// (see SDP). The o= version sent to each side follows RFC 3264 §8 through
// an OriginState per dialog side. The c=0.0.0.0 hold marker stays a marker
// (RFC 3264 §8.4); ICE attributes pass unchanged and make ICE agents fall
// back to the relayed default destination (RFC 5245 §5.1).
//
// Relay: a Relay owns a bounded port range on each of its two sides and
// hands out Sessions, one per media stream of a call leg, each with an
// RTP+RTCP socket pair per side. Sessions latch symmetric RTP (RFC 4961)
// from allowed addresses only, are reclaimed when idle, and allocate
// nothing per packet.
package sipalg
