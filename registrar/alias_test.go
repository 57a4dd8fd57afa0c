package registrar

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sipmesh/sipmesh/ssr/dht/dhttest"
)

// TestAliasCheck: names and targets an alias may have.
func TestAliasCheck(t *testing.T) {
	for _, tc := range []struct {
		a  Alias
		ok bool
	}{
		{Alias{Name: "doctor", Target: "205"}, true},
		{Alias{Name: "doctor", Target: "sip:205@mesh"}, true},
		{Alias{Name: "doctor", Target: "sips:alice@example.com"}, true},
		{Alias{Name: "doctor"}, true}, // deleted
		{Alias{Name: "doctor", Target: "doctor"}, false},
		{Alias{Name: "doc tor", Target: "205"}, false},
		{Alias{Name: "doctor", Target: "tel:+123"}, false},
		{Alias{Name: "doctor", Target: "2 05"}, false},
	} {
		if err := tc.a.Check(); (err == nil) != tc.ok {
			t.Errorf("%+v: Check() = %v, want ok %v", tc.a, err, tc.ok)
		}
	}
}

// TestDHTAliases: two nodes set the same alias; the newer wins wherever
// it was written, a deletion (no target) outranks an older alias, and a
// name nobody set has none.
func TestDHTAliases(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		d := dhttest.NewShared(2)
		n1, n2 := &DHTAliases{DHT: d[0]}, &DHTAliases{DHT: d[1]}
		set := func(s *DHTAliases, target string) {
			t.Helper()
			time.Sleep(time.Second)
			if err := s.SetAlias(ctx, Alias{Name: "doctor", Target: target, Updated: time.Now()}); err != nil {
				t.Fatal(err)
			}
		}
		get := func(s *DHTAliases) string {
			t.Helper()
			a, err := s.Alias(ctx, "doctor")
			if err != nil {
				t.Fatal(err)
			}
			return a.Target
		}
		set(n1, "205")
		if got := get(n2); got != "205" {
			t.Errorf("alias from n2: %q, want 205", got)
		}
		set(n2, "sip:206@mesh")
		if got := get(n1); got != "sip:206@mesh" {
			t.Errorf("after n2's change: %q", got)
		}
		set(n1, "")
		if got := get(n2); got != "" {
			t.Errorf("after n1 deleted it: %q", got)
		}
		if a, err := n1.Alias(ctx, "nurse"); err != nil || a.Target != "" || a.Name != "nurse" {
			t.Errorf("unset alias: %+v, %v", a, err)
		}
		if err := n1.SetAlias(ctx, Alias{Name: "bad name", Target: "205"}); err == nil {
			t.Error("a bad name was stored")
		}
	})
}
