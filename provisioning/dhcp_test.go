package provisioning

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/sipmesh/sipmesh/memnet"
)

// fakeClock is an injected clock the tests move by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) Now() time.Time          { return c.t }
func (c *fakeClock) Advance(d time.Duration) { c.t = c.t.Add(d) }

var (
	testSubnet = netip.MustParsePrefix("10.64.7.0/24")
	testServer = netip.MustParseAddr("10.64.7.1")
	otherSID   = netip.MustParseAddr("10.64.7.254")
	clientPort = netip.AddrPortFrom(netip.IPv4Unspecified(), ClientPort)
)

type testEnv struct {
	t     *testing.T
	clock *fakeClock
	cfg   DHCPConfig
	srv   *DHCPServer
}

// newTestServer builds a server on a throw-away memnet host (Handle needs
// no socket) with a lease file in t.TempDir.
func newTestServer(t *testing.T, mod func(*DHCPConfig)) *testEnv {
	t.Helper()
	return newTestServerFile(t, filepath.Join(t.TempDir(), "leases.json"), mod)
}

// newTestServerFile is newTestServer with the lease file given ("" for
// none).
func newTestServerFile(t *testing.T, leaseFile string, mod func(*DHCPConfig)) *testEnv {
	t.Helper()
	clock := &fakeClock{t: time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)}
	cfg := DHCPConfig{
		Network:   memnet.New(memnet.Config{}).AddHost("node"),
		Interface: "lan0",
		Subnet:    testSubnet,
		ServerIP:  testServer,
		LeaseTime: time.Hour,
		// The tests of lease mechanics use one lease length; the short
		// first lease has tests of its own (TestFirstLease).
		FirstLeaseTime: time.Hour,
		NTP:            []netip.Addr{testServer},
		LeaseFile:      leaseFile,
		Now:            clock.Now,
	}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := NewDHCPServer(cfg)
	if err != nil {
		t.Fatalf("NewDHCPServer: %v", err)
	}
	return &testEnv{t: t, clock: clock, cfg: cfg, srv: srv}
}

// restart builds a new server on the same configuration and lease file,
// as a node does after a reboot.
func (e *testEnv) restart() {
	e.t.Helper()
	srv, err := NewDHCPServer(e.cfg)
	if err != nil {
		e.t.Fatalf("NewDHCPServer after restart: %v", err)
	}
	e.srv = srv
}

func mac(i byte) net.HardwareAddr { return net.HardwareAddr{0x80, 0x5e, 0xc0, 0, 0, i} }

// phoneParams is what a typical desk phone puts in option 55.
var phoneParams = []dhcpv4.OptionCode{
	dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter, dhcpv4.OptionDomainNameServer,
	dhcpv4.OptionDomainName, dhcpv4.OptionNTPServers, dhcpv4.OptionSIPServers,
	dhcpv4.OptionTFTPServerName, dhcpv4.GenericOptionCode(160),
}

