package phones_test

import (
	"fmt"
	"testing"

	"github.com/pion/rtp"

	"github.com/sipmesh/sipmesh/phones"
)

// mixTones runs n members, member i sending a quiet tone at 400+50i Hz in
// law pt, through 50 mixed frames, and returns each member's detector.
func mixTones(t testing.TB, n int, pt uint8, silent map[int]bool) []*phones.Detector {
	var mx phones.Mixer
	ms := make([]*phones.MixMember, n)
	tones := make([]phones.Tone, n)
	dets := make([]*phones.Detector, n)
	for i := range ms {
		ms[i] = &phones.MixMember{In: new(phones.MixInput), PT: pt}
		tones[i] = phones.Tone{Freq: 400 + 50*float64(i), Amplitude: 0.04}
		dets[i] = phones.NewDetector(50)
	}
	var lin [phones.FrameSamples]int16
	var enc [phones.FrameSamples]byte
	for range 50 {
		for i, m := range ms {
			tones[i].Fill(lin[:])
			if silent[i] {
				continue
			}
			phones.Encode(enc[:], lin[:], pt)
			m.In.Push(enc[:], pt)
		}
		mx.Mix(ms, nil)
		for i, m := range ms {
			phones.Decode(lin[:], m.Out[:], pt)
			dets[i].Add(lin[:])
		}
	}
	return dets
}

// TestMixerAllHearOthers: in a room of 20, with either law, every member
// hears every other member's tone and not its own; a silent member does
// not stall the others.
func TestMixerAllHearOthers(t *testing.T) {
	for _, pt := range []uint8{phones.PayloadPCMU, phones.PayloadPCMA} {
		silent := map[int]bool{7: true}
		dets := mixTones(t, 20, pt, silent)
		want := 0.04 * 0.04 / 2
		for i, d := range dets {
			for j := range dets {
				l := d.Level(400 + 50*float64(j))
				switch {
				case i == j || silent[j]:
					if l > want/10 {
						t.Errorf("pt %d: member %d hears tone %d (level %.2g, tone %.2g)", pt, i, j, l, want)
					}
				case l < want/2:
					t.Errorf("pt %d: member %d does not hear member %d (level %.2g, want ~%.2g)", pt, i, j, l, want)
				}
			}
		}
	}
}

// TestMixerClipsAndJitter: loud members clip instead of wrapping round,
// and a member's queue stays bounded.
func TestMixerClipsAndJitter(t *testing.T) {
	var mx phones.Mixer
	loud := make([]int16, phones.FrameSamples)
	for i := range loud {
		loud[i] = 30000
	}
	ms := []*phones.MixMember{{In: new(phones.MixInput)}, {In: new(phones.MixInput)}, {In: new(phones.MixInput)}}
	ms[0].In.PushLinear(loud)
	ms[1].In.PushLinear(loud)
	mx.Mix(ms, nil)
	var out [phones.FrameSamples]int16
	phones.Decode(out[:], ms[2].Out[:], 0)
	if out[0] < 30000 {
		t.Errorf("sum of two loud members = %d, want clipped near +32767", out[0])
	}
	for range 10 {
		ms[0].In.PushLinear(loud)
	}
	if q := ms[0].In.Queued(); q != 4 || ms[0].In.Dropped != 6 {
		t.Errorf("queue %d (dropped %d), want 4 (6)", q, ms[0].In.Dropped)
	}
}

// BenchmarkMixer: the party line's cost per member and 20 ms frame, for
// what a mixing node does per member (parse the RTP packet, decode into
// the jitter buffer, mix, encode, build the outgoing packet), side by
// side with a plain relay of the same streams (parse and rewrite the
// header, as sipalg does for a two-party call). Sockets are left out of
// both. "room/core" is the largest room one core mixes in real time:
// 20 ms divided by the cost per member.
func BenchmarkMixer(b *testing.B) {
	for _, n := range []int{3, 20, 100} {
		pkts := make([][]byte, n)
		var lin [phones.FrameSamples]int16
		var enc [phones.FrameSamples]byte
		for i := range pkts {
			tone := phones.Tone{Freq: 400 + 50*float64(i), Amplitude: 0.04}
			tone.Fill(lin[:])
			phones.Encode(enc[:], lin[:], 0)
			p := rtp.Packet{Header: rtp.Header{Version: 2, SSRC: uint32(i + 1)}, Payload: enc[:]}
			pkts[i], _ = p.Marshal()
		}
		b.Run(fmt.Sprintf("mix/members=%d", n), func(b *testing.B) {
			var mx phones.Mixer
			ms := make([]*phones.MixMember, n)
			for i := range ms {
				ms[i] = &phones.MixMember{In: new(phones.MixInput)}
			}
			var in rtp.Packet
			out := rtp.Packet{Header: rtp.Header{Version: 2}}
			buf := make([]byte, 1500)
			for b.Loop() {
				for i, m := range ms {
					if in.Unmarshal(pkts[i]) == nil {
						m.In.Push(in.Payload, in.PayloadType)
					}
				}
				mx.Mix(ms, nil)
				for _, m := range ms {
					out.Payload = m.Out[:]
					out.SequenceNumber++
					out.MarshalTo(buf)
				}
			}
			perMember := float64(b.Elapsed().Nanoseconds()) / float64(b.N) / float64(n)
			b.ReportMetric(perMember, "ns/member/frame")
			b.ReportMetric(20e6/perMember, "room/core")
		})
		b.Run(fmt.Sprintf("relay/members=%d", n), func(b *testing.B) {
			var in rtp.Packet
			buf := make([]byte, 1500)
			for b.Loop() {
				for i := range pkts {
					if in.Unmarshal(pkts[i]) == nil {
						in.SSRC ^= 1
						in.MarshalTo(buf)
					}
				}
			}
			perMember := float64(b.Elapsed().Nanoseconds()) / float64(b.N) / float64(n)
			b.ReportMetric(perMember, "ns/member/frame")
			b.ReportMetric(20e6/perMember, "streams/core")
		})
	}
}

// TestFrameLevelWithLoss: with a fifth of the mixed frames lost, every
// member of a room of four (tones 130 Hz apart, as in the demo) still
// shows every other member's tone and not its own, frame by frame.
func TestFrameLevelWithLoss(t *testing.T) {
	var mx phones.Mixer
	const n = 4
	ms := make([]*phones.MixMember, n)
	tones := make([]phones.Tone, n)
	dets := make([]*phones.Detector, n)
	for i := range ms {
		ms[i] = &phones.MixMember{In: new(phones.MixInput)}
		tones[i] = phones.Tone{Freq: 350 + 130*float64(i), Amplitude: 0.15}
		dets[i] = phones.NewDetector(50)
	}
	var lin [phones.FrameSamples]int16
	for f := range 60 {
		for i, m := range ms {
			tones[i].Fill(lin[:])
			m.In.PushLinear(lin[:])
		}
		mx.Mix(ms, nil)
		for i, m := range ms {
			if (f+i)%5 == 0 {
				continue // lost on the way to the member
			}
			phones.Decode(lin[:], m.Out[:], 0)
			dets[i].Add(lin[:])
		}
	}
	want := 0.15 * 0.15 / 2
	for i, d := range dets {
		for j := range dets {
			l := d.FrameLevel(350 + 130*float64(j))
			if (i == j && l > want/20) || (i != j && l < want/4) {
				t.Errorf("member %d, tone of %d: frame level %.3g (tone %.3g)", i, j, l, want)
			}
		}
	}
}
