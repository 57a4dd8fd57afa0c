package ssr_test

import (
	"context"
	"encoding/binary"
	"net"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/memnet"
	"github.com/sipmesh/sipmesh/ssr"
)

// TestSendsBeforeRun: datagrams written before Run are queued for it, a
// writer whose send does not fit the queue waits for Run, and each port
// then receives its datagrams whole and in the order written, the queued
// ones before the ones sent after Run started.
func TestSendsBeforeRun(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		h := memnet.New(memnet.Config{}).AddHost("a")
		r, err := ssr.NewRouter(ssr.RouterConfig{Network: h, Key: testKey(1), Params: fastParams})
		if err != nil {
			t.Fatal(err)
		}
		const perPort = 150 // two ports: 300 sends, more than the queue holds
		var conns [2]net.PacketConn
		for i := range conns {
			if conns[i], err = r.ListenPacket(uint16(5 + i)); err != nil {
				t.Fatal(err)
			}
		}
		written := make(chan error, 1)
		go func() {
			for i := range 2 * perPort {
				b := binary.BigEndian.AppendUint16(nil, uint16(i))
				if _, err := conns[0].WriteTo(b, &net.UDPAddr{IP: r.Addr().AsSlice(), Port: 5 + i/perPort}); err != nil {
					written <- err
					return
				}
			}
			written <- nil
		}()
		synctest.Wait()
		select {
		case err := <-written:
			t.Fatalf("all sends returned before Run (err %v): the queue is unbounded", err)
		default:
		}
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Go(func() { r.Run(ctx) })
		defer wg.Wait()
		defer cancel()
		if err := <-written; err != nil {
			t.Fatal(err)
		}
		for p, c := range conns {
			buf := make([]byte, 10)
			for i := range perPort {
				n, _, err := c.ReadFrom(buf)
				if err != nil {
					t.Fatal(err)
				}
				if want := p*perPort + i; n != 2 || int(binary.BigEndian.Uint16(buf)) != want {
					t.Fatalf("port %d: datagram %d is %x, want %d", 5+p, i, buf[:n], want)
				}
			}
		}
	})
}
