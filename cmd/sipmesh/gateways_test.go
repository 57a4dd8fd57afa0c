//go:build !router

package main

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sipmesh/sipmesh/gateway"
	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/phones"
)

// TestGatewayAnnouncedOnMesh: the gateway role with the daemon's own
// parts on the in-memory network, in virtual time. A line of four nodes,
// n1 and n4 gateways: n2 sees both with its mesh path to each (1 and 2
// hops), and chooses among them; n4 is killed, and n2 stops choosing it
// within the announcement's lifetime plus one read.
func TestGatewayAnnouncedOnMesh(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, gatewayAnnouncedOnMesh)
}

func gatewayAnnouncedOnMesh(t *testing.T) {
	line := [][]int{{1}, {0, 2}, {1, 3}, {2}}
	m := startMesh(t, meshConfig{Nodes: 4, Seed: 14, Adj: line, Gateways: []int{0, 3}})
	defer stopMesh(t, m)
	ctx := context.Background()
	n2 := m.nodes[1]
	var gws []gateway.GatewayInfo
	deadline := time.Now().Add(60 * time.Second)
	for {
		gws, _ = n2.Gateways(ctx)
		if len(gws) == 2 && gws[0].MeshProbes > 0 && gws[1].MeshProbes > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("n2 does not see both gateways measured after 60 s: %+v", gws)
		}
		time.Sleep(time.Second)
	}
	hops := map[string]int{}
	for _, g := range gws {
		hops[g.Name] = g.MeshHops
		if !g.Up || !g.Usable || strings.Join(g.Offers, ",") != "uris,inbound" || g.Domain != "voice.example.org" || g.R < 80 {
			t.Errorf("gateway %s: %+v", g.Name, g)
		}
	}
	if hops["n1"] != 1 || hops["n4"] != 2 {
		t.Errorf("mesh hops from n2: %v, want n1 1 and n4 2", hops)
	}
	if st := m.nodes[0].Status().Gateway; st == nil || !st.Up || st.Public != "198.51.100.1" || st.Address != "198.51.100.1" {
		t.Errorf("n1's gateway status: %+v", st)
	}
	if st := n2.Status(); st.Gateway != nil || len(st.Gateways) != 2 {
		t.Errorf("n2's status: gateway %+v, %d gateways", st.Gateway, len(st.Gateways))
	}
	n1, n4 := m.nodes[0].Router().ID(), m.nodes[3].Router().ID()
	chosen := map[any]int{}
	for range 6 {
		id, err := n2.ChooseGateway(ctx, gateway.KindURI)
		if err != nil {
			t.Fatal(err)
		}
		chosen[id]++
	}
	if chosen[n1]+chosen[n4] != 6 {
		t.Errorf("chosen: %v", chosen)
	}
	if _, err := n2.ChooseGateway(ctx, gateway.KindTrunk); err == nil {
		t.Error("a trunk call found a gateway, but none has a trunk")
	}

	m.kill(3)
	killed := time.Now()
	for {
		ok := true
		for range 4 {
			if id, err := n2.ChooseGateway(ctx, gateway.KindURI); err != nil || id != n1 {
				ok = false
			}
		}
		if ok {
			break
		}
		if time.Since(killed) > 30*time.Second {
			t.Fatalf("n2 still chooses the dead n4 30 s after its kill")
		}
		time.Sleep(500 * time.Millisecond)
	}
	gone := time.Since(killed)
	t.Logf("n4 killed: n2 chooses only n1 after %v", gone)
	// The record lives 10 s; a read every 3 s; the pings' verdict (3
	// failed) can come first.
	if gone > 13*time.Second {
		t.Errorf("the dead gateway was chosen for %v, want at most 13 s", gone)
	}
}

