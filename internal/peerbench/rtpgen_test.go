//go:build linux && peerbench

package peerbench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/ipv4"
)

// The RTP load of the rtp row: G.711 streams as phones send them (RFC
// 3551 §4.5.14: PCMU, 8 kHz, 20 ms packets of 160 bytes, 12 bytes of RTP
// header, RFC 3550 §5.1), one packet every 20 ms per stream and direction,
// the streams' send instants spread evenly over the 20 ms as independent
// calls would be. Each packet carries its send time; the receivers take
// the one-way delay of every packet. Sender and receivers are one process
// on one clock (CLOCK_MONOTONIC is not per namespace), so no clock sync
// is involved.
const (
	rtpHeader  = 12
	rtpPayload = 160
	rtpPacket  = rtpHeader + rtpPayload // 172 bytes
	rtpFrame   = 20 * time.Millisecond
	// rtpSlots is the pacing granularity: each stream sends in one of 20
	// slots of 1 ms per frame.
	rtpSlots = 20
	// rtpMaxBatch bounds one sendmmsg/recvmmsg call.
	rtpMaxBatch = 64
	// histMax is the delay histogram's range, 1 µs buckets: a delay above
	// it is counted in the last bucket (and fails the 1 ms bar anyway).
	histMax = 100_000
	// ssrcBase marks our packets; SSRC = ssrcBase + 2*stream + direction.
	ssrcBase = 0x5e000000
)

// rtpStream is one call's media: where the caller's packets go (the relay's
// port for the caller, or the callee itself for the baseline) and where
// the callee's go.
type rtpStream struct {
	toCallee, toCaller netip.AddrPort
}

// rtpGen sends and receives the streams between a caller socket and a
// callee socket in the client namespace.
type rtpGen struct {
	caller, callee *ipv4.PacketConn
	callerAddr     netip.AddrPort
	calleeAddr     netip.AddrPort
	t0             time.Time
	phase          atomic.Uint32 // packets of other phases are not counted

	mu   sync.Mutex
	hist []uint32 // delay in µs → packets, this phase
	recv uint64
	done sync.WaitGroup
}

// newRTPGen starts the receivers on the two sockets; close them to stop.
func newRTPGen(caller, callee net.PacketConn) *rtpGen {
	g := &rtpGen{
		caller: ipv4.NewPacketConn(caller), callee: ipv4.NewPacketConn(callee),
		callerAddr: caller.LocalAddr().(*net.UDPAddr).AddrPort(),
		calleeAddr: callee.LocalAddr().(*net.UDPAddr).AddrPort(),
		t0:         time.Now(), hist: make([]uint32, histMax+1),
	}
	g.done.Add(2)
	go g.receive(g.caller)
	go g.receive(g.callee)
	return g
}

func (g *rtpGen) close() {
	g.caller.Close()
	g.callee.Close()
	g.done.Wait()
}

// receive reads batches (recvmmsg) and records each packet's delay; the
// receive time is taken once per batch, after the call returns, so a
// packet is never credited with less delay than it had.
func (g *rtpGen) receive(c *ipv4.PacketConn) {
	defer g.done.Done()
	ms := make([]ipv4.Message, rtpMaxBatch)
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, 2048)}
	}
	for {
		n, err := c.ReadBatch(ms, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // ECONNREFUSED from an ICMP error and the like
		}
		now := time.Since(g.t0)
		phase := g.phase.Load()
		g.mu.Lock()
		for _, m := range ms[:n] {
			b := m.Buffers[0][:m.N]
			if len(b) != rtpPacket || binary.BigEndian.Uint32(b[8:])&0xff000000 != ssrcBase ||
				binary.BigEndian.Uint32(b[rtpHeader+8:]) != phase {
				continue
			}
			d := (now - time.Duration(binary.BigEndian.Uint64(b[rtpHeader:]))) / time.Microsecond
			g.hist[min(max(int(d), 0), histMax)]++
			g.recv++
		}
		g.mu.Unlock()
	}
}

// phaseResult is what one phase measured, both directions together.
type phaseResult struct {
	sent, recv uint64
	p50, p99   time.Duration
}

func (p phaseResult) loss() float64 {
	if p.sent == 0 {
		return 1
	}
	return 1 - float64(min(p.recv, p.sent))/float64(p.sent)
}

func (p phaseResult) String() string {
	return fmt.Sprintf("p50 %v p99 %v loss %.3f%%", p.p50, p.p99, 100*p.loss())
}

