// Package sipnet is the SIP transport layer the registrar, the proxy and
// the simulated phone share, below all of them: what happens to a datagram
// before a SIP role sees it.
//
// It owns the adapter around emiago/sipgo (sipgo.go): the bigger UDP
// message limit, the guard in front of sipgo's reads (Guard: per-source
// ceiling on requests, fair shares of live transactions under load, a 400
// for what sipgo cannot parse, the records that answer retransmissions of
// answered requests, answered.go; the requests it parses go to sipgo as
// parsed, not parsed twice), a resolver that never queries the
// host's DNS, and a quiet logger. It also owns the per-source rate limit
// itself (a bounded table of token buckets, ratelimit.go, on the bounded
// LRU map of lru.go), the checks of raw bytes that sipgo's
// parser gets wrong and the 400 (or 416) answered for them (RFC 3261
// §8.2, RFC 4475; malformed.go), and the address helpers of a SIP
// transport: the allocation-free UDP read, IP-literal URIs (RFC 3263
// §4.2) and tags (addr.go).
//
// It also owns the listener SIP over TCP is served on (listener.go:
// connections capped in total and per source, idle ones closed, accept
// errors such as EMFILE retried after a back-off, never returned).
//
// The rule of its limits (issue 12; the Guard's doc has the details):
// limits bite on abusers when the node is busy, not on a busy LAN when it
// is idle. Responses are not limited (they match transactions this node
// created). Requests from one source pass a high ceiling
// (DefaultSourceRate, config key sip-rate) that bounds what one address
// can make the node parse, not what it may do alone. Under load, when
// many server transactions are live, new requests are admitted by fair
// share: a source holding more than its share is dropped, so a flood
// fills the table with its own work while a phone holding one or two
// transactions is served. And a transaction is live only while it is
// worked on: an answered one leaves a record of about 0.6 KB (RFC 3261
// §17.2.2 Timer J, RFC 6026 §7.1), an unauthenticated one nothing.
//
// It imports no other sipmesh package; registrar, proxy and phones import
// it.
package sipnet
