// Package dns64 is the DNS server on every node. It answers the .mesh zone
// authoritatively from the DHT (sipserver.mesh is the answering node itself,
// <node>.mesh, <host>.<node>.mesh, and the SIP SRV records that RFC 3263
// clients look up) and synthesizes AAAA records for Internet names by DNS64
// (RFC 6147) with the RFC 6052 prefix that package nat64 translates.
package dns64
