package sipalg_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/memnet"
	"github.com/sipmesh/sipmesh/netx"
	"github.com/sipmesh/sipmesh/sipalg"
)

var (
	nodeLAN  = netip.MustParseAddr("192.168.1.1")
	nodeMesh = netip.MustParseAddr("fd00::1")
	phoneA   = netip.MustParseAddr("192.168.1.10")
	evilIP   = netip.MustParseAddr("192.168.1.66")
	peerB    = netip.MustParseAddr("fd00::2")
)

// testNet is a node with a phone LAN (phone A and a hostile host) and a
// mesh link to peer B, as in a sipmesh node: A speaks IPv4, B IPv6.
type testNet struct {
	net              *memnet.Network
	node, a, evil, b *memnet.Host
	lan, mesh        *memnet.Link
}

func newTestNet(lan, mesh memnet.LinkConfig) *testNet {
	n := &testNet{net: memnet.New(memnet.Config{Seed: 7})}
	n.node, n.a, n.evil, n.b = n.net.AddHost("node"), n.net.AddHost("a"), n.net.AddHost("evil"), n.net.AddHost("b")
	n.lan = n.net.NewSegment("lan", lan)
	n.lan.Attach(n.node.AddInterface("lan0", 1500, netip.PrefixFrom(nodeLAN, 24)))
	n.lan.Attach(n.a.AddInterface("eth0", 1500, netip.PrefixFrom(phoneA, 24)))
	n.lan.Attach(n.evil.AddInterface("eth0", 1500, netip.PrefixFrom(evilIP, 24)))
	n.mesh = n.net.Connect(n.node.AddInterface("mesh0", 1500, netip.PrefixFrom(nodeMesh, 64)),
		n.b.AddInterface("mesh0", 1500, netip.PrefixFrom(peerB, 64)), mesh)
	return n
}

func (n *testNet) relayConfig() sipalg.Config {
	return sipalg.Config{
		A: sipalg.SideConfig{Name: "lan", Addr: nodeLAN, Listen: sipalg.NetworkListener(n.node, nodeLAN), PortMin: 20000, PortMax: 20009},
		B: sipalg.SideConfig{Name: "mesh", Addr: nodeMesh, Listen: sipalg.NetworkListener(n.node, nodeMesh), PortMin: 30000, PortMax: 30009},
	}
}

// runRelay starts the relay and stops it (waiting for Run) at cleanup.
func runRelay(t *testing.T, cfg sipalg.Config) *sipalg.Relay {
	t.Helper()
	r, err := sipalg.NewRelay(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := r.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	return r
}

type sock interface {
	net.PacketConn
	ReadFromUDPAddrPort([]byte) (int, netip.AddrPort, error)
	WriteToUDPAddrPort([]byte, netip.AddrPort) (int, error)
}

func open(t *testing.T, h *memnet.Host, ip netip.Addr, port uint16) sock {
	t.Helper()
	c, err := h.ListenPacket(context.Background(), "udp", netip.AddrPortFrom(ip, port).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(sock)
}

// recv reads one datagram within a (virtual) second; ok is false on
// timeout.
func recv(t *testing.T, c sock) ([]byte, netip.AddrPort, bool) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 4096)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, errTimeout) || isTimeout(err) {
		return nil, netip.AddrPort{}, false
	}
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return buf[:n], from, true
}

var errTimeout = errors.New("timeout")

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func send(t *testing.T, c sock, b []byte, to netip.AddrPort) {
	t.Helper()
	if _, err := c.WriteToUDPAddrPort(b, to); err != nil {
		t.Fatalf("send to %v: %v", to, err)
	}
}

// srtpLike is an RTP header followed by random bytes, like an SRTP packet
// (encrypted payload plus authentication tag): the relay must pass it
// unchanged.
func srtpLike(seq uint16) []byte {
	b := make([]byte, 12+160+10)
	rand.Read(b)
	b[0], b[1] = 0x80, 0
	binary.BigEndian.PutUint16(b[2:], seq)
	binary.BigEndian.PutUint32(b[4:], uint32(seq)*160)
	binary.BigEndian.PutUint32(b[8:], 0x5eed)
	return b
}