// run sends every stream both ways for d, paced (see the package
// constants), and returns what arrived up to drain after the last packet.
// count false sends the packets of a phase that is not measured (warm-up:
// the relays latch the sources, RFC 4961, and idle sessions are touched).
func (g *rtpGen) run(streams []rtpStream, d time.Duration, count bool, phase uint32) phaseResult {
	if count {
		g.mu.Lock()
		clear(g.hist)
		g.recv = 0
		g.mu.Unlock()
	}
	g.phase.Store(phase)
	n := len(streams)
	seq := make([]uint16, 2*n)
	bufs := make([][]byte, 2*rtpMaxBatch)
	for i := range bufs {
		bufs[i] = make([]byte, rtpPacket)
	}
	toCallee := make([]ipv4.Message, 0, rtpMaxBatch)
	toCaller := make([]ipv4.Message, 0, rtpMaxBatch)
	var sent uint64
	fill := func(b []byte, i, dir int, stamp time.Duration) {
		b[0], b[1] = 0x80, 0 // V=2, PT 0 (PCMU)
		binary.BigEndian.PutUint16(b[2:], seq[2*i+dir])
		seq[2*i+dir]++
		binary.BigEndian.PutUint32(b[4:], uint32(seq[2*i+dir])*160)
		binary.BigEndian.PutUint32(b[8:], ssrcBase+uint32(2*i+dir))
		binary.BigEndian.PutUint64(b[rtpHeader:], uint64(stamp))
		binary.BigEndian.PutUint32(b[rtpHeader+8:], phase)
	}
	flush := func() {
		if len(toCallee) > 0 {
			sent += uint64(writeAll(g.caller, toCallee))
		}
		if len(toCaller) > 0 {
			sent += uint64(writeAll(g.callee, toCaller))
		}
		toCallee, toCaller = toCallee[:0], toCaller[:0]
	}
	start := time.Now()
	frames := int(d / rtpFrame)
	for f := range frames {
		for slot := range rtpSlots {
			at := start.Add(time.Duration(f)*rtpFrame + time.Duration(slot)*rtpFrame/rtpSlots)
			if w := time.Until(at); w > 0 {
				time.Sleep(w)
			}
			// Streams of this slot: i*rtpSlots/n == slot.
			lo, hi := (slot*n+rtpSlots-1)/rtpSlots, ((slot+1)*n+rtpSlots-1)/rtpSlots
			for i := lo; i < hi; i++ {
				if len(toCallee) == rtpMaxBatch {
					flush()
				}
				stamp := time.Since(g.t0)
				b1, b2 := bufs[len(toCallee)], bufs[rtpMaxBatch+len(toCaller)]
				fill(b1, i, 0, stamp)
				fill(b2, i, 1, stamp)
				toCallee = append(toCallee, ipv4.Message{Buffers: [][]byte{b1}, Addr: net.UDPAddrFromAddrPort(streams[i].toCallee)})
				toCaller = append(toCaller, ipv4.Message{Buffers: [][]byte{b2}, Addr: net.UDPAddrFromAddrPort(streams[i].toCaller)})
			}
			flush()
		}
	}
	if !count {
		return phaseResult{}
	}
	// Late packets count as lost: a phone's jitter buffer drops them too.
	time.Sleep(200 * time.Millisecond)
	g.mu.Lock()
	defer g.mu.Unlock()
	res := phaseResult{sent: sent, recv: g.recv}
	res.p50 = g.quantile(0.5)
	res.p99 = g.quantile(0.99)
	return res
}

// quantile reads the delay histogram (g.mu held); an empty one is
// reported as the histogram's range.
func (g *rtpGen) quantile(q float64) time.Duration {
	want := uint64(q * float64(g.recv))
	var acc uint64
	for us, c := range g.hist {
		acc += uint64(c)
		if acc > want {
			return time.Duration(us) * time.Microsecond
		}
	}
	return histMax * time.Microsecond
}

// writeAll sends a batch with sendmmsg, resuming after partial writes; a
// packet the kernel refuses (full socket buffer: ENOBUFS/EAGAIN is not
// retried by the poller for UDP) is lost like on a real link. It returns
// how many packets were handed over or given up on: the sent count of the
// loss figure.
func writeAll(c *ipv4.PacketConn, ms []ipv4.Message) int {
	total := len(ms)
	for tries := 0; len(ms) > 0 && tries < 4; tries++ {
		n, err := c.WriteBatch(ms, 0)
		if n > 0 {
			ms = ms[n:]
		}
		if err != nil && n <= 0 {
			ms = ms[1:] // skip the packet the error was about
		}
	}
	return total
}
