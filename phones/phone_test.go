package phones_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
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

// host adds a host with address ip/24 on the LAN.
func (r *rig) host(name, ip string) *memnet.Host {
	h := r.nw.AddHost(name)
	r.lan.Attach(h.AddInterface("eth0", 1500, netip.PrefixFrom(netip.MustParseAddr(ip), 24)))
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
		if err := p.Run(r.ctx); err != nil {
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
	for _, byCaller := range []bool{true, false} {
		t.Run(fmt.Sprintf("hangup-by-caller=%v", byCaller), func(t *testing.T) {
			leakcheck.Check(t)
			synctest.Test(t, func(t *testing.T) {
				r := newRig(t, 0)
				a := r.phone("201", "192.168.1.10", toneA, phones.Policy{}, netip.AddrPort{})
				b := r.phone("202", "192.168.1.11", toneB,
					phones.Policy{RingDelay: 800 * time.Millisecond, ExpectHz: toneA}, netip.AddrPort{})

				c, err := a.Call(r.ctx, b.Contact(), phones.CallOptions{ExpectHz: toneB})
				if err != nil {
					t.Fatalf("call: %v", err)
				}
				in := <-b.Incoming()
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
