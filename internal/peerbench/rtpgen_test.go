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
	"syscall"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// The RTP load of the rtp row: G.711 streams as phones send them (RFC
// 3551 §4.5.14: PCMU, 8 kHz, 20 ms packets of 160 bytes, 12 bytes of RTP
// header, RFC 3550 §5.1), one packet every 20 ms per stream and direction,
// the streams' send instants spread evenly over the 20 ms as independent
// calls would be. Each packet carries its send time, taken right before
// the sendmmsg call that hands it to the kernel; the receivers take the
// one-way delay of every packet to the kernel's receive timestamp
// (SO_TIMESTAMPNS, socket(7): taken when the datagram reaches the
// receiving socket's stack, before any reader runs). So neither the
// generator's pacing nor the receivers' own scheduling on the shared
// client core is charged to the relay: what is left is the path, the
// relay's wake-up and its work. Both stamps are CLOCK_REALTIME, as the
// kernel's receive timestamp is; sender and receivers are one process on
// one machine, so no clock sync is involved (NTP slews the clock by at
// most 500 ppm, 0.5 µs per ms of delay).
//
// The delay at the reader (when recvmmsg returned) is kept beside it as
// a diagnosis: its excess over the kernel's is the receivers' scheduling
// delay, the noise the kernel stamp removes.
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
	phase          atomic.Uint32 // packets of other phases are not counted

	mu   sync.Mutex
	hist []uint32 // delay to the kernel's receive timestamp in µs → packets, this phase
	// readHist is the delay to the reader's return from recvmmsg (the
	// diagnosis of the package comment).
	readHist []uint32
	recv     uint64
	// unstamped counts packets without a kernel timestamp: measured at
	// the reader instead (never less delay than they had) and shown.
	unstamped uint64
	done      sync.WaitGroup
}

// newRTPGen turns on the kernel's receive timestamps of the two sockets
// and starts their receivers; close them to stop.
func newRTPGen(caller, callee net.PacketConn) (*rtpGen, error) {
	for _, c := range []net.PacketConn{caller, callee} {
		if err := setSockopt(c, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
			return nil, fmt.Errorf("SO_TIMESTAMPNS: %w", err)
		}
	}
	g := &rtpGen{
		caller: ipv4.NewPacketConn(caller), callee: ipv4.NewPacketConn(callee),
		callerAddr: caller.LocalAddr().(*net.UDPAddr).AddrPort(),
		calleeAddr: callee.LocalAddr().(*net.UDPAddr).AddrPort(),
		hist:       make([]uint32, histMax+1), readHist: make([]uint32, histMax+1),
	}
	g.done.Add(2)
	go g.receive(g.caller)
	go g.receive(g.callee)
	return g, nil
}

// setSockopt sets an integer socket option on a net.PacketConn's socket.
func setSockopt(c net.PacketConn, level, opt, v int) error {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return fmt.Errorf("%T has no file descriptor", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), level, opt, v) }); err != nil {
		return err
	}
	return serr
}

// rxStamp is the kernel's receive timestamp in a message's control data
// (SCM_TIMESTAMPNS: a struct timespec, 16 bytes on 64-bit Linux, 8 on
// 32-bit), in ns of CLOCK_REALTIME; ok false when there is none.
func rxStamp(oob []byte) (ns int64, ok bool) {
	cms, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0, false
	}
	for _, cm := range cms {
		if cm.Header.Level != unix.SOL_SOCKET || cm.Header.Type != unix.SCM_TIMESTAMPNS {
			continue
		}
		switch d := cm.Data; len(d) {
		case 16:
			return int64(binary.NativeEndian.Uint64(d))*1e9 + int64(binary.NativeEndian.Uint64(d[8:])), true
		case 8:
			return int64(int32(binary.NativeEndian.Uint32(d)))*1e9 + int64(int32(binary.NativeEndian.Uint32(d[4:]))), true
		}
	}
	return 0, false
}

func (g *rtpGen) close() {
	g.caller.Close()
	g.callee.Close()
	g.done.Wait()
}

