package phones_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/memnet"
	"github.com/sipmesh/sipmesh/phones"
)

const (
	toneA = 440.0
	toneB = 1000.0
)

// rig is a LAN segment on the in-memory network with phones on it. Every
// test runs in a synctest bubble: sipgo's timers and the 20 ms media clock
// run in virtual time.
type rig struct {
	t   *testing.T
	nw  *memnet.Network
	lan *memnet.Link
	ctx context.Context
	wg  sync.WaitGroup
}

func newRig(t *testing.T, loss float64) *rig {
	nw := memnet.New(memnet.Config{Seed: 7})
	r := &rig{t: t, nw: nw, lan: nw.NewSegment("lan", memnet.LinkConfig{Delay: 2 * time.Millisecond, Loss: loss})}
	ctx, cancel := context.WithCancel(context.Background())
	r.ctx = ctx
	t.Cleanup(func() {
		cancel()
		r.wg.Wait()
	})
	return r
}

// host adds a host with address ip/24 (IPv6: /64) on the LAN.
func (r *rig) host(name, ip string) *memnet.Host {
	h := r.nw.AddHost(name)
	a := netip.MustParseAddr(ip)
	bits := 24
	if a.Is6() {
		bits = 64
	}
	r.lan.Attach(h.AddInterface("eth0", 1500, netip.PrefixFrom(a, bits)))
	return h
}

func logger() *slog.Logger {
	if testing.Verbose() && os.Getenv("PHONE_LOG") != "" {
		sip.SIPDebug = true
		sip.SetDefaultLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})))
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// phone starts a phone on a new host.
func (r *rig) phone(user, ip string, tone float64, pol phones.Policy, server netip.AddrPort) *phones.Phone {
	r.t.Helper()
	return r.phoneCtx(r.ctx, user, ip, tone, pol, server)
}

// phoneCtx starts a phone that runs until ctx ends.
func (r *rig) phoneCtx(ctx context.Context, user, ip string, tone float64, pol phones.Policy, server netip.AddrPort) *phones.Phone {
	r.t.Helper()
	h := r.host(user, ip)
	p, err := phones.New(phones.Config{
		Settings: phones.Settings{User: user, Password: "pw-" + user, Server: server,
			LocalAddr: netip.MustParseAddr(ip), ToneHz: tone, DisplayName: "Phone " + user},
		Policy:  pol,
		Network: h,
		Logger:  logger().With("phone", user),
	})
	if err != nil {
		r.t.Fatal(err)
	}
	r.wg.Go(func() {
		if err := p.Run(ctx); err != nil {
			r.t.Errorf("%s: Run: %v", user, err)
		}
	})
	return p
}

