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
// and drops it only once acknowledged. An owner that holds nothing for a
// key asks its replicas before answering "not found", which covers the
// moments after a join or a death before hand-off completed. Partitions
// keep serving what they hold; after they heal the same exchange merges
// them, per (key, writer) by sequence number.
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