// gatewayLine starts a line of four nodes, n1–n2–n3–n4, with the
// gateways given (node indices) and the mesh's seed, one auto-answering
// phone on each node, and the Internet's DNS naming bob's address for
// example.net. The caller stops the mesh; gatewayLine does if it fails.
func gatewayLine(t *testing.T, seed uint64, gateways ...int) (*telMesh, netip.Addr) {
	t.Helper()
	line := [][]int{{1}, {0, 2}, {1, 3}, {2}}
	m := startMesh(t, meshConfig{Nodes: 4, Seed: seed, Adj: line, Gateways: gateways})
	started := false
	defer func() {
		if !started { // t.Fatal below: the caller's defer is not set yet
			stopMesh(t, m)
		}
	}()
	bobAddr := netip.MustParseAddr("198.51.100.20")
	internetDNS(t, m, bobAddr)
	addPhones(t, m, 1, phones.Policy{Mode: phones.AutoAnswer})
	started = true
	return m, bobAddr
}

// internetDNS serves example.net's SIP servers on the emulated Internet as
// RFC 3263 finds them: NAPTR → SRV → A (sip.example.net at bob's address).
func internetDNS(t *testing.T, m *telMesh, bob netip.Addr) {
	t.Helper()
	internetDNSWith(t, m, bob, false)
}

// internetDNSWith is internetDNS; with deadFirst the first SRV target
// (priority 10) is an address where no server answers, bob's the second
// (priority 20).
func internetDNSWith(t *testing.T, m *telMesh, bob netip.Addr, deadFirst bool) {
	t.Helper()
	if err := m.startInternetDNS(bob, deadFirst); err != nil {
		t.Fatal(err)
	}
}

// TestOutboundCallOnMesh: a phone 3 hops from the gateway calls
// sip:bob@example.net in the emulated Internet; the gateway locates
// example.net by NAPTR, SRV and A and sends the call from its uplink;
// tones prove audio both ways through the caller's node's relay (LAN ↔
// mesh) and the gateway's (mesh ↔ uplink); a phone on the gateway node
// itself calls out the same way. From the Internet, a call for another
// domain, or for an extension at the gateway's address, is refused 403
// alike; a call for sip:EXT@voice.example.org, the mesh's sip-domain,
// reaches the phone (on n4, and on the gateway node), an unknown
// extension 404.
func TestOutboundCallOnMesh(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, outboundCallOnMesh)
}

