package provisioning

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/memnet"
	"github.com/sipmesh/sipmesh/netx"
)

// dhcpClient is a minimal DHCP client on a netx socket, built from
// insomniacslk/dhcp's dhcpv4 message constructors (the codec client4 uses).
type dhcpClient struct {
	t    *testing.T
	pc   net.PacketConn
	hw   net.HardwareAddr
	prl  []dhcpv4.OptionCode
	buf  []byte
	wait time.Duration
}

func newDHCPClient(t *testing.T, nw netx.Network, hw net.HardwareAddr) *dhcpClient {
	t.Helper()
	pc, err := nw.ListenPacket(context.Background(), "udp4", "0.0.0.0:68")
	if err != nil {
		t.Fatalf("client socket: %v", err)
	}
	t.Cleanup(func() { pc.Close() })
	return &dhcpClient{t: t, pc: pc, hw: hw, prl: phoneParams, buf: make([]byte, 1500), wait: 5 * time.Second}
}

// exchange sends m to `to` and returns the first reply for its xid,
// retransmitting every 200 ms as a DHCP client does (RFC 2131 §4.1), which
// also covers a server still opening its socket.
func (c *dhcpClient) exchange(m *dhcpv4.DHCPv4, to netip.AddrPort) *dhcpv4.DHCPv4 {
	c.t.Helper()
	deadline := time.Now().Add(c.wait)
	for time.Now().Before(deadline) {
		if _, err := c.pc.WriteTo(m.ToBytes(), net.UDPAddrFromAddrPort(to)); err != nil {
			c.t.Fatalf("send %v: %v", m.MessageType(), err)
		}
		c.pc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		for {
			n, _, err := c.pc.ReadFrom(c.buf)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				break
			}
			if err != nil {
				c.t.Fatalf("waiting for the answer to %v: %v", m.MessageType(), err)
			}
			r, err := dhcpv4.FromBytes(c.buf[:n])
			if err != nil || r.TransactionID != m.TransactionID || r.OpCode != dhcpv4.OpcodeBootReply {
				continue
			}
			return r
		}
	}
	c.t.Fatalf("no answer to %v within %v", m.MessageType(), c.wait)
	return nil
}

var bcast67 = netip.MustParseAddrPort("255.255.255.255:67")

func (c *dhcpClient) dora() (offer, ack *dhcpv4.DHCPv4) {
	c.t.Helper()
	d, err := dhcpv4.NewDiscovery(c.hw, dhcpv4.WithRequestedOptions(c.prl...), dhcpv4.WithOption(dhcpv4.OptHostName("phone-a")))
	if err != nil {
		c.t.Fatal(err)
	}
	offer = c.exchange(d, bcast67)
	if offer.MessageType() != dhcpv4.MessageTypeOffer {
		c.t.Fatalf("got %v, want OFFER", offer.MessageType())
	}
	req, err := dhcpv4.NewRequestFromOffer(offer, dhcpv4.WithRequestedOptions(c.prl...), dhcpv4.WithOption(dhcpv4.OptHostName("phone-a")))
	if err != nil {
		c.t.Fatal(err)
	}
	ack = c.exchange(req, bcast67)
	if ack.MessageType() != dhcpv4.MessageTypeAck {
		c.t.Fatalf("got %v (%s), want ACK", ack.MessageType(), ack.Message())
	}
	return offer, ack
}

