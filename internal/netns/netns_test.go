//go:build linux

package netns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
)

func TestParseLinkLocal(t *testing.T) {
	tests := []struct {
		name, out string
		want      string
	}{
		{"usable", "5: v0    inet6 fe80::1/64 scope link \\       valid_lft forever preferred_lft forever\n", "fe80::1"},
		{"tentative", "5: v0    inet6 fe80::1/64 scope link tentative \\       valid_lft forever\n", ""},
		{"second usable", "5: v0    inet6 fe80::1/64 scope link tentative \\ x\n5: v0    inet6 fe80::2/64 scope link \\ x\n", "fe80::2"},
		{"global only", "5: v0    inet6 fd00::1/64 scope global \\ x\n", ""},
		{"empty", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, ok := parseLinkLocal(tt.out)
			got := ""
			if ok {
				got = a.String()
			}
			if got != tt.want {
				t.Errorf("parseLinkLocal = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestNamespacesAndSockets builds two namespaces joined by a veth pair and
// exchanges unicast and multicast datagrams between sockets opened in them
// from this process, checking that zones name the interfaces of each
// socket's own namespace.
func TestNamespacesAndSockets(t *testing.T) {
	RequireRoot(t)
	leakcheck.Check(t)
	a, b := New(t, "a"), New(t, "b")
	if !strings.HasPrefix(a.Name, "smt-") || a.Name == b.Name {
		t.Fatalf("namespace names %q, %q: want unique smt- names", a.Name, b.Name)
	}
	Veth(t, a, "va", b, "vb")
	lla, llb := a.LinkLocal(t, "va"), b.LinkLocal(t, "vb")

	ctx := context.Background()
	na, nb := a.Network(), b.Network()
	ifs, err := na.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ifi := range ifs {
		if ifi.Name == "va" {
			found = true
			if got := ifi.LinkLocal(); got != lla {
				t.Errorf("Interfaces: va link-local %v, want %v", got, lla)
			}
		}
		if ifi.Name == "vb" {
			t.Errorf("Interfaces of %s lists vb, which is in %s", a.Name, b.Name)
		}
	}
	if !found {
		t.Fatalf("Interfaces of %s: no va in %+v", a.Name, ifs)
	}

	ua, err := na.ListenPacket(ctx, "udp6", netip.AddrPortFrom(lla, 7000).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ua.Close()
	// The group socket takes the same port as the unicast socket: it is
	// bound to the group on its interface, not to the wildcard address.
	group := netip.MustParseAddrPort("[ff02::73:6e]:7000")
	mb, err := nb.ListenMulticast(ctx, "vb", group)
	if err != nil {
		t.Fatal(err)
	}
	defer mb.Close()
	ub, err := nb.ListenPacket(ctx, "udp6", netip.AddrPortFrom(llb, 7000).String())
	if err != nil {
		t.Fatalf("unicast bind on the group socket's port: %v", err)
	}
	defer ub.Close()

	type apConn interface {
		ReadFromUDPAddrPort([]byte) (int, netip.AddrPort, error)
		WriteToUDPAddrPort([]byte, netip.AddrPort) (int, error)
	}
	pa, pb, pm := ua.(apConn), ub.(apConn), mb.(apConn)
	buf := make([]byte, 100)
	deadline := time.Now().Add(5 * time.Second)
	ub.SetReadDeadline(deadline)
	mb.SetReadDeadline(deadline)

	// Unicast to b's link-local address, zone = a's interface name.
	if _, err := pa.WriteToUDPAddrPort([]byte("hello"), netip.AddrPortFrom(llb.WithZone("va"), 7000)); err != nil {
		t.Fatal(err)
	}
	n, from, err := pb.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatal(err)
	}
	if string(buf[:n]) != "hello" || from != netip.AddrPortFrom(lla.WithZone("vb"), 7000) {
		t.Errorf("unicast: got %q from %v, want \"hello\" from [%s%%vb]:7000", buf[:n], from, lla.WithZone(""))
	}

	// Multicast on the link.
	if _, err := pa.WriteToUDPAddrPort([]byte("beacon"), netip.AddrPortFrom(group.Addr().WithZone("va"), group.Port())); err != nil {
		t.Fatal(err)
	}
	n, from, err = pm.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatal(err)
	}
	if string(buf[:n]) != "beacon" || from.Addr().Zone() != "vb" || from.Addr().WithZone("") != lla.WithZone("") {
		t.Errorf("multicast: got %q from %v", buf[:n], from)
	}

	// The net.PacketConn face works as well.
	if _, err := ua.WriteTo([]byte("again"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(llb.WithZone("va"), 7000))); err != nil {
		t.Fatal(err)
	}
	n, addr, err := ub.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "again" || addr.(*net.UDPAddr).Zone != "vb" {
		t.Errorf("ReadFrom: %q from %v, %v", buf[:n], addr, err)
	}

	// Deadlines and Close behave as on a plain socket.
	ub.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, _, err := pb.ReadFromUDPAddrPort(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read past deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	ub.SetReadDeadline(time.Time{})
	done := make(chan error)
	go func() {
		_, _, err := pb.ReadFromUDPAddrPort(buf)
		done <- err
	}()
	ub.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Errorf("read on closed socket: %v, want net.ErrClosed", err)
	}
}

func TestLinkDownUp(t *testing.T) {
	RequireRoot(t)
	a, b := New(t, "a"), New(t, "b")
	Veth(t, a, "va", b, "vb")
	a.SetLink(t, "va", false)
	if out := a.Run(t, "ip", "-o", "link", "show", "va"); !strings.Contains(out, "state DOWN") && strings.Contains(out, ",UP") {
		t.Errorf("va still up after SetLink(false): %s", out)
	}
	a.SetLink(t, "va", true)
	a.LinkLocal(t, "va")
}
