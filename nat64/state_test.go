package nat64

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"
	"time"
)

// TestStateAgainstModel checks the BIB, sessions, expiry lists and
// address-dependent filtering against a dumb model (a map scanned in
// full) on random UDP traffic in virtual time.
func TestStateAgainstModel(t *testing.T) {
	type sk struct {
		host, hport, srv, sport int
	}
	type bk struct{ host, hport int }
	hosts := [][16]byte{a16("2001:db8:1::1"), a16("2001:db8:2::2"), a16("2001:db8:3::3")}
	servers := [][4]byte{a4("198.51.100.1"), a4("198.51.100.2"), a4("198.51.100.3")}
	rng := rand.New(rand.NewPCG(1, 2))
	tr, c := newTestTranslator(t, nil)
	seen := map[sk]time.Time{} // model: session → last packet
	port := map[bk]uint16{}    // model: binding → its pool port while it lives
	alive := func(k sk) bool { ts, ok := seen[k]; return ok && c.t.Sub(ts) < DefaultUDPTimeout }
	bibAlive := func(b bk) bool {
		for k := range seen {
			if k.host == b.host && k.hport == b.hport && alive(k) {
				return true
			}
		}
		return false
	}
	out := make([]byte, 200)
	var passed, filtered, expired int
	for step := range 3000 {
		c.advance(time.Duration(rng.IntN(40)) * time.Second)
		// Forget dead bindings in the model, as the translator must.
		for b := range port {
			if !bibAlive(b) {
				delete(port, b)
				expired++
			}
		}
		k := sk{rng.IntN(3), rng.IntN(4), rng.IntN(3), rng.IntN(2)}
		b := bk{k.host, k.hport}
		if rng.IntN(2) == 0 { // outbound: always passes, keeps its port
			n, _, err := tr.In6(pkt6(hosts[k.host], wkp(servers[k.srv]), 64, protoUDP, udpSeg(uint16(1000+k.hport), uint16(53+k.sport), nil), nil), out)
			if err != nil {
				t.Fatalf("step %d: In6: %v", step, err)
			}
			p := binary.BigEndian.Uint16(out[20:n])
			if old, ok := port[b]; ok && old != p {
				t.Fatalf("step %d: binding %v moved from port %d to %d while alive", step, b, old, p)
			}
			port[b] = p
			seen[k] = c.t
			continue
		}
		// Inbound to a binding the model knows: passes iff some live
		// session of the binding has this server's address.
		p, ok := port[b]
		if !ok {
			continue
		}
		want := false
		for s := range seen {
			if s.host == k.host && s.hport == k.hport && s.srv == k.srv && alive(s) {
				want = true
			}
		}
		_, _, err := tr.In4(pkt4(servers[k.srv], pool4, 64, protoUDP, 1, 0, udpSeg(uint16(53+k.sport), p, nil), true), out)
		if (err == nil) != want {
			t.Fatalf("step %d: In4 %v from server %d port %d: err %v, model says pass=%v", step, b, k.srv, k.sport, err, want)
		}
		if err == nil {
			seen[k] = c.t
			passed++
		} else {
			filtered++
		}
	}
	if passed < 100 || filtered < 100 || expired < 20 {
		t.Fatalf("the walk missed a path: %d passed, %d filtered, %d bindings expired", passed, filtered, expired)
	}
	tr.Expire()
	n := 0
	for k := range seen {
		if alive(k) {
			n++
		}
	}
	if s := tr.Stats(); s.Sessions != n {
		t.Fatalf("translator has %d sessions, model %d", s.Sessions, n)
	}
}