func discover(t *testing.T, hw net.HardwareAddr, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	m, err := dhcpv4.NewDiscovery(hw, append([]dhcpv4.Modifier{dhcpv4.WithRequestedOptions(phoneParams...)}, mods...)...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func message(t *testing.T, mt dhcpv4.MessageType, hw net.HardwareAddr, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	m, err := dhcpv4.New(append([]dhcpv4.Modifier{dhcpv4.WithMessageType(mt), dhcpv4.WithHwAddr(hw),
		dhcpv4.WithRequestedOptions(phoneParams...)}, mods...)...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// send runs one message through the server and decodes the reply.
func (e *testEnv) send(m *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, Reply) {
	e.t.Helper()
	r, ok := e.srv.Handle(m.ToBytes(), clientPort)
	if !ok {
		return nil, Reply{}
	}
	resp, err := dhcpv4.FromBytes(r.Packet)
	if err != nil {
		e.t.Fatalf("server sent an undecodable reply: %v", err)
	}
	if resp.TransactionID != m.TransactionID {
		e.t.Fatalf("reply xid %v, want %v", resp.TransactionID, m.TransactionID)
	}
	if len(r.Packet) > 576-28 {
		e.t.Errorf("reply is %d bytes, more than fits a 576-byte datagram", len(r.Packet))
	}
	return resp, r
}

func (e *testEnv) mustReply(m *dhcpv4.DHCPv4, want dhcpv4.MessageType) (*dhcpv4.DHCPv4, Reply) {
	e.t.Helper()
	resp, r := e.send(m)
	if resp == nil {
		e.t.Fatalf("%v from %v: no reply, want %v", m.MessageType(), m.ClientHWAddr, want)
	}
	if got := resp.MessageType(); got != want {
		e.t.Fatalf("%v from %v: got %v (%q), want %v", m.MessageType(), m.ClientHWAddr, got, resp.Message(), want)
	}
	return resp, r
}

func (e *testEnv) mustSilence(m *dhcpv4.DHCPv4) {
	e.t.Helper()
	if resp, _ := e.send(m); resp != nil {
		e.t.Fatalf("%v from %v: got %v, want no reply", m.MessageType(), m.ClientHWAddr, resp.MessageType())
	}
}

// lease runs DISCOVER, OFFER, REQUEST, ACK and returns the ACK.
func (e *testEnv) lease(hw net.HardwareAddr, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	e.t.Helper()
	offer, _ := e.mustReply(discover(e.t, hw, mods...), dhcpv4.MessageTypeOffer)
	req, err := dhcpv4.NewRequestFromOffer(offer, append([]dhcpv4.Modifier{dhcpv4.WithRequestedOptions(phoneParams...)}, mods...)...)
	if err != nil {
		e.t.Fatal(err)
	}
	ack, _ := e.mustReply(req, dhcpv4.MessageTypeAck)
	if !ack.YourIPAddr.Equal(offer.YourIPAddr) {
		e.t.Fatalf("ACK for %v, offered %v", ack.YourIPAddr, offer.YourIPAddr)
	}
	return ack
}

func renew(t *testing.T, ack *dhcpv4.DHCPv4, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	m, err := dhcpv4.New(append([]dhcpv4.Modifier{dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithHwAddr(ack.ClientHWAddr), dhcpv4.WithClientIP(ack.YourIPAddr),
		dhcpv4.WithRequestedOptions(phoneParams...)}, mods...)...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func addr(ip net.IP) netip.Addr { return ip4(ip) }

func TestDORAOptions(t *testing.T) {
	e := newTestServer(t, nil)
	var hooked []Lease
	e.srv.cfg.OnLease = func(l Lease) { hooked = append(hooked, l) }

	offer, r := e.mustReply(discover(t, mac(1), dhcpv4.WithOption(dhcpv4.OptHostName("Yealink T46S"))), dhcpv4.MessageTypeOffer)
	yi := addr(offer.YourIPAddr)
	if !testSubnet.Contains(yi) || yi == testServer {
		t.Fatalf("offered %v, want an address of %v other than %v", yi, testSubnet, testServer)
	}
	if r.To != netip.MustParseAddrPort("255.255.255.255:68") {
		t.Errorf("OFFER to %v, want the broadcast (no ciaddr, no giaddr)", r.To)
	}
	want := map[uint8][]byte{
		53:  {byte(dhcpv4.MessageTypeOffer)},
		54:  testServer.AsSlice(),
		51:  {0, 0, 0x0e, 0x10},
		58:  {0, 0, 0x07, 0x08},
		59:  {0, 0, 0x0c, 0x4e},
		1:   {255, 255, 255, 0},
		3:   testServer.AsSlice(),
		6:   testServer.AsSlice(),
		15:  []byte("mesh"),
		42:  testServer.AsSlice(),
		120: append([]byte{0, 9}, append([]byte("sipserver"), append([]byte{4}, append([]byte("mesh"), 0)...)...)...),
		66:  []byte("http://10.64.7.1/"),
		160: []byte("http://10.64.7.1/"),
	}
	for code, v := range want {
		if got := offer.Options.Get(optionCode(code)); !bytes.Equal(got, v) {
			t.Errorf("OFFER option %d = % x, want % x", code, got, v)
		}
	}
	for code := range offer.Options {
		if _, ok := want[code]; !ok {
			t.Errorf("OFFER carries option %d, which is neither requested nor mandatory", code)
		}
	}

	req, err := dhcpv4.NewRequestFromOffer(offer, dhcpv4.WithOption(dhcpv4.OptHostName("Yealink T46S")),
		dhcpv4.WithOption(dhcpv4.OptGeneric(optionCode(optClientFQDN), append([]byte{0, 0, 0}, "desk1.example"...))))
	if err != nil {
		t.Fatal(err)
	}
	ack, _ := e.mustReply(req, dhcpv4.MessageTypeAck)
	if addr(ack.YourIPAddr) != yi {
		t.Fatalf("ACK for %v, offered %v", ack.YourIPAddr, yi)
	}
	ls := e.srv.Leases()
	if len(ls) != 1 || ls[0].IP != yi || ls[0].MAC.String() != mac(1).String() || ls[0].Hostname != "yealink-t46s" ||
		ls[0].FQDN != "desk1.example" || !ls[0].Expiry.Equal(e.clock.t.Add(time.Hour)) {
		t.Fatalf("leases = %+v", ls)
	}
	// Handle alone does not call the hook; Run does after sending.
	if len(hooked) != 0 {
		t.Fatalf("hook called from Handle")
	}
	if st := e.srv.Stats(); st.Discover != 1 || st.Offer != 1 || st.Request != 1 || st.Ack != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestOptionFiltering(t *testing.T) {
	tests := []struct {
		name string
		prl  []dhcpv4.OptionCode // nil: no option 55 at all
		mod  func(*DHCPConfig)
		want []uint8 // besides 53, 54, 51, 58, 59
	}{
		{"only mask and router", []dhcpv4.OptionCode{dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter}, nil, []uint8{1, 3}},
		{"sip only", []dhcpv4.OptionCode{dhcpv4.OptionSIPServers}, nil, []uint8{120}},
		{"no list: defaults", nil, nil, []uint8{1, 3, 6, 15}},
		{"unknown options skipped", []dhcpv4.OptionCode{dhcpv4.GenericOptionCode(200), dhcpv4.OptionDomainName}, nil, []uint8{15}},
		{"NTP not configured", []dhcpv4.OptionCode{dhcpv4.OptionNTPServers, dhcpv4.OptionRouter}, func(c *DHCPConfig) { c.NTP = nil }, []uint8{3}},
		{"TFTP 150 when configured", []dhcpv4.OptionCode{dhcpv4.GenericOptionCode(150), dhcpv4.OptionTFTPServerName},
			func(c *DHCPConfig) { c.TFTPServers = []netip.Addr{testServer} }, []uint8{66, 150}},
		{"no provisioning URL", []dhcpv4.OptionCode{dhcpv4.OptionTFTPServerName, dhcpv4.GenericOptionCode(160)},
			func(c *DHCPConfig) { c.ProvisioningURL = "-" }, nil},
		{"host name from reservation", []dhcpv4.OptionCode{dhcpv4.OptionHostName}, func(c *DHCPConfig) {
			c.Reservations = []Reservation{{MAC: mac(9), IP: netip.MustParseAddr("10.64.7.200"), Extension: "201", Hostname: "reception"}}
		}, []uint8{12}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestServer(t, tc.mod)
			m, err := dhcpv4.New(dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover), dhcpv4.WithHwAddr(mac(9)), dhcpv4.WithBroadcast(true))
			if err != nil {
				t.Fatal(err)
			}
			if tc.prl != nil {
				m.UpdateOption(dhcpv4.OptParameterRequestList(tc.prl...))
			}
			offer, _ := e.mustReply(m, dhcpv4.MessageTypeOffer)
			var got []uint8
			for code := range offer.Options {
				switch code {
				case 53, 54, 51, 58, 59:
				default:
					got = append(got, code)
				}
			}
			slices.Sort(got)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("options %v, want %v", got, tc.want)
			}
		})
	}
}

func TestOption120Encodings(t *testing.T) {
	// RFC 3361 §3.1 and §3.2 examples.
	b, err := EncodeSIPServerNames("example.com", "example.net")
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{0, 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 3, 'c', 'o', 'm', 0, 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 3, 'n', 'e', 't', 0}
	if !bytes.Equal(b, want) || len(b) != 27 {
		t.Errorf("encoding 0 = % x, want % x (27 bytes, RFC 3361 §3.1)", b, want)
	}
	b, err = EncodeSIPServerAddrs(netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"))
	if err != nil {
		t.Fatal(err)
	}
	if want := []byte{1, 192, 0, 2, 1, 192, 0, 2, 2}; !bytes.Equal(b, want) {
		t.Errorf("encoding 1 = % x, want % x", b, want)
	}
	for _, bad := range []string{"", "a..b", strings.Repeat("x", 64) + ".mesh", "sip server.mesh"} {
		if _, err := EncodeSIPServerNames(bad); err == nil {
			t.Errorf("EncodeSIPServerNames(%q) accepted", bad)
		}
	}
	if _, err := EncodeSIPServerAddrs(netip.MustParseAddr("2001:db8::1")); err == nil {
		t.Error("EncodeSIPServerAddrs accepted IPv6")
	}

	// Configured encoding 1 reaches the wire.
	e := newTestServer(t, func(c *DHCPConfig) { c.SIPServerAddrs = []netip.Addr{testServer} })
	offer, _ := e.mustReply(discover(t, mac(1)), dhcpv4.MessageTypeOffer)
	if got := offer.Options.Get(dhcpv4.OptionSIPServers); !bytes.Equal(got, []byte{1, 10, 64, 7, 1}) {
		t.Errorf("option 120 = % x, want encoding 1 with 10.64.7.1", got)
	}
	if _, err := NewDHCPServer(DHCPConfig{Network: e.cfg.Network, Interface: "lan0", Subnet: testSubnet, ServerIP: testServer,
		SIPServers: []string{"a.mesh"}, SIPServerAddrs: []netip.Addr{testServer}}); err == nil {
		t.Error("both option 120 encodings accepted")
	}
}

func TestRenewRebindExpiry(t *testing.T) {
	e := newTestServer(t, nil)
	ack := e.lease(mac(1))
	ip := addr(ack.YourIPAddr)

	// RENEWING at T1: unicast, ciaddr set; the ACK goes to ciaddr.
	e.clock.Advance(30 * time.Minute)
	ack2, r := e.mustReply(renew(t, ack), dhcpv4.MessageTypeAck)
	if addr(ack2.YourIPAddr) != ip || r.To != netip.AddrPortFrom(ip, ClientPort) {
		t.Fatalf("renew ACK for %v to %v, want %v to its ciaddr", ack2.YourIPAddr, r.To, ip)
	}
	if got := e.srv.Leases()[0].Expiry; !got.Equal(e.clock.t.Add(time.Hour)) {
		t.Fatalf("renewed lease ends %v, want %v", got, e.clock.t.Add(time.Hour))
	}
	// REBINDING at T2: broadcast bit, still ciaddr: still unicast (§4.1).
	e.clock.Advance(50 * time.Minute)
	_, r = e.mustReply(renew(t, ack, dhcpv4.WithBroadcast(true)), dhcpv4.MessageTypeAck)
	if r.To != netip.AddrPortFrom(ip, ClientPort) {
		t.Fatalf("rebind ACK to %v", r.To)
	}

	// Expiry: the lease disappears from the listing, the address stays
	// remembered for the client as long as nobody else needs it.
	e.clock.Advance(61 * time.Minute)
	if ls := e.srv.Leases(); len(ls) != 0 {
		t.Fatalf("expired lease still listed: %+v", ls)
	}
	if again := e.lease(mac(1)); addr(again.YourIPAddr) != ip {
		t.Fatalf("client got %v back after expiry, want its old %v", again.YourIPAddr, ip)
	}
}

func TestExpiredAddressReused(t *testing.T) {
	e := newTestServer(t, func(c *DHCPConfig) {
		c.PoolStart, c.PoolEnd = netip.MustParseAddr("10.64.7.10"), netip.MustParseAddr("10.64.7.11")
	})
	a := e.lease(mac(1))
	b := e.lease(mac(2))
	if addr(a.YourIPAddr) == addr(b.YourIPAddr) {
		t.Fatal("two clients share an address")
	}
	// Pool full: a third client gets nothing while both leases run.
	e.mustSilence(discover(t, mac(3)))
	if e.srv.Stats().Ignored != 1 {
		t.Errorf("pool exhaustion not counted: %+v", e.srv.Stats())
	}
	// a renews, b lets its lease expire: c gets b's address.
	e.clock.Advance(40 * time.Minute)
	e.mustReply(renew(t, a), dhcpv4.MessageTypeAck)
	e.clock.Advance(21 * time.Minute)
	c := e.lease(mac(3))
	if addr(c.YourIPAddr) != addr(b.YourIPAddr) {
		t.Fatalf("third client got %v, want b's expired %v", c.YourIPAddr, b.YourIPAddr)
	}
	// b comes back and renews the address it lost: NAK.
	e.mustReply(renew(t, b), dhcpv4.MessageTypeNak)
}

func TestInitRebootAndWrongSubnet(t *testing.T) {
	e := newTestServer(t, nil)
	ack := e.lease(mac(1))
	ip := addr(ack.YourIPAddr)

	reboot := func(hw net.HardwareAddr, ip string) *dhcpv4.DHCPv4 {
		return message(t, dhcpv4.MessageTypeRequest, hw, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP(ip))))
	}
	// Known client, its address: ACK (broadcast, it has no address yet).
	resp, r := e.mustReply(reboot(mac(1), ip.String()), dhcpv4.MessageTypeAck)
	if addr(resp.YourIPAddr) != ip || r.To.Addr() != limitedBroadcast {
		t.Fatalf("INIT-REBOOT ACK %v to %v", resp.YourIPAddr, r.To)
	}
	// The phone moved here from another LAN: NAK, broadcast (§4.3.2, §4.1).
	nak, r := e.mustReply(reboot(mac(1), "192.168.1.50"), dhcpv4.MessageTypeNak)
	if r.To.Addr() != limitedBroadcast || !addr(nak.YourIPAddr).IsUnspecified() || nak.Options.Has(dhcpv4.OptionIPAddressLeaseTime) {
		t.Fatalf("NAK to %v, yiaddr %v, options %v", r.To, nak.YourIPAddr, nak.Options)
	}
	// A client we never saw, asking for a free address or another
	// client's: silence (§4.3.2 "no record of this client").
	e.mustSilence(reboot(mac(3), "10.64.7.99"))
	e.mustSilence(reboot(mac(2), ip.String()))
	// A known client asking for another client's address: NAK.
	e.lease(mac(2))
	e.mustReply(reboot(mac(2), ip.String()), dhcpv4.MessageTypeNak)
	// Renewing from the wrong subnet: NAK.
	e.mustReply(message(t, dhcpv4.MessageTypeRequest, mac(1), dhcpv4.WithClientIP(net.ParseIP("172.16.0.9"))), dhcpv4.MessageTypeNak)
}

func TestSelectingOtherServer(t *testing.T) {
	e := newTestServer(t, func(c *DHCPConfig) {
		c.PoolStart, c.PoolEnd = netip.MustParseAddr("10.64.7.10"), netip.MustParseAddr("10.64.7.10")
	})
	offer, _ := e.mustReply(discover(t, mac(1)), dhcpv4.MessageTypeOffer)
	req, err := dhcpv4.NewRequestFromOffer(offer, dhcpv4.WithOption(dhcpv4.OptServerIdentifier(otherSID.AsSlice())))
	if err != nil {
		t.Fatal(err)
	}
	e.mustSilence(req)
	// The one address is free again at once for the next client.
	e.lease(mac(2))
	// A REQUEST naming our server identifier for an address someone else
	// holds: NAK.
	req2, err := dhcpv4.NewRequestFromOffer(offer)
	if err != nil {
		t.Fatal(err)
	}
	e.mustReply(req2, dhcpv4.MessageTypeNak)
}

func TestDeclineQuarantine(t *testing.T) {
	e := newTestServer(t, func(c *DHCPConfig) {
		c.PoolStart, c.PoolEnd = netip.MustParseAddr("10.64.7.10"), netip.MustParseAddr("10.64.7.11")
		c.DeclineHold = 5 * time.Minute
	})
	ack := e.lease(mac(1))
	bad := addr(ack.YourIPAddr)
	e.send(message(t, dhcpv4.MessageTypeDecline, mac(1),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(bad.AsSlice())),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(testServer.AsSlice()))))
	if ls := e.srv.Leases(); len(ls) != 0 {
		t.Fatalf("declined lease still listed: %+v", ls)
	}
	// RFC 2131 §3.1 step 5: the client waits ten seconds before it
	// starts again.
	e.clock.Advance(10 * time.Second)
	// The same client and another one get the other address; a third
	// finds the pool empty while the quarantine lasts.
	a := e.lease(mac(1))
	if addr(a.YourIPAddr) == bad {
		t.Fatal("declined address offered again at once")
	}
	e.mustSilence(discover(t, mac(2)))
	e.clock.Advance(5 * time.Minute)
	if b := e.lease(mac(2)); addr(b.YourIPAddr) != bad {
		t.Fatalf("after the quarantine got %v, want %v", b.YourIPAddr, bad)
	}
	// A DECLINE for an address the client does not hold changes nothing.
	e.send(message(t, dhcpv4.MessageTypeDecline, mac(3),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(bad.AsSlice())),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(testServer.AsSlice()))))
	if len(e.srv.Leases()) != 2 {
		t.Fatalf("foreign DECLINE removed a lease: %+v", e.srv.Leases())
	}
}

