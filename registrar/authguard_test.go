package registrar

import (
	"fmt"
	"net/netip"
	"strconv"
	"testing"
	"time"
)

// guessTime plays a password list of guesses against one account under
// the back-off policy, in virtual time: each guess comes from the next
// of srcs sources not backing off; when every source is, the clock
// jumps to the first that may try again. It returns how long the list
// took.
func guessTime(g *authGuard, srcs, guesses int) time.Duration {
	start := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	now := start
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{192, 168, byte(2 + i>>8), byte(i)}) }
	for done := 0; done < guesses; {
		var soonest time.Duration
		tried := false
		for i := 0; i < srcs && done < guesses; i++ {
			if w := g.locked(addr(i), "201", now); w > 0 {
				if soonest == 0 || w < soonest {
					soonest = w
				}
				continue
			}
			g.failed(addr(i), "201", now)
			done++
			tried = true
		}
		if !tried {
			now = now.Add(soonest)
		}
	}
	return now.Sub(start)
}

// TestAuthBackoffGuessTime: under the policy, 2,000 guesses of one
// account's password take weeks from one source and from a whole /24 of
// sources (compare 24 s without back-off).
func TestAuthBackoffGuessTime(t *testing.T) {
	for _, n := range []int{1, 16, 64, 252} {
		took := guessTime(newAuthGuard(authGuardEntries), n, 2000)
		t.Logf("2000 guesses from %3d sources: %6.0f h", n, took.Hours())
		if took < 24*time.Hour {
			t.Errorf("2000 guesses from %d sources took %v, want days", n, took)
		}
	}
}

// TestAuthBackoff: through the registrar, a wrong-password REGISTER flood
// from 64 sources ends in 503 Retry-After for the attackers, while the
// phone that registered before keeps registering from its own address,
// and a right password during a lock gets the same 503 as a wrong one.
func TestAuthBackoff(t *testing.T) {
	g := newRig(t)
	contact := []string{"<sip:201@192.168.1.50:5062>"}
	wantCode(t, g.register(reg{contacts: contact}, "secret201"), 200)
	attack := []string{"<sip:201@192.168.2.1:5060>"}
	locked := 0
	for round := range 10 {
		for i := range 64 {
			src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 168, 2, byte(i + 1)}), 5060)
			m := reg{contacts: attack}
			res := g.sendFrom(g.build(m), src)
			wantCode(t, res, 401)
			m.auth = authorize(t, res, "", "201", fmt.Sprintf("guess%d-%d", round, i), 1)
			switch res := g.sendFrom(g.build(m), src); res.StatusCode {
			case 403:
			case 503:
				locked++
				if ra := res.GetHeader("Retry-After"); ra == nil {
					t.Fatalf("503 without Retry-After:\n%s", res)
				}
			default:
				t.Fatalf("wrong password: %d %s", res.StatusCode, res.Reason)
			}
		}
		wantCode(t, g.register(reg{contacts: contact}, "secret201"), 200)
		g.clock.Advance(time.Second)
	}
	if locked == 0 {
		t.Error("no attacker was ever told to back off")
	}
	// The right password from a source backing off: the same 503.
	src := netip.AddrPortFrom(netip.MustParseAddr("192.168.2.1"), 5060)
	m := reg{contacts: attack}
	res := g.sendFrom(g.build(m), src)
	m.auth = authorize(t, res, "", "201", "secret201", 1)
	wantCode(t, g.sendFrom(g.build(m), src), 503)
	if s := g.r.Stats(); s.LockedOut == 0 {
		t.Errorf("stats %+v", s)
	}
}

// TestAuthGuardBounded: a flood of accounts and sources keeps every table
// at its bound.
func TestAuthGuardBounded(t *testing.T) {
	g := newAuthGuard(64)
	now := time.Unix(0, 0)
	for i := range 10000 {
		src := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		g.failed(src, strconv.Itoa(i), now)
		g.succeeded(src, strconv.Itoa(i), now)
	}
	if g.pair.Len() > 64 || g.src.Len() > 64 || g.acct.Len() > 64 || g.known.Len() > 64 {
		t.Errorf("tables %d %d %d %d, bound 64", g.pair.Len(), g.src.Len(), g.acct.Len(), g.known.Len())
	}
}
