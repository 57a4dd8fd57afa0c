//go:build linux

package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
	"github.com/sipmesh/sipmesh/internal/netns"
	"github.com/sipmesh/sipmesh/phones"
)

// TestSIPTCPFlood (issue 11, finding 1): a client on the LAN opens 10,000
// TCP connections to a node's SIP port and keeps them. The node caps
// them (per source, in total), stays up, and afterwards a phone at
// another address registers over UDP and over TCP, and the other node
// still finds its binding through the mesh.
func TestSIPTCPFlood(t *testing.T) {
	netns.RequireRoot(t)
	const conns = 10000
	// The test's own descriptors: one per connection it holds.
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if need := uint64(conns + 1024); rl.Cur < need {
		old := rl
		rl.Cur = need
		rl.Max = max(rl.Max, need)
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			t.Fatalf("raise RLIMIT_NOFILE to %d: %v", need, err)
		}
		t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
	}
	m := newLineMesh(t, "t", 2, 70, func(i int) string {
		if i == 0 {
			return "lan-interface lan0\nlan-address 10.97.1.1/24\ndhcp off\n"
		}
		return ""
	})
	attacker, phone := m.plugPhone(0, "ta"), m.plugPhone(0, "tp")
	attacker.Run(t, "ip", "addr", "add", "10.97.1.66/24", "dev", "eth0")
	phone.Run(t, "ip", "addr", "add", "10.97.1.2/24", "dev", "eth0")
	m.startAll()
	m.waitRing()
	m.addUser(0, "201", "secret-201")
	server := "10.97.1.1:5060"

	// The flood: 10,000 connections, held open.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var (
		mu    sync.Mutex
		held  []net.Conn
		fails atomic.Int64
		wg    sync.WaitGroup
	)
	start := time.Now()
	next := atomic.Int64{}
	for range 32 {
		wg.Go(func() {
			for next.Add(1) <= conns {
				dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
				c, err := attacker.Network().Dial(dctx, "tcp", server)
				dcancel()
				if err != nil {
					fails.Add(1)
					continue
				}
				mu.Lock()
				held = append(held, c)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	// Count the connections the node kept: the others it closed at once.
	var open atomic.Int64
	for _, c := range held {
		wg.Go(func() {
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err != nil && strings.Contains(err.Error(), "timeout") {
				open.Add(1)
			}
		})
	}
	wg.Wait()
	t.Logf("%d connections attempted in %v: %d established, %d failed to connect, %d still open at the node",
		conns, time.Since(start).Round(time.Millisecond), len(held), fails.Load(), open.Load())
	if open.Load() > 64 {
		t.Errorf("%d connections from one source kept open", open.Load())
	}
	if _, err := m.nodes[0].status(m.bin); err != nil {
		t.Fatalf("node down after the flood: %v", err)
	}

	// A phone at another address registers over UDP...
	p, err := phones.New(phones.Config{Settings: phones.Settings{User: "201", Password: "secret-201",
		Server: netip.MustParseAddrPort(server), LocalAddr: netip.MustParseAddr("10.97.1.2")}, Network: phone.Network()})
	if err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.Run(pctx) }()
	defer func() { pcancel(); <-done }()
	rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
	err = p.Register(rctx)
	rcancel()
	if err != nil {
		t.Fatalf("the phone could not register over UDP after the flood: %v", err)
	}
	m.waitBinding(1, "201", 0)

	// ... and over TCP (another contact of the same account).
	c, err := phone.Network().Dial(ctx, "tcp", server)
	if err != nil {
		t.Fatalf("TCP to the node after the flood: %v", err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	register := func(cseq int, auth string) *sip.Response {
		t.Helper()
		local := c.LocalAddr().String()
		msg := fmt.Sprintf("REGISTER sip:mesh SIP/2.0\r\nVia: SIP/2.0/TCP %s;branch=z9hG4bKtcp%d;rport\r\nMax-Forwards: 70\r\n"+
			"From: <sip:201@mesh>;tag=tcp\r\nTo: <sip:201@mesh>\r\nCall-ID: tcp-reg\r\nCSeq: %d REGISTER\r\n"+
			"Contact: <sip:201@%s;transport=tcp>\r\nExpires: 600\r\n%sContent-Length: 0\r\n\r\n", local, cseq, cseq, local, auth)
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		var b strings.Builder
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("reading the answer over TCP: %v", err)
			}
			b.WriteString(line)
			if line == "\r\n" && strings.TrimSpace(b.String()) != "" {
				break
			}
		}
		res, err := sip.ParseMessage([]byte(b.String()))
		if err != nil {
			t.Fatalf("answer over TCP: %v\n%s", err, b.String())
		}
		rs, ok := res.(*sip.Response)
		if !ok || rs.StatusCode == 100 {
			t.Fatalf("want a final response, got\n%s", res)
		}
		return rs
	}
	res := register(1, "")
	if res.StatusCode != 401 {
		t.Fatalf("REGISTER over TCP: %d %s", res.StatusCode, res.Reason)
	}
	var chal *digest.Challenge
	for _, h := range res.GetHeaders("WWW-Authenticate") {
		if ch, err := digest.ParseChallenge(h.Value()); err == nil && strings.EqualFold(ch.Algorithm, "MD5") {
			chal = ch
		}
	}
	if chal == nil {
		t.Fatalf("no MD5 challenge in\n%s", res)
	}
	cred, err := digest.Digest(chal, digest.Options{Method: "REGISTER", URI: "sip:mesh", Username: "201", Password: "secret-201", Count: 1, Cnonce: "tcp"})
	if err != nil {
		t.Fatal(err)
	}
	if res := register(2, "Authorization: "+cred.String()+"\r\n"); res.StatusCode != 200 {
		t.Fatalf("REGISTER over TCP with credentials: %d %s", res.StatusCode, res.Reason)
	}
	t.Logf("after the flood the phone registered over UDP and TCP; n2 finds its binding")
}
