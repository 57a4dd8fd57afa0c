// Package uplink is the mesh's door to the SIP Internet on a gateway node
// (a node whose config names an uplink). Today it holds the client side
// of locating SIP servers, RFC 3263: a request for sip:bob@example.net
// leaves the mesh through a gateway, which finds example.net's SIP
// servers by NAPTR → SRV → A/AAAA (§4.1, §4.2) and tries them in order
// (§4.3). And a trunk: the gateway's account with a SIP provider, kept
// registered (RFC 3261 §10) with the provider's digest challenges
// answered, refreshed at half the granted lifetime, 423 answered with
// the provider's Min-Expires, failures backed off as RFC 5626 §4.5 says
// and the binding removed on stop. And STUN Binding (RFC 8489) to learn
// the public address of a gateway behind a NAT router, and Probe, one
// Binding without retransmission, with which a gateway measures its
// uplink's round trip and loss for its announcement. The gateway role in
// the node (package gateway) uses all three.
//
// Only the transports sipmesh speaks are located: UDP and TCP (the
// gateway's Internet side reaches both; its trunk registers over UDP
// only, Trunk). One address family's failed query (a resolver refusing
// AAAA) does not hide the other's addresses. NAPTR
// services for TLS, SCTP or WebSocket (SIPS+D2T, SIP+D2S, SIP+D2W, …)
// are skipped, as RFC 3263 §4.1 tells a client to discard records for
// transports it does not support; a sips: URI is refused.
//
// Everything a DNS answer can make large is bounded: the records read
// per answer, the SRV targets followed, the addresses returned.
package uplink
