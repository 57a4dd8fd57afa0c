package proxy

import (
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/phones"
)

// TestRingGroup: group 600 of four members on four nodes rings all four;
// the first to answer takes the call, and the other three stop ringing
// (the proxy's CANCEL reaches them) within 200 ms of the answer, in
// virtual time.
func TestRingGroup(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		members := []string{"201", "202", "203", "204"}
		m := newMeshRig(t, 5, func(c *SIPServiceConfig) { c.RingGroups = map[string][]string{"600": members} })
		var ps []*phones.Phone
		for i, ext := range members {
			pol := phones.Policy{Mode: phones.Manual}
			if i == 2 {
				pol = phones.Policy{Mode: phones.AutoAnswer, RingDelay: 2 * time.Second}
			}
			nd := m.nodes[i]
			ip := netip.AddrFrom4([4]byte{10, byte(i + 1), 0, 30})
			h := m.nw.AddHost("group-" + ext)
			nd.lan.Attach(h.AddInterface("eth0", 1500, netip.PrefixFrom(ip, 24)))
			p, err := phones.New(phones.Config{Settings: phones.Settings{User: ext, Password: "secret" + ext,
				Server: netip.AddrPortFrom(nd.lanIP, 5060), LocalAddr: ip, ToneHz: 600 + 100*float64(i)},
				Policy: pol, Network: h})
			if err != nil {
				t.Fatal(err)
			}
			m.wg.Go(func() { p.Run(m.ctx) })
			if err := p.Register(m.ctx); err != nil {
				t.Fatal(err)
			}
			ps = append(ps, p)
		}
		caller := m.simPhone(5, "210", 20, 1500)
		c, err := caller.Dial(m.ctx, "600", phones.CallOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var ringing []*phones.Call
		for _, p := range ps {
			select {
			case in := <-p.Incoming():
				ringing = append(ringing, in)
			case <-time.After(time.Second):
				t.Fatalf("member %s does not ring", p.Contact())
			}
		}
		select {
		case <-ringing[2].RingingDone(): // 203 stops ringing and sends its 200
		case <-time.After(5 * time.Second):
			t.Fatalf("203 did not answer group 600: %v", c.Err())
		}
		answered := time.Now()
		var worst time.Duration
		for i, in := range ringing {
			if i == 2 {
				continue
			}
			select {
			case <-in.RingingDone():
			case <-time.After(5 * time.Second):
				t.Fatalf("member %s still rings", members[i])
			}
			worst = max(worst, time.Since(answered))
			<-in.Done()
			if in.Status() != 487 {
				t.Errorf("member %s: status %d, want 487 (cancelled)", members[i], in.Status())
			}
		}
		if worst > 200*time.Millisecond {
			t.Errorf("the others stopped ringing %v after the answer, want ≤ 200 ms", worst)
		}
		<-c.Answered()
		time.Sleep(time.Second)
		if !c.Heard(800) {
			t.Errorf("the caller does not hear the member who answered (203)")
		}
		t.Logf("group 600: 4 members on 4 nodes, 203 answered, the other three stopped ringing within %v of its 200", worst)
		c.Hangup(m.ctx)
	})
}
