package provisioning

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// checkStore verifies the lease store's invariants: the two indexes agree,
// every address is a host of the subnet other than the server's, no client
// holds two addresses, and the store is no larger than the addresses it
// manages.
func checkStore(t *testing.T, s *leaseStore) {
	t.Helper()
	for ip, e := range s.byIP {
		if e.ip != ip {
			t.Fatalf("byIP[%v] holds an entry for %v", ip, e.ip)
		}
		if !s.subnet.Contains(ip) || ip == s.server {
			t.Fatalf("entry for %v outside the subnet or the server's", ip)
		}
		if e.key != "" && s.byKey[e.key] != e {
			t.Fatalf("entry %v of %s not indexed by its client", ip, e.key)
		}
		if e.state == stateDeclined && e.key != "" {
			t.Fatalf("declined %v still owned by %s", ip, e.key)
		}
	}
	for k, e := range s.byKey {
		if s.byIP[e.ip] != e || e.key != k {
			t.Fatalf("client %s's entry %v not indexed by address", k, e.ip)
		}
	}
	if limit := int(s.end-s.start+1) + len(s.resIP); len(s.byIP) > limit {
		t.Fatalf("%d entries for %d addresses", len(s.byIP), limit)
	}
}

// FuzzHandle feeds arbitrary datagrams to the server (packet in, reply
// out), interleaved with a legitimate client's exchanges: it must never
// panic, every reply must decode, the store must stay
// consistent, the lease file must stay loadable, and the legitimate
// client's lease must survive.
func FuzzHandle(f *testing.F) {
	seed := func(mt dhcpv4.MessageType, mods ...dhcpv4.Modifier) {
		m, err := dhcpv4.New(append([]dhcpv4.Modifier{dhcpv4.WithMessageType(mt), dhcpv4.WithHwAddr(mac(3)),
			dhcpv4.WithRequestedOptions(phoneParams...)}, mods...)...)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(m.ToBytes(), uint32(0))
	}
	seed(dhcpv4.MessageTypeDiscover)
	seed(dhcpv4.MessageTypeRequest, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("10.64.7.5"))))
	seed(dhcpv4.MessageTypeRequest, dhcpv4.WithClientIP(net.ParseIP("10.64.7.5")))
	seed(dhcpv4.MessageTypeRequest, dhcpv4.WithOption(dhcpv4.OptServerIdentifier(testServer.AsSlice())),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("10.64.7.2"))))
	seed(dhcpv4.MessageTypeDecline, dhcpv4.WithOption(dhcpv4.OptServerIdentifier(testServer.AsSlice())),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("10.64.7.2"))))
	seed(dhcpv4.MessageTypeRelease, dhcpv4.WithClientIP(net.ParseIP("10.64.7.2")))
	seed(dhcpv4.MessageTypeInform, dhcpv4.WithClientIP(net.ParseIP("10.64.7.9")))
	f.Add([]byte{}, uint32(1))
	f.Add(make([]byte, 300), uint32(60))

	// The lease file is checked through its records (snapshot, JSON,
	// restore) rather than on disk: fsync per execution would slow the
	// fuzzer, and its input minimisation, to a crawl. TestPersistence*
	// cover the file itself.
	f.Fuzz(func(t *testing.T, pkt []byte, advance uint32) {
		e := newTestServerFile(t, "", func(c *DHCPConfig) {
			c.PoolStart, c.PoolEnd = netip.MustParseAddr("10.64.7.2"), netip.MustParseAddr("10.64.7.9")
			c.Reservations = []Reservation{{MAC: mac(3), IP: netip.MustParseAddr("10.64.7.20"), Extension: "203"}}
		})
		good := e.lease(mac(1))
		// Every reply the input draws decodes, is a BOOTREPLY for the
		// input's transaction and fits a 576-byte datagram unless the
		// client allowed more: what the client receives is readable.
		handle := func(p []byte) {
			r, ok := e.srv.Handle(p, clientPort)
			if !ok {
				return
			}
			m, err := dhcpv4.FromBytes(r.Packet)
			if err != nil {
				t.Fatalf("reply does not decode: %v", err)
			}
			in, _ := dhcpv4.FromBytes(p)
			if m.OpCode != dhcpv4.OpcodeBootReply || in == nil || m.TransactionID != in.TransactionID {
				t.Fatalf("reply %v for %v", m.Summary(), in)
			}
			if len(r.Packet) > 1500-28 {
				t.Fatalf("reply of %d bytes", len(r.Packet))
			}
		}
		handle(pkt)
		// The same bytes as a second client (other MAC) and after time
		// passes: state-dependent paths.
		if len(pkt) >= 34 {
			p2 := append([]byte(nil), pkt...)
			binary.BigEndian.PutUint32(p2[30:34], 0x00000002)
			e.clock.Advance(time.Duration(advance%7200) * time.Second)
			handle(p2)
			handle(pkt)
		}
		checkStore(t, e.srv.store)
		// The legitimate client's renewal is answered (ACK, or NAK if the
		// input spoofed its MAC and released or declined its address,
		// which any LAN host can do).
		if resp, _ := e.send(renew(t, good)); resp == nil {
			t.Fatal("legitimate renewal not answered")
		}
		// What would be persisted encodes, decodes and restores to the
		// same leases.
		b, err := json.Marshal(leaseFile{Version: leaseFileVersion, Leases: e.srv.store.snapshot()})
		if err != nil {
			t.Fatal(err)
		}
		var lf leaseFile
		if err := json.Unmarshal(b, &lf); err != nil {
			t.Fatal(err)
		}
		st := e.srv.store
		fresh := newLeaseStore(st.subnet, st.server, addrOf32(st.start), addrOf32(st.end), st.times)
		if errs := fresh.restore(lf.Leases); len(errs) > 0 {
			t.Fatalf("persisted leases do not restore: %v", errs)
		}
		checkStore(t, fresh)
		now := e.clock.Now()
		if a, b := fmt.Sprint(st.leases(now)), fmt.Sprint(fresh.leases(now)); a != b {
			t.Fatalf("leases %s, restored %s", a, b)
		}
	})
}
