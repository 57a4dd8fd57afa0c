package proxy

import (
	"net/netip"
	"testing"

	"github.com/emiago/sipgo/sip"
)

// TestUplinkBehindNAT: a gateway's Internet side behind a NAT router
// (SIPServiceConfig.LANPublic) names the public address, with its own
// port, in the Record-Route it writes, and takes that address as its own
// in the Route and Via headers that come back; before the address is
// known (LANPublic invalid) it names the socket's. The mesh socket is
// never advertised otherwise.
func TestUplinkBehindNAT(t *testing.T) {
	uplink := netip.MustParseAddrPort("192.168.77.2:5060")
	mesh := netip.MustParseAddrPort("[fd00::1]:5062")
	var public netip.Addr
	s := &SIPService{domains: map[string]bool{"mesh": true}}
	s.lan = &sock{name: "lan", addr: uplink, public: func() netip.Addr { return public }}
	s.mesh = &sock{name: "mesh", addr: mesh}

	check := func(what string, got, want netip.AddrPort) {
		t.Helper()
		if got != want {
			t.Errorf("%s: %v, want %v", what, got, want)
		}
	}
	check("advertised before STUN answered", s.lan.advertised(), uplink)
	public = netip.MustParseAddr("198.51.100.1")
	check("advertised behind NAT", s.lan.advertised(), netip.MustParseAddrPort("198.51.100.1:5060"))
	check("mesh socket", s.mesh.advertised(), mesh)

	rr := recordRoute(s.lan, "UDP", "tag")
	if rr.Address.Host != "198.51.100.1" || rr.Address.Port != 5060 {
		t.Errorf("Record-Route %s: want the public address and the socket's port", rr.Address.String())
	}
	for _, c := range []struct {
		uri  string
		ours bool
	}{
		{"sip:198.51.100.1:5060;lr", true},
		{"sip:198.51.100.1;lr", true},
		{"sip:192.168.77.2:5060;lr", true},
		{"sip:198.51.100.1:5070;lr", false}, // another port at the router: not ours
		{"sip:198.51.100.2:5060;lr", false},
	} {
		var u sip.Uri
		if err := sip.ParseUri(c.uri, &u); err != nil {
			t.Fatal(err)
		}
		if got := s.ourRoute(&u); got != c.ours {
			t.Errorf("ourRoute(%s) = %v, want %v", c.uri, got, c.ours)
		}
	}
	if !s.ourHost("198.51.100.1") || s.ourHost("198.51.100.2") {
		t.Error("ourHost: the public address is ours, no other")
	}
	// Our own Via on a request that came back (a loop): recognised by
	// the public address too.
	req := sip.NewRequest(sip.INVITE, sip.Uri{Scheme: "sip", User: "bob", Host: "example.net"})
	via := &sip.ViaHeader{ProtocolName: "SIP", ProtocolVersion: "2.0", Transport: "UDP", Host: "198.51.100.1", Port: 5060, Params: sip.NewParams()}
	via.Params.Add("branch", "z9hG4bKsm"+loopHash(req)+".abc")
	req.AppendHeader(via)
	if !s.looped(req) {
		t.Error("a request with our Via at the public address is not seen as looped")
	}
}
