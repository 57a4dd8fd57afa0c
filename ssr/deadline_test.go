package ssr

import (
	"testing"
	"testing/synctest"
	"time"
)

// TestDeadlineReplaced: a deadline replaced by a later one does not fire
// at the earlier time, fires at the later one, and a deadline set again
// after one passed opens a fresh channel.
func TestDeadlineReplaced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var d deadline
		d.set(time.Now().Add(time.Second))
		d.set(time.Now().Add(3 * time.Second))
		ch := d.wait()
		time.Sleep(2 * time.Second)
		if closedNow(ch) {
			t.Fatal("closed at the replaced deadline")
		}
		time.Sleep(time.Second + time.Millisecond)
		if !closedNow(ch) {
			t.Fatal("open after the deadline passed")
		}
		d.set(time.Now().Add(time.Second))
		if closedNow(d.wait()) {
			t.Fatal("a new deadline kept the passed one's channel")
		}
		d.set(time.Time{})
		time.Sleep(2 * time.Second)
		if closedNow(d.wait()) {
			t.Fatal("closed after the deadline was cleared")
		}
		d.set(time.Now().Add(-time.Second))
		if !closedNow(d.wait()) {
			t.Fatal("a deadline in the past left the channel open")
		}
	})
}

// TestDeadlineNoAlloc: moving a deadline ahead before each read, as SIP and
// RTP loops do, allocates nothing once the timer exists.
func TestDeadlineNoAlloc(t *testing.T) {
	var d deadline
	d.set(time.Now().Add(time.Minute))
	if avg := testing.AllocsPerRun(1000, func() {
		d.set(time.Now().Add(time.Minute))
		d.wait()
	}); avg != 0 {
		t.Errorf("%.1f allocations per deadline set, want 0", avg)
	}
	d.set(time.Time{})
}

func closedNow(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
