package sipalg

import (
	"math"
	"time"
)

// Codec impairment (ITU-T G.107 §7.5, values from ITU-T G.113 Appendix I).
type Codec struct {
	// Ie is the equipment impairment factor of the codec without loss.
	Ie float64
	// Bpl is the packet-loss robustness factor.
	Bpl float64
}

// G.113 Appendix I, Table I.3: G.711 has Ie = 0; with packet loss
// concealment (G.711 Appendix I) Bpl = 25.1, without it (silence
// insertion) Bpl = 4.3.
var (
	G711PLC = Codec{Ie: 0, Bpl: 25.1}
	G711    = Codec{Ie: 0, Bpl: 4.3}
)

// E-model default parameters (G.107 Table 3) and the values they give.
const (
	// Ro − Is with all defaults is 94.77 − 1.43: the basic signal-to-noise
	// ratio (Ro = 15 − 1.5(SLR + No), No = −61.18 dBm0p) minus the
	// simultaneous impairment factor Is (G.107 §7.1, §7.2).
	emRo  = 94.77
	emIs  = 1.43
	emRoe = 94.77 // −1.5(No − RLR) with No = −61.18, RLR = 2
	emTEL = 65.0  // TELR, talker echo loudness rating, dB
	emWEP = 110.0 // WEPL, weighted echo path loss, dB
	emMT  = 100.0 // mT, delay (ms) below which Idd is 0
)

// RFactor is the ITU-T G.107 (06/2015) E-model transmission rating
//
//	R = Ro − Is − Id − Ie,eff + A
//
// with default parameters except the one-way mouth-to-ear delay Ta (also
// used as the talker-echo delay T, with round-trip Tr = 2T, as G.107 does
// for a connection without echo problems) and the random packet-loss
// percentage ppl (BurstR = 1) with the codec's Ie and Bpl. A = 0 (fixed
// network).
func RFactor(codec Codec, delay time.Duration, ppl float64) float64 {
	ta := float64(delay) / float64(time.Millisecond)
	if ta < 0 {
		ta = 0
	}
	ppl = min(max(ppl, 0), 100)
	return emRo - emIs - delayImpairment(ta) - effectiveIe(codec, ppl, 1)
}

// effectiveIe is G.107 §7.5 eq. 7-29: Ie,eff = Ie + (95 − Ie) ·
// Ppl / (Ppl/BurstR + Bpl).
func effectiveIe(c Codec, ppl, burstR float64) float64 {
	return c.Ie + (95-c.Ie)*ppl/(ppl/burstR+c.Bpl)
}

// delayImpairment is Id = Idte + Idle + Idd (G.107 §7.4) for mouth-to-ear
// delay ta in ms, with T = Ta and Tr = 2Ta.
func delayImpairment(ta float64) float64 {
	t, tr := ta, 2*ta
	// Talker echo (eq. 7-19..7-22); STMR is the default 15 dB, so no
	// sidetone correction applies.
	terv := emTEL - 40*math.Log10((1+t/10)/(1+t/150)) + 6*math.Exp(-0.3*t*t)
	re := 80 + 2.5*(terv-14)
	idte := ((emRoe-re)/2 + math.Sqrt((emRoe-re)*(emRoe-re)/4+100) - 1) * (1 - math.Exp(-t))
	// Listener echo (eq. 7-25, 7-26).
	rle := 10.5 * (emWEP + 7) * math.Pow(tr+1, -0.25)
	idle := (emRo-rle)/2 + math.Sqrt((emRo-rle)*(emRo-rle)/4+169)
	// Absolute delay (eq. 7-27, 7-28), sT = 1, mT = 100 ms.
	idd := 0.0
	if ta > emMT {
		x := math.Log2(ta / emMT)
		idd = 25 * (math.Pow(1+math.Pow(x, 6), 1.0/6) - 3*math.Pow(1+math.Pow(x/3, 6), 1.0/6) + 2)
	}
	return idte + idle + idd
}

// MOS converts a rating R to the estimated mean opinion score MOS_CQE
// (G.107 Annex B, eq. B-4).
func MOS(r float64) float64 {
	switch {
	case r <= 0:
		return 1
	case r >= 100:
		return 4.5
	}
	return 1 + 0.035*r + r*(r-60)*(100-r)*7e-6
}
