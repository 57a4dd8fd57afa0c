package netx_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/sipmesh/sipmesh/internal/netns"
	"github.com/sipmesh/sipmesh/netx"
)

// TestRouteAddresses puts IPv4 and IPv6 addresses on an interface of a
// namespace of its own through rtnetlink and checks them with iproute2: a
// second add reports the address as not added (it belongs to whoever put
// it there), removal takes it away, and removing what is not there is not
// an error.
func TestRouteAddresses(t *testing.T) {
	netns.RequireRoot(t)
	ns := netns.New(t, "nl")
	ns.Run(t, "ip", "link", "add", "lan0", "type", "bridge")
	ns.Run(t, "ip", "link", "set", "lan0", "up")
	var r *netx.Route
	if err := ns.Do(func() (err error) { r, err = netx.OpenRoute(); return err }); err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	v4, v6 := netip.MustParsePrefix("10.64.7.1/24"), netip.MustParsePrefix("fd00:64::1/64")
	for _, p := range []netip.Prefix{v4, v6} {
		added, err := r.AddAddress("lan0", p)
		if err != nil || !added {
			t.Fatalf("AddAddress(lan0, %v) = %v, %v; want added", p, added, err)
		}
		added, err = r.AddAddress("lan0", p)
		if err != nil || added {
			t.Errorf("second AddAddress(lan0, %v) = %v, %v; want not added, no error", p, added, err)
		}
	}
	out := ns.Run(t, "ip", "-o", "addr", "show", "dev", "lan0")
	for _, want := range []string{"inet 10.64.7.1/24 brd 10.64.7.255 ", "inet6 fd00:64::1/64 "} {
		if !strings.Contains(out, want) {
			t.Errorf("ip addr show lacks %q:\n%s", want, out)
		}
	}
	for _, p := range []netip.Prefix{v4, v6} {
		if err := r.RemoveAddress("lan0", p); err != nil {
			t.Errorf("RemoveAddress(lan0, %v): %v", p, err)
		}
		if err := r.RemoveAddress("lan0", p); err != nil {
			t.Errorf("second RemoveAddress(lan0, %v): %v, want nil (not there)", p, err)
		}
	}
	if out := ns.Run(t, "ip", "-o", "addr", "show", "dev", "lan0"); strings.Contains(out, "10.64.7.1") || strings.Contains(out, "fd00:64::1") {
		t.Errorf("addresses still there after RemoveAddress:\n%s", out)
	}
	if _, err := r.AddAddress("nosuch0", v4); err == nil || !strings.Contains(err.Error(), "nosuch0") {
		t.Errorf("AddAddress on a missing interface: %v, want an error naming it", err)
	}
	r.Close()
	if _, err := r.AddAddress("lan0", v4); err == nil {
		t.Error("AddAddress after Close succeeded")
	}
}

// TestRouteOtherNamespace: a Route opened in one namespace never touches
// another's interfaces, even from a thread of the host's namespace.
func TestRouteOtherNamespace(t *testing.T) {
	netns.RequireRoot(t)
	a, b := netns.New(t, "nla"), netns.New(t, "nlb")
	for _, ns := range []*netns.NS{a, b} {
		ns.Run(t, "ip", "link", "add", "lan0", "type", "bridge")
	}
	var r *netx.Route
	if err := a.Do(func() (err error) { r, err = netx.OpenRoute(); return err }); err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := r.AddAddress("lan0", netip.MustParsePrefix("10.1.2.3/24")); err != nil {
		t.Fatal(err)
	}
	if out := b.Run(t, "ip", "-o", "addr", "show", "dev", "lan0"); strings.Contains(out, "10.1.2.3") {
		t.Errorf("address landed in the other namespace:\n%s", out)
	}
	if out := a.Run(t, "ip", "-o", "addr", "show", "dev", "lan0"); !strings.Contains(out, "10.1.2.3/24") {
		t.Errorf("address missing in its namespace:\n%s", out)
	}
	if err := r.RemoveAddress("lan0", netip.MustParsePrefix("10.1.2.3/24")); err != nil {
		t.Error(err)
	}
}

