//go:build linux

package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/sipmesh/sipmesh/internal/netns"
	"github.com/sipmesh/sipmesh/internal/sipstress"
)

var (
	stressN    = flag.Int("sipstress.n", 2000, "mutated SIP messages TestSIPStress sends")
	stressSeed = flag.Uint64("sipstress.seed", 1, "seed of TestSIPStress's mutations")
)

// TestSIPStress (issue 11, the stress script): thousands of mutated SIP
// messages — the RFC 4475 torture corpus and well-formed requests, each
// truncated, padded with huge or repeated headers, NULs, invalid UTF-8,
// extreme numbers, bad Content-Length, lost line ends — sent one datagram
// at a time at a real `sipmesh node` from a LAN address, with a liveness
// probe (OPTIONS from another LAN address) after every message and a
// well-formed request from the attacker's own address after every tenth.
// Pass: the node never dies, every probe is answered (no hang), every
// well-formed request is answered. A failure names the message's index,
// kind and seed, which rebuild it exactly (internal/sipstress).
//
// The messages are paced at 80 a second per source, under the node's
// per-source request rate, so that what is measured is the parser and the
// transaction layer, not the flood limiter (TestSIPTCPFlood and the proxy's
// flood tests cover that).
func TestSIPStress(t *testing.T) {
	netns.RequireRoot(t)
	corpus, err := sipstress.LoadCorpus("../../testdata/rfc4475")
	if err != nil {
		t.Fatal(err)
	}
	m := newLineMesh(t, "ss", 2, 90, func(i int) string {
		if i == 0 {
			return "lan-interface lan0\nlan-address 10.97.3.1/24\ndhcp off\n"
		}
		return ""
	})
	attacker, prober := m.plugPhone(0, "ssa"), m.plugPhone(0, "ssp")
	attacker.Run(t, "ip", "addr", "add", "10.97.3.66/24", "dev", "eth0")
	prober.Run(t, "ip", "addr", "add", "10.97.3.2/24", "dev", "eth0")
	m.startAll()
	m.waitRing()
	m.addUser(0, "201", "secret-201")
	const server = "10.97.3.1"
	dst := &net.UDPAddr{IP: net.ParseIP(server), Port: 5060}

	ctx := context.Background()
	listen := func(ns *netns.NS, addr string) net.PacketConn {
		c, err := ns.Network().ListenPacket(ctx, "udp4", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	atk := listen(attacker, "10.97.3.66:5062")
	prb := listen(prober, "10.97.3.2:5062")

	// ask sends req from c and waits for a response with its Call-ID,
	// retransmitting as a UA would (RFC 3261 §17.1.2.2, T1 doubling);
	// 30 s of silence is a hang, not a slow machine.
	parser := sip.NewParser()
	buf := make([]byte, 65536)
	ask := func(c net.PacketConn, req []byte, callID string) (int, bool) {
		deadline := time.Now().Add(30 * time.Second)
		wait := 500 * time.Millisecond
		for time.Now().Before(deadline) {
			if _, err := c.WriteTo(req, dst); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(wait))
			for {
				n, _, err := c.ReadFrom(buf)
				if err != nil {
					break // retransmit
				}
				msg, err := parser.ParseSIP(buf[:n])
				if err != nil {
					continue
				}
				if res, ok := msg.(*sip.Response); ok && res.CallID() != nil && res.CallID().Value() == callID {
					return int(res.StatusCode), true
				}
			}
			wait = min(2*wait, 4*time.Second)
		}
		return 0, false
	}

	mut := sipstress.NewMutator(*stressSeed)
	methods := []string{"OPTIONS", "REGISTER", "INVITE", "MESSAGE", "SUBSCRIBE"}
	kinds := map[string]int{}
	validCodes := map[int]int{}
	pace := time.NewTicker(time.Second / 80)
	defer pace.Stop()
	for i := range *stressN {
		<-pace.C
		var base []byte
		if i%2 == 0 {
			base = corpus[(i/2)%len(corpus)]
		} else {
			base = sipstress.Valid(methods[(i/2)%len(methods)], "202", server, "10.97.3.66:5062", fmt.Sprintf("base-%d", i), i)
		}
		msg, kind := mut.Mutate(base)
		kinds[kind]++
		if _, err := atk.WriteTo(msg, dst); err != nil {
			t.Fatal(err)
		}
		id := fmt.Sprintf("probe-%d", i)
		if _, ok := ask(prb, sipstress.Valid("OPTIONS", "202", server, "10.97.3.2:5062", id, i+1), id); !ok {
			t.Fatalf("no answer to the liveness probe after message %d (%s, seed %d): the node hangs\n%q",
				i, kind, *stressSeed, truncate(msg, 400))
		}
		if i%10 == 9 {
			meth := methods[(i/10)%len(methods)]
			id := fmt.Sprintf("valid-%d", i)
			code, ok := ask(atk, sipstress.Valid(meth, "202", server, "10.97.3.66:5062", id, i+1), id)
			if !ok {
				t.Fatalf("a well-formed %s from the attacker's address got no answer after message %d (%s, seed %d)", meth, i, kind, *stressSeed)
			}
			validCodes[code]++
		}
	}
	st, err := m.nodes[0].status(m.bin)
	if err != nil {
		t.Fatalf("node down after the stress run: %v", err)
	}
	if m.nodes[0].cmd.ProcessState != nil {
		t.Fatalf("node exited: %v", m.nodes[0].cmd.ProcessState)
	}
	t.Logf("%d mutated messages (seed %d) by kind %v; every probe answered; well-formed requests answered %v; node up, ring %d successors",
		*stressN, *stressSeed, kinds, validCodes, len(st.Successors))
	if log, err := os.ReadFile(m.nodes[0].log); err == nil && bytes.Contains(log, []byte("panic")) {
		t.Fatalf("the node's log shows a panic:\n%s", truncate(log, 4000))
	}
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return strings.ToValidUTF8(string(b[:n]), "?") + "…"
	}
	return string(b)
}
