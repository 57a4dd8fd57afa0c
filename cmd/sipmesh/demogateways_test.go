//go:build !router

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
)

// TestDemoGateways: `sipmesh demo --gateways 2 --kill-gateway` in memory
// and virtual time. Calls go out of the mesh to bob@example.net and come
// in from carol to sip:EXT@voice.example.org, each with two-way audio and
// the gateway it used; the first gateway is killed halfway, and every
// call after it goes through the other. The JSON report names each call's
// direction and gateway (empty for mesh calls), the table shows them.
func TestDemoGateways(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		rep, err := demo(context.Background(), demoConfig{Mesh: meshConfig{Nodes: 6, Seed: 3},
			Phones: 3, Calls: 1, Echo: 0, Hold: demoHold, Gateways: 2, GatewayCalls: 4, KillGateway: true}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Gateways) != 2 || rep.KilledGateway != rep.Gateways[0] {
			t.Fatalf("gateways %v, killed %q: want two, the first killed", rep.Gateways, rep.KilledGateway)
		}
		var out, in, mesh int
		used := map[string]int{}
		for i, c := range rep.Calls {
			if !c.ok() {
				t.Errorf("call %d %s → %s (%s): %s", i, c.From, c.To, c.Direction, c.Error)
			}
			switch c.Direction {
			case dirMesh:
				mesh++
				if c.Gateway != "" {
					t.Errorf("mesh call %s → %s names gateway %q", c.From, c.To, c.Gateway)
				}
				continue
			case dirOutbound:
				out++
				if c.To != "bob@example.net" {
					t.Errorf("outbound call to %q", c.To)
				}
			case dirInbound:
				in++
				if c.From != "carol@example.net" {
					t.Errorf("inbound call from %q", c.From)
				}
			default:
				t.Errorf("call %d: direction %q", i, c.Direction)
			}
			if c.Gateway != rep.Gateways[0] && c.Gateway != rep.Gateways[1] {
				t.Errorf("call %d %s → %s went through %q, not a gateway", i, c.From, c.To, c.Gateway)
			}
			used[c.Gateway]++
			// The gateway calls follow the mesh call; the second half
			// come after the kill.
			if i-mesh >= 4 && c.Gateway == rep.KilledGateway {
				t.Errorf("call %d %s → %s after the kill went through the killed %s", i, c.From, c.To, c.Gateway)
			}
			t.Logf("%s %s → %s through %s (%d hops): setup %.0f ms, MOS %.2f", c.Direction, c.From, c.To, c.Gateway, c.Hops, c.SetupMs, c.MOS)
		}
		if out != 4 || in != 4 || mesh != 1 || !rep.OK {
			t.Errorf("%d outbound, %d inbound, %d mesh calls, ok %v: want 4, 4, 1, true", out, in, mesh, rep.OK)
		}
		if used[rep.Gateways[0]] == 0 {
			t.Errorf("no call went through %s before its kill: %v", rep.Gateways[0], used)
		}

		b, err := json.Marshal(rep)
		if err != nil {
			t.Fatal(err)
		}
		var raw struct {
			Calls []map[string]any `json:"calls"`
		}
		if err := json.Unmarshal(b, &raw); err != nil {
			t.Fatal(err)
		}
		for _, c := range raw.Calls {
			d, okd := c["direction"].(string)
			g, okg := c["gateway"].(string)
			if !okd || !okg || (d == dirMesh) != (g == "") {
				t.Errorf("JSON call: direction %v, gateway %v", c["direction"], c["gateway"])
			}
		}

		var tbl bytes.Buffer
		printDemo(&tbl, rep)
		for _, want := range []string{"direction", "gateway", "outbound", "inbound", "bob@example.net", "carol@example.net",
			rep.KilledGateway + " was killed halfway"} {
			if !strings.Contains(tbl.String(), want) {
				t.Errorf("the table has no %q:\n%s", want, tbl.String())
			}
		}
		t.Logf("the demo took %v (virtual)\n%s", time.Duration(rep.WallS*float64(time.Second)), tbl.String())
	})
}

// TestDemoGatewayFlags: the gateway flags' usage errors.
func TestDemoGatewayFlags(t *testing.T) {
	for _, args := range [][]string{
		{"demo", "--kill-gateway"},
		{"demo", "--gateways", "1", "--kill-gateway"},
		{"demo", "--gateways", "9"},
		{"demo", "--nodes", "3", "--gateways", "3"},
		{"demo", "--gateways", "2", "--gateway-calls", "0"},
		{"demo", "--gateways", "2", "--phones", "24"},
	} {
		if code, _, stderr := run(t, args...); code != 2 {
			t.Errorf("%q: exit %d, want 2 (usage)\n%s", args, code, stderr)
		}
	}
}
