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
// thousands of Nodes in virtual time.
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
//
// The wire format is versioned and documented in FORMAT.md; every decoder of
// peer bytes is fuzzed, and malformed frames are counted and dropped.
package ssr
