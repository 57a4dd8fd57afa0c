//go:build linux

package provisioning

import (
	"context"
	"errors"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/sipmesh/sipmesh/internal/netns"
)

// kernelRig is a server namespace and a client namespace joined by a veth
// pair: the DHCP server under test listens on lan0 (10.64.7.1/24); the
// benchmark client's socket, bound to eth0, sends broadcasts and receives
// the broadcast replies, as a phone's DHCP client does.
type kernelRig struct {
	srv, cli *netns.NS
	conn     net.PacketConn
	buf      []byte
}

func newKernelRig(tb testing.TB) *kernelRig {
	tb.Helper()
	r := &kernelRig{srv: netns.New(tb, "dhcpsrv"), cli: netns.New(tb, "dhcpcli"), buf: make([]byte, 1500)}
	netns.Veth(tb, r.srv, "lan0", r.cli, "eth0")
	r.srv.Run(tb, "ip", "addr", "add", "10.64.7.1/24", "dev", "lan0")
	// The client namespace needs an IPv4 address for its socket to send
	// at all; it is outside the pool and plays no part in DHCP.
	r.cli.Run(tb, "ip", "addr", "add", "10.64.7.250/24", "dev", "eth0")
	pc, err := r.cli.Network().ListenPacket(context.Background(), "udp4", "0.0.0.0:68")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { pc.Close() })
	sc, ok := pc.(syscall.Conn)
	if !ok {
		tb.Fatal("client socket has no file descriptor")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		tb.Fatal(err)
	}
	if err := bindToDevice(rc, "eth0"); err != nil {
		tb.Fatal(err)
	}
	r.conn = pc
	return r
}

var bcastServer = &net.UDPAddr{IP: net.IPv4bcast, Port: ServerPort}

// exchange broadcasts m and waits for the reply with its xid,
// retransmitting after 500 ms (a real client waits longer).
func (r *kernelRig) exchange(tb testing.TB, m *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
	b := m.ToBytes()
	for try := 0; try < 20; try++ {
		if _, err := r.conn.WriteTo(b, bcastServer); err != nil {
			tb.Fatalf("send: %v", err)
		}
		r.conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		for {
			n, _, err := r.conn.ReadFrom(r.buf)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				break
			}
			if err != nil {
				tb.Fatalf("receive: %v", err)
			}
			resp, err := dhcpv4.FromBytes(r.buf[:n])
			if err == nil && resp.OpCode == dhcpv4.OpcodeBootReply && resp.TransactionID == m.TransactionID {
				return resp
			}
		}
	}
	tb.Fatalf("no answer to %v", m.MessageType())
	return nil
}

// dora runs one full exchange for client k.
func (r *kernelRig) dora(tb testing.TB, k int) {
	hw := net.HardwareAddr{0x02, 0x42, 0, 0, byte(k >> 8), byte(k)}
	d, err := dhcpv4.NewDiscovery(hw, dhcpv4.WithBroadcast(true), dhcpv4.WithRequestedOptions(phoneParams...))
	if err != nil {
		tb.Fatal(err)
	}
	offer := r.exchange(tb, d)
	if offer.MessageType() != dhcpv4.MessageTypeOffer {
		tb.Fatalf("client %d: got %v, want OFFER", k, offer.MessageType())
	}
	req, err := dhcpv4.NewRequestFromOffer(offer, dhcpv4.WithBroadcast(true), dhcpv4.WithRequestedOptions(phoneParams...))
	if err != nil {
		tb.Fatal(err)
	}
	if ack := r.exchange(tb, req); ack.MessageType() != dhcpv4.MessageTypeAck {
		tb.Fatalf("client %d: got %v (%s), want ACK", k, ack.MessageType(), ack.Message())
	}
}

func (r *kernelRig) run(b *testing.B) {
	// Every phone has its lease before the timer starts: the benchmark
	// measures returning phones, the steady state of a LAN.
	for k := range benchClients {
		r.dora(b, k)
	}
	b.ResetTimer()
	for i := range b.N {
		r.dora(b, i%benchClients)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "DORA/s")
}

// BenchmarkKernelDORA measures full DISCOVER→OFFER→REQUEST→ACK exchanges
// per second of returning phones over kernel sockets on a veth pair
// between two namespaces, for this server (with its lease file) and, in
// the same run, for dnsmasq (Debian's dnsmasq-base) on the same rig and
// client.
func BenchmarkKernelDORA(b *testing.B) {
	netns.RequireRoot(b)
	b.Run("sipmesh", func(b *testing.B) {
		r := newKernelRig(b)
		cfg := benchConfig(filepath.Join(b.TempDir(), "leases.json"))
		cfg.Network = r.srv.Network()
		srv, err := NewDHCPServer(cfg)
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- srv.Run(ctx) }()
		defer func() {
			cancel()
			if err := <-done; err != nil {
				b.Errorf("Run: %v", err)
			}
		}()
		r.run(b)
	})
	b.Run("dnsmasq", func(b *testing.B) {
		bin, err := exec.LookPath("dnsmasq")
		if err != nil {
			b.Fatalf("dnsmasq not found (Debian package dnsmasq-base): the comparison needs it: %v", err)
		}
		r := newKernelRig(b)
		dir := b.TempDir()
		// -k foreground, --port=0 no DNS, --no-ping like us (no conflict
		// probe before an offer), its own lease file.
		cmd := r.srv.Command(context.Background(), bin, "-k", "--port=0", "--conf-file=/dev/null",
			"--interface=lan0", "--bind-interfaces", "--dhcp-authoritative", "--no-ping",
			"--dhcp-range=10.64.7.10,10.64.7.209,255.255.255.0,12h",
			"--dhcp-option=option:sip-server,sipserver.mesh",
			"--dhcp-leasefile="+filepath.Join(dir, "dnsmasq.leases"),
			"--pid-file="+filepath.Join(dir, "dnsmasq.pid"), "--user=root", "--quiet-dhcp")
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			b.Fatalf("start dnsmasq: %v", err)
		}
		defer func() {
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
			if b.Failed() {
				b.Logf("dnsmasq output:\n%s", out.String())
			}
		}()
		r.run(b)
	})
}
