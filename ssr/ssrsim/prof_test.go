package ssrsim

import (
	"os"
	"strconv"
	"testing"
	"time"
)

func TestProfRing(t *testing.T) {
	nn, _ := strconv.Atoi(os.Getenv("SIMPROF"))
	if nn == 0 {
		t.Skip()
	}
	s, _ := New(Config{Nodes: nn, Topology: "random", Seed: 1})
	start := time.Now()
	for k := 0; k < 150; k++ {
		s.RunFor(time.Second)
		if k%5 == 4 {
			t.Logf("t=%ds wall=%.1fs consistency=%.4f cacheP95=%.0f ctl=%d", k+1, time.Since(start).Seconds(), s.Consistency(), s.CacheP95(), s.ControlFrames())
		}
		if s.Consistency() == 1 {
			t.Logf("consistent at %ds wall=%.1fs", k+1, time.Since(start).Seconds())
			break
		}
	}
}
