package proxy

import (
	"fmt"
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
)

// TestNoOpenRelay: requests that name, by Route or Request-URI, a host
// that is not a node of the mesh or a phone on a route set this node
// recorded are refused, never forwarded (RFC 3261 §16.4, §26): the
// RFC 4475 mpart01 Route to 127.0.0.1, forged and untagged Routes to a
// LAN host, in-dialog requests outside any recorded route set, and
// recorded routes that continue to loopback or link-local addresses.
func TestNoOpenRelay(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		m := newMeshRig(t, 2)
		nd := m.nodes[0]
		attacker := m.phone(1, "201", 10)
		attacker.register() // the attacker is a subscriber: it gets past the 407
		stranger := m.phone(1, "204", 11)
		victim := m.phone(1, "203", 99) // a LAN host the attacker wants reached
		meshPeer := m.peer(nd, m.mesh, netip.MustParsePrefix("fd00::99/64"), "mesh", "meshpeer")
		tag := nd.svc.rrTag(netip.AddrPortFrom(nd.lanIP, 5060), "relay-rec")

		msg := func(method, ruri, toTag, callID string, routes ...string) string {
			s := fmt.Sprintf("%s %s SIP/2.0\r\n%sMax-Forwards: 70\r\nFrom: <sip:201@mesh>;tag=a1\r\nTo: <sip:kumiko@example.org>%s\r\nCall-ID: %s\r\nCSeq: 1 %s\r\n",
				method, ruri, attacker.via(), toTag, callID, method)
			for _, r := range routes {
				s += "Route: " + r + "\r\n"
			}
			return s + "Content-Length: 0\r\n\r\n"
		}
		for _, tc := range []struct {
			name string
			from *tphone
			raw  string
			want []int
		}{
			// Without credentials: challenged before anything is routed.
			{"mpart01 unauthenticated", stranger, msg("MESSAGE", "sip:kumiko@example.org", "", "relay-0", "<sip:127.0.0.1:5080>"), []int{407}},
			// RFC 4475 §3.1.1.11 mpart01: strict Route to loopback.
			{"mpart01 route to loopback", attacker, msg("MESSAGE", "sip:kumiko@example.org", "", "relay-1", "<sip:127.0.0.1:5080>"), []int{403}},
			{"loose route to a LAN host", attacker, msg("OPTIONS", "sip:x@example.org", "", "relay-2", "<sip:10.1.0.99;lr>"), []int{403}},
			{"preloaded route then a LAN host", attacker, msg("OPTIONS", "sip:x@example.org", "", "relay-3", "<sip:10.1.0.1;lr>", "<sip:10.1.0.99;lr>"), []int{403}},
			{"forged tag", attacker, msg("INFO", "sip:x@10.1.0.99", ";tag=b1", "relay-4", "<sip:10.1.0.1;lr;smk=AAAAAAAAAAAAAAAA>", "<sip:10.1.0.99;lr>"), []int{403}},
			{"tag of another dialog", attacker, msg("INFO", "sip:x@10.1.0.99", ";tag=b1", "relay-5", "<sip:10.1.0.1;lr;smk="+tag+">"), []int{404}},
			{"in-dialog without route set", attacker, msg("BYE", "sip:x@10.1.0.99:5060", ";tag=b1", "relay-6"), []int{404}},
			{"in-dialog to loopback", attacker, msg("BYE", "sip:x@127.0.0.1:5080", ";tag=b1", "relay-7"), []int{404}},
			{"recorded route on to loopback", attacker, msg("INFO", "sip:x@example.org", ";tag=b1", "relay-rec", "<sip:10.1.0.1;lr;smk="+tag+">", "<sip:127.0.0.1:5080;lr>"), []int{403}},
			{"recorded route on to link-local", attacker, msg("INFO", "sip:x@[fe80::1]:5060", ";tag=b1", "relay-rec", "<sip:10.1.0.1;lr;smk="+tag+">"), []int{403}},
			{"recorded route on to the node", attacker, msg("INFO", "sip:x@10.1.0.1:5080", ";tag=b1", "relay-rec", "<sip:10.1.0.1;lr;smk="+tag+">"), []int{404}},
			{"from the mesh to loopback", meshPeer, msg("INFO", "sip:x@127.0.0.1:5080", ";tag=b1", "relay-8", "<sip:[fd00::1];lr>"), []int{404}},
			{"from the mesh to a LAN host", meshPeer, msg("INFO", "sip:x@10.1.0.99", ";tag=b1", "relay-9", "<sip:[fd00::1];lr>"), []int{404}},
		} {
			to := netip.AddrPortFrom(nd.lanIP, 5060)
			if tc.from == meshPeer {
				to = netip.AddrPortFrom(nd.meshIP, 5060)
			}
			tc.from.sendTo(to, tc.raw)
			res := tc.from.response()
			ok := false
			for _, c := range tc.want {
				ok = ok || res.StatusCode == c
			}
			if !ok {
				t.Errorf("%s: %d %s, want %v", tc.name, res.StatusCode, res.Reason, tc.want)
			}
		}
		victim.quiet(time.Minute)
		if got := nd.svc.Stats().Proxied; got != 0 {
			t.Errorf("%d requests forwarded, want none", got)
		}

		// A recorded route leads on to a phone of the LAN.
		victim.register()
		attacker.sendTo(netip.AddrPortFrom(nd.lanIP, 5060),
			msg("INFO", "sip:203@10.1.0.99:5060", ";tag=b1", "relay-rec", "<sip:10.1.0.1;lr;smk="+tag+">"))
		req := victim.request("INFO")
		victim.answer(req, 200, "OK", "b1", "")
		wantStatus(t, attacker.response(), 200)
	})
}
