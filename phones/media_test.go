package phones_test

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pion/rtp"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/memnet"
	"github.com/sipmesh/sipmesh/phones"
	"github.com/sipmesh/sipmesh/sipalg"
)

var (
	nodeLAN  = netip.MustParseAddr("192.168.1.1")
	nodeMesh = netip.MustParseAddr("fd00::1")
	phoneIP  = netip.MustParseAddr("192.168.1.10")
	peerIP   = netip.MustParseAddr("fd00::2")
)

func offer(a netip.AddrPort) []byte {
	typ := "IP4"
	if a.Addr().Is6() {
		typ = "IP6"
	}
	return fmt.Appendf(nil, "v=0\r\no=- 1 1 IN %[1]s %[2]s\r\ns=-\r\nc=IN %[1]s %[2]s\r\nt=0 0\r\n"+
		"m=audio %[3]d RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\n", typ, a.Addr(), a.Port())
}

func parse(t *testing.T, b []byte) sipalg.Stream {
	t.Helper()
	d, err := sipalg.Parse(b)
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	return d.Streams[0]
}

// TestCallThroughRelay: phone A on the node's IPv4 LAN and endpoint B on
// the IPv6 mesh exchange SDP through the ALG and tones through the relay;
// each hears the other's tone and not its own, with and without 2% loss on
// the mesh link.
func TestCallThroughRelay(t *testing.T) {
	for _, loss := range []float64{0, 0.02} {
		t.Run(fmt.Sprintf("loss=%v", loss), func(t *testing.T) {
			leakcheck.Check(t)
			synctest.Test(t, func(t *testing.T) { callThroughRelay(t, loss, false) })
		})
	}
}

// TestEchoThroughRelay: the echo test's media (3246) on the mesh side sends
// A's audio back; A hears its own tone.
func TestEchoThroughRelay(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) { callThroughRelay(t, 0.02, true) })
}