func TestReleaseAndInform(t *testing.T) {
	e := newTestServer(t, nil)
	ack := e.lease(mac(1))
	ip := addr(ack.YourIPAddr)
	rel, err := dhcpv4.NewReleaseFromACK(ack)
	if err != nil {
		t.Fatal(err)
	}
	// A RELEASE from someone else for that address is ignored.
	other := *rel
	other.ClientHWAddr = mac(2)
	e.mustSilence(&other)
	if len(e.srv.Leases()) != 1 {
		t.Fatal("foreign RELEASE freed the lease")
	}
	e.mustSilence(rel)
	if ls := e.srv.Leases(); len(ls) != 0 {
		t.Fatalf("released lease still listed: %+v", ls)
	}
	if again := e.lease(mac(1)); addr(again.YourIPAddr) != ip {
		t.Fatalf("after release got %v, want %v again", again.YourIPAddr, ip)
	}

	// INFORM: parameters to ciaddr, no address, no lease time (§4.3.5).
	inf, r := e.mustReply(message(t, dhcpv4.MessageTypeInform, mac(5), dhcpv4.WithClientIP(net.ParseIP("10.64.7.250"))), dhcpv4.MessageTypeAck)
	if r.To != netip.MustParseAddrPort("10.64.7.250:68") || !addr(inf.YourIPAddr).IsUnspecified() ||
		inf.Options.Has(dhcpv4.OptionIPAddressLeaseTime) || !inf.Options.Has(dhcpv4.OptionSIPServers) {
		t.Fatalf("INFORM ACK to %v yiaddr %v options %v", r.To, inf.YourIPAddr, inf.Options)
	}
	if len(e.srv.Leases()) != 1 {
		t.Fatal("INFORM created a lease")
	}
}

