package provisioning

import "errors"

// Errors the lease store reports; the DHCP server turns them into a
// DHCPNAK, silence or a log line.
var (
	// ErrPoolExhausted means no address of the pool is free for a client.
	ErrPoolExhausted = errors.New("provisioning: address pool exhausted")
	// ErrNotAssignable means the address a client asked for cannot be
	// given to it: outside the pool, held by another client, reserved for
	// another MAC, or in quarantine after a DHCPDECLINE.
	ErrNotAssignable = errors.New("provisioning: address not assignable to this client")
	// ErrNoRecord means the server has no binding for the client (RFC 2131
	// §4.3.2 INIT-REBOOT: the server must remain silent).
	ErrNoRecord = errors.New("provisioning: no record of this client")
	// ErrSubnetsExhausted means every candidate LAN subnet is claimed by
	// another node.
	ErrSubnetsExhausted = errors.New("provisioning: no unclaimed LAN subnet left")

	// errProbing: the address for this client is being probed; the
	// DISCOVER is answered when the probe ends.
	errProbing = errors.New("provisioning: address probe in progress")
)
