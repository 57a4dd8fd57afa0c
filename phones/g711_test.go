package phones

import (
	"math"
	"math/rand/v2"
	"testing"
)

// Code points of ITU-T G.711 Tables 2a/2b (μ-law) and 1a/1b (A-law),
// expressed on the 16-bit scale (the tables' 14- and 13-bit decision and
// output values shifted left by 2 and 3).
func TestG711CodePoints(t *testing.T) {
	for _, tt := range []struct {
		name string
		got  int
		want int
	}{
		{"μ(0)", int(MulawEncode(0)), 0xFF},
		{"μ(-1)", int(MulawEncode(-1)), 0x7F},
		{"μ(32767)", int(MulawEncode(32767)), 0x80},
		{"μ(-32768)", int(MulawEncode(-32768)), 0x00},
		{"μ⁻¹(0x00)", int(MulawDecode(0x00)), -32124}, // Table 2b: -8031 × 4
		{"μ⁻¹(0x80)", int(MulawDecode(0x80)), 32124},
		{"μ⁻¹(0xFF)", int(MulawDecode(0xFF)), 0},
		{"μ⁻¹(0x7F)", int(MulawDecode(0x7F)), 0},   // negative zero
		{"μ⁻¹(0xEF)", int(MulawDecode(0xEF)), 132}, // segment 1 starts at 33 × 4
		{"A(0)", int(AlawEncode(0)), 0xD5},
		{"A(-1)", int(AlawEncode(-1)), 0x55},
		{"A(32767)", int(AlawEncode(32767)), 0xAA},
		{"A(-32768)", int(AlawEncode(-32768)), 0x2A},
		{"A⁻¹(0xD5)", int(AlawDecode(0xD5)), 8}, // Table 1b: 1 × 8
		{"A⁻¹(0x55)", int(AlawDecode(0x55)), -8},
		{"A⁻¹(0xAA)", int(AlawDecode(0xAA)), 32256}, // 4032 × 8
		{"A⁻¹(0x2A)", int(AlawDecode(0x2A)), -32256},
	} {
		if tt.got != tt.want {
			t.Errorf("%s = %#x (%d), want %#x (%d)", tt.name, tt.got, tt.got, tt.want, tt.want)
		}
	}
}

// TestG711RoundTrip: every code decodes to a value that encodes back to it
// (μ-law's negative zero 0x7F excepted, which becomes 0xFF), decoding is
// monotonic in the code's magnitude order, and the quantisation error of
// every 16-bit input is within half a step of its segment.
func TestG711RoundTrip(t *testing.T) {
	for c := range 256 {
		u := byte(c)
		want := u
		if u == 0x7F {
			want = 0xFF
		}
		if got := MulawEncode(MulawDecode(u)); got != want {
			t.Errorf("μ: %#x → %d → %#x", u, MulawDecode(u), got)
		}
		if got := AlawEncode(AlawDecode(u)); got != u {
			t.Errorf("A: %#x → %d → %#x", u, AlawDecode(u), got)
		}
	}
	prevU, prevA := math.MinInt, math.MinInt
	for x := -32768; x <= 32767; x++ {
		du := int(MulawDecode(MulawEncode(int16(x))))
		da := int(AlawDecode(AlawEncode(int16(x))))
		if du < prevU || da < prevA {
			t.Fatalf("not monotonic at %d: μ %d<%d or A %d<%d", x, du, prevU, da, prevA)
		}
		prevU, prevA = du, da
		// Largest step: μ-law 1024 (segment 7, 8<<7), A-law 1024 (16<<6);
		// beyond the top decision value the code clips.
		if e := abs(du - x); e > 512 && abs(x) < 32124 {
			t.Fatalf("μ error %d at %d", e, x)
		}
		if e := abs(da - x); e > 512 && abs(x) < 32256 {
			t.Fatalf("A error %d at %d", e, x)
		}
		// Relative error of a logarithmic code stays within half of one
		// of 16 steps per doubling (1/32, plus the bias offset of the
		// segment edges: < 4%) above the linear segments.
		if abs(x) > 512 && (float64(abs(du-x))/float64(abs(x)) > 0.04 || float64(abs(da-x))/float64(abs(x)) > 0.04) {
			t.Fatalf("relative error too large at %d: μ %d A %d", x, du, da)
		}
	}
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

func TestEncodeDecodeSlices(t *testing.T) {
	src := make([]int16, FrameSamples)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range src {
		src[i] = int16(r.IntN(65536) - 32768)
	}
	for _, pt := range []uint8{PayloadPCMU, PayloadPCMA} {
		var enc [FrameSamples]byte
		var dec [FrameSamples]int16
		if n := Encode(enc[:], src, pt); n != FrameSamples {
			t.Fatal(n)
		}
		Decode(dec[:], enc[:], pt)
		for i := range src {
			var want int16
			if pt == PayloadPCMU {
				want = MulawDecode(MulawEncode(src[i]))
			} else {
				want = AlawDecode(AlawEncode(src[i]))
			}
			if dec[i] != want {
				t.Fatalf("pt %d sample %d: %d, want %d", pt, i, dec[i], want)
			}
		}
	}
}

func BenchmarkMulawEncodeFrame(b *testing.B) {
	var src [FrameSamples]int16
	(&Tone{Freq: 1000, Amplitude: 0.5}).Fill(src[:])
	var dst [FrameSamples]byte
	b.ReportAllocs()
	for b.Loop() {
		Encode(dst[:], src[:], PayloadPCMU)
	}
}
