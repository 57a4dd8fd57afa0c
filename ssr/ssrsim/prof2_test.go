package ssrsim

import (
	"os"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"

)

func TestProfShort(t *testing.T) {
	nn, _ := strconv.Atoi(os.Getenv("SIMPROF2"))
	if nn == 0 {
		t.Skip()
	}
	s, _ := New(Config{Nodes: nn, Topology: "random", Seed: 1})
	start := time.Now()
	for k := 0; k < 9; k++ {
		if k == 6 {
			startProfile(t)
		}
		s.RunFor(time.Second)
		t.Logf("t=%ds wall=%.1fs consistency=%.4f ctl=%d", k+1, time.Since(start).Seconds(), s.Consistency(), s.ControlFrames())
	}
}


func startProfile(t *testing.T) {
	f, _ := os.Create("/tmp/cpu10k.prof")
	pprof.StartCPUProfile(f)
	t.Cleanup(func() { pprof.StopCPUProfile(); f.Close() })
}
