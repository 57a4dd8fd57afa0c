package phones

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/rtp"

	"github.com/sipmesh/sipmesh/sipalg"
)

// MediaConfig configures a MediaEndpoint.
type MediaConfig struct {
	// Conn is the RTP socket; the endpoint owns it and closes it when Run
	// returns. It sends from the same socket it receives on (symmetric
	// RTP, RFC 4961), which the relay's latching relies on.
	Conn net.PacketConn
	// Remote is where RTP goes (from the peer's SDP); SetRemote changes it.
	// Until it is valid the endpoint only listens.
	Remote netip.AddrPort
	// ToneHz is the frequency of the tone this endpoint sends; 0 sends
	// silence.
	ToneHz float64
	// Amplitude of the tone, full scale 1.0 (default 0.5, −9 dBFS peak).
	Amplitude float64
	// PayloadType is PayloadPCMU (default) or PayloadPCMA.
	PayloadType uint8
	// SSRC of the stream; 0 picks a random one (RFC 3550 §8.1).
	SSRC uint32
	// Window is how many received 20 ms frames the tone detector keeps
	// (default 50, one second).
	Window int
	// Echo makes the endpoint the echo test's (3246) media: instead of a
	// tone it sends back each G.711 frame it receives, as a new RTP stream
	// of its own (own SSRC, sequence and timestamps, RFC 3550 §5.1), to
	// Remote, or to the frame's source while Remote is unset.
	Echo bool
}

// MediaEndpoint is the audio side of a simulated phone: every 20 ms it
// sends one RTP packet of G.711 carrying its tone (160 samples, timestamp
// +160, sequence +1, RFC 3550 §5.1 and RFC 3551 §4.5), and it decodes what
// it receives into a tone detector and RFC 3550 receiver statistics.
type MediaEndpoint struct {
	cfg   MediaConfig
	conn  net.PacketConn
	local netip.AddrPort

	mu     sync.Mutex
	remote netip.AddrPort
	det    *Detector
	rx     sipalg.Receiver
	stats  MediaStats
	echo   rtp.Header // the echo stream's next header
}

// MediaStats counts an endpoint's traffic.
type MediaStats struct {
	Sent, Received uint64 // RTP packets
	// Ignored counts datagrams that were not G.711 RTP (wrong payload
	// type, not RTP, malformed).
	Ignored uint64
	RTP     sipalg.ReceiverReport
	R, MOS  float64 // E-model estimate of the received stream
}

// NewMediaEndpoint checks cfg and returns an endpoint; Run starts it.
func NewMediaEndpoint(cfg MediaConfig) (*MediaEndpoint, error) {
	if cfg.Conn == nil {
		return nil, errors.New("phones: media endpoint needs a Conn")
	}
	if cfg.PayloadType != PayloadPCMU && cfg.PayloadType != PayloadPCMA {
		return nil, fmt.Errorf("phones: payload type %d is not G.711 (0 or 8)", cfg.PayloadType)
	}
	if cfg.Amplitude <= 0 || cfg.Amplitude > 1 {
		cfg.Amplitude = 0.5
	}
	if cfg.Window <= 0 {
		cfg.Window = 50
	}
	if cfg.SSRC == 0 {
		cfg.SSRC = rand.Uint32() | 1
	}
	m := &MediaEndpoint{cfg: cfg, conn: cfg.Conn, remote: cfg.Remote, det: NewDetector(cfg.Window),
		echo: rtp.Header{Version: 2, Marker: true, SSRC: cfg.SSRC,
			SequenceNumber: uint16(rand.Uint32()), Timestamp: rand.Uint32()}}
	if ua, ok := cfg.Conn.LocalAddr().(*net.UDPAddr); ok {
		m.local = ua.AddrPort()
	}
	return m, nil
}

// Local returns the socket's address, for the SDP the phone sends.
func (m *MediaEndpoint) Local() netip.AddrPort { return m.local }

// SetRemote changes where RTP goes (a re-INVITE or the answer arrived).
func (m *MediaEndpoint) SetRemote(ap netip.AddrPort) {
	m.mu.Lock()
	m.remote = ap
	m.mu.Unlock()
}

// Heard reports whether the received audio of the last Window frames
// carries a tone at freq (see Detector.Heard).
func (m *MediaEndpoint) Heard(freq float64) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.det.Heard(freq)
}

// Level returns the power of the tone at freq in the received audio of
// the last Window frames (see Detector.Level).
func (m *MediaEndpoint) Level(freq float64) float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.det.Level(freq)
}

