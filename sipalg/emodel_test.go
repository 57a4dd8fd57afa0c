package sipalg

import (
	"encoding/binary"
	"math"
	"testing"
	"time"
)

func near(a, b, tol float64) bool { return math.Abs(a-b) <= tol }

func TestEModel(t *testing.T) {
	// G.107 §7.7: with all default values R = 93.2; MOS_CQE 4.41.
	r := RFactor(G711PLC, 0, 0)
	if !near(r, 93.2, 0.05) || !near(MOS(r), 4.41, 0.005) {
		t.Errorf("defaults: R %.3f MOS %.3f, want 93.2 and 4.41", r, MOS(r))
	}
	// Ie,eff (eq. 7-29) for G.711 with PLC at 2% random loss:
	// 95·2/(2+25.1) = 7.011.
	if got := RFactor(G711PLC, 0, 2); !near(r-got, 7.011, 0.001) {
		t.Errorf("2%% loss costs %.3f, want 7.011", r-got)
	}
	// Without PLC (Bpl 4.3) 1% loss costs 95/5.3 = 17.92.
	if got := RFactor(G711, 0, 1); !near(r-got, 17.925, 0.001) {
		t.Errorf("1%% loss without PLC costs %.3f, want 17.925", r-got)
	}
	// Delay: compare with the widely used fit of the G.107 delay curve
	// (Cole and Rosenbluth, "Voice over IP performance monitoring",
	// ACM CCR 2001): Id ≈ 0.024d + 0.11(d − 177.3)H(d − 177.3), valid for
	// default echo parameters up to about 300 ms; being piecewise linear,
	// the fit itself is off by up to about 1 near its 177 ms knee.
	prev := 100.0
	for d := 0.0; d <= 300; d += 10 {
		got := RFactor(G711PLC, time.Duration(d*float64(time.Millisecond)), 0)
		fit := 93.2 - 0.024*d
		if d > 177.3 {
			fit -= 0.11 * (d - 177.3)
		}
		if !near(got, fit, 1) {
			t.Errorf("delay %v ms: R %.2f, fit %.2f", d, got, fit)
		}
		if got > prev {
			t.Errorf("R rises with delay at %v ms", d)
		}
		prev = got
	}
	// G.107 Annex B (Figure B.1 / G.109 Table 1): R → MOS.
	for _, tt := range []struct{ r, mos float64 }{
		{-5, 1}, {0, 1}, {50, 2.58}, {60, 3.10}, {70, 3.60}, {80, 4.03}, {90, 4.34}, {100, 4.5}, {120, 4.5},
	} {
		if got := MOS(tt.r); !near(got, tt.mos, 0.01) { // the table rounds to 2 places
			t.Errorf("MOS(%v) = %.3f, want %.2f", tt.r, got, tt.mos)
		}
	}
}

// rtpPkt builds a 172-byte PCMU packet.
func rtpPkt(seq uint16, ts, ssrc uint32) []byte {
	b := make([]byte, 172)
	b[0] = 0x80
	binary.BigEndian.PutUint16(b[2:], seq)
	binary.BigEndian.PutUint32(b[4:], ts)
	binary.BigEndian.PutUint32(b[8:], ssrc)
	return b
}