func TestRelayBothWaysByteIdentical(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		n := newTestNet(memnet.LinkConfig{Delay: time.Millisecond}, memnet.LinkConfig{Delay: 5 * time.Millisecond})
		r := runRelay(t, n.relayConfig())
		s, err := r.Allocate(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		aRTP, aRTCP := s.Local(sipalg.SideA)
		bRTP, bRTCP := s.Local(sipalg.SideB)
		if !aRTP.Addr().Is4() || !bRTP.Addr().Is6() || aRTP.Port()%2 != 0 || aRTCP.Port() != aRTP.Port()+1 ||
			bRTCP.Port() != bRTP.Port()+1 {
			t.Fatalf("local addresses A %v/%v B %v/%v", aRTP, aRTCP, bRTP, bRTCP)
		}
		if p := s.StreamPlan(sipalg.SideB); p.Addr != nodeMesh || p.Port != bRTP.Port() || p.RTCPPort != bRTCP.Port() {
			t.Errorf("StreamPlan %+v", p)
		}
		pa, pac := open(t, n.a, phoneA, 4000), open(t, n.a, phoneA, 4001)
		pb, pbc := open(t, n.b, peerB, 5000), open(t, n.b, peerB, 5001)
		s.SetPeer(sipalg.SideA, netip.MustParseAddrPort("192.168.1.10:4000"), netip.MustParseAddrPort("192.168.1.10:4001"))
		d, err := sipalg.Parse([]byte("v=0\r\no=- 1 1 IN IP6 fd00::2\r\ns=-\r\nc=IN IP6 fd00::2\r\nt=0 0\r\n" +
			"m=audio 5000 RTP/AVP 0 96\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:96 opus/48000/2\r\n"))
		if err != nil {
			t.Fatal(err)
		}
		s.SetPeerStream(sipalg.SideB, d.Streams[0])

		for i := range 20 {
			p := srtpLike(uint16(i))
			send(t, pa, p, aRTP)
			got, from, ok := recv(t, pb)
			if !ok || !bytes.Equal(got, p) || from != bRTP {
				t.Fatalf("A→B packet %d: ok %v from %v identical %v", i, ok, from, bytes.Equal(got, p))
			}
			q := srtpLike(uint16(1000 + i))
			send(t, pb, q, bRTP)
			got, from, ok = recv(t, pa)
			if !ok || !bytes.Equal(got, q) || from != aRTP {
				t.Fatalf("B→A packet %d: ok %v from %v", i, ok, from)
			}
		}
		// RTCP takes the RTCP sockets both ways.
		sr := []byte{0x80, 200, 0, 6, 0, 0, 0x5e, 0xed, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}
		send(t, pac, sr, aRTCP)
		if got, from, ok := recv(t, pbc); !ok || !bytes.Equal(got, sr) || from != bRTCP {
			t.Fatalf("RTCP A→B: ok %v from %v", ok, from)
		}
		send(t, pbc, sr, bRTCP)
		if got, _, ok := recv(t, pac); !ok || !bytes.Equal(got, sr) {
			t.Fatal("RTCP B→A lost")
		}
		// B switches to Opus (PT 96, a=rtpmap 48 kHz): jitter is timed at
		// 48000 Hz, as SetPeerStream learnt from its SDP.
		p := srtpLike(2000)
		p[1] = 96
		send(t, pb, p, bRTP)
		if _, _, ok := recv(t, pa); !ok {
			t.Fatal("Opus packet lost")
		}
		if cr := s.Stats().B.RTP.ClockRate; cr != 48000 {
			t.Errorf("clock rate of PT 96 = %d, want 48000", cr)
		}
		st := s.Stats()
		if st.A.Packets != 20 || st.B.Packets != 21 || st.A.RTCPPackets != 1 || st.B.RTCPPackets != 1 ||
			st.A.Bytes != 20*182 || st.A.Dropped != 0 || st.A.RTP.Received != 20 || st.A.RTP.Lost != 0 {
			t.Errorf("stats %+v", st)
		}
		if st.A.Side != "lan" || st.B.Side != "mesh" || !st.A.Latched || st.A.Peer != netip.MustParseAddrPort("192.168.1.10:4000") {
			t.Errorf("stats identity %+v", st.A)
		}
		if st.A.MOS < 4.3 || st.A.MOS > 4.41 {
			t.Errorf("MOS %.2f on a clean link", st.A.MOS)
		}
		s.Close()
		<-s.Done()
		if s.Reason() != "closed" || r.Sessions() != 0 {
			t.Errorf("after Close: reason %q, %d sessions", s.Reason(), r.Sessions())
		}
	})
}

