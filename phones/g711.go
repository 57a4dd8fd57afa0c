package phones

import "math/bits"

// G.711 companding (ITU-T G.711, 1988; the segment algorithm of the public
// domain Sun g711.c). Samples are 16-bit linear PCM; the companded codes are
// the octets sent in RTP payload types 0 (PCMU, μ-law) and 8 (PCMA, A-law)
// (RFC 3551 §4.5.14). Decoding goes through 256-entry tables; encoding is a
// few shifts per sample and allocates nothing.

const (
	ulawBias = 0x84 // 33 on the 14-bit scale, shifted to 16 bits
	alawMask = 0x55 // even-bit inversion of A-law (G.711 Table 1a note)
)

var (
	ulawTable [256]int16
	alawTable [256]int16
)

func init() {
	for i := range 256 {
		ulawTable[i] = ulawDecode(byte(i))
		alawTable[i] = alawDecode(byte(i))
	}
}

// topBit returns the index of the highest set bit of v > 0.
func topBit(v int) int { return bits.Len(uint(v)) - 1 }

// MulawEncode compands one sample to μ-law.
func MulawEncode(s int16) byte {
	x := int(s)
	mask := 0xFF
	if x < 0 {
		x = ulawBias - x - 1
		mask = 0x7F
	} else {
		x += ulawBias
	}
	seg := topBit(x|0xFF) - 7
	if seg >= 8 {
		return byte(0x7F ^ mask) // clip to the largest magnitude
	}
	return byte(((seg << 4) | ((x >> (seg + 3)) & 0x0F)) ^ mask)
}

func ulawDecode(u byte) int16 {
	u = ^u
	t := ((int(u&0x0F) << 3) + ulawBias) << ((u & 0x70) >> 4)
	if u&0x80 != 0 {
		return int16(ulawBias - t)
	}
	return int16(t - ulawBias)
}

// MulawDecode expands one μ-law code.
func MulawDecode(u byte) int16 { return ulawTable[u] }

// AlawEncode compands one sample to A-law.
func AlawEncode(s int16) byte {
	x := int(s)
	mask := alawMask | 0x80
	if x < 0 {
		x = -x - 1
		mask = alawMask
	}
	seg := topBit(x|0xFF) - 7
	if seg >= 8 {
		return byte(0x7F ^ mask)
	}
	shift := 4
	if seg > 0 {
		shift = seg + 3
	}
	return byte(((seg << 4) | ((x >> shift) & 0x0F)) ^ mask)
}

func alawDecode(a byte) int16 {
	a ^= alawMask
	i := int(a&0x0F) << 4
	if seg := int(a&0x70) >> 4; seg > 0 {
		i = (i + 0x108) << (seg - 1)
	} else {
		i += 8
	}
	if a&0x80 != 0 {
		return int16(i)
	}
	return int16(-i)
}

// AlawDecode expands one A-law code.
func AlawDecode(a byte) int16 { return alawTable[a] }

// Encode compands src into dst (len(dst) ≥ len(src)) with payload type pt's
// law: 0 μ-law, 8 A-law. It returns the number of bytes written.
func Encode(dst []byte, src []int16, pt uint8) int {
	dst = dst[:len(src)]
	if pt == PayloadPCMA {
		for i, s := range src {
			dst[i] = AlawEncode(s)
		}
	} else {
		for i, s := range src {
			dst[i] = MulawEncode(s)
		}
	}
	return len(src)
}

// Decode expands src into dst (len(dst) ≥ len(src)) with payload type pt's
// law and returns the number of samples written.
func Decode(dst []int16, src []byte, pt uint8) int {
	dst = dst[:len(src)]
	t := &ulawTable
	if pt == PayloadPCMA {
		t = &alawTable
	}
	for i, c := range src {
		dst[i] = t[c]
	}
	return len(src)
}

// Static RTP payload types of G.711 (RFC 3551 Table 4).
const (
	PayloadPCMU uint8 = 0
	PayloadPCMA uint8 = 8
)