func TestReservations(t *testing.T) {
	resIP := netip.MustParseAddr("10.64.7.50")
	e := newTestServer(t, func(c *DHCPConfig) {
		c.PoolStart, c.PoolEnd = netip.MustParseAddr("10.64.7.50"), netip.MustParseAddr("10.64.7.51")
		c.Reservations = []Reservation{{MAC: mac(7), IP: resIP, Extension: "204"}}
	})
	// Others never get the reserved address, even from inside the pool.
	o := e.lease(mac(1))
	if addr(o.YourIPAddr) == resIP {
		t.Fatal("reserved address given to another MAC")
	}
	e.mustSilence(discover(t, mac(2)))
	// Nor by asking for it.
	e.mustReply(message(t, dhcpv4.MessageTypeRequest, mac(1), dhcpv4.WithClientIP(resIP.AsSlice())), dhcpv4.MessageTypeNak)

	offer, _ := e.mustReply(discover(t, mac(7), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("10.64.7.51")))), dhcpv4.MessageTypeOffer)
	if addr(offer.YourIPAddr) != resIP {
		t.Fatalf("reserved phone offered %v, want %v", offer.YourIPAddr, resIP)
	}
	e.lease(mac(7))
	l, ok := e.srv.LeaseByMAC(mac(7))
	if !ok || l.Extension != "204" || l.IP != resIP {
		t.Fatalf("LeaseByMAC = %+v, %v", l, ok)
	}
	// The reserved phone asking for another address is NAKed.
	e.mustReply(message(t, dhcpv4.MessageTypeRequest, mac(7), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("10.64.7.51")))), dhcpv4.MessageTypeNak)

	// A reservation added for a phone with a dynamic lease: NAK at its
	// next renewal, then the reserved address.
	newIP := netip.MustParseAddr("10.64.7.100")
	if err := e.srv.SetReservations([]Reservation{{MAC: mac(7), IP: resIP, Extension: "204"}, {MAC: mac(1), IP: newIP, Extension: "201"}}); err != nil {
		t.Fatal(err)
	}
	e.mustReply(renew(t, o), dhcpv4.MessageTypeNak)
	if again := e.lease(mac(1)); addr(again.YourIPAddr) != newIP {
		t.Fatalf("got %v, want the new reservation %v", again.YourIPAddr, newIP)
	}

	for _, bad := range [][]Reservation{
		{{MAC: mac(1), IP: testServer}},
		{{MAC: mac(1), IP: netip.MustParseAddr("10.64.8.1")}},
		{{MAC: mac(1), IP: newIP}, {MAC: mac(1), IP: resIP}},
		{{MAC: mac(1), IP: newIP}, {MAC: mac(2), IP: newIP}},
		{{MAC: net.HardwareAddr{1, 2}, IP: newIP}},
	} {
		if err := e.srv.SetReservations(bad); err == nil {
			t.Errorf("SetReservations(%v) accepted", bad)
		}
	}
}

