package memnet

import (
	"sync"
	"time"
)

// Clock is the time source of a Network: link delays, socket deadlines and
// the handler face are all scheduled through it, so one topology runs in
// real time (RealClock, also under testing/synctest) or in virtual time
// (VirtualClock, for the simulator).
type Clock interface {
	Now() time.Time
	// AfterFunc calls f once, d from now. With RealClock f runs on its own
	// goroutine; with VirtualClock it runs inside Step/RunUntil.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a pending AfterFunc call.
type Timer interface {
	// Stop prevents the call and reports whether it did (false if the call
	// already ran or was stopped).
	Stop() bool
}

// RealClock is package time. Under testing/synctest it runs on the bubble's
// fake clock, which is how the tests measure link delays exactly.
type RealClock struct{}

// Now returns time.Now().
func (RealClock) Now() time.Time { return time.Now() }

// AfterFunc wraps time.AfterFunc. A call due at once (d <= 0) runs in a
// goroutine of its own, as time.AfterFunc would run it, but without a
// timer: Go 1.26.8 runs a testing/synctest bubble's timer that is due at
// once on the system stack of the goroutine that made it, and that path
// crashed the race-enabled proxy tests once (SIGSEGV in
// runtime.(*timer).modify, a link delivery during
// TestPartyLineTwoClaimants). Its Timer's Stop reports false: the call
// may already be running.
func (RealClock) AfterFunc(d time.Duration, f func()) Timer {
	if d <= 0 {
		go f()
		return startedTimer{}
	}
	return time.AfterFunc(d, f)
}

// startedTimer is the Timer of a call already started.
type startedTimer struct{}

// Stop implements Timer: too late.
func (startedTimer) Stop() bool { return false }

// VirtualClock is a discrete-event scheduler for the single-threaded
// simulator: time stands still except inside Step and RunUntil, which pop
// events in (time, insertion order), so a run is a pure function of its
// inputs. It is safe to call from several goroutines, but deterministic only
// when one goroutine drives it.
//
// The queue is a 4-ary min-heap of value structs: shallower than a binary
// heap, so a pop touches fewer cache lines, and events cost no allocation
// beyond the Timer an AfterFunc caller asks for. Stopped timers are removed
// at once, so Pending is exact and a cancelled timer costs no memory.
type VirtualClock struct {
	mu   sync.Mutex
	base time.Time
	now  int64 // nanoseconds since base
	seq  uint64
	heap []event
}

type event struct {
	at  int64
	seq uint64
	fn  func()
	t   *vtimer // nil for internal events nobody can stop
}

type vtimer struct {
	c   *VirtualClock
	idx int // position in c.heap, -1 once run or stopped
}

// NewVirtualClock returns a clock standing at start with nothing scheduled.
func NewVirtualClock(start time.Time) *VirtualClock {
	return &VirtualClock{base: start}
}

// Now returns the virtual time.
func (c *VirtualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.base.Add(time.Duration(c.now))
}

// nanos returns the virtual time as nanoseconds since start.
func (c *VirtualClock) nanos() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// AfterFunc schedules f at Now()+d (d < 0 counts as 0). Events due at the
// same instant run in the order they were scheduled.
func (c *VirtualClock) AfterFunc(d time.Duration, f func()) Timer {
	t := &vtimer{c: c}
	c.mu.Lock()
	c.pushLocked(c.now+max(int64(d), 0), f, t)
	c.mu.Unlock()
	return t
}

// schedule is AfterFunc for the network's own events: no Timer, so no
// allocation per delivered packet.
func (c *VirtualClock) schedule(d time.Duration, f func()) {
	c.mu.Lock()
	c.pushLocked(c.now+max(int64(d), 0), f, nil)
	c.mu.Unlock()
}

// Stop removes the event from the heap.
func (t *vtimer) Stop() bool {
	c := t.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.idx < 0 {
		return false
	}
	c.removeLocked(t.idx)
	return true
}

// Pending returns the number of scheduled events.
func (c *VirtualClock) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.heap)
}