// receive reads batches (recvmmsg) and records each packet's delay to
// its kernel receive timestamp, and to the reader's return (taken once
// per batch, after the call returns, so never less than the packet had).
func (g *rtpGen) receive(c *ipv4.PacketConn) {
	defer g.done.Done()
	ms := make([]ipv4.Message, rtpMaxBatch)
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, 2048)}
		ms[i].OOB = make([]byte, 128) // one SCM_TIMESTAMPNS: 32 bytes
	}
	for {
		n, err := c.ReadBatch(ms, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // ECONNREFUSED from an ICMP error and the like
		}
		read := time.Now().UnixNano()
		phase := g.phase.Load()
		g.mu.Lock()
		for _, m := range ms[:n] {
			b := m.Buffers[0][:m.N]
			if len(b) != rtpPacket || binary.BigEndian.Uint32(b[8:])&0xff000000 != ssrcBase ||
				binary.BigEndian.Uint32(b[rtpHeader+8:]) != phase {
				continue
			}
			sent := int64(binary.BigEndian.Uint64(b[rtpHeader:]))
			rx, ok := rxStamp(m.OOB[:m.NN])
			if !ok {
				rx = read
				g.unstamped++
			}
			g.hist[min(max(int((rx-sent)/1e3), 0), histMax)]++
			g.readHist[min(max(int((read-sent)/1e3), 0), histMax)]++
			g.recv++
		}
		g.mu.Unlock()
	}
}

// phaseResult is what one phase measured, both directions together.
type phaseResult struct {
	sent, recv uint64
	p50, p99   time.Duration
	readP99    time.Duration // p99 at the reader (the diagnosis)
	unstamped  uint64
}

func (p phaseResult) loss() float64 {
	if p.sent == 0 {
		return 1
	}
	return 1 - float64(min(p.recv, p.sent))/float64(p.sent)
}

func (p phaseResult) String() string {
	s := fmt.Sprintf("p50 %v p99 %v (reader %v) loss %.3f%% of %d", p.p50, p.p99, p.readP99, 100*p.loss(), p.sent)
	if p.unstamped > 0 {
		s += fmt.Sprintf(", %d without a kernel timestamp", p.unstamped)
	}
	return s
}

// run sends every stream both ways for d, paced (see the package
// constants), and returns what arrived up to drain after the last packet.
// count false sends the packets of a phase that is not measured (warm-up:
// the relays latch the sources, RFC 4961, and idle sessions are touched).
func (g *rtpGen) run(streams []rtpStream, d time.Duration, count bool, phase uint32) phaseResult {
	if count {
		g.mu.Lock()
		clear(g.hist)
		clear(g.readHist)
		g.recv, g.unstamped = 0, 0
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
	fill := func(b []byte, i, dir int) {
		b[0], b[1] = 0x80, 0 // V=2, PT 0 (PCMU)
		binary.BigEndian.PutUint16(b[2:], seq[2*i+dir])
		seq[2*i+dir]++
		binary.BigEndian.PutUint32(b[4:], uint32(seq[2*i+dir])*160)
		binary.BigEndian.PutUint32(b[8:], ssrcBase+uint32(2*i+dir))
		binary.BigEndian.PutUint32(b[rtpHeader+8:], phase)
	}
	// The send time goes in right before the system call: a generator
	// that runs late sends late, and the packet's delay starts there.
	stamp := func(ms []ipv4.Message) {
		now := uint64(time.Now().UnixNano())
		for _, m := range ms {
			binary.BigEndian.PutUint64(m.Buffers[0][rtpHeader:], now)
		}
	}
	flush := func() {
		if len(toCallee) > 0 {
			stamp(toCallee)
			sent += uint64(writeAll(g.caller, toCallee))
		}
		if len(toCaller) > 0 {
			stamp(toCaller)
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
				b1, b2 := bufs[len(toCallee)], bufs[rtpMaxBatch+len(toCaller)]
				fill(b1, i, 0)
				fill(b2, i, 1)
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
	res.p50 = g.quantile(g.hist, 0.5)
	res.p99 = g.quantile(g.hist, 0.99)
	res.readP99 = g.quantile(g.readHist, 0.99)
	res.unstamped = g.unstamped
	return res
}

// quantile reads a delay histogram (g.mu held); an empty one is
// reported as the histogram's range.
func (g *rtpGen) quantile(hist []uint32, q float64) time.Duration {
	want := uint64(q * float64(g.recv))
	var acc uint64
	for us, c := range hist {
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