// TestRelayLatching: symmetric RTP latches the phone's real source port on
// its SDP address; other hosts cannot inject or steal the stream.
func TestRelayLatching(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		n := newTestNet(memnet.LinkConfig{}, memnet.LinkConfig{})
		r := runRelay(t, n.relayConfig())
		s, err := r.Allocate(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		aRTP, _ := s.Local(sipalg.SideA)
		bRTP, _ := s.Local(sipalg.SideB)
		// The phone's SDP says port 4000, but it sends from 4002 (as
		// phones behind a port-rewriting switch or with separate send
		// sockets do); replies must go to 4002.
		real := open(t, n.a, phoneA, 4002)
		evil := open(t, n.evil, evilIP, 4000)
		sameHost := open(t, n.a, phoneA, 4004)
		pb := open(t, n.b, peerB, 5000)
		s.SetPeer(sipalg.SideA, netip.AddrPortFrom(phoneA, 4000), netip.AddrPortFrom(phoneA, 4001))
		s.SetPeer(sipalg.SideB, netip.AddrPortFrom(peerB, 5000), netip.AddrPortFrom(peerB, 5001))

		// Before A is heard, the hijacker's packets are dropped.
		send(t, evil, srtpLike(1), aRTP)
		if _, _, ok := recv(t, pb); ok {
			t.Fatal("packet from a foreign IP was relayed")
		}
		send(t, real, srtpLike(2), aRTP)
		if _, _, ok := recv(t, pb); !ok {
			t.Fatal("packet from the phone's IP was not relayed")
		}
		send(t, pb, srtpLike(3), bRTP)
		if _, _, ok := recv(t, real); !ok {
			t.Fatal("reply did not reach the latched source port")
		}
		// Latched: another port on the same IP (or the hijacker again) is
		// dropped while the real stream is alive.
		send(t, sameHost, srtpLike(4), aRTP)
		send(t, evil, srtpLike(5), aRTP)
		if _, _, ok := recv(t, pb); ok {
			t.Fatal("packet from a non-latched source was relayed")
		}
		if st := s.Stats(); st.A.Dropped != 3 || st.A.Peer != netip.AddrPortFrom(phoneA, 4002) {
			t.Errorf("stats %+v", st.A)
		}
		// The phone restarts its media on a new port: after RelatchAfter
		// of silence from the old one, the new source takes over.
		time.Sleep(sipalg.RelatchAfter + time.Millisecond)
		send(t, sameHost, srtpLike(6), aRTP)
		if _, _, ok := recv(t, pb); !ok {
			t.Fatal("no relatch after the old source went silent")
		}
		send(t, pb, srtpLike(7), bRTP)
		if _, _, ok := recv(t, sameHost); !ok {
			t.Fatal("reply did not follow the relatch")
		}
		// The hijacker never gets in, however long the phone is silent.
		time.Sleep(10 * sipalg.RelatchAfter)
		send(t, evil, srtpLike(8), aRTP)
		if _, _, ok := recv(t, pb); ok {
			t.Fatal("hijacker latched after silence")
		}
		// A signalling source address (phone behind NAT) may latch when
		// allowed explicitly.
		s.AllowSource(sipalg.SideA, evilIP)
		send(t, evil, srtpLike(9), aRTP)
		if _, _, ok := recv(t, pb); !ok {
			t.Fatal("AllowSource address could not latch")
		}
		// Hold (c=0.0.0.0): nothing more is sent to A, A may still send.
		s.SetPeer(sipalg.SideA, netip.AddrPortFrom(netip.IPv4Unspecified(), 4000), netip.AddrPortFrom(netip.IPv4Unspecified(), 4001))
		send(t, pb, srtpLike(10), bRTP)
		if _, _, ok := recv(t, evil); ok {
			t.Fatal("media sent to a held side")
		}
		send(t, evil, srtpLike(11), aRTP)
		if _, _, ok := recv(t, pb); !ok {
			t.Fatal("held side's media not relayed")
		}
	})
}