// runServer starts srv.Run and returns a stop function that cancels it and
// checks that it returned nil.
func runServer(t *testing.T, srv *DHCPServer) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// TestMemnetLease runs the server on an in-memory IPv4 LAN: a phone with
// no address broadcasts, gets a lease with option 120, configures the
// address, renews by unicast, and after a server restart renews again and
// keeps its address.
func TestMemnetLease(t *testing.T) {
	leakcheck.Check(t)
	mn := memnet.New(memnet.Config{})
	lan := mn.NewSegment("lan", memnet.LinkConfig{})
	node := mn.AddHost("node")
	lan.Attach(node.AddInterface("lan0", 0, netip.MustParsePrefix("10.64.7.1/24")))
	// A mesh interface (IPv6 only) beside the LAN, as on a real node.
	mesh := mn.NewSegment("mesh", memnet.LinkConfig{})
	mesh.Attach(node.AddInterface("wlan0", 0))
	phone := mn.AddHost("phone")
	pifc := phone.AddInterface("eth0", 0)
	lan.Attach(pifc)

	var (
		mu     sync.Mutex
		hooked []Lease
	)
	cfg := DHCPConfig{
		Network: node, Interface: "lan0", Subnet: testSubnet, ServerIP: testServer,
		LeaseFile: filepath.Join(t.TempDir(), "leases.json"),
		OnLease: func(l Lease) {
			mu.Lock()
			hooked = append(hooked, l)
			mu.Unlock()
		},
	}
	srv, err := NewDHCPServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	stop := runServer(t, srv)

	c := newDHCPClient(t, phone, net.HardwareAddr{0x00, 0x15, 0x65, 0x12, 0x34, 0x56})
	_, ack := c.dora()
	ip := addr(ack.YourIPAddr)
	if !testSubnet.Contains(ip) {
		t.Fatalf("leased %v", ip)
	}
	want120 := append([]byte{0, 9}, "sipserver\x04mesh\x00"...)
	if got := ack.Options.Get(dhcpv4.OptionSIPServers); !bytes.Equal(got, want120) {
		t.Fatalf("option 120 = % x, want % x", got, want120)
	}
	if dns := ack.DNS(); len(dns) != 1 || !dns[0].Equal(testServer.AsSlice()) {
		t.Fatalf("DNS = %v, want the node %v", dns, testServer)
	}

	// The phone configures the address and renews by unicast (RENEWING).
	phone.AddAddress(pifc, netip.PrefixFrom(ip, 24))
	ren, err := dhcpv4.NewRenewFromAck(ack, dhcpv4.WithRequestedOptions(c.prl...))
	if err != nil {
		t.Fatal(err)
	}
	if r := c.exchange(ren, netip.AddrPortFrom(testServer, ServerPort)); r.MessageType() != dhcpv4.MessageTypeAck || addr(r.YourIPAddr) != ip {
		t.Fatalf("renewal: %v for %v", r.MessageType(), r.YourIPAddr)
	}

	// Restart the server (a new instance on the same lease file).
	stop()
	srv2, err := NewDHCPServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	stop2 := runServer(t, srv2)
	if r := c.exchange(ren, netip.AddrPortFrom(testServer, ServerPort)); r.MessageType() != dhcpv4.MessageTypeAck || addr(r.YourIPAddr) != ip {
		t.Fatalf("renewal after restart: %v for %v", r.MessageType(), r.YourIPAddr)
	}
	ls := srv2.Leases()
	if len(ls) != 1 || ls[0].IP != ip || ls[0].Hostname != "phone-a" {
		t.Fatalf("leases after restart: %+v", ls)
	}
	stop2() // the hook runs after the reply is sent: wait for it
	mu.Lock()
	defer mu.Unlock()
	if len(hooked) != 3 || hooked[0].IP != ip || hooked[0].Hostname != "phone-a" {
		t.Fatalf("OnLease calls: %+v, want 3 for %v", hooked, ip)
	}
}

func TestRunListenError(t *testing.T) {
	leakcheck.Check(t)
	mn := memnet.New(memnet.Config{})
	node := mn.AddHost("node")
	node.AddInterface("lan0", 0, netip.MustParsePrefix("10.64.7.1/24"))
	busy, err := node.ListenPacket(context.Background(), "udp4", "0.0.0.0:67")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	srv, err := NewDHCPServer(DHCPConfig{Network: node, Interface: "lan0", Subnet: testSubnet, ServerIP: testServer})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Run(context.Background()); err == nil || !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("Run on a busy port: %v", err)
	}
}

// memnetProber answers a probe as ARP would on the in-memory LAN: an
// address is in use if a host on it has the address configured.
type memnetProber struct{ hosts []*memnet.Host }

func (p memnetProber) Probe(_ context.Context, a netip.Addr) (bool, error) {
	for _, h := range p.hosts {
		ifs, err := h.Interfaces()
		if err != nil {
			return false, err
		}
		for _, ifc := range ifs {
			for _, pfx := range ifc.Addrs {
				if pfx.Addr() == a {
					return true, nil
				}
			}
		}
	}
	return false, nil
}

// TestMemnetProbe runs the server with a Prober on an in-memory LAN where
// a printer uses 10.64.7.2 without a lease: the phone is offered .3, the
// printer's address is quarantined, and Run waits for its probes.
func TestMemnetProbe(t *testing.T) {
	leakcheck.Check(t)
	mn := memnet.New(memnet.Config{})
	lan := mn.NewSegment("lan", memnet.LinkConfig{})
	node := mn.AddHost("node")
	lan.Attach(node.AddInterface("lan0", 0, netip.MustParsePrefix("10.64.7.1/24")))
	printer := mn.AddHost("printer")
	lan.Attach(printer.AddInterface("eth0", 0, netip.MustParsePrefix("10.64.7.2/24")))
	phone := mn.AddHost("phone")
	lan.Attach(phone.AddInterface("eth0", 0))

	srv, err := NewDHCPServer(DHCPConfig{Network: node, Interface: "lan0", Subnet: testSubnet, ServerIP: testServer,
		Prober: memnetProber{hosts: []*memnet.Host{printer, phone}}})
	if err != nil {
		t.Fatal(err)
	}
	runServer(t, srv)
	c := newDHCPClient(t, phone, mac(1))
	_, ack := c.dora()
	if got := addr(ack.YourIPAddr); got != netip.MustParseAddr("10.64.7.3") {
		t.Fatalf("phone got %v, want 10.64.7.3 (10.64.7.2 is the printer's)", got)
	}
	if st := srv.Stats(); st.InUse != 1 || st.Probes < 2 {
		t.Errorf("stats %+v, want 1 address in use and ≥ 2 probes", st)
	}
}