func outboundCallOnMesh(t *testing.T) {
	m, bobAddr := gatewayLine(t, 15, 0)
	defer stopMesh(t, m)
	caller := m.phones[3] // on n4, 3 hops from the gateway n1
	const bobHz = 1900
	bob := internetPhone(t, m, "bob", bobAddr, phones.Settings{User: "bob", Domain: "example.net", ToneHz: bobHz, ToneAmplitude: demoToneAmplitude},
		phones.Policy{Mode: phones.AutoAnswer, ExpectHz: caller.Hz})
	ctx := context.Background()
	waitForGateway(t, m, 3)
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	call, err := caller.Call(cctx, "sip:bob@example.net", phones.CallOptions{ExpectHz: bobHz})
	if err != nil {
		t.Fatalf("call to sip:bob@example.net: %v", err)
	}
	var in *phones.Call
	select {
	case in = <-bob.Incoming():
	case <-time.After(5 * time.Second):
		t.Fatal("bob got no call")
	}
	time.Sleep(2 * time.Second)
	t.Logf("call set up in %v; caller received %d RTP packets (MOS %.2f), bob %d (MOS %.2f)", call.SetupTime(), call.Stats().Received, call.Stats().MOS, in.Stats().Received, in.Stats().MOS)
	if !call.HeardRemote() || !in.HeardRemote() {
		t.Errorf("audio: caller heard bob %v, bob heard the caller %v", call.HeardRemote(), in.HeardRemote())
	}
	if st := m.nodes[0].UplinkSIP().Stats(); st.Calls != 1 {
		t.Errorf("the gateway's Internet side holds %d calls, want 1 (media anchored there)", st.Calls)
	}
	if err := call.Hangup(cctx); err != nil {
		t.Errorf("hangup: %v", err)
	}
	select {
	case <-in.Done():
	case <-time.After(5 * time.Second):
		t.Error("bob's call did not end with the caller's BYE")
	}

	// A phone on the gateway node itself calls out too: its node sends
	// the call to its own Internet side over its own mesh socket.
	local, err := m.phones[0].Call(cctx, "sip:bob@example.net", phones.CallOptions{ExpectHz: bobHz})
	if err != nil {
		t.Fatalf("call from the gateway node's own phone: %v", err)
	}
	select {
	case in = <-bob.Incoming():
	case <-time.After(5 * time.Second):
		t.Fatal("bob got no call from the gateway node's phone")
	}
	time.Sleep(2 * time.Second)
	if !local.HeardRemote() || !in.Heard(m.phones[0].Hz) {
		t.Errorf("gateway node's phone: audio caller→bob %v, bob→caller %v", in.Heard(m.phones[0].Hz), local.HeardRemote())
	}
	// The BYE follows the route set between the node's two services.
	if err := local.Hangup(cctx); err != nil {
		t.Errorf("hangup of the gateway node's phone: %v", err)
	}
	select {
	case <-in.Done():
	case <-time.After(5 * time.Second):
		t.Error("bob's call from the gateway node's phone did not end with its BYE")
	}

	// From the Internet (eve, sending everything to the gateway's
	// uplink): the gateway is no open relay, and it gives one answer for
	// every user, existing or not.
	evAddr := netip.MustParseAddr("198.51.100.66")
	eve := internetPhone(t, m, "eve", evAddr, phones.Settings{User: "eve", Domain: "other.example",
		Server: netip.MustParseAddrPort("198.51.100.1:5060"), ToneHz: 700}, phones.Policy{})
	for _, target := range []string{"sip:x@other.example", "sip:201@mesh", "sip:299@mesh", "sip:bob@example.net"} {
		_, err := eve.Call(cctx, target, phones.CallOptions{})
		var se *phones.StatusError
		if !errors.As(err, &se) || se.Code != 403 {
			t.Errorf("Internet call to %s through the gateway: %v, want 403", target, err)
		}
	}
	if st := m.nodes[0].UplinkSIP().Stats(); st.Refused != 4 {
		t.Errorf("the gateway refused %d requests, want 4", st.Refused)
	}

	// Inbound: eve calls sip:204@voice.example.org, the mesh's public
	// domain; the gateway routes it over the mesh to 204 on n4, 3 hops
	// away. An extension nobody has is 404.
	// The same for 201 on the gateway node itself (its phones' service
	// is the Internet side's LocalPeer).
	for _, callee := range []*meshPhone{caller, m.phones[0]} {
		ic, err := eve.Call(cctx, "sip:"+callee.Ext+"@voice.example.org", phones.CallOptions{ExpectHz: callee.Hz})
		if err != nil {
			t.Fatalf("Internet call to sip:%s@voice.example.org: %v", callee.Ext, err)
		}
		var at *phones.Call
		select {
		case at = <-callee.Incoming():
		case <-time.After(5 * time.Second):
			t.Fatalf("%s got no call from the Internet", callee.Ext)
		}
		time.Sleep(2 * time.Second)
		if !ic.HeardRemote() || !at.Heard(700) {
			t.Errorf("inbound audio to %s: eve heard it %v, it heard eve %v", callee.Ext, ic.HeardRemote(), at.Heard(700))
		}
		if err := ic.Hangup(cctx); err != nil {
			t.Errorf("hangup of the inbound call to %s: %v", callee.Ext, err)
		}
		select {
		case <-at.Done():
		case <-time.After(5 * time.Second):
			t.Errorf("%s's call did not end with eve's BYE", callee.Ext)
		}
	}
	_, err = eve.Call(cctx, "sip:299@voice.example.org", phones.CallOptions{})
	if se := (*phones.StatusError)(nil); !errors.As(err, &se) || se.Code != 404 {
		t.Errorf("Internet call to an unknown extension: %v, want 404", err)
	}
}

// TestGatewayFailoverOnMesh: two gateways (n1, n4 of a line), a phone on
// n2; calls to sip:bob@example.net spread over both. n1 is killed and
// calls start at once: a call sent to the dead n1 gets no 100 Trying
// within gatewayTry, its node tries n4 and skips n1 from then on, so
// every call is answered, the first within a few seconds.
func TestGatewayFailoverOnMesh(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, gatewayFailoverOnMesh)
}