func callThroughRelay(t *testing.T, loss float64, echo bool) {
	nw := memnet.New(memnet.Config{Seed: 11})
	node, a, b := nw.AddHost("node"), nw.AddHost("a"), nw.AddHost("b")
	nw.Connect(node.AddInterface("lan0", 1500, netip.PrefixFrom(nodeLAN, 24)),
		a.AddInterface("eth0", 1500, netip.PrefixFrom(phoneIP, 24)), memnet.LinkConfig{Delay: time.Millisecond})
	nw.Connect(node.AddInterface("mesh0", 1500, netip.PrefixFrom(nodeMesh, 64)),
		b.AddInterface("mesh0", 1500, netip.PrefixFrom(peerIP, 64)),
		memnet.LinkConfig{Delay: 15 * time.Millisecond, Jitter: 5 * time.Millisecond, Loss: loss})

	relay, err := sipalg.NewRelay(sipalg.Config{
		A: sipalg.SideConfig{Name: "lan", Addr: nodeLAN, Listen: sipalg.NetworkListener(node, nodeLAN), PortMin: 20000, PortMax: 20099},
		B: sipalg.SideConfig{Name: "mesh", Addr: nodeMesh, Listen: sipalg.NetworkListener(node, nodeMesh), PortMin: 30000, PortMax: 30099},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { relay.Run(ctx) })

	const toneA, toneB = 440.0, 1000.0
	endpoint := func(h *memnet.Host, ip netip.Addr, port uint16, tone float64) *phones.MediaEndpoint {
		c, err := h.ListenPacket(ctx, "udp", netip.AddrPortFrom(ip, port).String())
		if err != nil {
			t.Fatal(err)
		}
		m, err := phones.NewMediaEndpoint(phones.MediaConfig{Conn: c, ToneHz: tone, Echo: echo && h == b})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	ea := endpoint(a, phoneIP, 4000, toneA)
	eb := endpoint(b, peerIP, 5000, toneB)

	// Offer: A → node (ALG) → B.
	s, err := relay.Allocate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	offerA := offer(ea.Local())
	st := parse(t, offerA)
	s.SetPeer(sipalg.SideA, st.RTP(), st.RTCP)
	toMesh, err := sipalg.Rewrite(offerA, sipalg.Plan{Addr: nodeMesh, Streams: []sipalg.StreamPlan{s.StreamPlan(sipalg.SideB)}})
	if err != nil {
		t.Fatal(err)
	}
	eb.SetRemote(parse(t, toMesh).RTP())
	// Answer: B → node (ALG) → A.
	answerB := offer(eb.Local())
	st = parse(t, answerB)
	s.SetPeer(sipalg.SideB, st.RTP(), st.RTCP)
	toLAN, err := sipalg.Rewrite(answerB, sipalg.Plan{Addr: nodeLAN, Streams: []sipalg.StreamPlan{s.StreamPlan(sipalg.SideA)}})
	if err != nil {
		t.Fatal(err)
	}
	if got := parse(t, toLAN); !got.Addr.Is4() || got.RTP() != netip.AddrPortFrom(nodeLAN, s.StreamPlan(sipalg.SideA).Port) {
		t.Fatalf("answer to the LAN points at %v", got.RTP())
	}
	ea.SetRemote(parse(t, toLAN).RTP())

	var ewg sync.WaitGroup
	ectx, ecancel := context.WithCancel(ctx)
	ewg.Go(func() { ea.Run(ectx) })
	ewg.Go(func() { eb.Run(ectx) })
	time.Sleep(3 * time.Second)
	ecancel()
	ewg.Wait()
	time.Sleep(100 * time.Millisecond) // let the packets in flight land

	if echo {
		if !ea.Heard(toneA) || ea.Heard(toneB) || !eb.Heard(toneA) {
			t.Errorf("echo: A heard itself %v, A heard B's tone %v, echo heard A %v", ea.Heard(toneA), ea.Heard(toneB), eb.Heard(toneA))
		}
		// The last frame may meet the closing socket.
		if st := eb.Stats(); st.Sent < 100 || st.Sent+1 < st.Received {
			t.Errorf("echo sent %d of %d received", st.Sent, st.Received)
		}
		s.Close()
		return
	}
	if !ea.Heard(toneB) || !eb.Heard(toneA) {
		t.Errorf("two-way audio: A heard B %v, B heard A %v", ea.Heard(toneB), eb.Heard(toneA))
	}
	if ea.Heard(toneA) || eb.Heard(toneB) {
		t.Error("an endpoint hears its own tone")
	}
	sa, sb, rs := ea.Stats(), eb.Stats(), s.Stats()
	for name, ms := range map[string]phones.MediaStats{"A": sa, "B": sb} {
		if ms.Sent < 140 || ms.Received < 130 || ms.Ignored != 0 {
			t.Errorf("%s: %+v", name, ms)
		}
		if loss == 0 && (ms.RTP.Lost != 0 || ms.MOS < 4.3) {
			t.Errorf("%s on a clean path: lost %d, MOS %.2f", name, ms.RTP.Lost, ms.MOS)
		}
		if loss > 0 && (ms.RTP.Lost == 0 || ms.MOS > 4.35 || ms.MOS < 3.8) {
			t.Errorf("%s with %.0f%% loss: lost %d, MOS %.2f", name, 100*loss, ms.RTP.Lost, ms.MOS)
		}
	}
	// What the relay saw of A's stream crossed only the clean LAN link.
	if rs.A.RTP.Lost != 0 || rs.A.RTP.Received != sa.Sent {
		t.Errorf("relay, A side: %+v (A sent %d)", rs.A.RTP, sa.Sent)
	}
	t.Logf("loss %.0f%%: A got %d lost %d jitter %v MOS %.2f; B got %d lost %d jitter %v MOS %.2f; relay B-side MOS %.2f",
		100*loss, sa.Received, sa.RTP.Lost, sa.RTP.Jitter, sa.MOS, sb.Received, sb.RTP.Lost, sb.RTP.Jitter, sb.MOS, rs.B.MOS)
	s.Close()
}

func TestMediaEndpointConfig(t *testing.T) {
	if _, err := phones.NewMediaEndpoint(phones.MediaConfig{}); err == nil {
		t.Error("no Conn accepted")
	}
	nw := memnet.New(memnet.Config{})
	h := nw.AddHost("h")
	h.AddInterface("eth0", 1500, netip.MustParsePrefix("10.0.0.1/24"))
	c, err := h.ListenPacket(context.Background(), "udp4", "10.0.0.1:4000")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := phones.NewMediaEndpoint(phones.MediaConfig{Conn: c, PayloadType: 9}); err == nil {
		t.Error("G.722 accepted")
	}
}

// TestMediaEndpointRTP checks the packets on the wire: RTP version 2, PT 0,
// one SSRC, sequence +1 and timestamp +160 per 20 ms, marker on the first
// packet only (RFC 3550 §5.1, RFC 3551 §4.5.14), 160 bytes of μ-law
// carrying the tone.
func TestMediaEndpointRTP(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		nw := memnet.New(memnet.Config{})
		h := nw.AddHost("h")
		h.AddInterface("eth0", 1500, netip.MustParsePrefix("10.0.0.1/24"))
		c, err := h.ListenPacket(context.Background(), "udp4", "10.0.0.1:4000")
		if err != nil {
			t.Fatal(err)
		}
		sink, err := h.ListenPacket(context.Background(), "udp4", "10.0.0.1:4002")
		if err != nil {
			t.Fatal(err)
		}
		defer sink.Close()
		m, err := phones.NewMediaEndpoint(phones.MediaConfig{Conn: c, ToneHz: 700, SSRC: 0x1234,
			Remote: netip.MustParseAddrPort("10.0.0.1:4002")})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Go(func() { m.Run(ctx) })
		var pkt rtp.Packet
		det := phones.NewDetector(20)
		var prev rtp.Header
		var prevAt time.Time
		buf := make([]byte, 1500)
		for i := range 20 {
			n, _, err := sink.ReadFrom(buf)
			if err != nil {
				t.Fatal(err)
			}
			if err := pkt.Unmarshal(buf[:n]); err != nil {
				t.Fatal(err)
			}
			h := pkt.Header
			if h.Version != 2 || h.PayloadType != 0 || h.SSRC != 0x1234 || len(pkt.Payload) != 160 || h.Marker != (i == 0) {
				t.Fatalf("packet %d: %+v, %d payload bytes", i, h, len(pkt.Payload))
			}
			if i > 0 && (h.SequenceNumber != prev.SequenceNumber+1 || h.Timestamp != prev.Timestamp+160 ||
				time.Since(prevAt) != 20*time.Millisecond) {
				t.Fatalf("packet %d: seq %d ts %d after %v; previous seq %d ts %d",
					i, h.SequenceNumber, h.Timestamp, time.Since(prevAt), prev.SequenceNumber, prev.Timestamp)
			}
			prev, prevAt = h, time.Now()
			var s [160]int16
			phones.Decode(s[:], pkt.Payload, 0)
			det.Add(s[:])
		}
		if !det.Heard(700) {
			t.Error("the packets do not carry the 700 Hz tone")
		}
		cancel()
		wg.Wait()
		if st := m.Stats(); st.Sent < 20 {
			t.Errorf("Sent %d", st.Sent)
		}
	})
}