func TestDelivery(t *testing.T) {
	e := newTestServer(t, nil)
	relay := netip.MustParseAddr("10.64.7.2")
	// Relayed: to the relay's server port; a NAK gets the broadcast bit.
	_, r := e.mustReply(discover(t, mac(1), dhcpv4.WithGatewayIP(relay.AsSlice())), dhcpv4.MessageTypeOffer)
	if r.To != netip.AddrPortFrom(relay, ServerPort) {
		t.Errorf("relayed OFFER to %v", r.To)
	}
	nak, r := e.mustReply(message(t, dhcpv4.MessageTypeRequest, mac(1), dhcpv4.WithGatewayIP(relay.AsSlice()),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("192.168.0.9")))), dhcpv4.MessageTypeNak)
	if r.To != netip.AddrPortFrom(relay, ServerPort) || !nak.IsBroadcast() {
		t.Errorf("relayed NAK to %v broadcast=%v", r.To, nak.IsBroadcast())
	}
	// Relayed from another subnet: not ours.
	e.mustSilence(discover(t, mac(1), dhcpv4.WithGatewayIP(net.ParseIP("192.168.9.1"))))
}

func TestPersistenceAcrossRestart(t *testing.T) {
	e := newTestServer(t, func(c *DHCPConfig) {
		c.Reservations = []Reservation{{MAC: mac(7), IP: netip.MustParseAddr("10.64.7.77"), Extension: "207"}}
	})
	a := e.lease(mac(1), dhcpv4.WithOption(dhcpv4.OptHostName("alice")))
	b := e.lease(mac(2))
	r := e.lease(mac(7))
	rel, _ := dhcpv4.NewReleaseFromACK(b)
	e.mustSilence(rel)
	// An outstanding offer is not persisted.
	e.mustReply(discover(t, mac(3)), dhcpv4.MessageTypeOffer)
	before := e.srv.Leases()
	file, err := os.ReadFile(e.cfg.LeaseFile)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(file), "offered") {
		t.Errorf("offer persisted:\n%s", file)
	}

	e.restart()
	after := e.srv.Leases()
	if len(after) != 2 || len(before) != 2 {
		t.Fatalf("leases before %+v, after restart %+v", before, after)
	}
	for i := range after {
		if after[i].IP != before[i].IP || after[i].MAC.String() != before[i].MAC.String() ||
			!after[i].Expiry.Equal(before[i].Expiry) || after[i].Hostname != before[i].Hostname || after[i].Extension != before[i].Extension {
			t.Errorf("lease %d: %+v before, %+v after", i, before[i], after[i])
		}
	}
	// Renewals after the restart keep the addresses; the released client
	// gets its address back.
	e.mustReply(renew(t, a), dhcpv4.MessageTypeAck)
	e.mustReply(renew(t, r), dhcpv4.MessageTypeAck)
	if again := e.lease(mac(2)); addr(again.YourIPAddr) != addr(b.YourIPAddr) {
		t.Fatalf("released client got %v after restart, want %v", again.YourIPAddr, b.YourIPAddr)
	}

	// A corrupt lease file stops the server from starting rather than
	// silently forgetting leases.
	if err := os.WriteFile(e.cfg.LeaseFile, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewDHCPServer(e.cfg); err == nil || !strings.Contains(err.Error(), e.cfg.LeaseFile) {
		t.Fatalf("corrupt lease file: err = %v", err)
	}
}

