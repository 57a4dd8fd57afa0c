// Package provisioning brings an unmodified desk phone onto the mesh: a
// DHCPv4 server on each node's phone LAN handing out persistent leases with
// the SIP server option 120 (RFC 3361) set to sipserver.mesh, DNS, domain,
// NTP and a provisioning URL, and the phone configuration files for common
// desk phones served over HTTP and TFTP.
package provisioning