func statusOf(err error) int {
	var se *phones.StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

// TestPeerToPeer: two phones call each other directly (INVITE to the
// other's Contact, no server); each hears the other's tone and not its
// own; hanging up on either side ends both.
func TestPeerToPeer(t *testing.T) {
	for _, tc := range []struct {
		ipA, ipB string
		byCaller bool
	}{
		{"192.168.1.10", "192.168.1.11", true},
		{"192.168.1.10", "192.168.1.11", false},
		{"fd00:1::10", "fd00:1::11", true},
	} {
		byCaller := tc.byCaller
		t.Run(fmt.Sprintf("%s/hangup-by-caller=%v", tc.ipA, byCaller), func(t *testing.T) {
			leakcheck.Check(t)
			synctest.Test(t, func(t *testing.T) {
				r := newRig(t, 0)
				a := r.phone("201", tc.ipA, toneA, phones.Policy{}, netip.AddrPort{})
				b := r.phone("202", tc.ipB, toneB,
					phones.Policy{RingDelay: 800 * time.Millisecond, ExpectHz: toneA}, netip.AddrPort{})

				c, err := a.Call(r.ctx, b.Contact(), phones.CallOptions{ExpectHz: toneB})
				if err != nil {
					t.Fatalf("call: %v", err)
				}
				in := <-b.Incoming()
				if c.LocalMedia().Addr() != a.Local().Addr() || in.LocalMedia().Addr() != b.Local().Addr() {
					t.Errorf("media on %v and %v", c.LocalMedia(), in.LocalMedia())
				}
				time.Sleep(2 * time.Second) // talk

				if !c.HeardRemote() || c.Heard(toneA) {
					t.Errorf("caller heard callee %v, itself %v", c.HeardRemote(), c.Heard(toneA))
				}
				if !in.HeardRemote() || in.Heard(toneB) {
					t.Errorf("callee heard caller %v, itself %v", in.HeardRemote(), in.Heard(toneB))
				}
				if c.Status() != 200 || in.Status() != 200 {
					t.Errorf("status caller %d callee %d", c.Status(), in.Status())
				}
				// Virtual time: 2 ms each way on the LAN, 800 ms of ringing.
				if pdd, st := c.PostDialDelay(), c.SetupTime(); pdd < 4*time.Millisecond || pdd > 10*time.Millisecond ||
					st < 800*time.Millisecond || st > 820*time.Millisecond {
					t.Errorf("post-dial delay %v, setup time %v", pdd, st)
				}
				st := c.Stats()
				if st.Received < 90 || st.RTP.Lost != 0 || st.MOS < 4 {
					t.Errorf("caller media stats %+v", st)
				}

				hanger, other := c, in
				if !byCaller {
					hanger, other = in, c
				}
				if err := hanger.Hangup(r.ctx); err != nil {
					t.Fatal(err)
				}
				<-other.Done()
				if hanger.Err() != nil || other.Err() != nil {
					t.Errorf("hangup: errors %v, %v", hanger.Err(), other.Err())
				}
				if len(a.Calls())+len(b.Calls()) != 0 {
					t.Errorf("calls left: %d, %d", len(a.Calls()), len(b.Calls()))
				}
			})
		})
	}
}

// TestRegister: a phone registers with a digest-challenging registrar
// (MD5, and SHA-256 preferred when both are offered, RFC 8760), keeps the
// binding refreshed, unregisters; a wrong password gets 403; an INVITE
// challenged with 407 is authenticated and its 404 reported.
func TestRegister(t *testing.T) {
	for _, algs := range [][]string{{"MD5"}, {"SHA-256", "MD5"}} {
		t.Run(strings.Join(algs, ","), func(t *testing.T) {
			leakcheck.Check(t)
			synctest.Test(t, func(t *testing.T) {
				r := newRig(t, 0)
				g := newRegistrar(r, "192.168.1.1", algs...)
				g.pass["201"] = "pw-201"
				g.pass["202"] = "wrong"
				a := r.phone("201", "192.168.1.10", toneA, phones.Policy{}, g.addr)
				b := r.phone("202", "192.168.1.11", toneB, phones.Policy{}, g.addr)

				if err := a.Register(r.ctx); err != nil {
					t.Fatalf("register: %v", err)
				}
				if ok, until := a.Registered(); !ok || until.Sub(time.Now()) != 60*time.Second || !g.bound("201") {
					t.Fatalf("registered %v until %v (in %v), registrar binding %v", ok, until, until.Sub(time.Now()), g.bound("201"))
				}
				// Refreshes every 30 s keep the 60 s binding alive.
				time.Sleep(200 * time.Second)
				if regs, _ := g.counts(); regs < 7 || !g.bound("201") {
					t.Errorf("after 200 s: %d REGISTERs, bound %v", regs, g.bound("201"))
				}
				if ok, _ := a.Registered(); !ok {
					t.Error("phone thinks its binding lapsed")
				}

				_, err := a.Call(r.ctx, "404", phones.CallOptions{})
				if statusOf(err) != 404 {
					t.Errorf("call to an unknown extension: %v", err)
				}
				if _, invites := g.counts(); invites != 1 {
					t.Errorf("%d authenticated INVITEs", invites)
				}

				if err := a.Unregister(r.ctx); err != nil {
					t.Fatal(err)
				}
				if g.bound("201") {
					t.Error("still bound after Unregister")
				}
				if ok, _ := a.Registered(); ok {
					t.Error("phone thinks it is registered after Unregister")
				}

				if err := b.Register(r.ctx); statusOf(err) != 403 {
					t.Errorf("wrong password: %v", err)
				}
			})
		})
	}
}

// TestCancel: the caller gives up while the callee rings; the caller gets
// 487, and the callee stops ringing as soon as the CANCEL arrives (one
// LAN hop, 2 ms of virtual time).
func TestCancel(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 0)
		a := r.phone("201", "192.168.1.10", toneA, phones.Policy{}, netip.AddrPort{})
		b := r.phone("202", "192.168.1.11", toneB, phones.Policy{Mode: phones.Manual}, netip.AddrPort{})

		c, err := a.Dial(r.ctx, b.Contact(), phones.CallOptions{})
		if err != nil {
			t.Fatal(err)
		}
		in := <-b.Incoming()
		time.Sleep(3 * time.Second) // ring
		if !in.IsRinging() || b.Ringing() != 1 || c.State() != phones.Ringing {
			t.Fatalf("callee ringing %v (%d), caller state %v", in.IsRinging(), b.Ringing(), c.State())
		}
		start := time.Now()
		c.Cancel()
		<-in.RingingDone()
		if d := time.Since(start); d > 10*time.Millisecond {
			t.Errorf("callee stopped ringing %v after the CANCEL", d)
		}
		if b.Ringing() != 0 {
			t.Error("phone still ringing")
		}
		<-c.Done()
		<-in.Done()
		if statusOf(c.Err()) != 487 || c.Status() != 487 || statusOf(in.Err()) != 487 {
			t.Errorf("caller %v (%d), callee %v", c.Err(), c.Status(), in.Err())
		}
		if c.SetupTime() != 0 || c.PostDialDelay() == 0 {
			t.Errorf("setup time %v, post-dial delay %v", c.SetupTime(), c.PostDialDelay())
		}

		// Call's ctx ending before the answer cancels too.
		ctx, cancel := context.WithTimeout(r.ctx, 2*time.Second)
		defer cancel()
		_, err = a.Call(ctx, b.Contact(), phones.CallOptions{})
		if statusOf(err) != 487 {
			t.Errorf("call with a deadline: %v", err)
		}
	})
}

