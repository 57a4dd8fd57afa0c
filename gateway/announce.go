package gateway

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/sipmesh/sipmesh/dns64"
)

// A gateway's announcement in the DHT (issue 14): every gateway node
// writes one short-lived record under the key "gateways", signed with its
// node key like every DHT record, so the writer's key names the gateway
// and its mesh address (ssr.NodeID.Addr) and nobody can announce another
// node. Several gateways are several writers under one key (the DHT keeps
// one record per writer, at most dht.Params.MaxPerKey of them). The
// record lives announceLifetime and is rewritten every announceEvery: a
// gateway that dies (or loses its uplink) is gone from every holder within
// announceLifetime, counted down on each holder's own clock, so no clocks
// need to agree. The value (also in the README, "Internet gateways"):
//
//	version   1 byte   = 1
//	flags     1 byte   bit 0 uplink up, bit 1 Internet SIP URIs,
//	                   bit 2 a trunk (dial prefix), bit 3 inbound for sip-domain
//	rtt       4 bytes  uplink RTT in microseconds, big-endian (0: unmeasured)
//	loss      2 bytes  uplink loss in 1/10000, big-endian (≤ 10000)
//	probes    1 byte   probes the loss is measured over (0: unmeasured)
//	name      1 byte length + UTF-8 (≤ 32): the node's name, for people
//	domain    1 byte length + ASCII (≤ 253): the sip-domain it serves inbound
//	prefix    1 byte length + digits (≤ 4): the dial prefix to its trunk
//	nat64     1 byte prefix length in bits (0: no NAT64; else 32, 40, 48,
//	          56, 64 or 96, RFC 6052 §2.2) + 16 bytes the IPv6 prefix: the
//	          NAT64 prefix its translator serves (nat64-prefix). Absent in
//	          records of nodes from before NAT64: no NAT64.
//
// Bytes after the last field are ignored (a later version appends).
const (
	gatewaysKey      = "gateways"
	announceVersion  = 1
	announceEvery    = 3 * time.Second
	announceLifetime = 10 * time.Second
	maxAnnounceName  = 32
)

// Offer flags of an announcement.
const (
	offerUp      = 1 << 0 // the uplink is up (its last probes were answered)
	offerURIs    = 1 << 1 // calls to Internet SIP URIs (RFC 3263)
	offerTrunk   = 1 << 2 // numbers by dial prefix through its trunk
	offerInbound = 1 << 3 // Internet calls for its sip-domain
)

// Announcement is what a gateway says of itself.
type Announcement struct {
	Name       string
	Up         bool
	URIs       bool
	Trunk      bool
	Inbound    bool
	RTT        time.Duration // uplink round trip to its STUN server (or trunk)
	Loss       float64       // uplink loss, 0 to 1
	Probes     int           // probes Loss is measured over; 0: unmeasured
	Domain     string
	DialPrefix string
	// NAT64 is the prefix the gateway's NAT64 translates (zero: it runs
	// none); every node's DNS64 synthesizes with the prefix of the
	// gateway it would send the packets to (RFC 6147 §5.2).
	NAT64 netip.Prefix
}

var errAnnouncement = errors.New("bad gateway announcement")

// encodeAnnouncement returns a's value for the DHT.
func encodeAnnouncement(a Announcement) []byte {
	var flags byte
	for bit, on := range map[byte]bool{offerUp: a.Up, offerURIs: a.URIs, offerTrunk: a.Trunk, offerInbound: a.Inbound} {
		if on {
			flags |= bit
		}
	}
	rtt := a.RTT / time.Microsecond
	rtt = min(max(rtt, 0), 1<<32-1)
	loss := min(max(a.Loss, 0), 1)
	name := a.Name
	if len(name) > maxAnnounceName {
		name = name[:maxAnnounceName]
	}
	b := []byte{announceVersion, flags}
	b = binary.BigEndian.AppendUint32(b, uint32(rtt))
	b = binary.BigEndian.AppendUint16(b, uint16(loss*10000+0.5))
	b = append(b, byte(min(max(a.Probes, 0), 255)))
	for _, s := range []string{name, a.Domain, a.DialPrefix} {
		b = append(b, byte(len(s)))
		b = append(b, s...)
	}
	if a.NAT64.IsValid() && a.NAT64.Addr().Is6() {
		b = append(b, byte(a.NAT64.Bits()))
		b = append(b, a.NAT64.Masked().Addr().AsSlice()...)
	} else {
		b = append(b, 0)
	}
	return b
}

// decodeAnnouncement parses a value written by encodeAnnouncement (or a
// later version of it). Every field is checked: the writer is any node of
// the mesh.
func decodeAnnouncement(v []byte) (Announcement, error) {
	if len(v) < 9 || v[0] < announceVersion {
		return Announcement{}, fmt.Errorf("%w: %d bytes", errAnnouncement, len(v))
	}
	flags := v[1]
	a := Announcement{
		Up: flags&offerUp != 0, URIs: flags&offerURIs != 0, Trunk: flags&offerTrunk != 0, Inbound: flags&offerInbound != 0,
		RTT:    time.Duration(binary.BigEndian.Uint32(v[2:])) * time.Microsecond,
		Probes: int(v[8]),
	}
	loss := binary.BigEndian.Uint16(v[6:])
	if loss > 10000 {
		return Announcement{}, fmt.Errorf("%w: loss %d/10000", errAnnouncement, loss)
	}
	a.Loss = float64(loss) / 10000
	rest := v[9:]
	var strs [3]string
	for i, maxLen := range []int{maxAnnounceName, 253, 4} {
		if len(rest) < 1 || int(rest[0]) > maxLen || len(rest) < 1+int(rest[0]) {
			return Announcement{}, fmt.Errorf("%w: field %d truncated or too long", errAnnouncement, i)
		}
		strs[i], rest = string(rest[1:1+rest[0]]), rest[1+rest[0]:]
	}
	a.Name, a.Domain, a.DialPrefix = strs[0], strs[1], strs[2]
	if len(rest) > 0 && rest[0] != 0 { // absent (an older writer) or 0: no NAT64
		if len(rest) < 17 {
			return Announcement{}, fmt.Errorf("%w: NAT64 prefix truncated", errAnnouncement)
		}
		a.NAT64 = netip.PrefixFrom(netip.AddrFrom16([16]byte(rest[1:17])), int(rest[0]))
		if err := dns64.ValidatePrefix(a.NAT64); err != nil {
			return Announcement{}, fmt.Errorf("%w: %w", errAnnouncement, err)
		}
	}
	if !printable(a.Name) || a.Domain != "" && !validDomain(a.Domain) || a.DialPrefix != "" && !digits(a.DialPrefix) {
		return Announcement{}, fmt.Errorf("%w: bad name, domain or prefix", errAnnouncement)
	}
	if a.Trunk != (a.DialPrefix != "") || a.Inbound != (a.Domain != "") {
		return Announcement{}, fmt.Errorf("%w: offers and their fields disagree", errAnnouncement)
	}
	return a, nil
}

// printable reports a string with no control characters (a name shown in
// a terminal table).
func printable(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == 0xfffd {
			return false
		}
	}
	return true
}

func digits(s string) bool {
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return len(s) > 0
}
