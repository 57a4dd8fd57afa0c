//go:build linux

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/internal/netns"
	"github.com/sipmesh/sipmesh/phones"
)

// TestBaresipFeatures (issue 16): the telephone features with real
// phones. Nodes n1–n2–n3 in a line, a baresip phone on each node's LAN
// (201 on n1, 202 on n2, 203 on n3):
//   - party line: all three dial 426 at once, each sending a tone of its
//     own (aufile); each recording carries the other two tones and not its
//     own (Goertzel, phones.Detector.FrameLevel: the mix holds two tones);
//   - MESSAGE: 201 sends 203 a text message (RFC 3428; baresip's contact
//     module) across the mesh and it arrives;
//   - forwarding: 201 dials *72203 (its node stores the forward in the
//     DHT); then 202 calls 201, and 203 rings and answers, 201 does not.
//
// Each part starts its own baresip instances (fresh recordings) on the
// same mesh.
func TestBaresipFeatures(t *testing.T) {
	netns.RequireRoot(t)
	baresip := needTool(t, "baresip", "baresip-core")
	m := newLineMesh(t, "f", 3, 60, func(i int) string {
		return fmt.Sprintf("lan-interface lan0\nlan-address 10.97.%d.1/24\ndhcp off\ndigest-algorithms MD5\n", i+1)
	})
	type phone struct {
		ext, ip, node string
		at            int
		ns            *netns.NS
	}
	var ph []*phone
	for i := range 3 {
		p := &phone{ext: fmt.Sprint(201 + i), ip: fmt.Sprintf("10.97.%d.2", i+1), node: fmt.Sprintf("10.97.%d.1", i+1), at: i,
			ns: m.plugPhone(i, fmt.Sprintf("fp%d", i+1))}
		p.ns.Run(t, "ip", "addr", "add", p.ip+"/24", "dev", "eth0")
		ph = append(ph, p)
	}
	m.startAll()
	m.waitRing()
	for _, p := range ph {
		m.addUser(1, p.ext, "secret-"+p.ext)
	}
	// start runs p's baresip with a tone, extra config lines and contacts,
	// and waits until every node finds its binding.
	start := func(t *testing.T, p *phone, tone float64, amp float64, contacts string) (*baresipUA, string) {
		t.Helper()
		dir := t.TempDir()
		// contact.so sends MESSAGEs; stdio.so is the UI that prints the
		// ones received into the log.
		writeFile(t, filepath.Join(dir, "config"), baresipBase+"net_interface "+p.ip+"\nsip_listen "+p.ip+":5060\nmodule contact.so\nmodule stdio.so\n")
		writeFile(t, filepath.Join(dir, "accounts"), fmt.Sprintf(
			"<sip:%s@%s>;auth_pass=secret-%s;regint=300;answermode=auto;audio_codecs=pcmu;ptime=20\n", p.ext, p.node, p.ext))
		writeFile(t, filepath.Join(dir, "contacts"), contacts)
		writeToneWAVAmp(t, filepath.Join(dir, "tone.wav"), tone, amp, 5*time.Second)
		ua := startBaresip(t, p.ns, baresip, dir)
		for i := range m.nodes {
			m.waitBinding(i, p.ext, p.at)
		}
		return ua, dir
	}

	t.Run("PartyLine", func(t *testing.T) {
		// 450, 850 and 1250 Hz: far from each other and from the room's
		// join (1400 Hz) and leave (700 Hz) tones; quiet enough that two
		// of them mixed do not clip.
		const amp = 0.2
		tones := []float64{450, 850, 1250}
		uas := make([]*baresipUA, len(ph))
		dirs := make([]string, len(ph))
		for i, p := range ph {
			uas[i], dirs[i] = start(t, p, tones[i], amp, "")
		}
		begin := time.Now()
		for _, ua := range uas {
			ua.command(t, "dial", phones.PartyLine)
		}
		for i, ua := range uas {
			at, _ := ua.waitEvent(t, 10*time.Second, "CALL_ESTABLISHED")
			t.Logf("%s in room 426 %v after the dial", ph[i].ext, at.Sub(begin).Round(time.Millisecond))
		}
		for _, ua := range uas {
			ua.waitEvent(t, 15*time.Second, "CALL_CLOSED") // the WAV ran out
		}
		want := amp * amp / 2
		for i, p := range ph {
			d, x, ok := receivedAudio(t, p.ext, dirs[i])
			if !ok {
				continue
			}
			var levels []string
			for j, hz := range tones {
				l := d.FrameLevel(hz)
				levels = append(levels, fmt.Sprintf("%.0f Hz %.2g", hz, l))
				switch {
				case i == j && l > want/20:
					t.Errorf("%s hears its own %.0f Hz tone: level %.3g", p.ext, hz, l)
				case i != j && l < want/4:
					t.Errorf("%s does not hear %s's %.0f Hz tone: level %.3g, want ≥ %.3g", p.ext, ph[j].ext, hz, l, want/4)
				}
			}
			t.Logf("%s on n%d received %.1f s: %s (a tone alone: %.2g)", p.ext, i+1, float64(len(x))/phones.SampleRate,
				strings.Join(levels, ", "), want)
		}
	})

	t.Run("Message", func(t *testing.T) {
		// The contacts file's one entry is the current contact that
		// baresip's "message" command writes to (contact module).
		ua, _ := start(t, ph[0], 500, 0.2, fmt.Sprintf("\"Phone 203\" <sip:203@%s>\n", ph[0].node))
		_, dir := start(t, ph[2], 900, 0.2, "")
		const text = "hello from 201 across the mesh"
		ua.command(t, "contact_next", "")
		ua.command(t, "message", text)
		waitFor(t, 10*time.Second, "203 to receive the MESSAGE", func() (bool, string) {
			b, _ := os.ReadFile(filepath.Join(dir, "baresip.log"))
			return strings.Contains(string(b), text), lastLines(string(b), 5)
		})
		t.Logf("203 (n3) received 201's (n1) MESSAGE %q", text)
	})

	t.Run("Forward", func(t *testing.T) {
		a, _ := start(t, ph[0], 500, 0.2, "")
		b, _ := start(t, ph[1], 900, 0.2, "")
		c, _ := start(t, ph[2], 1300, 0.2, "")
		// A feature code: 201's node answers (a confirmation tone) and
		// hangs up.
		code := func(dial string) {
			t.Helper()
			a.command(t, "dial", dial)
			a.waitEvent(t, 10*time.Second, "CALL_ESTABLISHED")
			a.waitEvent(t, 15*time.Second, "CALL_CLOSED")
		}
		code("*72203") // the unconditional forward to 203, in the DHT
		b.command(t, "dial", "201")
		c.waitEvent(t, 10*time.Second, "CALL_ESTABLISHED")
		b.waitEvent(t, 5*time.Second, "CALL_ESTABLISHED")
		t.Logf("202 (n2) called 201, forwarded with *72 to 203 (n3), which answered")
		b.waitEvent(t, 15*time.Second, "CALL_CLOSED")
		c.waitEvent(t, 10*time.Second, "CALL_CLOSED")
		for len(a.events) > 0 {
			if ev := <-a.events; strings.HasPrefix(ev.Type, "CALL_") {
				t.Errorf("201 saw %s %s after forwarding its calls to 203", ev.Type, ev.Param)
			}
		}
		// *73 clears it again, so the next call rings 201 itself.
		code("*73")
		b.command(t, "dial", "201")
		a.waitEvent(t, 10*time.Second, "CALL_ESTABLISHED")
		b.waitEvent(t, 15*time.Second, "CALL_CLOSED")
	})
}
