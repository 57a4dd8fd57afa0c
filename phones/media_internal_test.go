package phones

import (
	"net"
	"testing"
	"time"

	"github.com/pion/rtp"
)

// FuzzMediaReceive feeds arbitrary datagrams to the endpoint's receive
// path: whatever arrives on a phone's RTP port must be counted, never
// crash it.
func FuzzMediaReceive(f *testing.F) {
	good := rtp.Packet{Header: rtp.Header{Version: 2, SequenceNumber: 1, SSRC: 9}, Payload: make([]byte, 160)}
	b, _ := good.Marshal()
	f.Add(b)
	f.Add(b[:12])
	f.Add([]byte{0x90, 8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 0xBE, 0xDE, 0, 9})
	f.Fuzz(func(t *testing.T, b []byte) {
		m := &MediaEndpoint{det: NewDetector(10), cfg: MediaConfig{Echo: len(b)%2 == 0}}
		var pkt rtp.Packet
		var buf [12 + FrameSamples]byte
		out, _ := m.handle(&pkt, b, &net.UDPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 4000}, time.Unix(0, 0), buf[:])
		if len(out) > 0 {
			var echo rtp.Packet
			if err := echo.Unmarshal(out); err != nil || len(echo.Payload) != len(pkt.Payload) {
				t.Fatalf("echo packet: %v", err)
			}
		}
		st := m.Stats()
		if st.Received+st.Ignored != 1 {
			t.Fatalf("%+v", st)
		}
		m.Heard(440)
	})
}