// TestReject: a callee that rejects gives the caller a typed 486; a call
// nobody answers fails with 408; a phone at MaxCalls answers 486 itself.
func TestReject(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 0)
		a := r.phone("201", "192.168.1.10", toneA, phones.Policy{}, netip.AddrPort{})
		b := r.phone("202", "192.168.1.11", toneB,
			phones.Policy{Mode: phones.AutoReject, RingDelay: time.Second}, netip.AddrPort{})
		c, err := a.Call(r.ctx, b.Contact(), phones.CallOptions{})
		var se *phones.StatusError
		if !errors.As(err, &se) || se.Code != 486 || c.Status() != 486 {
			t.Fatalf("rejected call: %v", err)
		}
		if pdd := c.PostDialDelay(); pdd == 0 || pdd > 10*time.Millisecond {
			t.Errorf("post-dial delay %v", pdd)
		}

		// Nobody there: Timer B (64*T1) gives 408 (§8.1.3.1).
		start := time.Now()
		if _, err := a.Call(r.ctx, "sip:209@192.168.1.99", phones.CallOptions{}); statusOf(err) != 408 {
			t.Errorf("call to nobody: %v", err)
		}
		if d := time.Since(start); d != 32*time.Second {
			t.Errorf("408 after %v, want Timer B = 32 s", d)
		}

		// Busy: MaxCalls is 1 and one call rings.
		h := r.host("203", "192.168.1.12")
		busy, err := phones.New(phones.Config{Settings: phones.Settings{User: "203",
			LocalAddr: netip.MustParseAddr("192.168.1.12"), MaxCalls: 1},
			Policy: phones.Policy{Mode: phones.Manual}, Network: h})
		if err != nil {
			t.Fatal(err)
		}
		r.wg.Go(func() { busy.Run(r.ctx) })
		first, err := a.Dial(r.ctx, busy.Contact(), phones.CallOptions{})
		if err != nil {
			t.Fatal(err)
		}
		<-busy.Incoming()
		if _, err := a.Call(r.ctx, busy.Contact(), phones.CallOptions{}); statusOf(err) != 486 {
			t.Errorf("call to a phone at MaxCalls: %v", err)
		}
		first.Hangup(r.ctx)
		if statusOf(first.Err()) != 487 {
			t.Errorf("first call: %v", first.Err())
		}
	})
}

// TestReinvite: either side refreshes the session with a re-INVITE; the
// other answers with the same SDP and audio keeps flowing both ways.
func TestReinvite(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 0)
		a := r.phone("201", "192.168.1.10", toneA, phones.Policy{}, netip.AddrPort{})
		b := r.phone("202", "192.168.1.11", toneB, phones.Policy{ExpectHz: toneA}, netip.AddrPort{})
		c, err := a.Call(r.ctx, b.Contact(), phones.CallOptions{ExpectHz: toneB})
		if err != nil {
			t.Fatal(err)
		}
		in := <-b.Incoming()
		time.Sleep(time.Second)
		if err := c.Reinvite(r.ctx); err != nil {
			t.Fatalf("caller re-INVITE: %v", err)
		}
		if err := in.Reinvite(r.ctx); err != nil {
			t.Fatalf("callee re-INVITE: %v", err)
		}
		before := c.Stats().Received
		time.Sleep(time.Second)
		if !c.HeardRemote() || !in.HeardRemote() || c.Stats().Received < before+45 {
			t.Errorf("after re-INVITEs: heard %v %v, received %d then %d", c.HeardRemote(), in.HeardRemote(), before, c.Stats().Received)
		}
		c.Hangup(r.ctx)
		<-in.Done()
	})
}

