package gateway

import (
	"context"
	"runtime/debug"
	"time"
)

// The heap a burst of load grows (SIP transactions and their records,
// DNS answers) is garbage once the load ends, but the Go runtime returns
// it to the system at its own pace: a GC every 2 minutes on an idle node,
// then a slow scavenger. On a router that RAM belongs to forwarding, so
// the node hands it back when a burst ends (issue 12: RSS within 10 MB of
// idle within 60 s after any load).

const (
	memTick = 10 * time.Second
	// loadWork is the SIP requests and DNS queries in one tick that count
	// as a burst of load (200/s); a phone LAN's own traffic is far less
	// (a phone re-registers every few minutes and makes a call now and
	// then). It was 1,000/s: a call load of 340 calls/s (1,700 requests/s)
	// for 10 s, counted across two ticks, stayed under it and the node
	// kept 120 MB of idle heap that a 5 MB live heap no longer needed.
	loadWork = 2000
	// quietTicks is how many ticks the heap is returned after a burst:
	// what it left lives up to 64·T1 = 32 s (SIP Timers J and M, the
	// records that replace them), so 40 s.
	quietTicks = 4
)

// loadWatch tells from a running count of work, read once a tick, when
// a burst of load has ended.
type loadWatch struct {
	last, peak uint64
	quiet      int
	started    bool
}

// tick takes the count of work so far and reports whether to return the
// heap now: a burst of at least loadWork a tick was seen and the last tick
// did an eighth of it or less; for quietTicks ticks after that.
func (l *loadWatch) tick(total uint64) bool {
	w := total - l.last
	if !l.started {
		w, l.started = 0, true
	}
	l.last = total
	switch {
	case w > l.peak:
		l.peak, l.quiet = w, 0
	case l.peak >= loadWork && w <= l.peak/8:
		if l.quiet++; l.quiet >= quietTicks {
			l.peak, l.quiet = 0, 0
		}
		return true
	}
	return false
}

// releaseAfterLoad returns the heap to the system when work (a running
// count of SIP requests and DNS queries) shows that a burst ended.
func releaseAfterLoad(ctx context.Context, work func() uint64) error {
	t := time.NewTicker(memTick)
	defer t.Stop()
	var l loadWatch
	// The count so far is the base: a burst in the first tick (a load
	// that starts as soon as the node answers) is a burst all the same.
	l.tick(work())
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if l.tick(work()) {
				debug.FreeOSMemory()
			}
		}
	}
}
