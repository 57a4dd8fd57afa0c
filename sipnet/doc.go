// Package sipnet is the SIP transport layer the registrar and the proxy
// share, below both: what happens to a datagram or a stream before a SIP
// role sees it. It owns the per-source rate limit (a bounded table of
// token buckets, ratelimit.go), the checks of raw bytes that sipgo's
// parser gets wrong and the 400 (or 416) answered for them (RFC 3261
// §8.2, RFC 4475; malformed.go), and the address helpers of a SIP
// transport: the allocation-free UDP read, IP-literal URIs (RFC 3263
// §4.2) and tags (addr.go).
//
// It imports no other sipmesh package; registrar, proxy and phones import
// it.
package sipnet
