package phones

import (
	"math"
	"math/rand/v2"
	"testing"
)

// g711Frames returns n frames of a tone after a G.711 round trip, as a
// receiver would decode them.
func g711Frames(freq float64, n int, pt uint8) [][]int16 {
	tone := Tone{Freq: freq, Amplitude: 0.5}
	var out [][]int16
	for range n {
		var s [FrameSamples]int16
		var enc [FrameSamples]byte
		tone.Fill(s[:])
		Encode(enc[:], s[:], pt)
		Decode(s[:], enc[:], pt)
		out = append(out, s[:])
	}
	return out
}

func TestToneAndGoertzel(t *testing.T) {
	for _, f := range []float64{350, 440, 1000, 1004, 2600, 3400} {
		frames := g711Frames(f, 3, PayloadPCMU)
		// Continuous phase: the sample after a frame boundary follows
		// the sine, not a restart from 0.
		all := append(append(append([]int16{}, frames[0]...), frames[1]...), frames[2]...)
		ms := MeanSquare(all)
		if want := 0.5 * 0.5 / 2; math.Abs(ms-want) > 0.01 {
			t.Errorf("%v Hz: mean square %.4f, want %.4f", f, ms, want)
		}
		if share := Goertzel(all, SampleRate, f) / ms; share < 0.95 {
			t.Errorf("%v Hz: tone share %.3f over 60 ms", f, share)
		}
		if share := Goertzel(frames[1], SampleRate, f) / MeanSquare(frames[1]); share < 0.8 {
			t.Errorf("%v Hz: tone share %.3f in one frame", f, share)
		}
		if other := Goertzel(all, SampleRate, f+150) / ms; other > 0.1 {
			t.Errorf("%v Hz: share %.3f at +150 Hz", f, other)
		}
	}
}

func TestDetector(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	tests := []struct {
		name    string
		frames  [][]int16
		freq    float64
		want    bool
		comment string
	}{
		{"tone", g711Frames(440, 50, PayloadPCMU), 440, true, ""},
		{"A-law tone", g711Frames(1000, 50, PayloadPCMA), 1000, true, ""},
		{"other tone", g711Frames(440, 50, PayloadPCMU), 600, false, ""},
		{"neighbour 100 Hz away", g711Frames(500, 50, PayloadPCMU), 600, false, ""},
		{"too short", g711Frames(440, 5, PayloadPCMU), 440, false, "fewer than minFrames"},
		{"silence", make([][]int16, 50), 440, false, ""},
		{"noise", func() [][]int16 {
			var fs [][]int16
			for range 50 {
				f := make([]int16, FrameSamples)
				for i := range f {
					f[i] = int16(r.IntN(20000) - 10000)
				}
				fs = append(fs, f)
			}
			return fs
		}(), 440, false, ""},
		{"tone with 30% of frames lost and the rest shuffled", func() [][]int16 {
			fs := g711Frames(440, 50, PayloadPCMU)
			var kept [][]int16
			for _, f := range fs {
				if r.Float64() >= 0.3 {
					kept = append(kept, f)
				}
			}
			r.Shuffle(len(kept), func(i, j int) { kept[i], kept[j] = kept[j], kept[i] })
			return kept
		}(), 440, true, "each frame is judged alone"},
		{"tone with partial frames", func() [][]int16 {
			fs := g711Frames(440, 50, PayloadPCMU)
			for i := range fs {
				fs[i] = fs[i][:80+i%80] // 10 ms and longer
			}
			return fs
		}(), 440, true, ""},
		{"half speech-like noise, half tone", append(g711Frames(440, 25, PayloadPCMU), func() [][]int16 {
			var fs [][]int16
			for range 25 {
				f := make([]int16, FrameSamples)
				for i := range f {
					f[i] = int16(r.IntN(20000) - 10000)
				}
				fs = append(fs, f)
			}
			return fs
		}()...), 440, false, "the tone must dominate the window"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := NewDetector(50)
			for _, f := range tt.frames {
				d.Add(f)
			}
			if got := d.Heard(tt.freq); got != tt.want {
				tone, loud := d.Share(tt.freq)
				t.Errorf("Heard(%v) = %v, want %v (%d/%d frames) %s", tt.freq, got, tt.want, tone, loud, tt.comment)
			}
		})
	}
}
