//go:build linux

package provisioning

import (
	"bufio"
	"context"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/internal/netns"
)

// TestUdhcpcAfterFlood: on a bridged LAN in network namespaces, an
// attacker host that also uses 10.64.7.5 without a lease floods the
// server with DORAs from random MACs at 200/s, exhausting the 39-address
// pool; busybox udhcpc, started once the pool is exhausted, still gets an
// address within a minute (the oldest flood leases, whose addresses no
// host answers, are reclaimed after ICMP probes), and 10.64.7.5, which
// answers pings, is never offered. ICMPProber is checked on the same LAN.
func TestUdhcpcAfterFlood(t *testing.T) {
	netns.RequireRoot(t)
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatalf("busybox not found (Debian package busybox): this test needs its udhcpc as the real DHCP client: %v", err)
	}
	leakcheck.Check(t)

	srvNS, phoneNS, attNS := netns.New(t, "dhcpsrv"), netns.New(t, "phone"), netns.New(t, "attacker")
	netns.Veth(t, srvNS, "lan0", phoneNS, "eth0")
	netns.Veth(t, srvNS, "lan1", attNS, "eth0")
	srvNS.Run(t, "ip", "link", "add", "br0", "type", "bridge")
	srvNS.Run(t, "ip", "link", "set", "lan0", "master", "br0")
	srvNS.Run(t, "ip", "link", "set", "lan1", "master", "br0")
	srvNS.SetLink(t, "br0", true)
	srvNS.Run(t, "ip", "addr", "add", "10.64.7.1/24", "dev", "br0")
	static := netip.MustParseAddr("10.64.7.5")
	attNS.Run(t, "ip", "addr", "add", static.String()+"/24", "dev", "eth0")

	// The prober alone first.
	prober := &ICMPProber{Network: srvNS.Network()}
	ctx := context.Background()
	if up, err := prober.Probe(ctx, static); err != nil || !up {
		t.Fatalf("probe of the attacker's %v: in use %v, %v", static, up, err)
	}
	if up, err := prober.Probe(ctx, netip.MustParseAddr("10.64.7.9")); err != nil || up {
		t.Fatalf("probe of an unused address: in use %v, %v", up, err)
	}

	srv, err := NewDHCPServer(DHCPConfig{
		Network: srvNS.Network(), Interface: "br0", Subnet: testSubnet, ServerIP: testServer,
		PoolStart: netip.MustParseAddr("10.64.7.2"), PoolEnd: netip.MustParseAddr("10.64.7.40"),
		LeaseTime: time.Hour, Prober: prober,
	})
	if err != nil {
		t.Fatal(err)
	}
	runServer(t, srv)

	// The flood: DISCOVERs from random MACs at 200/s to the subnet
	// broadcast, and a REQUEST for every OFFER that comes back.
	fpc, err := attNS.Network().ListenPacket(ctx, "udp4", "0.0.0.0:68")
	if err != nil {
		t.Fatal(err)
	}
	floodCtx, stopFlood := context.WithCancel(ctx)
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		offers    int
		staticOff bool
		ours      sync.Map // the flood's MACs
	)
	// Closed when the flood holds every pool address but the static
	// host's: 38 distinct addresses ACKed to it.
	exhausted := make(chan struct{})
	srvBcast := &net.UDPAddr{IP: net.IPv4(10, 64, 7, 255), Port: ServerPort}
	floodStart := time.Now()
	wg.Go(func() {
		rng := rand.New(rand.NewPCG(3, 4))
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-floodCtx.Done():
				return
			case <-tick.C:
			}
			hw := randomMAC(rng)
			ours.Store(hw.String(), true)
			d, err := dhcpv4.NewDiscovery(hw)
			if err != nil {
				t.Error(err)
				return
			}
			fpc.WriteTo(d.ToBytes(), srvBcast)
		}
	})
	wg.Go(func() {
		buf := make([]byte, 1500)
		acked := map[netip.Addr]bool{}
		for {
			n, _, err := fpc.ReadFrom(buf)
			if err != nil {
				return // closed at the end
			}
			m, err := dhcpv4.FromBytes(buf[:n])
			if err != nil {
				continue
			}
			if _, flood := ours.Load(m.ClientHWAddr.String()); !flood {
				continue // udhcpc's
			}
			if m.MessageType() == dhcpv4.MessageTypeAck {
				ip := addr(m.YourIPAddr)
				if !acked[ip] {
					if acked[ip] = true; len(acked) == 38 {
						close(exhausted)
					}
				}
				continue
			}
			if m.MessageType() != dhcpv4.MessageTypeOffer {
				continue
			}
			mu.Lock()
			offers++
			staticOff = staticOff || addr(m.YourIPAddr) == static
			mu.Unlock()
			if req, err := dhcpv4.NewRequestFromOffer(m); err == nil {
				fpc.WriteTo(req.ToBytes(), srvBcast)
			}
		}
	})
	defer func() {
		stopFlood()
		fpc.Close()
		wg.Wait()
	}()

	// Wait until the pool is exhausted: the flood's leases hold all of it.
	select {
	case <-exhausted:
	case <-time.After(60 * time.Second):
		t.Fatalf("pool not exhausted after 60 s of flood: %+v", srv.Stats())
	}
	exhaustedAfter := time.Since(floodStart)

	dir := t.TempDir()
	script := filepath.Join(dir, "udhcpc.sh")
	if err := os.WriteFile(script, []byte(udhcpcScript), 0o755); err != nil {
		t.Fatal(err)
	}
	uctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	// -t 90 -T 1: a DISCOVER every second (busybox's own back-off is a
	// fixed interval), for up to 90 s.
	cmd := phoneNS.Command(uctx, busybox, "udhcpc", "-f", "-i", "eth0", "-s", script, "-t", "90", "-T", "1", "-n", "-q")
	cmd.Env = append(os.Environ(), "PATH=/usr/sbin:/usr/bin:/sbin:/bin")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	phoneStart := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start udhcpc: %v", err)
	}
	var bound udhcpcEvent
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if ev, ok := parseEvent(sc.Text()); ok && ev.kind == "bound" {
			bound = ev
			break
		}
	}
	waited := time.Since(phoneStart)
	cmd.Process.Kill()
	cmd.Wait()
	stopFlood()
	st := srv.Stats()
	mu.Lock()
	t.Logf("pool of 39 exhausted %v into the flood; udhcpc bound %q after %v; flood offers %d; stats %+v",
		exhaustedAfter.Round(time.Millisecond), bound.vars["ip"], waited.Round(time.Millisecond), offers, st)
	if staticOff {
		t.Errorf("%v, which the attacker host uses, was offered", static)
	}
	mu.Unlock()
	if bound.kind == "" {
		t.Fatalf("udhcpc got no lease within 90 s\n%s", stderr.String())
	}
	if waited > time.Minute {
		t.Errorf("udhcpc bound after %v, want within a minute", waited)
	}
	ip, err := netip.ParseAddr(bound.vars["ip"])
	if err != nil || ip == static || !testSubnet.Contains(ip) {
		t.Errorf("udhcpc bound to %q", bound.vars["ip"])
	}
	if st.InUse < 1 {
		t.Errorf("no probe found %v in use: %+v", static, st)
	}
}
