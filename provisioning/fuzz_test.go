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

// FuzzFlood drives the starvation defences with a program of operations
// decoded from the input: DISCOVERs and DORAs from a few MACs, time
// passing, hosts appearing on addresses, releases and declines, on a small
// pool with a Prober. The store and its probe and admission tables must
// stay consistent and bounded, every reply must decode, and a client
// bound at the start that answers probes keeps its address.
func FuzzFlood(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9})
	f.Add([]byte{0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0xf0, 0xf0, 0x10, 0x11})
	f.Add([]byte{0x21, 0x35, 0x44, 0x52, 0x63, 0x71, 0xff, 0x21, 0x35})
	f.Fuzz(func(t *testing.T, prog []byte) {
		// Long programs explore little more and make the fuzzer's
		// minimisation of every new input slow.
		if len(prog) > 128 {
			prog = prog[:128]
		}
		p := &fakeProber{inUse: map[netip.Addr]bool{}}
		e := newTestServerFile(t, "", func(c *DHCPConfig) {
			c.PoolStart, c.PoolEnd = netip.MustParseAddr("10.64.7.2"), netip.MustParseAddr("10.64.7.9")
			c.LeaseTime, c.FirstLeaseTime = time.Hour, 10*time.Minute
			c.NewClientRate, c.NewClientBurst = 1, 4
			c.Prober = p
		})
		good := newPhone(mac(0xee), e.clock.Now())
		good.step(e, p)
		if !good.bound.IsValid() {
			t.Fatal("the good phone got no address")
		}
		ip := func(b byte) netip.Addr { return netip.AddrFrom4([4]byte{10, 64, 7, 2 + b%8}) }
		for _, op := range prog {
			hw := mac(op & 0x0f)
			switch op >> 4 {
			case 0, 1, 2, 3: // DISCOVER, and REQUEST for an OFFER if bit 5
				offer := e.handleProbing(p, discover(t, hw))
				if offer != nil && op&0x20 != 0 && offer.MessageType() == dhcpv4.MessageTypeOffer {
					if req, err := dhcpv4.NewRequestFromOffer(offer); err == nil {
						e.handleProbing(p, req)
					}
				}
			case 4, 5: // time passes: 1 s .. 16 min
				e.clock.Advance(time.Second << (op & 0x0f % 11))
			case 6: // a host starts answering on an address
				p.inUse[ip(op)] = true
			case 7: // and stops
				if ip(op) != good.bound {
					delete(p.inUse, ip(op))
				}
			case 8: // RELEASE of an address from a MAC
				e.handleProbing(p, message(t, dhcpv4.MessageTypeRelease, hw, dhcpv4.WithClientIP(ip(op).AsSlice()),
					dhcpv4.WithOption(dhcpv4.OptServerIdentifier(testServer.AsSlice()))))
			case 9: // DECLINE
				e.handleProbing(p, message(t, dhcpv4.MessageTypeDecline, hw,
					dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip(op).AsSlice())),
					dhcpv4.WithOption(dhcpv4.OptServerIdentifier(testServer.AsSlice()))))
			case 10: // SELECTING without an offer
				e.handleProbing(p, message(t, dhcpv4.MessageTypeRequest, hw,
					dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip(op).AsSlice())),
					dhcpv4.WithOption(dhcpv4.OptServerIdentifier(testServer.AsSlice()))))
			case 11: // RENEWING an address
				e.handleProbing(p, message(t, dhcpv4.MessageTypeRequest, hw, dhcpv4.WithClientIP(ip(op).AsSlice())))
			default: // the good phone renews; while its lease lasts it gets an answer
				_, holds := e.srv.LeaseByMAC(good.hw)
				r := e.handleProbing(p, message(t, dhcpv4.MessageTypeRequest, good.hw, dhcpv4.WithClientIP(good.bound.AsSlice())))
				if holds && (r == nil || r.MessageType() != dhcpv4.MessageTypeAck) {
					t.Fatalf("the good phone's renewal of its lease got %v", r)
				}
			}
			checkStore(t, e.srv.store)
			st := e.srv.store
			for a := range st.probes {
				if !st.inPool(a) {
					t.Fatalf("probe mark for %v outside the pool", a)
				}
			}
			if n := len(e.srv.admit.macs); n > DefaultMaxNewClients {
				t.Fatalf("admission table %d", n)
			}
		}
		// The good phone answered every probe and was never declined or
		// released by the program (MACs 0..15 are not its MAC): it holds
		// its address while its lease lasts.
		if l, ok := e.srv.LeaseByMAC(good.hw); ok && l.IP != good.bound {
			t.Fatalf("good phone moved from %v to %v", good.bound, l.IP)
		}
	})
}
