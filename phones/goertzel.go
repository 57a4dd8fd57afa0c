package phones

import "math"

// Goertzel returns the mean power of the component at freq in x (sampled
// at rate), normalised so that a full-scale sine of amplitude A at freq has
// power A²/2, the same as its mean square: the ratio to MeanSquare is then
// the share of the signal's power the tone carries. It evaluates the DFT
// at exactly freq (the generalised Goertzel algorithm), so freq need not
// fall on a bin of len(x).
func Goertzel(x []int16, rate int, freq float64) float64 {
	if len(x) == 0 {
		return 0
	}
	w := 2 * math.Pi * freq / float64(rate)
	c := 2 * math.Cos(w)
	var s1, s2 float64
	for _, v := range x {
		s0 := float64(v)/32768 + c*s1 - s2
		s2, s1 = s1, s0
	}
	p := s1*s1 + s2*s2 - c*s1*s2
	n := float64(len(x))
	return 2 * p / (n * n)
}

// MeanSquare is the mean power of x, full scale 1.0.
func MeanSquare(x []int16) float64 {
	if len(x) == 0 {
		return 0
	}
	var s float64
	for _, v := range x {
		f := float64(v) / 32768
		s += f * f
	}
	return s / float64(len(x))
}

// Detector thresholds.
const (
	// toneShare is the share of a frame's power the tone must carry. A
	// pure tone through G.711 gives about 0.95 on a 20 ms frame (the
	// rectangular window leaks a little); a different tone 100 Hz or more
	// away gives under 0.1.
	toneShare = 0.6
	// silence is the mean square below which a frame is silence (−40
	// dBFS); silent frames neither count for nor against a tone.
	silence = 1e-4
	// heardShare is the share of non-silent frames that must carry the
	// tone.
	heardShare = 0.8
	// minFrames is how many tone frames Heard needs: 10 frames = 200 ms.
	minFrames = 10
)

// Detector keeps the last frames of received audio and decides whether a
// tone is present. Each frame is judged on its own, so lost, late or
// reordered packets only remove frames from the judgement rather than
// corrupting it, which makes detection robust to loss and jitter.
type Detector struct {
	frames [][FrameSamples]int16
	lens   []int
	n      int // frames written in total
}

// NewDetector keeps the last window frames (window ≥ minFrames).
func NewDetector(window int) *Detector {
	w := max(window, minFrames)
	return &Detector{frames: make([][FrameSamples]int16, w), lens: make([]int, w)}
}

// Add records one frame (at most FrameSamples samples are kept). A short
// frame is analysed on its own samples: zero padding would dilute the
// tone's share by the padded fraction.
func (d *Detector) Add(frame []int16) {
	i := d.n % len(d.frames)
	d.lens[i] = copy(d.frames[i][:], frame)
	d.n++
}

// Frames returns how many frames the window holds.
func (d *Detector) Frames() int { return min(d.n, len(d.frames)) }

// Share returns how many of the window's non-silent frames carry a tone at
// freq, and how many frames are non-silent.
func (d *Detector) Share(freq float64) (tone, loud int) {
	for i := range d.Frames() {
		f := d.frames[i][:d.lens[i]]
		ms := MeanSquare(f)
		if ms < silence {
			continue
		}
		loud++
		if Goertzel(f, SampleRate, freq)/ms >= toneShare {
			tone++
		}
	}
	return tone, loud
}

// Heard reports whether the window carries a tone at freq: at least
// minFrames frames with it, and it in at least heardShare of the
// non-silent frames.
func (d *Detector) Heard(freq float64) bool {
	tone, loud := d.Share(freq)
	return tone >= minFrames && float64(tone) >= heardShare*float64(loud)
}

// Level returns the power of the component at freq over the whole window,
// its frames joined in arrival order (full scale 1.0: a sine of amplitude
// A gives A²/2). Unlike Heard it picks one tone out of a mix of many, as
// the party line delivers: over a second of audio the Goertzel filter is
// 1 Hz wide, so tones 50 Hz apart do not leak into each other, where a
// single 20 ms frame (50 Hz resolution) cannot tell them apart.
func (d *Detector) Level(freq float64) float64 {
	n := d.Frames()
	if n == 0 {
		return 0
	}
	all := make([]int16, 0, n*FrameSamples)
	for j := range n {
		i := (d.n - n + j) % len(d.frames)
		all = append(all, d.frames[i][:d.lens[i]]...)
	}
	return Goertzel(all, SampleRate, freq)
}

// FrameLevel returns the power of the component at freq averaged over the
// window's frames, each analysed on its own through a Hann window (full
// scale 1.0: a sine of amplitude A gives A²/2). Unlike Level it does not
// need the frames to join up, so lost or reordered packets only drop
// frames from the average; its 20 ms frames tell apart tones 100 Hz or
// more apart (the Hann window's sidelobes are 30 dB down there).
func (d *Detector) FrameLevel(freq float64) float64 {
	n := d.Frames()
	if n == 0 {
		return 0
	}
	var w [FrameSamples]int16
	var sum float64
	for i := range n {
		f := d.frames[i][:d.lens[i]]
		for k, v := range f {
			h := 0.5 - 0.5*math.Cos(2*math.Pi*float64(k)/float64(len(f)))
			w[k] = int16(float64(v) * h)
		}
		// The Hann window halves a tone's amplitude: ×4 in power.
		sum += 4 * Goertzel(w[:len(f)], SampleRate, freq)
	}
	return sum / float64(n)
}
