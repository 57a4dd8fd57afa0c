package phones

import "math"

// SampleRate is the G.711 sampling rate and RTP clock rate (RFC 3551
// §4.5.14).
const SampleRate = 8000

// FrameSamples is one 20 ms frame at 8 kHz, the default packetisation of
// PCMU/PCMA (RFC 3551 §4.5: ptime 20).
const FrameSamples = SampleRate / 50

// Tone generates a sine wave at 8 kHz, frame after frame, with continuous
// phase across frames.
type Tone struct {
	Freq      float64 // Hz
	Amplitude float64 // peak, full scale 1.0
	phase     float64 // radians
}

// Fill writes the next len(dst) samples.
func (t *Tone) Fill(dst []int16) {
	step := 2 * math.Pi * t.Freq / SampleRate
	a := t.Amplitude * 32767
	for i := range dst {
		dst[i] = int16(math.Round(a * math.Sin(t.phase)))
		t.phase += step
	}
	t.phase = math.Mod(t.phase, 2*math.Pi)
}
