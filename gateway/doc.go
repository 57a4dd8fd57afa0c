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
// A node whose config names an uplink is a gateway (issue 14): it
// measures its uplink by STUN probes and announces itself in the DHT
// (gwrole.go, announce.go), and runs its Internet side, a second SIP
// service on the uplink socket and on GatewaySIPPort of the mesh address
// with a relay between them, which locates Internet SIP servers by
// RFC 3263 (uplinksip.go). Every node with phones rates the live
// gateways by the E-model of the whole path and sends calls for other
// domains to the best (gwchoice.go; `sipmesh gateways`).
//
// With trunk-* keys the gateway runs its trunk (uplink.Trunk) from the
// uplink socket: numbers by dial prefix go out through it, the
// provider's calls for DIDs come in (proxy/uplink.go).
//
// A gateway also runs a NAT64 on a TUN device (gwnat64.go; nat64,
// nat64/tun64) and announces its prefix; every node chooses a sticky exit
// per NAT64 prefix and its DNS64 synthesizes with the prefix of that
// gateway (nat64exit.go); with clat-prefix a node with a LAN runs a CLAT
// for its IPv4 hosts (clat.go).
//
// Behind a NAT router the Internet side waits for its public address
// (public-address, else the first STUN answer, RFC 8489) and writes it
// into Via, Record-Route, the trunk's Contact and the SDP it sends
// (proxy.SIPServiceConfig.LANPublic); its relay opens the router's
// mapping towards a far end's media before that far end sends
// (sipalg.SideConfig.Punch), and keep-alives to the provider hold the
// trunk's mapping open (uplinksip.go).
//
// Planned, not here yet: RFC 6076 SIP performance metrics.
package gateway
