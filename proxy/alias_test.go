package proxy

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/phones"
	"github.com/sipmesh/sipmesh/registrar"
)

// TestAlias: the dial plan's names. "doctor" is 202 (on another node),
// "nurse" is sip:doctor@mesh (an alias of an alias), "ward" names an
// extension that has a forward (to 203); "far" is a URI outside the mesh
// (480 until there is an uplink), "a" and "b" name each other (404 after
// maxAliasDepth names), and a name nobody set is 404.
func TestAlias(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		aliases := &registrar.MemAliases{}
		fwds := &registrar.MemForwards{}
		m := newMeshRig(t, 3, func(c *SIPServiceConfig) { c.Aliases, c.Forwards = aliases, fwds })
		for _, a := range []registrar.Alias{
			{Name: "doctor", Target: "202"},
			{Name: "nurse", Target: "sip:doctor@mesh"},
			{Name: "ward", Target: "204"},
			{Name: "far", Target: "sip:205@example.com"},
			{Name: "a", Target: "b"},
			{Name: "b", Target: "a"},
		} {
			a.Updated = time.Now()
			if err := aliases.SetAlias(m.ctx, a); err != nil {
				t.Fatal(err)
			}
		}
		if err := fwds.SetForward(m.ctx, registrar.Forward{Ext: "204", Always: "203", Updated: time.Now()}); err != nil {
			t.Fatal(err)
		}
		caller := m.simPhone(1, "201", 20, 600)
		callees := map[string]*phones.Phone{"202": m.simPhone(2, "202", 20, 800), "203": m.simPhone(3, "203", 20, 1000)}
		for _, p := range append([]*phones.Phone{caller}, callees["202"], callees["203"]) {
			if err := p.Register(m.ctx); err != nil {
				t.Fatal(err)
			}
		}
		for _, tc := range []struct {
			dial   string
			reach  string // the extension that answers
			status int    // else: the failure
		}{
			{"doctor", "202", 0},
			{"nurse", "202", 0},
			{"ward", "203", 0},
			{"far", "", 480},
			{"a", "", 404},
			{"nobody", "", 404},
		} {
			c, err := caller.Dial(m.ctx, tc.dial, phones.CallOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if tc.status != 0 {
				<-c.Done()
				if c.Status() != tc.status {
					t.Errorf("%s: status %d, want %d", tc.dial, c.Status(), tc.status)
				}
				continue
			}
			select {
			case in := <-callees[tc.reach].Incoming():
				<-in.Answered()
			case <-time.After(5 * time.Second):
				t.Fatalf("%s: %s does not ring (%v)", tc.dial, tc.reach, c.Err())
			}
			<-c.Answered()
			if err := c.Hangup(m.ctx); err != nil {
				t.Errorf("%s: hangup: %v", tc.dial, err)
			}
		}
	})
}
