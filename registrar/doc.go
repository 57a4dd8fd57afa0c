// Package registrar is the registrar of the "mesh" domain (RFC 3261
// §10.3) and owns who may register and where they are.
//
// A Registrar answers REGISTER for "mesh", "sipserver.mesh" and the node's
// own addresses (registrar.go): digest authentication with stateless HMAC
// nonces and nonce-count replay protection, MD5 and SHA-256 per RFC 8760
// (digest.go; a reused nonce is re-challenged whatever the password), RFC
// 3261 §10.3 binding rules with RFC 5626 instance/reg-id
// and RFC 3581 rport. The node's SIP service (package proxy) hands it the
// REGISTERs it receives; it also serves UDP and TCP sockets of its own
// (sipserver.go), with fixed workers, per-source rate limits (sipnet),
// 400s for malformed requests and a bounded cache of final responses for
// retransmissions, which the tests and the benchmark against Kamailio use.
//
// It also authenticates the requests the proxy takes from LAN phones
// (Authorize, proxyauth.go: 407 before any lookup, one 403 for a wrong
// user and a wrong password) and backs failed authentications off per
// source, per source and account, and per account sparing the sources
// that authenticated before, in bounded tables (authguard.go).
//
// It keeps bindings in a LocationStore and looks subscribers up in
// Accounts (location.go, accounts.go): interfaces with in-memory versions
// for tests and single nodes, and DHT-backed ones for the mesh
// (dhtstores.go: every node's bindings of an AOR in a record signed by
// that node; account records signed by the mesh administrator key). A
// refresh that changes nothing but a binding's expiry, early in its
// interval, is not written to the DHT again (no signature, no STORE): the
// node answers from its own copy, and other nodes see the stored expiry,
// at most min(interval/4, 1 min) short, until a later refresh stores it
// (DHTLocation.SetBindings; a phone that moved is always stored).
// Binding and account records have versioned binary encodings, the bytes
// the DHT stores. The request checks every SIP role applies first
// (CheckRequest) live here too (check.go), for the proxy.
package registrar
