package provisioning

import (
	"net"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/sipmesh/sipmesh/memnet"
)

// benchClients is how many phones the benchmarks rotate through: the pool
// holds them all, so after the first round every exchange is a returning
// client getting its address again, the steady state of a LAN.
const benchClients = 200

// benchMessages prebuilds each client's DISCOVER and a REQUEST for the
// address it will be offered (the server hands out .10, .11, ... in order
// and keeps them), with the BROADCAST bit, as the kernel benchmark needs.
func benchMessages(tb testing.TB) (disc, req [][]byte) {
	tb.Helper()
	for i := range benchClients {
		hw := net.HardwareAddr{0x02, 0x42, 0, 0, byte(i >> 8), byte(i)}
		d, err := dhcpv4.NewDiscovery(hw, dhcpv4.WithBroadcast(true), dhcpv4.WithRequestedOptions(phoneParams...))
		if err != nil {
			tb.Fatal(err)
		}
		ip := netip.AddrFrom4([4]byte{10, 64, 7, byte(10 + i)})
		r, err := dhcpv4.New(dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithHwAddr(hw),
			dhcpv4.WithBroadcast(true), dhcpv4.WithTransactionID(d.TransactionID),
			dhcpv4.WithRequestedOptions(phoneParams...),
			dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip.AsSlice())),
			dhcpv4.WithOption(dhcpv4.OptServerIdentifier(testServer.AsSlice())))
		if err != nil {
			tb.Fatal(err)
		}
		disc, req = append(disc, d.ToBytes()), append(req, r.ToBytes())
	}
	return disc, req
}

func benchConfig(leaseFile string) DHCPConfig {
	return DHCPConfig{
		Network: memnet.New(memnet.Config{}).AddHost("node"), Interface: "lan0",
		Subnet: testSubnet, ServerIP: testServer,
		PoolStart: netip.MustParseAddr("10.64.7.10"), PoolEnd: netip.MustParseAddr("10.64.7.209"),
		LeaseFile: leaseFile,
		// The benchmarks measure the protocol and the lease file, not the
		// new-client limit (TestDiscoverFlood covers it).
		NewClientRate: 1e9, NewClientBurst: 1 << 30,
	}
}

// BenchmarkHandleNewClient is the worst case for the lease file: every op
// is a new phone, whose binding is written and fsynced before the ACK.
func BenchmarkHandleNewClient(b *testing.B) {
	cfg := benchConfig(filepath.Join(b.TempDir(), "leases.json"))
	cfg.Subnet, cfg.PoolStart, cfg.PoolEnd = netip.MustParsePrefix("10.64.0.0/16"), netip.Addr{}, netip.Addr{}
	cfg.ServerIP = netip.MustParseAddr("10.64.0.1")
	srv, err := NewDHCPServer(cfg)
	if err != nil {
		b.Fatal(err)
	}
	from := netip.AddrPortFrom(netip.IPv4Unspecified(), ClientPort)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		hw := net.HardwareAddr{0x02, 0x43, 0, byte(i >> 16), byte(i >> 8), byte(i)}
		d, _ := dhcpv4.NewDiscovery(hw, dhcpv4.WithRequestedOptions(phoneParams...))
		r, ok := srv.Handle(d.ToBytes(), from)
		if !ok {
			b.Fatalf("client %d: no OFFER", i)
		}
		offer, _ := dhcpv4.FromBytes(r.Packet)
		req, _ := dhcpv4.NewRequestFromOffer(offer, dhcpv4.WithRequestedOptions(phoneParams...))
		if r, ok := srv.Handle(req.ToBytes(), from); !ok || r.Type != dhcpv4.MessageTypeAck {
			b.Fatalf("client %d: no ACK", i)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "DORA/s")
}

// BenchmarkHandleDORA measures the protocol core: one DISCOVER→OFFER and
// REQUEST→ACK per op, without sockets, for returning phones (each has been
// through one exchange before the timer starts). Renewals reach the lease
// file through Run's once-a-second Flush, which Handle alone does not do;
// BenchmarkHandleNewClient measures the per-ACK write of new bindings.
func BenchmarkHandleDORA(b *testing.B) {
	srv, err := NewDHCPServer(benchConfig(""))
	if err != nil {
		b.Fatal(err)
	}
	disc, req := benchMessages(b)
	from := netip.AddrPortFrom(netip.IPv4Unspecified(), ClientPort)
	exchange := func(k int) {
		if r, ok := srv.Handle(disc[k], from); !ok || r.Type != dhcpv4.MessageTypeOffer {
			b.Fatalf("client %d: no OFFER", k)
		}
		if r, ok := srv.Handle(req[k], from); !ok || r.Type != dhcpv4.MessageTypeAck {
			b.Fatalf("client %d: no ACK (%v)", k, r.Type)
		}
	}
	for k := range benchClients {
		exchange(k)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		exchange(i % benchClients)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "DORA/s")
}

// BenchmarkDiscoverFlood is the cost of one DISCOVER of a flood from
// made-up MACs once the new-client limit bites (decode, admission table,
// silence): what a flood costs the node's CPU.
func BenchmarkDiscoverFlood(b *testing.B) {
	cfg := benchConfig("")
	cfg.NewClientRate, cfg.NewClientBurst = 0, 0 // the defaults
	srv, err := NewDHCPServer(cfg)
	if err != nil {
		b.Fatal(err)
	}
	pkts := make([][]byte, 4096)
	for i := range pkts {
		hw := net.HardwareAddr{0x02, 0x44, 0, byte(i >> 16), byte(i >> 8), byte(i)}
		d, _ := dhcpv4.NewDiscovery(hw, dhcpv4.WithRequestedOptions(phoneParams...))
		pkts[i] = d.ToBytes()
	}
	from := netip.AddrPortFrom(netip.IPv4Unspecified(), ClientPort)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		srv.Handle(pkts[i%len(pkts)], from)
	}
	if st := srv.Stats(); st.Throttled == 0 {
		b.Fatalf("nothing throttled: %+v", st)
	}
}