// TestRelayLatchAny: on a LatchAny side (a gateway's Internet side) the
// first source latches wherever it is, as a far end behind NAT sends from
// an address neither its SDP nor its signalling names; while it is alive
// no other source gets in, after RelatchAfter of silence another may.
func TestRelayLatchAny(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		n := newTestNet(memnet.LinkConfig{}, memnet.LinkConfig{})
		cfg := n.relayConfig()
		cfg.A.LatchAny = true
		r := runRelay(t, cfg)
		s, err := r.Allocate(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		aRTP, _ := s.Local(sipalg.SideA)
		bRTP, _ := s.Local(sipalg.SideB)
		natted := open(t, n.evil, evilIP, 4000) // the far end's public address
		sdpHost := open(t, n.a, phoneA, 4000)
		pb := open(t, n.b, peerB, 5000)
		s.SetPeer(sipalg.SideA, netip.AddrPortFrom(phoneA, 4000), netip.AddrPortFrom(phoneA, 4001))
		s.SetPeer(sipalg.SideB, netip.AddrPortFrom(peerB, 5000), netip.AddrPortFrom(peerB, 5001))

		send(t, natted, srtpLike(1), aRTP)
		if _, _, ok := recv(t, pb); !ok {
			t.Fatal("the first source on a LatchAny side was not relayed")
		}
		send(t, pb, srtpLike(2), bRTP)
		if _, _, ok := recv(t, natted); !ok {
			t.Fatal("reply did not go to the latched source")
		}
		send(t, sdpHost, srtpLike(3), aRTP)
		if _, _, ok := recv(t, pb); ok {
			t.Fatal("a second source got in while the latched one is alive")
		}
		time.Sleep(sipalg.RelatchAfter + time.Millisecond)
		send(t, sdpHost, srtpLike(4), aRTP)
		if _, _, ok := recv(t, pb); !ok {
			t.Fatal("no relatch after the latched source went silent")
		}
	})
}

// TestRelayPunch: on a Punch side (a gateway's uplink behind NAT) the
// peer's RTP and RTCP addresses each get one empty datagram from the
// side's sockets as soon as SetPeer names them, before any media, so
// that the NAT router has the mapping the peer's packets need; the same
// peer named again (a re-INVITE) gets none, a new one does. A side
// without Punch sends nothing before there is media.
func TestRelayPunch(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		n := newTestNet(memnet.LinkConfig{}, memnet.LinkConfig{})
		cfg := n.relayConfig()
		cfg.A.Punch = true
		r := runRelay(t, cfg)
		s, err := r.Allocate(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		aRTP, aRTCP := s.Local(sipalg.SideA)
		far, farRTCP := open(t, n.a, phoneA, 4000), open(t, n.a, phoneA, 4001)
		pb := open(t, n.b, peerB, 5000)
		s.SetPeer(sipalg.SideA, netip.AddrPortFrom(phoneA, 4000), netip.AddrPortFrom(phoneA, 4001))
		for _, c := range []struct {
			conn sock
			from netip.AddrPort
		}{{far, aRTP}, {farRTCP, aRTCP}} {
			b, from, ok := recv(t, c.conn)
			if !ok || len(b) != 0 || from != c.from {
				t.Fatalf("punch: %d bytes from %v (ok %v), want an empty datagram from %v", len(b), from, ok, c.from)
			}
		}
		s.SetPeer(sipalg.SideA, netip.AddrPortFrom(phoneA, 4000), netip.AddrPortFrom(phoneA, 4001))
		if b, _, ok := recv(t, far); ok {
			t.Fatalf("the same peer named again was punched again: %d bytes", len(b))
		}
		s.SetPeer(sipalg.SideB, netip.AddrPortFrom(peerB, 5000), netip.AddrPortFrom(peerB, 5001))
		if b, _, ok := recv(t, pb); ok {
			t.Fatalf("a side without Punch sent %d bytes before any media", len(b))
		}
		moved := open(t, n.a, phoneA, 4100)
		s.SetPeer(sipalg.SideA, netip.AddrPortFrom(phoneA, 4100), netip.AddrPortFrom(phoneA, 4101))
		if b, from, ok := recv(t, moved); !ok || len(b) != 0 || from != aRTP {
			t.Fatalf("a new peer was not punched: %d bytes from %v (ok %v)", len(b), from, ok)
		}
	})
}

