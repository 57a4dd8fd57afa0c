// Package gateway is the sipmesh node daemon (`sipmesh node`) and the only
// package that wires the others together; nothing imports it but
// cmd/sipmesh.
//
// A Node is the daemon of one machine. It reads one plain-text config file
// into validated Options (config.go), keeps the node key in its state
// directory (node.go) and, where accounts are managed, the mesh
// administrator key that signs account records (adminkey.go), and runs
// the SSR router on the mesh interfaces. Once the ring has formed it
// starts the node's services and stops them with the node (services.go):
// the DHT (ssr/dht); the claims of the node's name, its DHCP clients' host
// names and its LAN subnet in the DHT, which answer the .mesh zone
// (claims.go); and on the phone LAN the DNS server (dns64), DHCPv4 with
// phone provisioning (provisioning), the RTP relay (sipalg), the
// registrar (registrar) and the SIP service with the proxy and the echo
// test (proxy, phones). It serves a local control socket, HTTP with JSON
// over a Unix socket, that `sipmesh status`, `ping`, `lookup`, `user` and
// `phone` talk to (control.go, control_bindings.go, control_users.go,
// control_phones.go); the web UI and /metrics (web.go, metrics.go); and,
// on the same LAN listener under /provision/, the phones' configuration
// files, with the phone bindings and their passwords kept only in a local
// secret file (phones.go).
//
// Planned, not here yet: the Internet uplink (server location per
// RFC 3263, trunks, failover), firewall and NAT rules on real nodes, and
// RFC 6076 SIP performance metrics.
package gateway
