//go:build !router

package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/gateway"
	"github.com/sipmesh/sipmesh/metrics"
	"github.com/sipmesh/sipmesh/metrics/metricstest"
	"github.com/sipmesh/sipmesh/phones"
)

// TestWebOnLAN: a laptop on a node's phone LAN reaches the web UI on the
// node's LAN address (web-port) and scrapes /metrics, which the Prometheus
// parser reads, with the counters of SIP, DHT, SSR and DNS.
func TestWebOnLAN(t *testing.T) {
	m := startMesh(t, meshConfig{Nodes: 2, Seed: 3})
	defer stopMesh(t, m)
	addPhones(t, m, 1, phones.Policy{Mode: phones.AutoAnswer})

	lan := m.lanIP[0]
	h := m.nw.AddHost("laptop")
	ip := lan.Addr().As4()
	ip[3] = 200
	m.lans[0].Attach(h.AddInterface("eth0", 1500, netip.PrefixFrom(netip.AddrFrom4(ip), lan.Bits())))
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) { return h.Dial(ctx, network, addr) }}}
	base := fmt.Sprintf("http://%s", netip.AddrPortFrom(lan.Addr(), gateway.DefaultWebPort))

	resp, err := c.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != http.StatusOK || ct != metrics.ContentType {
		t.Fatalf("GET /metrics: %s, %q", resp.Status, ct)
	}
	fams := metricstest.Parse(t, string(b))
	for _, tt := range []struct {
		name string
		min  float64
	}{
		{"sipmesh_sip_registrations_total", 1},
		{"sipmesh_sip_requests_total", 2}, // a challenge, then the REGISTER
		{"sipmesh_sip_register_challenged_total", 1},
		{"sipmesh_ssr_frames_received_total", 1},
		{"sipmesh_ssr_neighbours", 1},
		{"sipmesh_ssr_link_sessions", 1},
		{"sipmesh_ssr_link_handshakes_total", 1},
		{"sipmesh_dht_requests_total", 1},
		{"sipmesh_dns_queries_total", 1}, // the phone resolved sipserver.mesh
		{"sipmesh_start_time_seconds", 1},
	} {
		v, ok := metricstest.Value(fams, tt.name)
		if !ok || v < tt.min {
			t.Errorf("%s = %v (present %v), want at least %v", tt.name, v, ok, tt.min)
		}
	}
	if v, ok := metricstest.Value(fams, "sipmesh_ssr_link_refused_total", "reason", "bad_mac"); !ok || v != 0 {
		t.Errorf("sipmesh_ssr_link_refused_total{reason=\"bad_mac\"} = %v (present %v), want 0", v, ok)
	}
	if _, ok := metricstest.Value(fams, "sipmesh_build_info", "name", "n1"); !ok {
		t.Error("no sipmesh_build_info{name=\"n1\"}")
	}
	for _, page := range []string{"/mesh", "/calls", "/phones", "/subscribers", "/node"} {
		resp, err := c.Get(base + page)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %s", page, resp.Status)
		}
	}
}
