package ssr_test

import (
	"crypto/ed25519"
	"net/netip"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/ssr"
)

// lineEnv wires Nodes in a line: node i's link 0 goes to i-1, link 1 to
// i+1. Frames are copied into a queue and handed over by run, so no Node is
// called from inside another's callback (Env's rule).
type lineEnv struct {
	net  *lineNet
	self int
}

type lineNet struct {
	nodes []*ssr.Node
	queue []lineFrame
	now   time.Time
	// tap, when set, receives frames instead of the queue (the benchmark
	// captures and counts with it).
	tap func(from int, link ssr.LinkID, frame []byte)
}

type lineFrame struct {
	to    int
	link  ssr.LinkID
	from  netip.AddrPort
	frame []byte
}

func linkAddr(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom16([16]byte{0xfe, 0x80, 15: byte(i + 1)}), 7447)
}

func (e *lineEnv) SendFrame(link ssr.LinkID, _ netip.AddrPort, frame []byte) {
	n := e.net
	if n.tap != nil {
		n.tap(e.self, link, frame)
		return
	}
	to, toLink := e.self-1, ssr.LinkID(1)
	if link == 1 {
		to, toLink = e.self+1, 0
	}
	if to < 0 || to >= len(n.nodes) {
		return
	}
	n.queue = append(n.queue, lineFrame{to, toLink, linkAddr(e.self), append([]byte(nil), frame...)})
}

func (e *lineEnv) Deliver(ssr.Event) {}

func newLine(n int) *lineNet {
	ln := &lineNet{now: time.Unix(1e9, 0)}
	for i := range n {
		node := ssr.New(ssr.IDFromPublicKey(testKey(uint64(i+1)).Public().(ed25519.PublicKey)), ssr.Params{}, &lineEnv{ln, i}, uint64(i))
		if i > 0 {
			node.AddLink(0)
		}
		if i < n-1 {
			node.AddLink(1)
		}
		ln.nodes = append(ln.nodes, node)
	}
	return ln
}

// run advances virtual time by d in steps, delivering frames as they come.
func (ln *lineNet) run(d time.Duration) {
	end := ln.now.Add(d)
	for ln.now.Before(end) {
		for _, n := range ln.nodes {
			n.Tick(ln.now)
		}
		for len(ln.queue) > 0 {
			f := ln.queue[0]
			ln.queue = ln.queue[1:]
			ln.nodes[f.to].HandleFrame(ln.now, f.link, f.from, f.frame)
		}
		ln.now = ln.now.Add(10 * time.Millisecond)
	}
}

// BenchmarkForward is the SSR core's cost of relaying one data frame: the
// middle of three Nodes in a line receives a 64-byte datagram from its left
// neighbour and sends it on to its right one.
func BenchmarkForward(b *testing.B) {
	ln := newLine(3)
	ln.run(30 * time.Second)
	a, mid, c := ln.nodes[0], ln.nodes[1], ln.nodes[2]
	if rt := a.Route(c.ID()); len(rt) != 2 || rt[0] != mid.ID() {
		b.Fatalf("route A→C %v, want via the middle node", rt)
	}
	var frame []byte
	ln.tap = func(_ int, _ ssr.LinkID, f []byte) { frame = append([]byte(nil), f...) }
	if err := a.Send(ln.now, c.ID(), ssr.Exact, 1000, 2000, make([]byte, 64)); err != nil {
		b.Fatal(err)
	}
	if frame == nil {
		b.Fatal("A sent nothing")
	}
	sent := 0
	ln.tap = func(from int, link ssr.LinkID, _ []byte) {
		if from == 1 && link == 1 {
			sent++
		}
	}
	from := linkAddr(0)
	before := mid.Stats().Forwarded
	b.ReportAllocs()
	b.SetBytes(int64(len(frame)))
	b.ResetTimer()
	for b.Loop() {
		mid.HandleFrame(ln.now, 0, from, frame)
	}
	b.StopTimer()
	if got := mid.Stats().Forwarded - before; got != uint64(b.N) || sent != b.N {
		b.Fatalf("forwarded %d and sent %d frames for %d received", got, sent, b.N)
	}
}
