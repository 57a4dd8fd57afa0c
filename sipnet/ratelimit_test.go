package sipnet

import (
	"net/netip"
	"testing"
	"time"
)

func TestRateLimiter(t *testing.T) {
	r := NewRateLimiter(10, 5, 3)
	now := time.Unix(0, 0)
	a := netip.MustParseAddr("192.168.1.5")
	n := 0
	for range 20 {
		if r.Allow(a, now) {
			n++
		}
	}
	if n != 5 {
		t.Errorf("burst: %d allowed, want 5", n)
	}
	if r.Allow(a, now.Add(50*time.Millisecond)) {
		t.Error("allowed before a token refilled")
	}
	if !r.Allow(a, now.Add(100*time.Millisecond)) {
		t.Error("refused after a token refilled")
	}
	// IPv6 sources share a bucket per /64.
	v6a, v6b := netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2:3")
	for range 5 {
		r.Allow(v6a, now)
	}
	if r.Allow(v6b, now) {
		t.Error("another address of the same /64 escaped the limit")
	}
	// Link-local addresses are distinct sources.
	ll1, ll2 := netip.MustParseAddr("fe80::1"), netip.MustParseAddr("fe80::2")
	for range 5 {
		r.Allow(ll1, now)
	}
	if !r.Allow(ll2, now) {
		t.Error("two link-local hosts share a bucket")
	}
	// The table stays at 3 sources; the least recently seen is evicted.
	for i := range 10 {
		r.Allow(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), now)
	}
	if r.Size() != 3 {
		t.Errorf("table holds %d sources, bound 3", r.Size())
	}
}