// TestRouteDeviceRoutes routes an IPv6 and an IPv4 prefix into an
// interface through rtnetlink, twice (the second replaces the first, as
// a start after a crash must), and checks them with iproute2; a missing
// interface is an error naming it.
func TestRouteDeviceRoutes(t *testing.T) {
	netns.RequireRoot(t)
	ns := netns.New(t, "nr")
	ns.Run(t, "ip", "link", "add", "dum0", "type", "bridge")
	ns.Run(t, "ip", "link", "set", "dum0", "up")
	var r *netx.Route
	if err := ns.Do(func() (err error) { r, err = netx.OpenRoute(); return err }); err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	v6, v4 := netip.MustParsePrefix("fdca:654::/32"), netip.MustParsePrefix("192.0.2.0/24")
	for range 2 {
		for _, p := range []netip.Prefix{v6, v4} {
			if err := r.AddDeviceRoute("dum0", p); err != nil {
				t.Fatalf("AddDeviceRoute(dum0, %v): %v", p, err)
			}
		}
	}
	for _, c := range []struct{ fam, want string }{{"-6", "fdca:654::/32 dev dum0"}, {"-4", "192.0.2.0/24 dev dum0"}} {
		out := ns.Run(t, "ip", c.fam, "route", "show", "dev", "dum0")
		if strings.Count(out, strings.TrimSuffix(c.want, " dev dum0")) != 1 {
			t.Errorf("ip %s route: want one route %q:\n%s", c.fam, c.want, out)
		}
	}
	if err := r.AddDeviceRoute("nosuch0", v6); err == nil || !strings.Contains(err.Error(), "nosuch0") {
		t.Errorf("AddDeviceRoute on a missing interface: %v, want an error naming it", err)
	}

	// A fallback route with a high metric stays beside the preferred one
	// of another device for the same prefix, takes over when that goes,
	// and goes itself with RemoveDeviceRoute (twice: no error).
	ns.Run(t, "ip", "link", "add", "dum1", "type", "bridge")
	ns.Run(t, "ip", "link", "set", "dum1", "up")
	p64 := netip.MustParsePrefix("64:ff9b::/96")
	ns.Run(t, "ip", "-6", "route", "replace", p64.String(), "dev", "dum1")
	for range 2 {
		if err := r.AddDeviceRouteMetric("dum0", p64, 4242); err != nil {
			t.Fatalf("AddDeviceRouteMetric: %v", err)
		}
	}
	if out := ns.Run(t, "ip", "-6", "route", "show", p64.String()); strings.Count(out, "dev dum0 ") != 1 || !strings.Contains(out, "metric 4242") || !strings.Contains(out, "dev dum1") {
		t.Errorf("want the route into dum1 and one into dum0 with metric 4242:\n%s", out)
	}
	if out := ns.Run(t, "ip", "-6", "route", "get", "64:ff9b::1"); !strings.Contains(out, "dev dum1") {
		t.Errorf("the lower metric (dum1) should win:\n%s", out)
	}
	ns.Run(t, "ip", "link", "del", "dum1")
	if out := ns.Run(t, "ip", "-6", "route", "get", "64:ff9b::1"); !strings.Contains(out, "dev dum0") {
		t.Errorf("the fallback (dum0) should take over:\n%s", out)
	}
	for range 2 {
		if err := r.RemoveDeviceRoute("dum0", p64, 4242); err != nil {
			t.Fatalf("RemoveDeviceRoute: %v", err)
		}
	}
	if out := ns.Run(t, "ip", "-6", "route", "show", p64.String()); strings.TrimSpace(out) != "" {
		t.Errorf("route left after RemoveDeviceRoute:\n%s", out)
	}
}
