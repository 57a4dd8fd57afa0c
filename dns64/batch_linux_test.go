package dns64

import (
	"bytes"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/netx"
)

// kernelServer runs a Server on a kernel UDP socket on addr (loopback).
func kernelServer(t *testing.T, addr string, mod func(*Config)) (*Server, netip.AddrPort) {
	t.Helper()
	cfg := Config{
		Network: netx.Kernel{},
		Listen:  []Listen{{Addr: netip.MustParseAddr(addr)}},
		Port:    -1,
		Zone:    testZone,
		Prefix:  netip.MustParsePrefix("2001:db8:64::/96"),
		Logger:  testLogger(t),
	}
	if mod != nil {
		mod(&cfg)
	}
	s := startServer(t, cfg, make(chan error, 1))
	return s, s.Addrs()[0]
}

// dialKernel is a client socket connected to server.
func dialKernel(t *testing.T, server netip.AddrPort) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(server))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readReplies reads n replies from c and returns them by ID.
func readReplies(t *testing.T, c *net.UDPConn, n int) map[uint16]*dns.Msg {
	t.Helper()
	got := make(map[uint16]*dns.Msg)
	buf := make([]byte, 65535)
	for len(got) < n {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		k, err := c.Read(buf)
		if err != nil {
			t.Fatalf("%d of %d replies: %v", len(got), n, err)
		}
		m := new(dns.Msg)
		if err := m.Unpack(buf[:k]); err != nil {
			t.Fatalf("reply: %v", err)
		}
		if got[m.Id] != nil {
			t.Fatalf("two replies with ID %d", m.Id)
		}
		got[m.Id] = m
	}
	return got
}

// waitFor waits until cond holds (the server's counters catch up with
// what the test sent) or fails after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waited 10 s for %s", what)
		}
	}
}

// TestBatchBurst: a burst of queries from one source, replayed and not,
// over more than one batch, on the node's kind of socket: every query
// within the source's burst gets its own reply (its ID, its question),
// the rest are dropped and counted, and the counters add up.
func TestBatchBurst(t *testing.T) {
	leakcheck.Check(t)
	now := time.Unix(1e9, 0)
	const burst = 2*batchSize + 5 // over two batches' worth
	s, addr := kernelServer(t, "127.0.0.1", func(c *Config) {
		c.Rate, c.Burst = 1, burst
		c.Now = func() time.Time { return now } // frozen: no refill
	})
	c := dialKernel(t, addr)
	// The first query takes the full path and makes it replayable.
	first := packQuery(t, "sipserver.mesh.", dns.TypeA)
	if _, err := c.Write(first); err != nil {
		t.Fatal(err)
	}
	var want *dns.Msg
	for _, m := range readReplies(t, c, 1) {
		want = m
	}

	// Then a burst of 3 × batchSize queries: the repeats get replayed,
	// every tenth is one the server has not answered yet (another
	// case of the name: a new query to it).
	const sent = 3 * batchSize
	names := make(map[uint16]string)
	for i := range sent {
		name := "sipserver.mesh."
		if i%10 == 9 {
			name = "SIPserver.mesh."
		}
		q := question(name, dns.TypeA)
		q.Id = uint16(i + 1)
		q.RecursionDesired = false
		b, err := q.Pack()
		if err != nil {
			t.Fatal(err)
		}
		names[q.Id] = name
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	answered := burst - 1 // the first query took a token
	waitFor(t, "the burst to be read", func() bool {
		st := s.Stats()
		return st.Queries+st.RateLimited == 1+sent
	})
	got := readReplies(t, c, answered)
	for id := range uint16(answered) {
		m := got[id+1]
		if m == nil {
			t.Fatalf("no reply to query %d of the burst (within it)", id+1)
		}
		if m.Question[0].Name != names[m.Id] || len(m.Answer) != 1 ||
			m.Answer[0].Header().Name != names[m.Id] || m.Answer[0].(*dns.A).A.String() != "127.0.0.1" {
			t.Fatalf("reply to query %d (%s): %v", m.Id, names[m.Id], m)
		}
		if names[m.Id] == "sipserver.mesh." && m.Answer[0].String() != want.Answer[0].String() {
			t.Fatalf("replayed answer %v, first %v", m.Answer[0], want.Answer[0])
		}
	}
	st := s.Stats()
	if st.Queries != uint64(burst) || st.RateLimited != uint64(sent+1-burst) || st.Mesh != st.Queries {
		t.Fatalf("%+v: want %d queries, %d rate-limited", st, burst, sent+1-burst)
	}
	// All repeats of sipserver.mesh. were replayed, and the repeats of
	// SIPserver.mesh. after the first one answered.
	if st.Replayed < uint64(answered)*8/10 {
		t.Fatalf("%d of %d replayed", st.Replayed, answered)
	}
	// Nothing more comes: the dropped queries get no reply.
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, err := c.Read(make([]byte, 512)); err == nil {
		t.Fatalf("a reply (%d bytes) to a query over the rate", n)
	}
}

// TestBatchIO: the batch reader on its own over loopback, IPv4 and IPv6:
// datagrams from two sources read in batches, their sources parsed, and
// replies queued to each sent back in one write with the query's ID in
// front of the shared reply.
func TestBatchIO(t *testing.T) {
	for _, lo := range []string{"127.0.0.1", "::1"} {
		t.Run(lo, func(t *testing.T) {
			srv, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(lo), 0)))
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			b := newUDPBatch(packetSocket{srv}, 512)
			if b == nil {
				t.Fatal("no batch reader on a kernel socket")
			}
			server := srv.LocalAddr().(*net.UDPAddr).AddrPort()
			clients := []*net.UDPConn{dialKernel(t, server), dialKernel(t, server)}
			const n = batchSize + 3
			for i := range n {
				q := []byte{0, byte(i), 'q', byte(i)}
				if _, err := clients[i%2].Write(q); err != nil {
					t.Fatal(err)
				}
			}
			reply := append([]byte{0xff, 0xff}, bytes.Repeat([]byte("reply"), 4)...)
			for read := 0; read < n; {
				srv.SetReadDeadline(time.Now().Add(5 * time.Second))
				if err := b.recv(); err != nil {
					t.Fatalf("after %d datagrams: %v", read, err)
				}
				for i := range b.n {
					q := b.msg(i)
					if len(q) != 4 || q[2] != 'q' || int(q[3]) != read+i {
						t.Fatalf("datagram %d: %q", read+i, q)
					}
					src, _ := b.from(i)
					if want := clients[(read+i)%2].LocalAddr().(*net.UDPAddr).AddrPort(); src != want {
						t.Fatalf("datagram %d from %v, want %v", read+i, src, want)
					}
					if a := b.addr(i).(*net.UDPAddr).AddrPort(); a != src {
						t.Fatalf("addr %v, from %v", a, src)
					}
					b.queue(i, reply)
				}
				read += b.n
				b.flush(func(to net.Addr, err error) { t.Errorf("send to %v: %v", to, err) })
			}
			buf := make([]byte, 512)
			for i := range n {
				c := clients[i%2]
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				k, err := c.Read(buf)
				if err != nil {
					t.Fatalf("reply %d: %v", i, err)
				}
				if want := append([]byte{0, byte(i)}, reply[2:]...); !bytes.Equal(buf[:k], want) {
					t.Fatalf("reply %d: %q, want %q", i, buf[:k], want)
				}
			}
		})
	}
}