func TestPersistFailureWithholdsAck(t *testing.T) {
	e := newTestServer(t, func(c *DHCPConfig) {
		c.LeaseFile = filepath.Join(t.TempDir(), "missing-dir", "leases.json")
	})
	offer, _ := e.mustReply(discover(t, mac(1)), dhcpv4.MessageTypeOffer)
	req, _ := dhcpv4.NewRequestFromOffer(offer)
	e.mustSilence(req)
	if e.srv.Stats().PersistErrors != 1 {
		t.Fatalf("stats %+v", e.srv.Stats())
	}
}

func TestConfigErrors(t *testing.T) {
	nw := memnet.New(memnet.Config{}).AddHost("n")
	good := DHCPConfig{Network: nw, Interface: "lan0", Subnet: testSubnet, ServerIP: testServer}
	tests := []struct {
		field string
		mod   func(*DHCPConfig)
	}{
		{"Network", func(c *DHCPConfig) { c.Network = nil }},
		{"Interface", func(c *DHCPConfig) { c.Interface = "" }},
		{"Subnet", func(c *DHCPConfig) { c.Subnet = netip.MustParsePrefix("2001:db8::/64") }},
		{"ServerIP", func(c *DHCPConfig) { c.ServerIP = netip.MustParseAddr("10.64.7.255") }},
		{"PoolStart/PoolEnd", func(c *DHCPConfig) {
			c.PoolStart = netip.MustParseAddr("10.64.7.20")
			c.PoolEnd = netip.MustParseAddr("10.64.7.10")
		}},
		{"T1/T2", func(c *DHCPConfig) { c.LeaseTime = time.Hour; c.T1 = 2 * time.Hour }},
		{"LeaseTime", func(c *DHCPConfig) { c.LeaseTime = time.Second }},
		{"Domain", func(c *DHCPConfig) { c.Domain = "bad domain" }},
		{"DNS", func(c *DHCPConfig) { c.DNS = []netip.Addr{netip.MustParseAddr("::1")} }},
		{"Reservations", func(c *DHCPConfig) { c.Reservations = []Reservation{{MAC: mac(1), IP: testServer}} }},
	}
	for _, tc := range tests {
		cfg := good
		tc.mod(&cfg)
		_, err := NewDHCPServer(cfg)
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: err = %v, want one naming the field", tc.field, err)
		}
	}
	if _, err := NewDHCPServer(good); err != nil {
		t.Fatalf("good config: %v", err)
	}
}

