package ttlmap

import (
	"testing"
	"time"
)

func TestMap(t *testing.T) {
	now := time.Unix(1e9, 0)
	m := New[string, int](4)
	m.Put("a", 1, now.Add(time.Second), now)
	if v, ok := m.Get("a", now); !ok || v != 1 {
		t.Fatalf("a: %d %v", v, ok)
	}
	if _, ok := m.Get("a", now.Add(time.Second)); ok {
		t.Fatal("a valid at its expiry")
	}
	m.Delete("a")
	if m.Len() != 0 {
		t.Fatalf("len %d after delete", m.Len())
	}
	// Full: expired entries go first, live ones stay.
	m.Put("old", 0, now.Add(time.Second), now)
	for i, k := range []string{"b", "c", "d"} {
		m.Put(k, i, now.Add(time.Hour), now)
	}
	m.Put("e", 9, now.Add(time.Hour), now.Add(2*time.Second))
	if _, ok := m.Get("b", now); !ok || m.Len() != 4 {
		t.Fatalf("the expired entry was not the one dropped: len %d", m.Len())
	}
	// Full of live entries: cleared, bound kept.
	m.Put("f", 1, now.Add(time.Hour), now)
	if m.Len() != 1 {
		t.Fatalf("len %d, want 1 after a clear", m.Len())
	}
	// Overwriting a key never clears.
	for range 10 {
		m.Put("f", 2, now.Add(time.Hour), now)
	}
	if v, _ := m.Get("f", now); v != 2 || m.Len() != 1 {
		t.Fatalf("f %d len %d", v, m.Len())
	}
}