func TestRelayIdleReclaimAndBounds(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		n := newTestNet(memnet.LinkConfig{}, memnet.LinkConfig{})
		cfg := n.relayConfig()
		cfg.IdleTimeout = 10 * time.Second
		r := runRelay(t, cfg)
		var ss []*sipalg.Session
		for range 5 { // 20000-20009 holds five pairs
			s, err := r.Allocate(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			ss = append(ss, s)
		}
		if _, err := r.Allocate(context.Background()); !errors.Is(err, sipalg.ErrRelayFull) {
			t.Fatalf("sixth session: %v, want ErrRelayFull", err)
		}
		// Keep session 0 alive with RTCP every 5 s (a held call); the
		// others go silent and are reclaimed.
		pa := open(t, n.a, phoneA, 4001)
		pb := open(t, n.b, peerB, 5001)
		ss[0].SetPeer(sipalg.SideA, netip.AddrPortFrom(phoneA, 4000), netip.AddrPortFrom(phoneA, 4001))
		ss[0].SetPeer(sipalg.SideB, netip.AddrPortFrom(peerB, 5000), netip.AddrPortFrom(peerB, 5001))
		_, aRTCP := ss[0].Local(sipalg.SideA)
		for range 6 {
			send(t, pa, []byte{0x80, 201, 0, 1, 0, 0, 0, 1}, aRTCP)
			if _, _, ok := recv(t, pb); !ok {
				t.Fatal("RTCP not relayed")
			}
			time.Sleep(5 * time.Second)
		}
		for _, s := range ss[1:] {
			select {
			case <-s.Done():
			default:
				t.Fatal("idle session not reclaimed")
			}
			if s.Reason() != "idle" {
				t.Errorf("reason %q", s.Reason())
			}
		}
		select {
		case <-ss[0].Done():
			t.Fatal("session with RTCP reclaimed")
		default:
		}
		if r.Sessions() != 1 {
			t.Errorf("%d sessions", r.Sessions())
		}
		// The reclaimed ports are usable again: the pool is full once more.
		for range 4 {
			if _, err := r.Allocate(context.Background()); err != nil {
				t.Fatalf("allocating reclaimed ports: %v", err)
			}
		}
		if _, err := r.Allocate(context.Background()); !errors.Is(err, sipalg.ErrRelayFull) {
			t.Errorf("over the bound: %v", err)
		}
	})
}

func TestRelayPortInUse(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		n := newTestNet(memnet.LinkConfig{}, memnet.LinkConfig{})
		cfg := n.relayConfig()
		cfg.A.PortMax = 20003           // two pairs
		open(t, n.node, nodeLAN, 20001) // someone else holds 20001
		r := runRelay(t, cfg)
		s, err := r.Allocate(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if a, _ := s.Local(sipalg.SideA); a.Port() != 20002 {
			t.Errorf("got port %d, want 20002 (20000/20001 is taken)", a.Port())
		}
		if _, err := r.Allocate(context.Background()); !errors.Is(err, sipalg.ErrNoPorts) {
			t.Errorf("no pair left: %v, want ErrNoPorts", err)
		}
	})
}

func TestRelayConfigErrors(t *testing.T) {
	n := newTestNet(memnet.LinkConfig{}, memnet.LinkConfig{})
	cfg := n.relayConfig()
	cfg.B.PortMin, cfg.B.PortMax = 30001, 30001
	if _, err := sipalg.NewRelay(cfg); err == nil {
		t.Error("a range without an even/odd pair was accepted")
	}
	cfg = n.relayConfig()
	cfg.A.Listen = nil
	if _, err := sipalg.NewRelay(cfg); err == nil {
		t.Error("a side without Listen was accepted")
	}
}

// TestRelayStopsEverything: stopping the relay closes live sessions and
// Allocate fails afterwards.
func TestRelayStopsEverything(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		n := newTestNet(memnet.LinkConfig{}, memnet.LinkConfig{})
		r, err := sipalg.NewRelay(n.relayConfig())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- r.Run(ctx) }()
		s, err := r.Allocate(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		<-s.Done()
		if s.Reason() != "relay stopped" {
			t.Errorf("reason %q", s.Reason())
		}
		if _, err := r.Allocate(context.Background()); !errors.Is(err, sipalg.ErrRelayClosed) {
			t.Errorf("Allocate after Run: %v", err)
		}
	})
}