func TestMalformed(t *testing.T) {
	e := newTestServer(t, nil)
	good := discover(t, mac(1)).ToBytes()
	cases := map[string][]byte{
		"empty":     nil,
		"short":     good[:100],
		"cookie":    append(append([]byte{}, good[:236]...), 1, 2, 3, 4),
		"reply op":  append([]byte{2}, good[1:]...),
		"hlen 16":   append(append([]byte{}, good[:2]...), append([]byte{16}, good[3:]...)...),
		"no type":   (&dhcpv4.DHCPv4{OpCode: dhcpv4.OpcodeBootRequest, HWType: 1, ClientHWAddr: mac(1), Options: dhcpv4.Options{}}).ToBytes(),
		"truncated": good[:243],
	}
	for name, b := range cases {
		if _, ok := e.srv.Handle(b, clientPort); ok {
			t.Errorf("%s: answered", name)
		}
	}
	if st := e.srv.Stats(); st.Malformed != uint64(len(cases)) {
		t.Errorf("Malformed = %d, want %d", st.Malformed, len(cases))
	}
}

// TestRenewalFlush: a renewal reaches the lease file at the next Flush
// (Run flushes within a second and when it stops); a crash before that
// loses only the later lease end, never the binding.
func TestRenewalFlush(t *testing.T) {
	e := newTestServer(t, nil)
	ack := e.lease(mac(1))
	ip := addr(ack.YourIPAddr)
	firstEnd := e.srv.Leases()[0].Expiry

	e.clock.Advance(30 * time.Minute)
	e.mustReply(renew(t, ack), dhcpv4.MessageTypeAck)
	e.restart() // a crash: no Flush
	ls := e.srv.Leases()
	if len(ls) != 1 || ls[0].IP != ip || !ls[0].Expiry.Equal(firstEnd) {
		t.Fatalf("after a crash: %+v, want the binding with its first end %v", ls, firstEnd)
	}

	e.mustReply(renew(t, ack), dhcpv4.MessageTypeAck)
	if err := e.srv.Flush(); err != nil {
		t.Fatal(err)
	}
	e.restart()
	if ls := e.srv.Leases(); len(ls) != 1 || !ls[0].Expiry.Equal(e.clock.t.Add(time.Hour)) {
		t.Fatalf("after Flush and restart: %+v, want the renewed end", ls)
	}
}

