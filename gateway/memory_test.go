package gateway

import (
	"context"
	"runtime"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// TestLoadWatch: the heap is returned for quietTicks ticks after a burst
// of load ends, not during it, not for a LAN's own traffic, and again
// after the next burst.
func TestLoadWatch(t *testing.T) {
	var l loadWatch
	var total uint64
	step := func(w uint64) bool { total += w; return l.tick(total) }
	want := func(name string, works []uint64, release []bool) {
		t.Helper()
		for i, w := range works {
			if got := step(w); got != release[i] {
				t.Errorf("%s: tick %d (%d work): release %v, want %v", name, i, w, got, release[i])
			}
		}
	}
	want("first read", []uint64{1 << 40}, []bool{false}) // work before the watch started
	want("LAN traffic", []uint64{300, 200, 0, 0, 0}, []bool{false, false, false, false, false})
	want("a burst", []uint64{50000, 60000, 55000}, []bool{false, false, false})
	want("its end", []uint64{1000, 0, 0, 0, 0, 0}, []bool{true, true, true, true, false, false})
	want("halved load is not an end", []uint64{20000, 30000, 15000, 15000}, []bool{false, false, false, false})
	want("the next end", []uint64{0, 0, 0, 0, 0}, []bool{true, true, true, true, false})
	// 340 calls/s for 10 s (17,000 requests) seen by two ticks.
	want("a short call load", []uint64{8500, 8500, 0, 0, 0, 0, 0}, []bool{false, false, true, true, true, true, false})
}

// TestReleaseAfterLoadFirstTick: a burst that falls in the node's first
// tick (the load starts as the node comes up) is released like any other
// (it was taken as the count before the watch started, and the node kept
// 160 MB after a benchmark's call load).
func TestReleaseAfterLoadFirstTick(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var total atomic.Uint64
		var reads atomic.Int32
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			releaseAfterLoad(ctx, func() uint64 { reads.Add(1); return total.Load() })
			close(done)
		}()
		synctest.Wait()
		total.Add(20000) // the burst, before the first tick
		var m0 runtime.MemStats
		runtime.ReadMemStats(&m0)
		time.Sleep(2*memTick + time.Millisecond) // its tick, then a quiet one
		synctest.Wait()
		var m1 runtime.MemStats
		runtime.ReadMemStats(&m1)
		cancel()
		<-done
		if m1.NumForcedGC == m0.NumForcedGC {
			t.Fatalf("no heap release after a burst in the first tick (%d reads of the count)", reads.Load())
		}
	})
}