// TestRelayLossStats: 2% loss on the mesh link shows up as loss in the
// receiver statistics of the side that sent through it, and in its MOS.
func TestRelayLossStats(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		n := newTestNet(memnet.LinkConfig{Delay: time.Millisecond},
			memnet.LinkConfig{Delay: 10 * time.Millisecond, Jitter: 4 * time.Millisecond, Loss: 0.02})
		r := runRelay(t, n.relayConfig())
		s, err := r.Allocate(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		bRTP, _ := s.Local(sipalg.SideB)
		pb := open(t, n.b, peerB, 5000)
		pa := open(t, n.a, phoneA, 4000)
		s.SetPeer(sipalg.SideA, netip.AddrPortFrom(phoneA, 4000), netip.AddrPortFrom(phoneA, 4001))
		s.SetPeer(sipalg.SideB, netip.AddrPortFrom(peerB, 5000), netip.AddrPortFrom(peerB, 5001))
		const total = 2500 // 50 s of 20 ms frames
		got := 0
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				if _, _, ok := recv(t, pa); !ok {
					return
				}
				got++
			}
		})
		for i := range total {
			send(t, pb, srtpLike(uint16(i)), bRTP)
			time.Sleep(20 * time.Millisecond)
		}
		wg.Wait()
		st := s.Stats().B
		lost := total - got
		if st.RTP.Received != uint64(got) || st.RTP.Lost != int64(lost) {
			t.Errorf("relay saw %d received %d lost; the phone got %d of %d", st.RTP.Received, st.RTP.Lost, got, total)
		}
		if st.RTP.LossRate < 0.01 || st.RTP.LossRate > 0.03 {
			t.Errorf("loss rate %.3f with 2%% link loss", st.RTP.LossRate)
		}
		if st.RTP.Jitter <= 0 || st.RTP.Jitter > 4*time.Millisecond {
			t.Errorf("jitter %v with 0..4 ms link jitter", st.RTP.Jitter)
		}
		// 2% loss costs about 7 R points (G.711 with PLC): MOS ≈ 4.2.
		if st.MOS < 4.0 || st.MOS > 4.3 {
			t.Errorf("MOS %.2f (R %.1f) at %.1f%% loss", st.MOS, st.R, 100*st.RTP.LossRate)
		}
		t.Logf("2%% loss link: received %d, lost %d (%.2f%%), jitter %v, R %.1f, MOS %.2f",
			st.RTP.Received, st.RTP.Lost, 100*st.RTP.LossRate, st.RTP.Jitter, st.R, st.MOS)
	})
}

// TestRelayKernelSockets runs the relay on real loopback sockets, IPv4 on
// one side and IPv6 on the other, as on a router.
func TestRelayKernelSockets(t *testing.T) {
	leakcheck.Check(t)
	lo4, lo6 := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")
	r := runRelay(t, sipalg.Config{
		A: sipalg.SideConfig{Name: "lan", Addr: lo4, Listen: sipalg.NetworkListener(netx.Kernel{}, lo4), PortMin: 42000, PortMax: 42099},
		B: sipalg.SideConfig{Name: "mesh", Addr: lo6, Listen: sipalg.NetworkListener(netx.Kernel{}, lo6), PortMin: 42000, PortMax: 42099},
	})
	s, err := r.Allocate(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	kopen := func(network, addr string) sock {
		c, err := netx.Kernel{}.ListenPacket(context.Background(), network, addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(sock)
	}
	pa, pb := kopen("udp4", "127.0.0.1:0"), kopen("udp6", "[::1]:0")
	aAddr := pa.LocalAddr().(*net.UDPAddr).AddrPort()
	bAddr := pb.LocalAddr().(*net.UDPAddr).AddrPort()
	s.SetPeer(sipalg.SideA, aAddr, netip.AddrPortFrom(aAddr.Addr(), aAddr.Port()+1))
	s.SetPeer(sipalg.SideB, bAddr, netip.AddrPortFrom(bAddr.Addr(), bAddr.Port()+1))
	aRTP, _ := s.Local(sipalg.SideA)
	bRTP, _ := s.Local(sipalg.SideB)
	for i := range 10 {
		p := srtpLike(uint16(i))
		send(t, pa, p, aRTP)
		if got, from, ok := recv(t, pb); !ok || !bytes.Equal(got, p) || from != bRTP {
			t.Fatalf("A→B %d: ok %v from %v", i, ok, from)
		}
		send(t, pb, p, bRTP)
		if got, from, ok := recv(t, pa); !ok || !bytes.Equal(got, p) || from != aRTP {
			t.Fatalf("B→A %d: ok %v from %v", i, ok, from)
		}
	}
	if st := s.Stats(); st.A.RTP.Received != 10 || st.B.RTP.Received != 10 || !st.A.Latched || !st.B.Latched {
		t.Errorf("stats %+v", st)
	}
}
