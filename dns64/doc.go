// Package dns64 is the DNS server on every node (on github.com/miekg/dns).
// It answers the .mesh zone authoritatively and forwards everything else
// to upstream resolvers with DNS64 synthesis (RFC 6147) under the RFC 6052
// prefix that package nat64 translates.
//
// The .mesh zone: sipserver.mesh is the answering node itself, namely the
// addresses configured for the local address the query arrived on (one
// socket per local address, so the handler knows it without IP_PKTINFO);
// <node>.mesh and <host>.<node>.mesh come from a Zone (the DHT in the node
// daemon); _sip._udp.mesh and _sip._tcp.mesh SRV records and the NAPTR
// records of mesh let RFC 3263 clients find the SIP service, with the SRV
// records and addresses as additional data. Answers carry AA; NXDOMAIN and
// NODATA carry the SOA (RFC 2308 §3); EDNS(0) is echoed (RFC 6891); UDP
// answers are cut to the client's size with TC set, TCP answers are whole
// (RFC 7766); names match case-insensitively and keep the query's case.
//
// DNS64, beyond what CoreDNS's plugin does: AAAA records in ::ffff:0:0/96
// count as absent (RFC 6147 §5.1.4); under the Well-Known Prefix no AAAA
// is synthesized for the non-global IPv4 ranges of RFC 6052 §3.1; PTR
// queries for the synthesized range are answered with a CNAME into
// in-addr.arpa (RFC 6147 §5.3.1); the synthesized TTL is bounded by the
// SOA's negative TTL (§5.1.7). Upstream answers are cached, bounded in
// entries and by TTL, negative ones per RFC 2308 §5; truncated upstream
// answers are asked again over TCP.
//
// The server is not a DNSSEC validator and asks upstreams without DO, so
// its answers carry no DNSSEC records. Every resource is bounded: queries
// per source address (a token bucket in a table of bounded size), TCP
// connections, upstream and zone look-ups in flight, the cache, and the
// node's upstream look-ups per second (one token bucket for all sources;
// over it a query gets SERVFAIL at once, while cached answers and the .mesh
// zone are never capped). Identical upstream look-ups in progress share one
// exchange. Log lines naming what a client asked for are rate-limited and
// truncated (internal/ratelog).
//
// A repeated .mesh query over UDP is answered from the packed reply to
// the same bytes (replay.go) before the miekg server sees it. On the
// node's kernel sockets (Linux) the queries are read and the replayed
// replies sent in batches, one recvmmsg(2) and one sendmmsg(2) for all
// the queries waiting (batch_linux.go), with no allocation per replayed
// query.
package dns64
