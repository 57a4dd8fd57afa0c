package proxy

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"net/netip"
	"strconv"

	"github.com/emiago/sipgo/sip"
)

// Who may make this node send a request where (RFC 3261 §16.4 route
// processing, §26.1.5 and §26.3.2: a proxy must not become an open
// relay for whoever reaches its socket).
//
// Recorded routes. Every Record-Route this node inserts carries a tag
// (the URI parameter rrParam): an HMAC, under a key only this node
// holds, of the socket address the entry names and the dialog's Call-ID.
// A Route naming this node is popped whether it carries the tag or not
// (a phone's preloaded outbound proxy route has none), but only a
// verified tag makes the request "on a route set this node recorded":
// only then is a further Route or an IP-literal Request-URI followed.
// Without one, the request is routed by lookup of its Request-URI in the
// mesh domain or refused. The check is stateless: nothing is kept per
// dialog. The key is random per start, so dialogs that outlive a restart
// of the node lose their in-dialog requests (403), as they lose their
// media relay state anyway.
//
// Destinations. Whatever the route set says, a request leaves only for a
// host that can be a next hop of this mesh: another node (an address of
// the mesh /64 this node's mesh address is in), or a phone on this
// node's LAN (LANPrefix when set, never one of the node's own
// addresses). Loopback, link-local, multicast and unspecified addresses
// are never reached (the RFC 4475 mpart01 Route to 127.0.0.1 is refused).

// rrParam is the Record-Route URI parameter that carries the tag.
const rrParam = "smk"

// rrTag is the tag of a Record-Route naming ap in the dialog callID.
func (s *SIPService) rrTag(ap netip.AddrPort, callID string) string {
	mac := hmac.New(sha256.New, s.rrKey[:])
	mac.Write([]byte(ap.Addr().WithZone("").Unmap().String()))
	mac.Write([]byte{0})
	mac.Write([]byte(strconv.Itoa(int(ap.Port()))))
	mac.Write([]byte{0})
	mac.Write([]byte(callID))
	return base64.RawURLEncoding.EncodeToString(mac.Sum(nil)[:12])
}

// recordedRoute reports whether u is a Record-Route this node inserted
// for the dialog callID: its tag verifies for one of the node's sockets.
func (s *SIPService) recordedRoute(u *sip.Uri, callID string) bool {
	tag, ok := u.UriParams.Get(rrParam)
	if !ok || tag == "" {
		return false
	}
	for _, sk := range s.socks() {
		if hmac.Equal([]byte(tag), []byte(s.rrTag(sk.addr, callID))) {
			return true
		}
	}
	return false
}

// dstAllowed reports whether this node may send a request to ap: another
// node of the mesh or a host of its own LAN, never itself, loopback,
// link-local, multicast or unspecified addresses.
func (s *SIPService) dstAllowed(ap netip.AddrPort) bool {
	a := ap.Addr().Unmap()
	if !ap.IsValid() || ap.Port() == 0 || a.Zone() != "" || a.IsLoopback() || a.IsLinkLocalUnicast() ||
		a.IsMulticast() || a.IsUnspecified() || a.IsInterfaceLocalMulticast() {
		return false
	}
	if a == s.lan.addr.Addr() || a == s.mesh.addr.Addr().WithZone("") || s.lan6 != nil && a == s.lan6.addr.Addr() {
		// Never this service itself; the node's other service on the
		// mesh address (a gateway's two sides) only at its own port.
		return s.cfg.LocalPeer.IsValid() && ap == s.cfg.LocalPeer
	}
	if a.Is6() {
		// The mesh, or on a gateway with an IPv6 uplink the Internet.
		return sameNet64(a, s.mesh.addr.Addr()) || s.lan6 != nil && s.internetAllowed(ap)
	}
	if s.cfg.LANPrefix.IsValid() {
		return s.cfg.LANPrefix.Contains(a)
	}
	return true
}
