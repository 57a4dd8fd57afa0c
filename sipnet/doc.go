// Package sipnet is the SIP transport layer the registrar, the proxy and
// the simulated phone share, below all of them: what happens to a datagram
// before a SIP role sees it.
//
// It owns the adapter around emiago/sipgo (sipgo.go): the bigger UDP
// message limit, the guard in front of sipgo's reads (Guard: per-source
// rate limit, load shedding by live transactions, a 400 for what sipgo
// cannot parse), a resolver that never queries the host's DNS, and a quiet
// logger. It also owns the per-source rate limit itself (a bounded table
// of token buckets, ratelimit.go, on the bounded LRU map of lru.go), the checks of raw bytes that sipgo's
// parser gets wrong and the 400 (or 416) answered for them (RFC 3261
// §8.2, RFC 4475; malformed.go), and the address helpers of a SIP
// transport: the allocation-free UDP read, IP-literal URIs (RFC 3263
// §4.2) and tags (addr.go).
//
// It also owns the listener SIP over TCP is served on (listener.go:
// connections capped in total and per source, idle ones closed, accept
// errors such as EMFILE retried after a back-off, never returned).
//
// It imports no other sipmesh package; registrar, proxy and phones import
// it.
package sipnet