func gatewayFailoverOnMesh(t *testing.T) {
	m, bobAddr := gatewayLine(t, 16, 0, 3)
	defer stopMesh(t, m)
	caller := m.phones[1] // on n2
	bob := internetPhone(t, m, "bob", bobAddr, phones.Settings{User: "bob", Domain: "example.net", ToneHz: 1900, MaxCalls: 16},
		phones.Policy{Mode: phones.AutoAnswer})
	ctx := context.Background()
	deadline := time.Now().Add(60 * time.Second)
	for {
		gws, _ := m.nodes[1].Gateways(ctx)
		if len(gws) == 2 && gws[0].Usable && gws[1].Usable && gws[0].MeshProbes > 0 && gws[1].MeshProbes > 0 &&
			m.nodes[0].UplinkSIP() != nil && m.nodes[3].UplinkSIP() != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("n2 does not see two usable gateways: %+v", gws)
		}
		time.Sleep(time.Second)
	}
	dial := func() (time.Duration, error) {
		start := time.Now()
		cctx, cancel := context.WithTimeout(ctx, 40*time.Second)
		defer cancel()
		c, err := caller.Call(cctx, "sip:bob@example.net", phones.CallOptions{})
		if err != nil {
			return time.Since(start), err
		}
		<-bob.Incoming()
		return time.Since(start), c.Hangup(cctx)
	}
	for range 2 {
		if _, err := dial(); err != nil {
			t.Fatalf("call with both gateways up: %v", err)
		}
	}
	m.kill(0)
	killed := time.Now()
	var worst time.Duration
	for i := range 4 {
		took, err := dial()
		if err != nil {
			t.Fatalf("call %d after n1's kill: %v", i+1, err)
		}
		worst = max(worst, took)
	}
	t.Logf("n1 killed: 4 calls answered through n4 within %v of the kill, the slowest set up in %v", time.Since(killed), worst)
	if worst > gatewayTryLimit {
		t.Errorf("a call took %v to set up after the kill, want at most %v", worst, gatewayTryLimit)
	}
}

// gatewayTryLimit bounds a call's setup when its first gateway is dead:
// the proxy's gatewayTry (2 s) and the second gateway's answer.
const gatewayTryLimit = 3 * time.Second

// TestOutboundServerFailover: example.net's first server (SRV priority
// 10) is dead; the gateway gets no answer from it within gatewayTry and
// sends the call to the second (RFC 3263 §4.3): bob answers.
func TestOutboundServerFailover(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		line := [][]int{{1}, {0}}
		m := startMesh(t, meshConfig{Nodes: 2, Seed: 17, Adj: line, Gateways: []int{0}})
		defer stopMesh(t, m)
		bobAddr := netip.MustParseAddr("198.51.100.20")
		internetDNSWith(t, m, bobAddr, true)
		addPhones(t, m, 1, phones.Policy{Mode: phones.AutoAnswer})
		bob := internetPhone(t, m, "bob", bobAddr, phones.Settings{User: "bob", Domain: "example.net", ToneHz: 1900},
			phones.Policy{Mode: phones.AutoAnswer})
		ctx := context.Background()
		waitForGateway(t, m, 1)
		cctx, cancel := context.WithTimeout(ctx, 40*time.Second)
		defer cancel()
		start := time.Now()
		c, err := m.phones[1].Call(cctx, "sip:bob@example.net", phones.CallOptions{})
		if err != nil {
			t.Fatalf("call with example.net's first server dead: %v", err)
		}
		took := time.Since(start)
		t.Logf("call set up through example.net's second server in %v", took)
		if took < 2*time.Second || took > gatewayTryLimit {
			t.Errorf("set up in %v: want the 2 s wait for the dead first server, then the second", took)
		}
		<-bob.Incoming()
		c.Hangup(cctx)
	})
}

