package phones_test

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sipmesh/sipmesh/phones"
)

// recorder is a slog handler that keeps the messages it gets.
type recorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, rec.Level.String()+" "+rec.Message)
	return nil
}
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recorder) WithGroup(string) slog.Handler      { return r }

func (r *recorder) all() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.msgs, "\n")
}

// TestStrayResponseLogsToComponent sends a phone a response that matches
// no transaction (a retransmitted 200 OK, normal under loss): the phone's
// own logger notes it at debug level, and nothing reaches the process's
// global logger, where sipgo would print it at INFO into the demo output.
func TestStrayResponseLogsToComponent(t *testing.T) {
	global := &recorder{}
	saved := slog.Default()
	slog.SetDefault(slog.New(global))
	t.Cleanup(func() { slog.SetDefault(saved) })

	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 0)
		own := &recorder{}
		h := r.host("201", "10.0.0.10")
		p, err := phones.New(phones.Config{
			Settings: phones.Settings{User: "201", Password: "pw", LocalAddr: netip.MustParseAddr("10.0.0.10"), ToneHz: toneA},
			Network:  h,
			Logger:   slog.New(own),
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		r.wg.Go(func() { p.Run(ctx) })

		peer := r.host("peer", "10.0.0.20")
		pc, err := peer.ListenPacket(ctx, "udp4", "10.0.0.20:5060")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		synctest.Wait()
		stray := "SIP/2.0 200 OK\r\n" +
			"Via: SIP/2.0/UDP 10.0.0.10:5060;branch=z9hG4bK-stray-1\r\n" +
			"From: <sip:201@mesh>;tag=a1\r\nTo: <sip:202@mesh>;tag=b2\r\n" +
			"Call-ID: stray-1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
		if _, err := pc.WriteTo([]byte(stray), net.UDPAddrFromAddrPort(netip.MustParseAddrPort("10.0.0.10:5060"))); err != nil {
			t.Fatal(err)
		}
		// Virtual time: past the LAN's 2 ms delay, then until the phone
		// has handled the datagram.
		time.Sleep(10 * time.Millisecond)
		synctest.Wait()
		if !strings.Contains(own.all(), "DEBUG response without a transaction") {
			t.Errorf("the phone's logger did not note the stray response; it got:\n%s", own.all())
		}
		cancel()
		r.wg.Wait()
	})
	if g := global.all(); g != "" {
		t.Errorf("sipgo logged on the global logger:\n%s", g)
	}
}