// TestLossyLAN: with 2% loss on the LAN, calls still connect (SIP
// retransmits), both sides hear each other, and the media statistics
// report the loss and a MOS.
func TestLossyLAN(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 0.02)
		const pairs = 4
		var wg sync.WaitGroup
		for i := range pairs {
			a := r.phone(fmt.Sprint(300+i), fmt.Sprintf("192.168.1.%d", 10+i), toneA, phones.Policy{ExpectHz: toneB}, netip.AddrPort{})
			b := r.phone(fmt.Sprint(400+i), fmt.Sprintf("192.168.1.%d", 50+i), toneB,
				phones.Policy{RingDelay: 500 * time.Millisecond, ExpectHz: toneA}, netip.AddrPort{})
			wg.Go(func() {
				c, err := a.Call(r.ctx, b.Contact(), phones.CallOptions{ExpectHz: toneB})
				if err != nil {
					t.Errorf("call %d: %v", i, err)
					return
				}
				in := <-b.Incoming()
				time.Sleep(10 * time.Second)
				sa, sb := c.Stats(), in.Stats()
				t.Logf("call %d: setup %v, caller rx %d lost %d MOS %.2f, callee rx %d lost %d MOS %.2f",
					i, c.SetupTime(), sa.Received, sa.RTP.Lost, sa.MOS, sb.Received, sb.RTP.Lost, sb.MOS)
				if !c.HeardRemote() || !in.HeardRemote() {
					t.Errorf("call %d: heard %v %v", i, c.HeardRemote(), in.HeardRemote())
				}
				for _, s := range []phones.MediaStats{sa, sb} {
					if s.RTP.Lost <= 0 || s.RTP.LossRate > 0.06 || s.MOS < 3 || s.MOS >= 4.4 {
						t.Errorf("call %d: stats %+v", i, s)
					}
				}
				if err := c.Hangup(r.ctx); err != nil {
					t.Error(err)
				}
				<-in.Done()
			})
		}
		wg.Wait()
	})
}

// TestHeavyLoss: with 20% loss SIP's retransmissions (INVITE, 2xx until
// ACK, BYE) still set up and tear down every call.
func TestHeavyLoss(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 0.2)
		a := r.phone("201", "192.168.1.10", toneA, phones.Policy{}, netip.AddrPort{})
		b := r.phone("202", "192.168.1.11", toneB, phones.Policy{RingDelay: 100 * time.Millisecond}, netip.AddrPort{})
		// Calls until three needed a retransmission (a lost INVITE, 200 or
		// ACK); each does with probability 1-0.8² ≈ 0.36.
		slow, calls := 0, 0
		for ; slow < 3 && calls < 40; calls++ {
			i := calls
			c, err := a.Call(r.ctx, b.Contact(), phones.CallOptions{})
			if err != nil {
				t.Fatalf("call %d: %v", i, err)
			}
			in := <-b.Incoming()
			if c.SetupTime() > 200*time.Millisecond {
				slow++
			}
			time.Sleep(time.Second)
			hanger, other := c, in
			if i%2 == 1 {
				hanger, other = in, c
			}
			if err := hanger.Hangup(r.ctx); err != nil {
				t.Fatal(err)
			}
			<-other.Done()
		}
		if slow < 3 {
			t.Errorf("only %d of %d calls needed a retransmission; the test proves little", slow, calls)
		}
		t.Logf("%d of %d calls needed SIP retransmissions", slow, calls)
	})
}

// TestShutdown: a phone whose Run ends hangs up its call (BYE) and its
// ringing calls (CANCEL), and the peer sees both end.
func TestShutdown(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 0)
		ctx, stop := context.WithCancel(r.ctx)
		a := r.phoneCtx(ctx, "201", "192.168.1.10", toneA, phones.Policy{}, netip.AddrPort{})
		b := r.phone("202", "192.168.1.11", toneB, phones.Policy{}, netip.AddrPort{})
		d := r.phone("203", "192.168.1.12", toneB, phones.Policy{Mode: phones.Manual}, netip.AddrPort{})
		c, err := a.Call(r.ctx, b.Contact(), phones.CallOptions{})
		if err != nil {
			t.Fatal(err)
		}
		in := <-b.Incoming()
		ringing, err := a.Dial(r.ctx, d.Contact(), phones.CallOptions{})
		if err != nil {
			t.Fatal(err)
		}
		rin := <-d.Incoming()
		time.Sleep(time.Second)
		stop()
		<-in.Done()
		<-rin.Done()
		<-c.Done()
		<-ringing.Done()
		if in.Err() != nil || statusOf(rin.Err()) != 487 {
			t.Errorf("answered call ended with %v, ringing call with %v", in.Err(), rin.Err())
		}
		if _, err := a.Dial(r.ctx, b.Contact(), phones.CallOptions{}); !errors.Is(err, phones.ErrClosed) {
			t.Errorf("Dial after Run: %v", err)
		}
	})
}
