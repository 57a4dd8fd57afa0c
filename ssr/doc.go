// Package ssr implements Scalable Source Routing (Fuhrmann et al., "Pushing
// Chord into the Underlay"; the thesis in the project seeds, §2.1.4): every
// mesh node has a 64-bit ID derived from its ed25519 key, the nodes form one
// virtual ring ordered by ID, and frames travel on physical source routes
// chosen greedily in ID space. It offers exact delivery (to a node ID, or
// mesh IPv6 address) and closest delivery (to the node responsible for a
// key: the DHT's primitive).
//
// The protocol core (Node) is a state machine without I/O: a driver feeds it
// frames and time and carries out what it asks through Env. Router drives it
// on real or in-memory sockets (package netx); package ssrsim drives
// thousands of Nodes in virtual time. Router's Node sits behind a mutex
// that whichever goroutine has work takes (a link socket's reader, a mesh
// socket's writer, the timer goroutine), so a datagram crosses no
// goroutine hand-off on its way through a node; on Linux the link sockets
// are read and written in batches (recvmmsg, sendmmsg), a burst of frames
// costing one system call each way.
//
// What the core adds to the thesis, where the thesis found SSR weak:
//   - IDs are hashes of public keys, uniform on the ring.
//   - The route cache is a tree rooted at the node (shared prefixes, a broken
//     link removes exactly its subtree) with a sorted index for greedy
//     selection, bounded by LRU eviction of leaves; routes to neighbours,
//     ring neighbours, fingers and the global maximum are pinned.
//   - Knowledge is ranked: only routes confirmed first-hand (a frame travelled
//     them, or a beacon) are passed on in ring views; second-hand routes expire
//     after 15 s unless confirmed, so stale routes to dead nodes die out.
//   - The global-consistency rule (the node whose successor wraps around
//     announces itself) is a path-vector gossip of the largest ID in beacons,
//     refreshed by the maximum's sequence number, so rings that formed
//     separately (a healed partition) merge.
//   - Chord fingers (closest lookups of self + 2^63, 2^62, ...) give greedy
//     routing O(log n) virtual hops.
//   - Relays revise the route ahead with what they know (thesis relays
//     forward blindly): a node closer to the target than the planned end,
//     confirmed first-hand within 30 s, or the target itself on any cached
//     route. Each virtual hop crosses the mesh to a node chosen for its ID,
//     so stretch is mostly the number of decisions; every one avoided
//     counts (FORMAT.md, step 5). Every decision takes only routes that fit
//     the frame's remaining physical hop budget.
//   - Decisions weigh a route's length against ring progress (decisionCost):
//     among the 16 cached nodes nearest before the target, the one with the
//     least route length plus legHops per halving of its remaining ring
//     distance (legHops: the mean cached route length), not only the
//     nearest; a relay redirects only when that beats the rest of the
//     planned route plus what its end will need. All candidates lie between
//     the decider (or the planned end) and the target, so routing still
//     terminates.
//   - Only a flow's first datagram pays for the decisions. Its receiver
//     caches the route back from the datagram's history (loops and
//     neighbour short-cuts cut by tidy), and inserting a route into the
//     tree hangs each node on it below any shorter route already cached;
//     relays revise the answer's route as they revise any other, and the
//     source caches the answer's route the same way. The flow's later
//     datagrams (a call's media after its INVITE and answer) take that
//     route with no decision on the way. `sipmesh sim` reports the stretch
//     of both: p50 and p95 1.30 and 4.50 for the first datagram, 1.00 and
//     1.16 for the established flow at 5,000 nodes; 1.41 and 4.86, 1.00
//     and 1.66 at 10,000. With link security (every Router) an exact
//     datagram to a node without an end-to-end session waits for the
//     handshake's round trip (e2e.go), so even a call's INVITE takes a
//     taught route: in ssrsim with Auth, first sealed datagrams have
//     stretch p50 1.00 and p95 1.06 at 1,000 nodes (1.81 without), 1.00
//     and 1.08 at 2,000. What still pays for the decisions: the handshake
//     itself, closest datagrams (DHT requests) and routing control.
//
// Repair (what a broken link does). One node's local view never declares a
// live node gone: a node that loses its route to a target with a link (a
// neighbour timed out, a send error, a carrier loss, a broken-link report)
// and so finds no cached node between itself and the target sends the frame
// on to the nearest known node after the target — the target's successor
// side, which keeps a route to it by ring maintenance — flagged as a
// detour; only if that side has no route either is the target reported as
// "no such node" (both ring neighbours of the gap agree). A ring neighbour
// whose route broke is notified at once through such a detour, and the
// reply brings a fresh route back, so the ring is whole again within a
// round trip instead of a ring round. Repaired and detoured frames are
// never handed straight back to the node that repaired them (split
// horizon: that node told nobody ahead of it), relays do not shorten them
// with routes that may run into the same break, and control frames are
// repaired once. Every frame carries its physical hop count and is dropped
// after MaxHops transmissions, whatever the routing decisions did: a frame
// cannot circulate. Such a drop is reported to the source like any other
// failure (unreachable, "hop limit"): nothing is dropped silently.
//
// Failure detection, and what it costs per link:
//   - Link events: a send error that says the interface is gone, or a
//     carrier loss reported by the link layer (netx.LinkWatcher: netlink
//     RTMGRP_LINK on Linux), drops the neighbours on that link at once.
//   - Beacons: every HelloInterval (1 s, ±10 %) on every link, a neighbour
//     unheard (no frame of any kind) for NeighbourTimeout (3.5 s) is gone.
//     This is the idle cost: one beacon per interface per second, so two
//     per point-to-point link; on a radio channel one beacon reaches every
//     neighbour in range.
//   - Links carrying data (BFD, RFC 5880, and Babel's hello/IHU, RFC 8966
//     §3.4, in spirit): a neighbour sent data that has not been heard from
//     for FastInterval (100 ms) is probed every FastInterval/2 with a
//     unicast echo (ping ID 0) it answers at once; unheard for FastTimeout
//     (350 ms) it is taken out of routing until it is heard again, and the
//     frames that follow are repaired through other neighbours (with no
//     other neighbour there is nothing to repair through: the only one is
//     kept and probed, so a neighbour starved of CPU for a moment does not
//     empty the node's ring view; beacons and link events still apply). A link with
//     traffic both ways (a call) costs nothing extra: the traffic is the
//     proof of life. A one-way stream costs about 6 probes and 6 answers per
//     second on each link it crosses. An idle mesh stays at its beacons.
//     `make bench` (BenchmarkControlPerLink) reports these numbers.
//
// Lossy links versus dead nodes. Ring maintenance waits for answers to its
// notifications; silence from a ring neighbour is ambiguous (a lossy path
// loses a notification or its reply three times in four at 10 % loss per
// link over 7 hops and back; a dead node answers none). The two are told
// apart by evidence rather than by one timer: a dead node's physical
// neighbours time it out, and the notifications sent to it then come back
// as broken-link and unreachable reports, which remove it at once. Silence
// alone declares a ring neighbour gone only after RingProbes (8)
// notifications went unanswered, re-sent at a round-trip pace (four
// smoothed round trips, RFC 6298 §2, between 200 ms and RingInterval), and
// no sooner than before (three ring rounds): patience under loss costs no
// time under churn.
//
// Link security (LinkAuth, since wire format v2; WireGuard and Babel's HMAC
// authentication, RFC 8967, in spirit). Between the links and the Node
// sits a layer that lets through only frames of neighbours that proved, in
// a signed X25519 handshake, that they hold the ed25519 key their node ID
// is the hash of. Every frame carries a ChaCha20-Poly1305 tag under the
// link's session key and a counter checked against a replay window (RFC
// 6479); with mesh-encryption on the payload is also encrypted. A frame
// that fails, or that an authenticated neighbour sends in another node's
// name (a beacon's source, a routed frame's previous hop), is dropped and
// counted; a neighbour without a session reaches the Node not at all, so
// it gets no route, ring position or cache entry. Mesh admission (closed
// meshes) admits only keys the administrator signed.
//
// End-to-end authentication (e2e.go, wire format v3). A relay holds genuine
// link sessions, so link security alone would let it rewrite the datagrams
// it carries or originate one in another node's name. Exact datagrams
// (SIP, RTP, DHT replies) are therefore authenticated by their source for
// their target: sealed (ChaCha20-Poly1305, encrypted with mesh-encryption
// on) under a session the two nodes agree in a signed X25519 handshake
// carried in routed frames (protocol 8), like the link one but between the
// ends of the route. The target delivers only what verifies, with the
// verified source; a datagram sent before the session exists waits
// (bounded) one round trip. Closest datagrams (DHT requests), whose
// receiving node the sender cannot know, are not authenticated end to
// end: they carry reads or records signed by their writers, so one forged
// in another node's name changes no data and only gets that node an
// answer it drops (e2e.go says more). Routing control is
// authenticated per link only (FORMAT.md says why). Not built yet (issue
// 19): defences against many generated IDs around one key (eclipse).
//
// The wire format is versioned and documented in FORMAT.md; every decoder of
// peer bytes is fuzzed, and malformed frames are counted and dropped.
package ssr