// TestReplayNoAlloc: a replayed query costs the server no allocation
// (issue 12): the batch reader's buffers, the shared reply and the
// source's rate-limit bucket are all reused.
func TestReplayNoAlloc(t *testing.T) {
	leakcheck.Check(t)
	s, addr := kernelServer(t, "127.0.0.1", nil)
	c := dialKernel(t, addr)
	q := packQuery(t, "sipserver.mesh.", dns.TypeA)
	buf := make([]byte, 512)
	ask := func() {
		if _, err := c.Write(q); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(buf); err != nil {
			t.Fatal(err)
		}
	}
	ask() // the full path, once
	ask() // the first replay
	before := s.Stats().Replayed
	// The client's Write and Read allocate nothing either: any
	// allocation counted is the server's.
	if n := testing.AllocsPerRun(500, ask); n > 0 {
		t.Fatalf("%.1f allocations per replayed query", n)
	}
	if got := s.Stats().Replayed - before; got < 500 {
		t.Fatalf("%d of the 501 queries replayed", got)
	}
}

// FuzzServeUDPBatch sends arbitrary datagrams to a server on a kernel
// socket (the batch reader, batch_linux.go), each followed by a
// replayable query that must still be answered, in its own batch or in
// the same one: whatever the bytes, the reader neither stops nor mixes up
// the replies.
func FuzzServeUDPBatch(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s[0])
	}
	f.Add([]byte{})
	f.Add(make([]byte, 12))
	f.Add(make([]byte, 2000)) // longer than the receive buffer (UDPSize)
	srv := startServer(f, Config{
		Network: netx.Kernel{},
		Listen:  []Listen{{Addr: netip.MustParseAddr("127.0.0.1")}},
		Port:    -1,
		Zone:    testZone,
		Rate:    1e9, Burst: 1 << 30, // the fuzzer is one source sending fast
		Logger: slog.New(slog.DiscardHandler),
	}, make(chan error, 1))
	to := net.UDPAddrFromAddrPort(srv.Addrs()[0])
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { pc.Close() })
	live := question("sipserver.mesh.", dns.TypeA)
	var liveID uint16
	buf := make([]byte, 65536)

	f.Fuzz(func(t *testing.T, b []byte) {
		b = b[:min(len(b), 4000)]
		liveID++
		live.Id = liveID
		lb, _ := live.Pack()
		for _, d := range [][]byte{b, lb} {
			if _, err := pc.WriteTo(d, to); err != nil {
				t.Fatalf("send: %v", err)
			}
		}
		awaitLiveness(t, pc, buf, live.Id)
	})
}

// TestBatchZone: a link-local source's scope ID is named as the net
// package names it (the interface), and kept; an index no interface has
// stays a number (the net package takes it as the index).
func TestBatchZone(t *testing.T) {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	var b udpBatch
	for range 2 {
		if z := b.zone(uint32(lo.Index)); z != "lo" {
			t.Fatalf("zone of index %d: %q, want lo", lo.Index, z)
		}
	}
	if z := b.zone(1 << 30); z != "1073741824" {
		t.Fatalf("zone of an unknown index: %q", z)
	}
}
