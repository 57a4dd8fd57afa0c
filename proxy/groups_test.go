package proxy

import (
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/phones"
)

// groupPhones puts a phone of each member on node i+1 (tone 600+100i Hz);
// member answer answers after delay, the others only when told.
func groupPhones(t *testing.T, m *meshRig, members []string, answer int, delay time.Duration) []*phones.Phone {
	t.Helper()
	var ps []*phones.Phone
	for i, ext := range members {
		pol := phones.Policy{Mode: phones.Manual}
		if i == answer {
			pol = phones.Policy{Mode: phones.AutoAnswer, RingDelay: delay}
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
	return ps
}

// TestRingGroup: group 600 of four members on four nodes rings all four;
// the first to answer takes the call, and the other three stop ringing
// (the proxy's CANCEL reaches them) within 200 ms of the answer, in
// virtual time.
func TestRingGroup(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		members := []string{"201", "202", "203", "204"}
		m := newMeshRig(t, 5, func(c *SIPServiceConfig) { c.RingGroups = map[string][]string{"600": members} })
		ps := groupPhones(t, m, members, 2, 2*time.Second)
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

// TestHuntGroup: hunt group 700 rings 201, 202 and 203 (three nodes) one
// after the other. 201 rings and does not answer: after the group's 5 s
// it gets CANCEL and 202 rings; 202 is busy (486): 203 rings at once and
// answers, and the caller hears it. Nobody rings before its turn.
func TestHuntGroup(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		members := []string{"201", "202", "203"}
		const timeout = 5 * time.Second
		m := newMeshRig(t, 4, func(c *SIPServiceConfig) {
			c.HuntGroups = map[string]HuntGroup{"700": {Members: members, Timeout: timeout}}
		})
		ps := groupPhones(t, m, members, 2, 500*time.Millisecond)
		caller := m.simPhone(4, "210", 20, 1500)
		start := time.Now()
		c, err := caller.Dial(m.ctx, "700", phones.CallOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ring := func(i int) *phones.Call {
			t.Helper()
			for j, p := range ps {
				if j != i {
					select {
					case in := <-p.Incoming():
						t.Fatalf("%s rings while it is %s's turn (%v after the dial)", members[j], members[i], time.Since(start))
						in.Reject(486)
					default:
					}
				}
			}
			select {
			case in := <-ps[i].Incoming():
				return in
			case <-time.After(2 * timeout):
				t.Fatalf("%s does not ring", members[i])
				return nil
			}
		}
		first := ring(0)
		if d := time.Since(start); d > time.Second {
			t.Errorf("201 rings %v after the dial", d)
		}
		second := ring(1)
		at := time.Since(start)
		if at < timeout || at > timeout+time.Second {
			t.Errorf("202 rings %v after the dial, want after 201's %v", at, timeout)
		}
		<-first.Done()
		if first.Status() != 487 {
			t.Errorf("201's call after its turn: status %d, want 487 (cancelled)", first.Status())
		}
		busyAt := time.Now()
		second.Reject(486)
		third := ring(2)
		if d := time.Since(busyAt); d > time.Second {
			t.Errorf("203 rings %v after 202 was busy", d)
		}
		select {
		case <-c.Answered():
		case <-time.After(5 * time.Second):
			t.Fatalf("the caller got no answer: %v", c.Err())
		}
		<-third.Answered()
		time.Sleep(time.Second)
		if !c.Heard(800) {
			t.Errorf("the caller does not hear 203")
		}
		t.Logf("hunt group 700: 201 rang %v, 202 at %v (busy), 203 answered %v after the dial",
			timeout, at.Round(time.Millisecond), c.SetupTime().Round(time.Millisecond))
		c.Hangup(m.ctx)
	})
}