// TestReplyFitsMessageSize: when the requested options would not fit the
// client's maximum message size (576 by default, RFC 2132 §9.10), the
// least preferred requested ones are left out.
func TestReplyFitsMessageSize(t *testing.T) {
	long := strings.Repeat("p", 200)
	var names []string
	for i := range 4 {
		names = append(names, fmt.Sprintf("%s%d.mesh", strings.Repeat("s", 50), i))
	}
	e := newTestServer(t, func(c *DHCPConfig) {
		c.SIPServers = names
		c.ProvisioningURL = "http://10.64.7.1/" + long
	})
	// 120 first, then 66, then 160: 160 is dropped.
	prl := []dhcpv4.OptionCode{dhcpv4.OptionSIPServers, dhcpv4.OptionTFTPServerName, dhcpv4.GenericOptionCode(160), dhcpv4.OptionSubnetMask}
	m, err := dhcpv4.NewDiscovery(mac(1), dhcpv4.WithRequestedOptions(prl...))
	if err != nil {
		t.Fatal(err)
	}
	offer, r := e.mustReply(m, dhcpv4.MessageTypeOffer)
	if len(r.Packet) > 548 {
		t.Fatalf("reply of %d bytes", len(r.Packet))
	}
	if !offer.Options.Has(dhcpv4.OptionSIPServers) || offer.Options.Has(dhcpv4.GenericOptionCode(160)) {
		t.Fatalf("options kept: %v", offer.Options)
	}
	// A client that accepts 1500 bytes gets everything (one offer per
	// MAC per perMACInterval: this is the next DISCOVER).
	e.clock.Advance(perMACInterval)
	m.UpdateOption(dhcpv4.OptMaxMessageSize(1500))
	r2, ok := e.srv.Handle(m.ToBytes(), clientPort)
	if !ok {
		t.Fatal("no reply")
	}
	big, _ := dhcpv4.FromBytes(r2.Packet)
	if !big.Options.Has(dhcpv4.GenericOptionCode(160)) || !big.Options.Has(dhcpv4.OptionSubnetMask) {
		t.Fatalf("with option 57 = 1500: %v", big.Options)
	}
}
