// Package dht is the replicated key/value store on the SSR ring (package
// ssr): the location database of the mesh registrar, the subscriber
// accounts and the .mesh names. It replaces the thesis's one-copy table
// (§3.6.3–3.6.4 in the project seeds, where a router's registrations died
// with it) with versioned, signed, replicated records that move as the ring
// changes.
//
// Placement. A key (a namespaced string such as "aor:sip:201@mesh") is
// hashed with SHA-256 onto the ring (KeyOf). Its owner is the node closest
// delivery lands on: the live node with the largest ID ≤ the key, wrapping
// (ssr.Closest). Replicas live on the owner's R−1 predecessors — not its
// successors — because under this rule the node that takes a dead owner's
// keys over is its predecessor: with replicas there, the new owner already
// holds them.
//
// A Driver answers its own node's gets of the keys that node owns from
// its store when the owner would answer a GET from it anyway (it holds a
// record, its neighbours are settled: Node.GetOwned), without a message
// to itself.
//
// Records. A record is identified by (key, writer public key): several
// writers may hold a value under one key, and a read returns all of them.
// It carries a sequence number chosen by its writer, a lifetime, a
// tombstone flag and a value, and is signed with ed25519 by the writer.
// Holders refuse bad signatures, versions not newer than the one they hold
// (replays), oversize values, and writers over their quota. Lifetimes are
// relative: a holder counts a record's remaining time on its own clock and
// passes the rest on, so routers without a correct clock (OpenWrt boxes
// without RTC or NTP) still expire records correctly.
//
// Maintenance. Every few seconds each owner compares, by a summary hash, the
// records of the key range it owns with each of its replicas; on a mismatch
// the replica sends a digest (key, writer, seq triples in bounded chunks)
// and both sides push what the other lacks, newest version winning. A node
// holding a record it is no longer responsible for hands it to the owner
// and drops it once acknowledged — unless it is still within the keep arc
// below the key (Eclipse, below). An owner that holds nothing for a
// key asks its replicas before answering "not found", which covers the
// moments after a join or a death before hand-off completed. Partitions
// keep serving what they hold; after they heal the same exchange merges
// them, per (key, writer) by sequence number.
//
// Eclipse. Link security (package ssr) binds a node ID to a key, so no
// node takes a position it has no key for; but keys are free, and on an
// N-node ring about N tries give an ID in any chosen gap. With placement
// by rank alone, one such node at a key's position is its owner: the
// writer's STORE reaches it first, it fans out nothing, answers "not
// found", and the two honest nodes below never get a copy; and nodes
// inserted later between a key and its honest holders receive their
// hand-off and make them drop it. Records are signed, so an attacker can
// deny but not forge. The defence (Params.Walk, Params.Arc) rests on what
// an attacker cannot do: remove honest nodes from the ring or move them.
//
//   - Walks. A write goes to the owner as before, and then, in the
//     background, down the ring: a STORE (replica copy, answer wanted) by
//     closest delivery to the last answering node's ID − 1, which lands on
//     that node's predecessor whatever IDs others chose, until a node
//     answers from past the arc — Arc expected gaps below the key (6: about
//     as many nodes), the gap estimated from the writer's own ring view —
//     or Walk (128) nodes answered. A get whose owner answers with nothing
//     walks the same way (GET from the local store only) until a node
//     answers with a record, the arc is passed, or Walk nodes were asked.
//     A node that stays silent is stepped over blindly, a quarter gap at a
//     time. An answer with a tombstone ends a walk (copies farther down may
//     be older than the deletion).
//   - Keeping. A holder keeps its copy, whatever its rank, while it is
//     within the keep arc below the key: 2·Arc gaps by the larger of its
//     two one-sided gap estimates, so that nodes crowded on one side of it
//     do not shrink it. It still hands the copy to the owner, once
//     each time it stops being one of the key's Replicas holders. Copies past the replicas are not synced: the writer's
//     next write refreshes them, and they expire.
//
// What this withstands: an attacker that answers "not found" and drops
// writes must put more than Walk nodes before the first honest holder of
// every key it denies — with 1 % of a 10,000-node mesh (100 nodes) not one
// (sim dht --attack 0.01 --targets 100: none of the 100 at 1,000 and at
// 10,000 nodes; without the defence, one node per target, 11 of 100 at
// 1,000 nodes, where the attacker has 10, and all 100 at 10,000); nodes
// inserted after a write take no copy away. A silent
// attacker must cover the whole arc, a node every quarter gap: about
// 4·Arc+1 = 25 nodes per key, and its victims wait (the owner's four
// attempts, 20 s, then 1 s per silent step). What it does not withstand:
// more than Walk colluding nodes on one key (or 25 silent ones); an
// attacker's own record under a key that has no writer policy (a
// Validator): a walk ends at the first record found, and it stands beside
// the real one; an old version a holder once had (signed, so replayable
// within its lifetime); relays that drop or misroute (package ssr's
// concern); and a mesh of nodes without the defence, which drop copies
// on hand-off as before. Costly IDs (S/Kademlia's crypto puzzle, an ID
// valid only if H(H(key)) has c leading zero bits) would multiply the
// price of every chosen ID by 2^c but change every node's ID and cost a
// router about 2^c hashes at first start (c = 20: seconds on a PC, a few
// minutes on a MIPS router), so it is not used; the walk makes the number
// of nodes, not their price, the bound. The walk's price: a write sends
// about Arc more STOREs (its copies: the replicas plus the nodes in the
// arc), a get of a missing key about Arc more round trips, a found key
// none.
//
// Restarts. A Driver with a state directory keeps the records its node
// holds in a file there (disk.go): changes appended every couple of
// seconds, the file rewritten atomically when it doubled, entries framed
// with a length and a checksum so a torn write loses one entry. At start
// it loads them with the checks of records from the network and the
// remaining time counted down by the outage, so a restart of one node or
// of the whole mesh keeps accounts and unexpired bindings.
//
// The protocol core (Node) is a state machine without I/O, like ssr.Node;
// Driver runs it on an *ssr.Router with real time, and package dhtsim runs
// thousands of them in virtual time on package ssrsim. The wire format and
// the records file are documented in FORMAT.md.
package dht
