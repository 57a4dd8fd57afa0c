// Package proxy is a node's SIP service: the stateful proxy of the "mesh"
// domain (RFC 3261 §16) and the sipgo endpoint it runs on.
//
// SIPService (sipservice.go) owns the node's SIP sockets, UDP and
// optionally TCP on the phone LAN and UDP on the mesh, behind a guard that
// rate-limits each source, sheds new work while too many transactions are
// alive and answers what sipgo cannot parse (sipnet). It hands REGISTER to
// the registrar (package registrar), calls to the echo test and the
// party line to phones,
// and proxies everything else (proxy.go): a lookup of the Request-URI's
// extension in the location store, parallel forking to its bindings,
// Record-Route on every node, flow tokens that carry a phone's flow
// between nodes (RFC 5626), CANCEL, Timer C and loop detection (RFC 5393).
// Requests from LAN phones outside a dialog are authenticated first (407,
// through the registrar's Authorize), with one answer whatever extension
// they name. Route and in-dialog requests are followed only on a route
// set this node recorded (an HMAC tag in its Record-Route) and only to
// mesh nodes and LAN hosts, never loopback or link-local addresses
// (routecheck.go, RFC 3261 §16.4, §26). Unauthenticated transactions end
// at once, so does the client transaction of a forwarded non-INVITE
// request at its final response (no Timer K: retransmissions of that
// response are dropped as strays, as Timer K would absorb them; RFC 3261
// §17.1.2.2), each source gets a fair share of the live transactions, TCP
// is served through sipnet's limiting listener, requests too large to
// forward get 513, and peer-caused log lines are rate-limited (ratelog).
// Calls that cross between the IPv4 LAN and the IPv6 mesh get their SDP
// rewritten and their media anchored on the node's relay (sipalg) per call
// leg (callleg.go).
//
// Features hosted on the mesh (features.go): a party line room (426,
// 4260–4269) runs on the node that owns RoomKey(room) on the ring; a LAN
// phone's INVITE for a room of another node is sent to that node's mesh
// SIP address through the ALG, so every member's media crosses its own
// node's relay. When the ring changes (RingChanged), the node that now
// owns a room whose node died takes its members over from their records
// (RoomsConfig.Store) with re-INVITEs (phones/roommove.go). Call forwarding (forward.go; registrar.Forward in the
// DHT): unconditional and on unreachable, resolved by the caller's node
// before it forks, on busy and on no answer after the branches failed
// (new branches on the same transaction), with a Diversion header per
// hop (RFC 5806) and loops refused with 482; *72<number> and *73 set and
// clear the unconditional one from the phone.
// Ring groups (groups.go, node configuration): a group extension forks
// to every member's bindings at once; a hunt group rings its members
// one after the other, each for the group's timeout.
// The busy lamp field (blf.go): a SUBSCRIBE for the dialog package
// (RFC 4235) goes to the node the extension is registered through, whose
// phones.BLFService notifies; the proxy reports its LAN phones' dialogs
// to it (early, confirmed, terminated).
// Aliases (alias.go; registrar.Alias in the DHT): a Request-URI user
// that is no extension is retargeted to its alias's extension or mesh URI.
// MESSAGE (RFC 3428) is proxied like any request; one for an extension
// without a binding is stored in the DHT (bounded, expiring), answered
// 202 and delivered when the extension registers (messages.go).
//
// Calls to and from the SIP Internet (uplink.go): a LAN phone's request
// for another domain goes over the mesh to the Internet gateway
// SIPServiceConfig.Outbound chooses; on the gateway, a second
// SIPService with SIPServiceConfig.Uplink is the Internet side, which
// locates the target (RFC 3263) and sends it from the uplink (UDP, or
// TCP over connections it opens itself, uplinktcp.go; IPv4, or IPv6 from
// the uplink's global IPv6 address when the target has only that), routes
// Internet calls for the mesh's public domain to the phones, and refuses
// everything else 403; numbers by the dial prefix go to the gateway's
// provider (its challenges answered with the trunk's credentials) and
// the provider's calls for DIDs come in.
package proxy
