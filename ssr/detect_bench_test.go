package ssr

import (
	"math/rand/v2"
	"testing"
	"time"
)

// BenchmarkControlPerLink measures what failure detection costs: control
// frames (beacons, keepalive probes and their answers, ring and finger
// maintenance) sent per physical link per second, on a physical ring of
// five nodes with the default timers (each node on one radio channel: a
// beacon reaches both its neighbours), in three states of the link carrying
// a stream between two nodes two hops apart: idle, a call (50 datagrams/s
// each way: the traffic itself proves the link alive, no probes), and a
// one-way stream (50/s: the receiver is silent, so the sender probes it
// every 50 ms once it has been unanswered for 100 ms). Each iteration
// simulates 60 s of virtual time after the ring has formed.
func BenchmarkControlPerLink(b *testing.B) {
	for _, c := range []struct {
		name      string
		fwd, back bool
	}{
		{"idle", false, false},
		{"call", true, true},
		{"oneway", true, false},
	} {
		b.Run(c.name, func(b *testing.B) {
			var perLink, probes float64
			for i := 0; b.Loop(); i++ {
				rng := rand.New(rand.NewPCG(uint64(i), 7))
				w := newTNet(randomIDs(rng, 5), Params{})
				for j := range 5 {
					w.connect(j, (j+1)%5, true)
				}
				w.run(60 * time.Second)
				var ctl0, pr0 uint64
				for _, n := range w.nodes {
					ctl0 += n.Stats().ControlOut
					pr0 += n.Stats().Probes
				}
				const d = 60 * time.Second
				for end := w.now.Add(d); w.now.Before(end); {
					if c.fwd {
						w.nodes[0].Send(w.now, w.nodes[2].ID(), Exact, 1, 1, make([]byte, 160))
					}
					if c.back {
						w.nodes[2].Send(w.now, w.nodes[0].ID(), Exact, 1, 1, make([]byte, 160))
					}
					w.run(20 * time.Millisecond)
					for k := range w.nodes {
						w.takeEvents(k)
					}
				}
				var ctl, pr uint64
				for _, n := range w.nodes {
					ctl += n.Stats().ControlOut
					pr += n.Stats().Probes
				}
				perLink = float64(ctl-ctl0) / 5 / d.Seconds()
				probes = float64(pr-pr0) / d.Seconds()
			}
			b.ReportMetric(perLink, "ctrl/link/s")
			b.ReportMetric(probes, "probes/s")
		})
	}
}