// internetPhone starts a simulated phone on the emulated Internet at addr
// (settings' LocalAddr and Network are filled in).
func internetPhone(t *testing.T, m *telMesh, name string, addr netip.Addr, set phones.Settings, pol phones.Policy) *phones.Phone {
	t.Helper()
	p, err := m.internetPhone(name, addr, set, pol)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// waitForGateway waits (up to 60 s) until node from can choose a gateway
// for SIP URIs and the gateway n1 serves its uplink side.
func waitForGateway(t *testing.T, m *telMesh, from int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := m.nodes[from].ChooseGateway(context.Background(), gateway.KindURI); err == nil && m.nodes[0].UplinkSIP() != nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("n%d knows no gateway after 60 s", from+1)
		}
		time.Sleep(time.Second)
	}
}

// TestCallThroughDeadGateway: what happens to a call in progress when the
// gateway it goes through dies (README, Failover). Two gateways, a phone
// on n2 in a call with bob at example.net; the gateway that carries it
// is killed: the media, anchored there, stops both ways, and the
// caller's BYE cannot reach bob (the dialog's route set names the dead
// gateway): the caller's phone gives up on it after Timer F (32 s), and
// bob's side of the call ends only on its own. A new call goes through
// the other gateway.
func TestCallThroughDeadGateway(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		m, bobAddr := gatewayLine(t, 18, 0, 3)
		defer stopMesh(t, m)
		caller := m.phones[1] // on n2
		const bobHz = 1900
		bob := internetPhone(t, m, "bob", bobAddr, phones.Settings{User: "bob", Domain: "example.net", ToneHz: bobHz, MaxCalls: 8},
			phones.Policy{Mode: phones.AutoAnswer, ExpectHz: caller.Hz})
		waitForGateway(t, m, 1)
		for m.nodes[3].UplinkSIP() == nil {
			time.Sleep(time.Second)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
		defer cancel()
		before := m.proxied()
		call, err := caller.Call(ctx, "sip:bob@example.net", phones.CallOptions{ExpectHz: bobHz})
		if err != nil {
			t.Fatalf("call to bob: %v", err)
		}
		used := m.usedGateway(before, m.proxied())
		in := <-bob.Incoming()
		time.Sleep(2 * time.Second)
		if !call.HeardRemote() || !in.HeardRemote() {
			t.Fatalf("before the kill: caller heard bob %v, bob heard the caller %v", call.HeardRemote(), in.HeardRemote())
		}
		dead, other := 0, 3
		if used == "n4" {
			dead, other = 3, 0
		}
		m.kill(dead)
		t.Logf("the call went through %s; %s killed", used, nodeName(dead))
		// The detector judges the last second received: count packets.
		time.Sleep(500 * time.Millisecond)
		ca, ba := call.Stats().Received, in.Stats().Received
		time.Sleep(2 * time.Second)
		if ca2, ba2 := call.Stats().Received, in.Stats().Received; ca2 != ca || ba2 != ba {
			t.Errorf("media through the dead gateway still flows: the caller received %d packets in 2 s, bob %d", ca2-ca, ba2-ba)
		}
		start := time.Now()
		herr := call.Hangup(ctx)
		select {
		case <-in.Done():
			t.Errorf("bob's side ended with the caller's BYE, which had to cross the dead gateway")
		default:
		}
		t.Logf("the caller's hang-up: %v after %v; bob's side still up: it ends on its own", herr, time.Since(start).Round(time.Millisecond))
		in.Hangup(ctx) // bob gives up; his BYE has nowhere to go either
		// A new call goes through the other gateway.
		before = m.proxied()
		c2, err := caller.Call(ctx, "sip:bob@example.net", phones.CallOptions{ExpectHz: bobHz})
		if err != nil {
			t.Fatalf("a new call after the kill: %v", err)
		}
		if g := m.usedGateway(before, m.proxied()); g != nodeName(other) {
			t.Errorf("the new call went through %q, want %s", g, nodeName(other))
		}
		<-bob.Incoming()
		c2.Hangup(ctx)
	})
}
