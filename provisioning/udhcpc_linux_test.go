//go:build linux

package provisioning

import (
	"bufio"
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/internal/netns"
)

// udhcpcScript is the hook busybox udhcpc runs on every state change: it
// configures the address as a phone's stack would and prints one line per
// event with what the client received (option 120 arrives as $sipsrv
// because of -O sipsrv).
const udhcpcScript = `#!/bin/sh
case "$1" in
bound|renew)
	ip addr replace "$ip/$subnet" dev "$interface"
	;;
deconfig)
	ip addr flush dev "$interface"
	;;
esac
echo "EVENT $1 ip=$ip subnet=$subnet router=$router dns=$dns domain=$domain serverid=$serverid lease=$lease sipsrv=$sipsrv"
`

type udhcpcEvent struct {
	kind string
	vars map[string]string
}

func parseEvent(line string) (udhcpcEvent, bool) {
	f := strings.Fields(line)
	if len(f) < 2 || f[0] != "EVENT" {
		return udhcpcEvent{}, false
	}
	ev := udhcpcEvent{kind: f[1], vars: make(map[string]string)}
	for _, kv := range f[2:] {
		if k, v, ok := strings.Cut(kv, "="); ok {
			ev.vars[k] = v
		}
	}
	return ev, true
}

// TestUdhcpcRealClient: busybox udhcpc in a "phone" namespace, on a veth
// to the server's namespace, gets a lease with option 120 = sipserver.mesh
// and the node as DNS server; the server restarts, udhcpc renews (SIGUSR1)
// and keeps its address, and the lease file kept the lease.
func TestUdhcpcRealClient(t *testing.T) {
	netns.RequireRoot(t)
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatalf("busybox not found (Debian package busybox): this test needs its udhcpc as the real DHCP client: %v", err)
	}
	leakcheck.Check(t)

	srvNS := netns.New(t, "dhcpsrv")
	phoneNS := netns.New(t, "phone")
	netns.Veth(t, srvNS, "lan0", phoneNS, "eth0")
	srvNS.Run(t, "ip", "addr", "add", "10.64.7.1/24", "dev", "lan0")

	dir := t.TempDir()
	script := filepath.Join(dir, "udhcpc.sh")
	if err := os.WriteFile(script, []byte(udhcpcScript), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := DHCPConfig{
		Network: srvNS.Network(), Interface: "lan0",
		Subnet: testSubnet, ServerIP: testServer,
		LeaseTime: 10 * time.Minute,
		LeaseFile: filepath.Join(dir, "leases.json"),
	}
	start := func() (*DHCPServer, func()) {
		srv, err := NewDHCPServer(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return srv, runServer(t, srv)
	}
	srv, stop := start()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// -f foreground, -O sipsrv requests option 120, -x sends a host name;
	// udhcpc keeps running after it is bound, for the renewal below.
	cmd := phoneNS.Command(ctx, busybox, "udhcpc", "-f", "-i", "eth0", "-s", script,
		"-O", "sipsrv", "-x", "hostname:deskphone", "-t", "10", "-T", "1")
	cmd.Env = append(os.Environ(), "PATH=/usr/sbin:/usr/bin:/sbin:/bin")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start udhcpc: %v", err)
	}
	events := make(chan udhcpcEvent, 16)
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if ev, ok := parseEvent(sc.Text()); ok {
				events <- ev
			}
		}
	}()
	defer func() {
		cmd.Process.Kill()
		<-scanned
		cmd.Wait()
		if t.Failed() {
			t.Logf("udhcpc stderr:\n%s", stderr.String())
		}
	}()
	wait := func(kinds ...string) udhcpcEvent {
		t.Helper()
		for {
			select {
			case ev := <-events:
				for _, k := range kinds {
					if ev.kind == k {
						return ev
					}
				}
				t.Logf("udhcpc event %s %v", ev.kind, ev.vars)
			case <-ctx.Done():
				t.Fatalf("udhcpc: no %v event: %v", kinds, ctx.Err())
			}
		}
	}

	bound := wait("bound")
	ip, err := netip.ParseAddr(bound.vars["ip"])
	if err != nil || !testSubnet.Contains(ip) {
		t.Fatalf("bound to %q", bound.vars["ip"])
	}
	for k, want := range map[string]string{
		"sipsrv": "sipserver.mesh", "dns": "10.64.7.1", "router": "10.64.7.1",
		"subnet": "255.255.255.0", "serverid": "10.64.7.1", "domain": "mesh", "lease": "600",
	} {
		if got := bound.vars[k]; got != want {
			t.Errorf("udhcpc got %s=%q, want %q", k, got, want)
		}
	}
	t.Logf("udhcpc bound: %v", bound.vars)
	ls := srv.Leases()
	if len(ls) != 1 || ls[0].IP != ip || ls[0].Hostname != "deskphone" {
		t.Fatalf("server leases: %+v", ls)
	}

	// Restart the server; the lease file carries the lease over.
	stop()
	before, err := os.ReadFile(cfg.LeaseFile)
	if err != nil {
		t.Fatal(err)
	}
	srv, _ = start()
	if after, _ := os.ReadFile(cfg.LeaseFile); string(after) != string(before) {
		t.Errorf("restart changed the lease file:\n%s\nthen\n%s", before, after)
	}
	if ls := srv.Leases(); len(ls) != 1 || ls[0].IP != ip {
		t.Fatalf("leases after restart: %+v", ls)
	}

	// SIGUSR1 makes udhcpc renew now (unicast REQUEST to the server).
	if err := cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	renewed := wait("renew", "bound")
	if renewed.vars["ip"] != ip.String() || renewed.vars["sipsrv"] != "sipserver.mesh" {
		t.Fatalf("after the restart udhcpc has %v, want %v", renewed.vars, ip)
	}
	// busybox sends the unicast renew from a short-lived socket bound to
	// its address; an ACK that arrives before it closes that socket is
	// lost, and udhcpc broadcasts the renewal a second later. Either way
	// the restarted server answered with ACKs only.
	if st := srv.Stats(); st.Ack < 1 || st.Nak != 0 {
		t.Errorf("restarted server's stats: %+v", st)
	}
	if ls := srv.Leases(); len(ls) != 1 || ls[0].IP != ip || ls[0].Hostname != "deskphone" {
		t.Fatalf("leases after renewal: %+v", ls)
	}
}
