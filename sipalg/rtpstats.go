package sipalg

import (
	"encoding/binary"
	"time"
)

// RFC 3550 Appendix A.1 sequence validation constants.
const (
	maxDropout  = 3000
	maxMisorder = 100
)

// IsRTP reports whether a datagram is an RTP packet: version 2 with at least
// the fixed 12-byte header, and not RTCP multiplexed on the same port, whose
// second byte (packet type) is 192..223 (RFC 5761 §4). STUN (first byte
// 0..3), ZRTP (RFC 6189 §5, first byte 0x10) and DTLS (20..63) fail the
// version check.
func IsRTP(b []byte) bool {
	return len(b) >= 12 && b[0]>>6 == 2 && (b[1] < 192 || b[1] > 223)
}

// Receiver keeps the RFC 3550 receiver statistics of the RTP stream from
// one source: extended highest sequence number and loss (Appendix A.1,
// A.3) and interarrival jitter (Appendix A.8). It reads only the fixed
// header, so it works on SRTP too (RFC 3711 leaves the header in clear).
// The zero value is ready; it is not safe for concurrent use. It allocates
// nothing.
type Receiver struct {
	// ClockRate maps a payload type to its RTP clock rate; nil uses
	// StaticClockRate. Payload types it maps to 0 are timed at 8000 Hz.
	ClockRate func(pt uint8) uint32

	init     bool
	ssrc     uint32
	pt       uint8
	maxSeq   uint16
	cycles   uint32
	baseSeq  uint32
	badSeq   uint32
	received uint64
	epoch    time.Time
	transit  int32
	jitter   float64 // in timestamp units, J of eq. A.8
	rate     uint32
	last     time.Time
}

// ReceiverReport is a snapshot of a Receiver.
type ReceiverReport struct {
	SSRC        uint32
	PayloadType uint8
	// Received counts RTP packets of the current source, duplicates
	// included (RFC 3550 A.3).
	Received uint64
	// Expected is extended highest sequence number − base + 1.
	Expected uint64
	// Lost is Expected − Received; negative with duplicates (RFC 3550
	// §6.4.1 "cumulative number of packets lost").
	Lost int64
	// LossRate is Lost/Expected clamped to [0, 1].
	LossRate float64
	// Jitter is the interarrival jitter estimate (RFC 3550 §6.4.1, A.8).
	Jitter time.Duration
	// ClockRate is the rate the jitter was computed with.
	ClockRate uint32
}

// Observe accounts one packet received at now. It returns false, and
// changes nothing, for a datagram that is not RTP (see IsRTP) or whose
// sequence number jumped by more than the misorder/dropout window until a
// second, consecutive packet confirms the jump (RFC 3550 A.1).
func (r *Receiver) Observe(pkt []byte, now time.Time) bool {
	if !IsRTP(pkt) {
		return false
	}
	pt := pkt[1] & 0x7f
	seq := binary.BigEndian.Uint16(pkt[2:])
	ts := binary.BigEndian.Uint32(pkt[4:])
	ssrc := binary.BigEndian.Uint32(pkt[8:])
	if !r.init || ssrc != r.ssrc {
		// A new source (or a restarted one, e.g. after a re-INVITE)
		// starts a new count; RFC 3550 keeps per-SSRC state, a relay leg
		// carries one source at a time.
		r.reset(seq, ssrc)
	} else {
		switch udelta := seq - r.maxSeq; {
		case udelta < maxDropout:
			if seq < r.maxSeq {
				r.cycles += 1 << 16 // wrapped
			}
			r.maxSeq = seq
		case udelta <= 1<<16-maxMisorder:
			// A very large jump: believe it only if the next packet
			// follows it (the source restarted its sequence).
			if uint32(seq) != r.badSeq {
				r.badSeq = uint32(seq+1) & 0xffff
				return false
			}
			r.reset(seq, ssrc)
		default:
			// Duplicate or reordered: counted, no new maximum.
		}
	}
	r.received++
	r.last = now
	// Jitter (A.8): transit time difference in timestamp units. The
	// arrival clock is the local time since the first packet, scaled to
	// the payload type's clock rate.
	if pt != r.pt || r.rate == 0 {
		r.pt = pt
		r.rate = r.clockRate(pt)
		r.jitter = 0
		r.epoch = now
		r.transit = r.arrival(now) - int32(ts)
		return true
	}
	transit := r.arrival(now) - int32(ts)
	d := transit - r.transit
	r.transit = transit
	if d < 0 {
		d = -d
	}
	r.jitter += (float64(d) - r.jitter) / 16
	return true
}

func (r *Receiver) clockRate(pt uint8) uint32 {
	var c uint32
	if r.ClockRate != nil {
		c = r.ClockRate(pt)
	} else {
		c = StaticClockRate(pt)
	}
	if c == 0 {
		c = 8000
	}
	return c
}

// arrival is now in RTP timestamp units since epoch, wrapping like a
// timestamp does.
func (r *Receiver) arrival(now time.Time) int32 {
	d := now.Sub(r.epoch)
	return int32(uint32(uint64(d) * uint64(r.rate) / uint64(time.Second)))
}

func (r *Receiver) reset(seq uint16, ssrc uint32) {
	*r = Receiver{ClockRate: r.ClockRate, init: true, ssrc: ssrc, maxSeq: seq,
		baseSeq: uint32(seq), badSeq: 1 << 16 /* none */}
}

// Report returns the statistics so far.
func (r *Receiver) Report() ReceiverReport {
	if !r.init || r.received == 0 {
		return ReceiverReport{}
	}
	ext := r.cycles + uint32(r.maxSeq)
	expected := uint64(ext-r.baseSeq) + 1
	lost := int64(expected) - int64(r.received)
	rate := 0.0
	if expected > 0 && lost > 0 {
		rate = min(float64(lost)/float64(expected), 1)
	}
	return ReceiverReport{
		SSRC: r.ssrc, PayloadType: r.pt, Received: r.received, Expected: expected, Lost: lost,
		LossRate: rate, ClockRate: r.rate,
		Jitter: time.Duration(r.jitter * float64(time.Second) / float64(r.rate)),
	}
}

// Estimate returns the E-model rating and MOS of the stream for G.711 with
// packet loss concealment: its loss, and a mouth-to-ear delay of the given
// network delay plus one 20 ms frame of packetisation plus a jitter buffer
// twice the measured jitter (a common adaptive playout depth).
func (rr ReceiverReport) Estimate(netDelay time.Duration) (r, mos float64) {
	if rr.Expected == 0 {
		return 0, 0
	}
	delay := netDelay + 20*time.Millisecond + 2*rr.Jitter
	r = RFactor(G711PLC, delay, 100*rr.LossRate)
	return r, MOS(r)
}
