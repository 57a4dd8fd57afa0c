package netx_test

import (
	"context"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/internal/netns"
	"github.com/sipmesh/sipmesh/netx"
)

// TestWatchLinksCarrier: in namespace A, Kernel.WatchLinks reports the
// carrier of veth a0 going away when its peer in namespace B is set down,
// and coming back when the peer is set up again — what a router needs to
// drop the neighbours of a mesh link at once.
func TestWatchLinksCarrier(t *testing.T) {
	netns.RequireRoot(t)
	leakcheck.Check(t)
	a, b := netns.New(t, "lwa"), netns.New(t, "lwb")
	netns.Veth(t, a, "a0", b, "b0")

	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan netx.LinkEvent, 64)
	started, done := make(chan error, 1), make(chan error, 1)
	go func() {
		// The netlink socket lives in the namespace of the thread that
		// creates it; the locked thread is discarded when this ends.
		runtime.LockOSThread()
		fd, err := unix.Open("/run/netns/"+a.Name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err == nil {
			err = unix.Setns(fd, unix.CLONE_NEWNET)
			unix.Close(fd)
		}
		started <- err
		if err != nil {
			done <- nil
			return
		}
		done <- netx.Kernel{}.WatchLinks(ctx, func(ev netx.LinkEvent) {
			if ev.Name == "a0" {
				events <- ev
			}
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("WatchLinks: %v", err)
		}
	}()
	if err := <-started; err != nil {
		t.Fatalf("entering namespace %s: %v", a.Name, err)
	}
	// Set b0 to up and wait for a0's event saying so. The subscription
	// starts some time after started: the first change is repeated until
	// the watcher sees it (each try is bounded; this is no sleep for luck).
	set := func(up bool) {
		t.Helper()
		for try := 0; try < 20; try++ {
			if try > 0 {
				b.SetLink(t, "b0", !up)
			}
			b.SetLink(t, "b0", up)
			timeout := time.After(500 * time.Millisecond)
			for {
				select {
				case ev := <-events:
					if ev.Up == up {
						return
					}
					continue
				case <-timeout:
				}
				break
			}
		}
		t.Fatalf("no event a0 up=%v", up)
	}
	set(false)
	set(true)
}
