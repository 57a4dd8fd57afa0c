package phones

import "sync"

// The party line's mixer (426, conference.go). Every 20 ms tick it takes
// one decoded frame from each member that has one, sums them in 32 bits,
// and gives each member the sum minus its own frame (so no one hears
// themself), clipped to 16 bits and companded with the member's law
// (G.711 μ-law or A-law, RFC 3551 §4.5.14). The cost per member and frame
// is one pass to add and one to subtract and encode: O(members × 160).
//
// A member's input goes through a small jitter buffer (MixInput): frames
// queue up to mixJitterFrames; a tick takes the oldest. A member that sent
// nothing for a tick (loss, late packet, a phone that sends no RTP during
// silence, RFC 3551 §4.1) contributes silence that tick instead of
// stalling the room; a member whose clock runs fast loses its oldest
// frame when the queue is full, so its delay stays bounded.

// mixJitterFrames bounds a member's queue: 4 frames, 80 ms of audio.
const mixJitterFrames = 4

// The mixer encodes every member's frame each tick, so it compands
// through tables of every 16-bit sample (64 KiB per law, built on the
// first mix: a node that never hosts a room does not pay for them)
// rather than by the segment search of MulawEncode/AlawEncode.
var (
	encTablesOnce sync.Once
	ulawEnc       *[65536]byte
	alawEnc       *[65536]byte
)

func encTables() {
	encTablesOnce.Do(func() {
		u, a := new([65536]byte), new([65536]byte)
		for i := range 65536 {
			u[i] = MulawEncode(int16(uint16(i)))
			a[i] = AlawEncode(int16(uint16(i)))
		}
		ulawEnc, alawEnc = u, a
	})
}

// MixInput is one member's jitter buffer of decoded frames.
type MixInput struct {
	q    [mixJitterFrames][FrameSamples]int16
	head int // index of the oldest frame
	n    int // frames queued
	// Dropped counts frames discarded because the queue was full.
	Dropped uint64
}

// Push decodes one G.711 payload of payload type pt into the queue; a
// short payload is padded with silence, a long one cut at FrameSamples.
func (in *MixInput) Push(payload []byte, pt uint8) {
	if in.n == mixJitterFrames {
		in.head = (in.head + 1) % mixJitterFrames
		in.n--
		in.Dropped++
	}
	f := &in.q[(in.head+in.n)%mixJitterFrames]
	k := Decode(f[:], payload[:min(len(payload), FrameSamples)], pt)
	clear(f[k:])
	in.n++
}

// PushLinear queues one frame of linear samples (tests, tones).
func (in *MixInput) PushLinear(samples []int16) {
	if in.n == mixJitterFrames {
		in.head = (in.head + 1) % mixJitterFrames
		in.n--
		in.Dropped++
	}
	f := &in.q[(in.head+in.n)%mixJitterFrames]
	k := copy(f[:], samples)
	clear(f[k:])
	in.n++
}

// Queued returns how many frames wait.
func (in *MixInput) Queued() int { return in.n }

// pop returns the oldest frame, or nil when the member sent nothing.
func (in *MixInput) pop() *[FrameSamples]int16 {
	if in.n == 0 {
		return nil
	}
	f := &in.q[in.head]
	in.head = (in.head + 1) % mixJitterFrames
	in.n--
	return f
}

// MixMember is one member of a Mix call: its input, the law it wants its
// output in, and the output frame Mix writes.
type MixMember struct {
	In  *MixInput
	PT  uint8 // PayloadPCMU or PayloadPCMA
	Out [FrameSamples]byte
	// Own is the frame taken from In this tick (nil: silent), valid until
	// the next Push.
	Own *[FrameSamples]int16
}

// Mixer holds the scratch of one room's mix; a Mixer is not safe for
// concurrent use.
type Mixer struct {
	sum [FrameSamples]int32
}

var silentFrame [FrameSamples]int16

// Mix mixes one 20 ms frame for every member. extra, if not nil, is added
// to every member's output (the enter/leave tone of the room).
func (m *Mixer) Mix(members []*MixMember, extra []int16) {
	encTables()
	clear(m.sum[:])
	for i, s := range extra[:min(len(extra), FrameSamples)] {
		m.sum[i] = int32(s)
	}
	for _, mb := range members {
		mb.Own = mb.In.pop()
		if mb.Own == nil {
			continue
		}
		for i, s := range mb.Own {
			m.sum[i] += int32(s)
		}
	}
	for _, mb := range members {
		own := mb.Own
		if own == nil {
			own = &silentFrame
		}
		enc := ulawEnc
		if mb.PT == PayloadPCMA {
			enc = alawEnc
		}
		for i, t := range m.sum {
			t -= int32(own[i])
			mb.Out[i] = enc[uint16(int16(max(-32768, min(32767, t))))] // clipped
		}
	}
}
