package nat64

import (
	"encoding/binary"
	"sync"
	"testing"
)

// TestConcurrent drives one Translator from several goroutines, as TUN
// readers on both sides would; run with -race.
func TestConcurrent(t *testing.T) {
	tr, _ := newTestTranslator(t, nil)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out := make([]byte, 1600)
			for i := range 200 {
				src := host6
				src[14] = byte(g)
				n, _, err := tr.In6(pkt6(src, wkp(server4), 64, protoUDP, udpSeg(uint16(1000+i), 53, nil), nil), out)
				if err != nil {
					t.Error(err)
					return
				}
				port := binary.BigEndian.Uint16(out[20:n])
				if _, _, err := tr.In4(pkt4(server4, pool4, 64, protoUDP, 1, 0, udpSeg(53, port, nil), true), out); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if s := tr.Stats(); s.Sessions != 800 || s.Out4 != 800 || s.Out6 != 800 {
		t.Fatalf("stats %+v", s)
	}
}
