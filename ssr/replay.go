package ssr

// replayWords is the size of a replay window's bitmap in 64-bit words. The
// window accepts counters up to (replayWords−1)·64 = 960 behind the newest
// one: reordering on a mesh link (a few frames, Wi-Fi retries) stays far
// inside it.
const replayWords = 16

// replayWindow is the sliding-window anti-replay check of RFC 6479: a ring
// of bitmap words indexed by counter/64, so sliding forward clears whole
// words instead of shifting bits, and a check costs a few instructions
// and no allocation. The zero value accepts any first counter.
type replayWindow struct {
	last   uint64 // the largest counter accepted
	bitmap [replayWords]uint64
	seen   bool // some counter was accepted
}

// fresh reports whether ctr has not been accepted yet and is not too old
// (RFC 6479 §2: check before authenticating, update after).
func (w *replayWindow) fresh(ctr uint64) bool {
	if !w.seen || ctr > w.last {
		return true
	}
	if w.last-ctr >= (replayWords-1)*64 {
		return false // behind the window
	}
	word := (ctr / 64) % replayWords
	return w.bitmap[word]&(1<<(ctr%64)) == 0
}

// accept records ctr, which fresh approved and the MAC authenticated.
func (w *replayWindow) accept(ctr uint64) {
	if !w.seen {
		w.seen, w.last = true, ctr
		w.bitmap = [replayWords]uint64{}
	} else if ctr > w.last {
		// Clear the words the window slides over (at most all of them).
		cur, next := w.last/64, ctr/64
		for i, d := uint64(1), next-cur; i <= d && i <= replayWords; i++ {
			w.bitmap[(cur+i)%replayWords] = 0
		}
		w.last = ctr
	}
	w.bitmap[(ctr/64)%replayWords] |= 1 << (ctr % 64)
}