// FrameLevel is Level averaged frame by frame (Detector.FrameLevel).
func (m *MediaEndpoint) FrameLevel(freq float64) float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.det.FrameLevel(freq)
}

// Stats returns the endpoint's counters and receive quality.
func (m *MediaEndpoint) Stats() MediaStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.stats
	st.RTP = m.rx.Report()
	st.R, st.MOS = st.RTP.Estimate(0)
	return st
}

// Run sends and receives until ctx ends, then closes the socket and
// returns once its receiver has stopped.
func (m *MediaEndpoint) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(m.receive)
	defer wg.Wait()
	defer m.conn.Close()

	tone := Tone{Freq: m.cfg.ToneHz, Amplitude: m.cfg.Amplitude}
	// Random initial sequence number and timestamp (RFC 3550 §5.1).
	pkt := rtp.Packet{Header: rtp.Header{
		Version: 2, Marker: true, PayloadType: m.cfg.PayloadType,
		SequenceNumber: uint16(rand.Uint32()), Timestamp: rand.Uint32(), SSRC: m.cfg.SSRC,
	}}
	var (
		samples [FrameSamples]int16
		payload [FrameSamples]byte
		buf     [12 + FrameSamples]byte
	)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if m.cfg.Echo {
			continue // receive sends
		}
		if m.cfg.ToneHz > 0 {
			tone.Fill(samples[:])
		}
		Encode(payload[:], samples[:], m.cfg.PayloadType)
		pkt.Payload = payload[:]
		n, err := pkt.MarshalTo(buf[:])
		if err != nil {
			return fmt.Errorf("phones: marshal RTP: %w", err)
		}
		m.mu.Lock()
		to := m.remote
		m.mu.Unlock()
		// The media clock runs whether or not anyone listens: timestamp
		// and sequence advance per frame (RFC 3550 §5.1).
		if to.IsValid() {
			if _, err := m.conn.WriteTo(buf[:n], net.UDPAddrFromAddrPort(to)); err == nil {
				m.mu.Lock()
				m.stats.Sent++
				m.mu.Unlock()
				pkt.Marker = false
			}
		}
		pkt.SequenceNumber++
		pkt.Timestamp += FrameSamples
	}
}

// receive decodes RTP into the detector until the socket closes.
func (m *MediaEndpoint) receive() {
	buf := make([]byte, 1500)
	var (
		pkt     rtp.Packet
		echoBuf [12 + FrameSamples]byte
	)
	errs := 0
	for {
		n, from, err := m.conn.ReadFrom(buf)
		if err != nil {
			// Stop on close, or on a socket that only fails.
			if errs++; errors.Is(err, net.ErrClosed) || errs > 100 {
				return
			}
			continue
		}
		errs = 0
		if out, to := m.handle(&pkt, buf[:n], from, time.Now(), echoBuf[:]); len(out) > 0 {
			if _, err := m.conn.WriteTo(out, to); err == nil {
				m.mu.Lock()
				m.stats.Sent++
				m.mu.Unlock()
			}
		}
	}
}

// handle accounts and decodes one received datagram b from from. In echo
// mode it returns the echo packet, marshalled into buf, and where to send
// it.
func (m *MediaEndpoint) handle(pkt *rtp.Packet, b []byte, from net.Addr, now time.Time, buf []byte) ([]byte, net.Addr) {
	var samples [FrameSamples]int16
	m.mu.Lock()
	defer m.mu.Unlock()
	if pkt.Unmarshal(b) != nil || (pkt.PayloadType != PayloadPCMU && pkt.PayloadType != PayloadPCMA) ||
		len(pkt.Payload) == 0 || len(pkt.Payload) > FrameSamples {
		m.stats.Ignored++
		return nil, nil
	}
	m.stats.Received++
	m.rx.Observe(b, now)
	k := Decode(samples[:], pkt.Payload, pkt.PayloadType)
	m.det.Add(samples[:k])
	if !m.cfg.Echo {
		return nil, nil
	}
	to := from
	if m.remote.IsValid() {
		to = net.UDPAddrFromAddrPort(m.remote)
	}
	if to == nil {
		return nil, nil
	}
	m.echo.PayloadType = pkt.PayloadType
	out := rtp.Packet{Header: m.echo, Payload: pkt.Payload}
	n, err := out.MarshalTo(buf)
	if err != nil {
		return nil, nil
	}
	m.echo.Marker = false
	m.echo.SequenceNumber++
	m.echo.Timestamp += uint32(len(pkt.Payload))
	return buf[:n], to
}
