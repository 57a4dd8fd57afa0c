// Package peerbench is the side-by-side benchmark of issue 12 (`make
// bench-peers`): the `sipmesh node` binary, with its default config and
// through its real sockets, against the servers a mesh operator would run
// instead (Unbound, Kamailio, rtpengine), each in a network namespace of
// its own, pinned to the same CPU core, loaded by the same Debian clients
// (dnsperf, SIPp) or by the test itself (the rtp row: sipgo user agents
// set up the calls, a paced G.711 generator measures one-way delay from
// its send call to the kernel's receive timestamp, the relays and the
// generator at nice -20 with a 100 µs scheduler slice for the row) from a
// client namespace, interleaved A/B over several rounds.
// The gateway row sends the calls to a SIPp UAS on an emulated Internet
// namespace: through the node as the mesh's gateway (issue 14), and
// through Kamailio as a plain outbound proxy.
//
// The harness is a test behind the build tag "peerbench", so `make test`
// never runs the load; this file only carries the package documentation.
package peerbench
