// Package provisioning brings an unmodified desk phone onto the mesh: a
// DHCPv4 server (RFC 2131, options RFC 2132) on each node's phone LAN
// handing out persistent leases with the SIP server option 120 (RFC 3361)
// set to sipserver.mesh, DNS, domain, NTP and a provisioning URL; the
// deterministic derivation of a node's LAN subnet from its node ID with a
// collision-checked claim; and an HTTP server for the per-MAC
// configuration files of common desk phones (Yealink, Grandstream,
// Polycom) and a Yealink remote phonebook. A configuration file holds a
// clear SIP password: HTTPServer gives it only to the address holding the
// MAC's current lease, answers every refusal with the same 404 (no oracle
// of which MACs exist) and limits requests per source address.
//
// The DHCP server uses insomniacslk/dhcp's dhcpv4 message codec but drives
// its own read loop on a socket from netx.Network (server4 starts one
// goroutine per packet and opens its own kernel socket, which neither the
// in-memory network nor Run's wait-for-everything contract allows). The
// protocol core (DHCPServer.Handle) does no I/O: it takes a datagram and
// returns the reply and where to send it, per the delivery rules of RFC 2131
// §4.1.
//
// Against a hostile LAN (DHCP starvation): clients the server has no
// record of are admitted at a bounded rate per LAN, with a reserve for
// clients that retransmit, and get at most one offer per MAC every 2 s;
// offers expire in 10 s; a client's first lease is short (10 min) and
// only its renewal gets the full lease; before an address is offered it is
// probed with an ICMP echo (RFC 2131 §2.2, Prober), an address that
// answers is quarantined, and when the pool is exhausted the oldest
// unrenewed first lease whose address is silent is reclaimed. Every table
// is bounded (the pool, the admission table of MACs), and log lines caused
// by clients are rate-limited and truncated (internal/ratelog).
package provisioning