func TestReceiver(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * 20 * time.Millisecond) }

	t.Run("loss across a sequence wrap", func(t *testing.T) {
		var r Receiver
		for i := range 200 {
			if i%10 == 3 {
				continue // 20 lost
			}
			r.Observe(rtpPkt(uint16(65500+i), uint32(160*i), 7), at(i))
		}
		rep := r.Report()
		if rep.Expected != 200 || rep.Received != 180 || rep.Lost != 20 || !near(rep.LossRate, 0.1, 1e-9) {
			t.Errorf("%+v", rep)
		}
		if rep.Jitter != 0 {
			t.Errorf("jitter %v with perfectly timed packets", rep.Jitter)
		}
	})
	t.Run("duplicates and reordering", func(t *testing.T) {
		var r Receiver
		for _, s := range []uint16{1, 2, 4, 3, 3, 5} {
			r.Observe(rtpPkt(s, uint32(s)*160, 7), at(int(s)))
		}
		if rep := r.Report(); rep.Expected != 5 || rep.Received != 6 || rep.Lost != -1 || rep.LossRate != 0 {
			t.Errorf("%+v", rep)
		}
	})
	t.Run("restart needs two packets, new SSRC starts afresh", func(t *testing.T) {
		var r Receiver
		r.Observe(rtpPkt(10, 0, 7), at(0))
		r.Observe(rtpPkt(11, 160, 7), at(1))
		if r.Observe(rtpPkt(30000, 320, 7), at(2)) {
			t.Error("a single far jump was accepted")
		}
		r.Observe(rtpPkt(30001, 480, 7), at(3))
		if rep := r.Report(); rep.Expected != 1 || rep.Received != 1 {
			t.Errorf("after resync %+v", rep)
		}
		r.Observe(rtpPkt(5, 0, 8), at(4))
		if rep := r.Report(); rep.SSRC != 8 || rep.Expected != 1 || rep.Received != 1 {
			t.Errorf("after new SSRC %+v", rep)
		}
	})
	t.Run("jitter", func(t *testing.T) {
		// Arrivals alternate 10 ms late and on time: |D| = 10 ms per
		// packet, so J converges to 10 ms (RFC 3550 A.8).
		var r Receiver
		for i := range 400 {
			late := time.Duration(i%2) * 10 * time.Millisecond
			r.Observe(rtpPkt(uint16(i), uint32(160*i), 7), at(i).Add(late))
		}
		if rep := r.Report(); !near(float64(rep.Jitter), float64(10*time.Millisecond), float64(100*time.Microsecond)) || rep.ClockRate != 8000 {
			t.Errorf("jitter %v at %d Hz, want 10ms at 8000", rep.Jitter, rep.ClockRate)
		}
	})
	t.Run("not RTP", func(t *testing.T) {
		var r Receiver
		rtcp := rtpPkt(0, 0, 7)
		rtcp[1] = 200 // SR multiplexed on the RTP port (RFC 5761 §4)
		stun := make([]byte, 20)
		zrtp := rtpPkt(0, 0, 7)
		zrtp[0] = 0x10
		for _, b := range [][]byte{rtcp, stun, zrtp, {0x80, 0}} {
			if r.Observe(b, t0) {
				t.Errorf("accepted %x", b[:2])
			}
		}
		if rep := r.Report(); rep != (ReceiverReport{}) {
			t.Errorf("%+v", rep)
		}
	})
}

func BenchmarkReceiverObserve(b *testing.B) {
	var r Receiver
	p := rtpPkt(0, 0, 7)
	now := time.Now()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		binary.BigEndian.PutUint16(p[2:], uint16(i))
		binary.BigEndian.PutUint32(p[4:], uint32(160*i))
		r.Observe(p, now.Add(time.Duration(i)*20*time.Millisecond))
		i++
	}
}

// FuzzReceiver feeds arbitrary datagrams (a relay sees whatever a peer
// sends) and checks the counters stay consistent.
func FuzzReceiver(f *testing.F) {
	f.Add(rtpPkt(1, 160, 7), uint16(2), int64(20))
	f.Add([]byte{0x80, 200, 0, 1}, uint16(65535), int64(-5))
	f.Add(rtpPkt(65535, 0, 1), uint16(0), int64(1e9))
	f.Fuzz(func(t *testing.T, pkt []byte, seq2 uint16, gapMs int64) {
		var r Receiver
		now := time.Unix(0, 0)
		ok := r.Observe(pkt, now)
		if ok != IsRTP(pkt) {
			t.Fatalf("Observe %v, IsRTP %v", ok, IsRTP(pkt))
		}
		if ok {
			p2 := append([]byte(nil), pkt...)
			binary.BigEndian.PutUint16(p2[2:], seq2)
			r.Observe(p2, now.Add(time.Duration(gapMs)*time.Millisecond))
		}
		rep := r.Report()
		if ok && (rep.Received == 0 || rep.Expected == 0) {
			t.Fatalf("after an RTP packet: %+v", rep)
		}
		if rep.LossRate < 0 || rep.LossRate > 1 || rep.Jitter < 0 {
			t.Fatalf("out of range: %+v", rep)
		}
		if rep.Received > 0 && int64(rep.Expected)-int64(rep.Received) != rep.Lost {
			t.Fatalf("inconsistent: %+v", rep)
		}
	})
}
