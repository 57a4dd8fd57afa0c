// Package gateway is the sipmesh node daemon: the only package that wires
// the others together. It owns the SIP proxy and registrar for the "mesh"
// domain (RFC 3261, digest authentication with MD5 and SHA-256 per RFC 8760,
// outbound and +sip.instance per RFC 5626), keeping registrations in the
// ring's DHT; routing of non-mesh URIs to the best live gateway node; the
// Internet uplink (server location per RFC 3263, inbound and outbound
// calls); firewall and NAT rules on real nodes; and the admin HTTP API, web
// UI and metrics (RFC 6076 SIP performance metrics).
//
// A Node is the daemon of one machine (`sipmesh node`): it reads one
// plain-text config file into validated Options (config.go), keeps the node
// key in its state directory, runs the SSR router on the mesh interfaces
// and serves a local control socket, HTTP with JSON over a Unix socket,
// that `sipmesh status` and `sipmesh ping` talk to (control.go), and
// `sipmesh user` (control_users.go).
//
// The registrar (registrar.go, sipserver.go) answers REGISTER for "mesh",
// "sipserver.mesh" and the node's own addresses on UDP and TCP sockets from
// netx: digest authentication with stateless HMAC nonces and nonce-count
// replay protection (digest.go), RFC 3261 §10.3 binding rules with RFC 5626
// instance/reg-id and RFC 3581 rport, per-source rate limits (ratelimit.go)
// and bounded transaction memory. It keeps bindings in a LocationStore and
// looks subscribers up in Accounts (location.go, accounts.go): interfaces
// the DHT implements, with in-memory versions for tests and single nodes.
// Binding and account records have versioned binary encodings, the bytes
// the DHT stores; account records are signed by the mesh administrator key.
package gateway