// Step runs the earliest event, advancing the clock to its time, and reports
// whether there was one.
func (c *VirtualClock) Step() bool {
	c.mu.Lock()
	if len(c.heap) == 0 {
		c.mu.Unlock()
		return false
	}
	fn := c.popLocked()
	c.mu.Unlock()
	fn()
	return true
}

// RunUntil runs every event due at or before t (including those the events
// schedule), then leaves the clock at t. It never moves the clock backwards.
func (c *VirtualClock) RunUntil(t time.Time) {
	end := int64(t.Sub(c.base))
	for {
		c.mu.Lock()
		if len(c.heap) == 0 || c.heap[0].at > end {
			c.now = max(c.now, end)
			c.mu.Unlock()
			return
		}
		fn := c.popLocked()
		c.mu.Unlock()
		fn()
	}
}

// RunFor runs the events of the next d of virtual time.
func (c *VirtualClock) RunFor(d time.Duration) { c.RunUntil(c.Now().Add(d)) }

func (c *VirtualClock) pushLocked(at int64, fn func(), t *vtimer) {
	c.seq++
	c.heap = append(c.heap, event{at: at, seq: c.seq, fn: fn, t: t})
	c.up(len(c.heap) - 1)
}

// popLocked removes the root, advances the clock to it and returns its func.
//
// It sifts bottom-up (Floyd): the hole left by the root sinks to a leaf along
// the smaller children without comparing against the last element, which is
// then placed there and sifted up. The last element almost always belongs
// near the bottom, so this saves a comparison per level; pops are most of
// the heap's work.
func (c *VirtualClock) popLocked() func() {
	h := c.heap
	root := h[0]
	if root.t != nil {
		root.t.idx = -1
	}
	last := len(h) - 1
	ev := h[last]
	h[last] = event{}
	h = h[:last]
	c.heap = h
	c.now = root.at
	if last == 0 {
		return root.fn
	}
	i := 0
	for {
		m := 4*i + 1
		if m+3 < last {
			a, b := m, m+2
			if less(&h[m+1], &h[m]) {
				a = m + 1
			}
			if less(&h[m+3], &h[m+2]) {
				b = m + 3
			}
			if less(&h[b], &h[a]) {
				a = b
			}
			m = a
		} else if m < last {
			for j := m + 1; j < last; j++ {
				if less(&h[j], &h[m]) {
					m = j
				}
			}
		} else {
			break
		}
		h[i] = h[m]
		if h[i].t != nil {
			h[i].t.idx = i
		}
		i = m
	}
	h[i] = ev
	c.up(i)
	return root.fn
}

func (c *VirtualClock) removeLocked(i int) {
	h := c.heap
	if t := h[i].t; t != nil {
		t.idx = -1
	}
	last := len(h) - 1
	if i != last {
		h[i] = h[last]
	}
	h[last] = event{} // drop references for the GC
	c.heap = h[:last]
	if i != last {
		if !c.up(i) {
			c.down(i)
		}
	}
}

func less(a, b *event) bool {
	return a.at < b.at || (a.at == b.at && a.seq < b.seq)
}

// up sifts heap[i] towards the root and reports whether it moved.
func (c *VirtualClock) up(i int) bool {
	h := c.heap
	ev := h[i]
	start := i
	for i > 0 {
		p := (i - 1) / 4
		if !less(&ev, &h[p]) {
			break
		}
		h[i] = h[p]
		if h[i].t != nil {
			h[i].t.idx = i
		}
		i = p
	}
	h[i] = ev
	if ev.t != nil {
		ev.t.idx = i
	}
	return i != start
}

func (c *VirtualClock) down(i int) {
	h := c.heap
	n := len(h)
	ev := h[i]
	for {
		first := 4*i + 1
		if first >= n {
			break
		}
		m := first
		for j := first + 1; j < first+4 && j < n; j++ {
			if less(&h[j], &h[m]) {
				m = j
			}
		}
		if !less(&h[m], &ev) {
			break
		}
		h[i] = h[m]
		if h[i].t != nil {
			h[i].t.idx = i
		}
		i = m
	}
	h[i] = ev
	if ev.t != nil {
		ev.t.idx = i
	}
}
