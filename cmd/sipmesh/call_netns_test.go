//go:build linux

package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/internal/netns"
	"github.com/sipmesh/sipmesh/phones"
)

// TestBaresipProvisionedByDHCP (issue 5): two baresip phones configured
// only from what their DHCP client received, as desk phones would be.
// Nodes n1–n2–n3 in a line; n1 and n3 serve DHCP on their phone LANs (n1's
// subnet derived and claimed, n3's configured). In each phone namespace
// busybox udhcpc's script turns the lease into the phone's settings: its
// address, the DNS server(s) to use, and option 120's sipserver.mesh as
// the account's domain and so its registrar, which baresip resolves
// through the node's DNS. Both register; the phone on n3 (202) calls the
// one on n1 (201), which answers; each hears the other's tone.
func TestBaresipProvisionedByDHCP(t *testing.T) {
	netns.RequireRoot(t)
	busybox := needTool(t, "busybox", "busybox")
	baresip := needTool(t, "baresip", "baresip-core")
	// Debian's baresip (libre 1.1.0) gives up on SHA-256 challenges:
	// nodes with such phones offer MD5 only.
	m := newLineMesh(t, "b", 3, 40, func(i int) string {
		switch i {
		case 0:
			return "lan-interface lan0\ndhcp on\ndigest-algorithms MD5\n"
		case 2:
			return "lan-interface lan0\nlan-address 10.99.3.1/24\ndhcp on\ndigest-algorithms MD5\n"
		}
		return ""
	})
	pa, pb := m.plugPhone(0, "pa"), m.plugPhone(2, "pb")
	start := time.Now()
	m.startAll()
	m.waitRing()
	m.addUser(1, "201", "secret-201")
	m.addUser(1, "202", "secret-202")

	script := writeScript(t, t.TempDir())
	type phone struct {
		ext  string
		ns   *netns.NS
		dir  string
		tone float64
		ua   *baresipUA
		ip   string
	}
	ph := []*phone{{ext: "201", ns: pa, tone: 700}, {ext: "202", ns: pb, tone: 1300}}
	for _, p := range ph {
		p.dir = t.TempDir()
		// The phone's firmware defaults; the rest comes from DHCP.
		writeFile(t, filepath.Join(p.dir, "config.base"), baresipBase)
		writeToneWAV(t, filepath.Join(p.dir, "tone.wav"), p.tone, 5*time.Second)
		c := startUdhcpc(t, p.ns, busybox, script, "phone"+p.ext,
			[]string{"PHONE_DIR=" + p.dir, "PHONE_USER=" + p.ext, "PHONE_PASS=secret-" + p.ext})
		ev := c.wait(t, 25*time.Second, "bound")
		p.ip = ev.vars["ip"]
		if ev.vars["sipsrv"] != "sipserver.mesh" {
			t.Fatalf("phone %s: option 120 gave %q", p.ext, ev.vars["sipsrv"])
		}
		acc, _ := os.ReadFile(filepath.Join(p.dir, "accounts"))
		cfg, _ := os.ReadFile(filepath.Join(p.dir, "config"))
		t.Logf("phone %s leased %s (dns %s) %v after the nodes started; its script wrote:\n%s%s", p.ext, p.ip, ev.vars["dns"],
			time.Since(start).Round(time.Millisecond), acc, grepLines(string(cfg), "net_interface", "sip_listen", "dns_server"))
	}
	regStart := time.Now()
	for _, p := range ph {
		p.ua = startBaresip(t, p.ns, baresip, p.dir)
	}
	m.waitBinding(1, "201", 0)
	m.waitBinding(1, "202", 2)
	t.Logf("both phones registered (bindings in the DHT, seen from n2) %v after baresip started", time.Since(regStart).Round(time.Millisecond))

	// The phone on n3 dials the bare extension: baresip completes it with
	// its domain, sip:201@sipserver.mesh.
	res := runCall(t, ph[1].ua, ph[0].ua, "201")
	t.Logf("call 202 (n3) → 201 (n1): %v", res)
	checkTones(t, "201 on n1 (called)", ph[0].dir, ph[1].tone, ph[0].tone)
	checkTones(t, "202 on n3 (caller)", ph[1].dir, ph[0].tone, ph[1].tone)
}

// TestBaresipCallAcrossMesh (issue 4): two baresip phones (Debian
// baresip-core) in their own namespaces, on the IPv4 LANs of n1 and n4 of a
// line n1–n2–n3–n4 whose mesh links carry only IPv6 (link-local addresses,
// no IPv4 on them): three mesh hops apart. 201 calls 202, which
// auto-answers; each plays a WAV tone of its own frequency and records
// what it receives; each recording must carry the other's tone (Goertzel)
// and not its own. The call's setup time is logged.
func TestBaresipCallAcrossMesh(t *testing.T) {
	netns.RequireRoot(t)
	baresip := needTool(t, "baresip", "baresip-core")
	m := newLineMesh(t, "c", 4, 50, func(i int) string {
		switch i {
		case 0:
			return "lan-interface lan0\nlan-address 10.98.1.1/24\ndhcp off\ndigest-algorithms MD5\n"
		case 3:
			return "lan-interface lan0\nlan-address 10.98.4.1/24\ndhcp off\ndigest-algorithms MD5\n"
		}
		return ""
	})
	pa, pb := m.plugPhone(0, "ca"), m.plugPhone(3, "cb")
	pa.Run(t, "ip", "addr", "add", "10.98.1.2/24", "dev", "eth0")
	pb.Run(t, "ip", "addr", "add", "10.98.4.2/24", "dev", "eth0")
	for i, nd := range m.nodes {
		for _, ifn := range m.ifaces[i] {
			if out, _ := nd.ns.Try("ip", "-4", "-o", "addr", "show", "dev", ifn); strings.TrimSpace(out) != "" {
				t.Fatalf("mesh link %s of %s has IPv4: %s", ifn, nd.name, out)
			}
		}
	}
	m.startAll()
	m.waitRing()
	m.addUser(1, "201", "secret-201")
	m.addUser(2, "202", "secret-202")

	type phone struct {
		ext, ip, node string
		ns            *netns.NS
		tone          float64
		dir           string
		ua            *baresipUA
	}
	ph := []*phone{
		{ext: "201", ip: "10.98.1.2", node: "10.98.1.1", ns: pa, tone: 1000},
		{ext: "202", ip: "10.98.4.2", node: "10.98.4.1", ns: pb, tone: 440},
	}
	for _, p := range ph {
		p.dir = t.TempDir()
		writeFile(t, filepath.Join(p.dir, "config"), baresipBase+"net_interface "+p.ip+"\nsip_listen "+p.ip+":5060\n")
		writeFile(t, filepath.Join(p.dir, "accounts"), fmt.Sprintf(
			"<sip:%s@%s>;auth_pass=secret-%s;regint=300;answermode=auto;audio_codecs=pcmu;ptime=20\n", p.ext, p.node, p.ext))
		writeToneWAV(t, filepath.Join(p.dir, "tone.wav"), p.tone, 5*time.Second)
	}
	regStart := time.Now()
	for _, p := range ph {
		p.ua = startBaresip(t, p.ns, baresip, p.dir)
	}
	m.waitBinding(2, "201", 0)
	m.waitBinding(1, "202", 3)
	t.Logf("both phones registered (bindings in the DHT) %v after baresip started", time.Since(regStart).Round(time.Millisecond))

	out, err := exec.Command(m.bin, "ping", "--control", m.nodes[0].sock, "--count", "1", m.nodes[3].id.Addr().String()).CombinedOutput()
	if err != nil {
		t.Fatalf("sipmesh ping n1→n4: %v\n%s", err, out)
	}
	if r := parseRoute(t, string(out)); len(r) != 4 {
		t.Fatalf("route n1→n4 %v: want 3 hops", r)
	}
	t.Logf("sipmesh ping n1→n4:\n%s", out)

	res := runCall(t, ph[0].ua, ph[1].ua, "202")
	t.Logf("call 201 (n1) → 202 (n4), 3 mesh hops: %v", res)
	checkTones(t, "202 on n4 (called)", ph[1].dir, ph[0].tone, ph[1].tone)
	checkTones(t, "201 on n1 (caller)", ph[0].dir, ph[1].tone, ph[0].tone)
}

// baresipBase is the configuration every test phone shares (baresip 1.0.0
// syntax): no sound card, a WAV tone as the microphone,
// what it hears recorded by sndfile as dump-*-dec.wav, control over
// ctrl_tcp on the phone namespace's loopback.
const baresipBase = `poll_method epoll
call_local_timeout 30
call_max_calls 4
audio_source aufile,tone.wav
ausrc_srate 8000
ausrc_channels 1
auplay_srate 8000
auplay_channels 1
audio_level no
audio_buffer 20-160
rtp_ports 30000-30099
rtcp_mux no
jitter_buffer_delay 5-10
rtp_stats yes
rtp_timeout 10
snd_path .
module_path /usr/lib/baresip/modules
module g711.so
module aufile.so
module sndfile.so
module_tmp account.so
module_app menu.so
module_app ctrl_tcp.so
ctrl_tcp_listen 127.0.0.1:4444
`

// baresipUA is a running baresip with a ctrl_tcp connection.
type baresipUA struct {
	name   string
	cmd    *exec.Cmd
	log    string
	conn   net.Conn
	events chan baresipEvent
	resp   chan baresipEvent
}

// baresipEvent is a ctrl_tcp message: an event or a command's response.
type baresipEvent struct {
	Event    bool   `json:"event"`
	Type     string `json:"type"`
	Response bool   `json:"response"`
	OK       bool   `json:"ok"`
	Data     string `json:"data"`
	Param    string `json:"param"`
	at       time.Time
}

func startBaresip(t *testing.T, ns *netns.NS, baresip, dir string, args ...string) *baresipUA {
	t.Helper()
	ua := &baresipUA{name: filepath.Base(dir), log: filepath.Join(dir, "baresip.log"),
		events: make(chan baresipEvent, 64), resp: make(chan baresipEvent, 4)}
	logf, err := os.Create(ua.log)
	if err != nil {
		t.Fatal(err)
	}
	ua.cmd = ns.Command(context.Background(), append([]string{baresip, "-f", dir}, args...)...)
	ua.cmd.Dir = dir // relative paths (tone.wav, the recordings) resolve here
	ua.cmd.Stdout, ua.cmd.Stderr = logf, logf
	// A pipe that stays open as stdin: the stdio UI module (which prints
	// received MESSAGEs) polls it, and epoll refuses /dev/null.
	stdin, stdinW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	ua.cmd.Stdin = stdin
	err = ua.cmd.Start()
	stdin.Close() // the child has its copy
	if err != nil {
		stdinW.Close()
		logf.Close()
		t.Fatalf("start baresip: %v", err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		// baresip un-REGISTERs on SIGTERM and waits for the answer: the
		// nodes still run (cleanups run last first), but bound the wait.
		ua.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { ua.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			ua.cmd.Process.Kill()
			<-done
		}
		if ua.conn != nil {
			ua.conn.Close()
		}
		wg.Wait()
		stdinW.Close()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(ua.log)
			t.Logf("baresip %s log:\n%s", dir, lastLines(string(b), 60))
		}
	})
	// ctrl_tcp listens once the modules are loaded.
	nw := ns.Network()
	waitFor(t, 10*time.Second, "baresip's ctrl_tcp", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		c, err := nw.Dial(ctx, "tcp", "127.0.0.1:4444")
		if err != nil {
			return false, err.Error()
		}
		ua.conn = c
		return true, ""
	})
	wg.Go(func() {
		r := bufio.NewReader(ua.conn)
		for {
			msg, err := readNetstring(r)
			if err != nil {
				return
			}
			var ev baresipEvent
			if json.Unmarshal(msg, &ev) != nil {
				continue
			}
			ev.at = time.Now()
			ch := ua.events
			if ev.Response {
				ch = ua.resp
			}
			select {
			case ch <- ev:
			default:
			}
		}
	})
	return ua
}

// command sends a ctrl_tcp command and waits for its response.
func (ua *baresipUA) command(t *testing.T, cmd, params string) string {
	t.Helper()
	b, _ := json.Marshal(map[string]string{"command": cmd, "params": params, "token": "t"})
	if _, err := fmt.Fprintf(ua.conn, "%d:%s,", len(b), b); err != nil {
		t.Fatalf("baresip %s: ctrl_tcp: %v", ua.name, err)
	}
	select {
	case r := <-ua.resp:
		if !r.OK {
			t.Fatalf("baresip %s: %s %s failed: %s", ua.name, cmd, params, r.Data)
		}
		return r.Data
	case <-time.After(30 * time.Second): // a local answer; room for a loaded machine
		t.Fatalf("baresip %s: no response to %s", ua.name, cmd)
	}
	return ""
}

// waitEvent returns the time of the next event of type typ, and the
// events before it, failing t after limit.
func (ua *baresipUA) waitEvent(t *testing.T, limit time.Duration, typ string) (time.Time, []baresipEvent) {
	t.Helper()
	timer := time.NewTimer(limit)
	defer timer.Stop()
	var before []baresipEvent
	for {
		select {
		case ev := <-ua.events:
			if ev.Type == typ {
				return ev.at, before
			}
			if ev.Type == "CALL_CLOSED" {
				t.Fatalf("baresip %s: call closed (%s) while waiting for %s", ua.name, ev.Param, typ)
			}
			before = append(before, ev)
		case <-timer.C:
			t.Fatalf("baresip %s: no %s within %v", ua.name, typ, limit)
		}
	}
}

// baresipCall is what the caller saw: ringing (180; zero if the callee
// answered at once, as an auto-answering baresip may without ringing)
// and the answer.
type baresipCall struct{ ringing, established time.Duration }

func (r baresipCall) String() string {
	ring := "no 180"
	if r.ringing > 0 {
		ring = "ringing after " + r.ringing.String()
	}
	return fmt.Sprintf("%s, answered (call set up) %v after the dial", ring, r.established)
}

// runCall makes caller dial target, waits for the callee to answer (auto)
// and for both to see the call end when the 5 s WAVs run out (baresip's
// menu hangs up then), so the recordings are complete.
func runCall(t *testing.T, caller, callee *baresipUA, target string) baresipCall {
	t.Helper()
	start := time.Now()
	caller.command(t, "dial", target)
	est, before := caller.waitEvent(t, 10*time.Second, "CALL_ESTABLISHED")
	res := baresipCall{established: est.Sub(start).Round(100 * time.Microsecond)}
	for _, ev := range before {
		if ev.Type == "CALL_RINGING" {
			res.ringing = ev.at.Sub(start).Round(100 * time.Microsecond)
		}
	}
	callee.waitEvent(t, 5*time.Second, "CALL_ESTABLISHED")
	// The BYE of whichever side's WAV ends first crosses the mesh along
	// the route set; both must see the call close.
	caller.waitEvent(t, 15*time.Second, "CALL_CLOSED")
	callee.waitEvent(t, 10*time.Second, "CALL_CLOSED")
	return res
}

func readNetstring(r *bufio.Reader) ([]byte, error) {
	n, err := r.ReadString(':')
	if err != nil {
		return nil, err
	}
	size, err := strconv.Atoi(n[:len(n)-1])
	if err != nil || size < 0 || size > 1<<20 {
		return nil, fmt.Errorf("bad netstring length %q", n)
	}
	b := make([]byte, size+1)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	if b[size] != ',' {
		return nil, errors.New("netstring without ','")
	}
	return b[:size], nil
}

// checkTones checks the audio a phone received (its sndfile recording):
// the other side's tone in at least 80% of the non-silent 20 ms frames,
// at least 2 s of it, and not the phone's own tone (which an echo or a
// relay looping media back would bring).
func checkTones(t *testing.T, who, dir string, want, own float64) {
	t.Helper()
	d, x, ok := receivedAudio(t, who, dir)
	if !ok {
		return
	}
	tone, loud := d.Share(want)
	ownTone, _ := d.Share(own)
	t.Logf("%s received %.2f s of audio: %d of %d non-silent frames carry %.0f Hz (%.1f s), %d carry its own %.0f Hz",
		who, float64(len(x))/phones.SampleRate, tone, loud, want, float64(tone)/50, ownTone, own)
	if !d.Heard(want) || tone < 100 {
		t.Errorf("%s did not hear the other side's %.0f Hz tone", who, want)
	}
	if d.Heard(own) {
		t.Errorf("%s heard its own %.0f Hz tone", who, own)
	}
}

// receivedAudio loads a phone's sndfile recording of what it received
// into a tone detector; ok is false (t marked failed) without exactly one
// readable recording.
func receivedAudio(t *testing.T, who, dir string) (d *phones.Detector, x []int16, ok bool) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "dump-*-dec.wav"))
	if len(files) != 1 {
		t.Errorf("%s: want one recording of received audio, found %v", who, files)
		return nil, nil, false
	}
	x, err := readWAV16(files[0])
	if err != nil {
		t.Errorf("%s: %v", who, err)
		return nil, nil, false
	}
	frames := len(x) / phones.FrameSamples
	d = phones.NewDetector(frames)
	for i := range frames {
		d.Add(x[i*phones.FrameSamples : (i+1)*phones.FrameSamples])
	}
	return d, x, true
}

// readWAV16 reads the first channel of a 16-bit PCM WAV file; a header
// whose sizes were never finalised is tolerated.
func readWAV16(path string) ([]int16, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b) < 12 || string(b[0:4]) != "RIFF" || string(b[8:12]) != "WAVE" {
		return nil, fmt.Errorf("%s: not a RIFF/WAVE file", path)
	}
	channels := 0
	for p := 12; p+8 <= len(b); {
		id, n := string(b[p:p+4]), int(binary.LittleEndian.Uint32(b[p+4:p+8]))
		body := b[p+8:]
		n = min(n, len(body))
		body = body[:n]
		switch id {
		case "fmt ":
			if n < 16 || binary.LittleEndian.Uint16(body[14:16]) != 16 {
				return nil, fmt.Errorf("%s: not 16-bit PCM", path)
			}
			if rate := binary.LittleEndian.Uint32(body[4:8]); rate != phones.SampleRate {
				return nil, fmt.Errorf("%s: %d Hz, want %d", path, rate, phones.SampleRate)
			}
			channels = int(binary.LittleEndian.Uint16(body[2:4]))
		case "data":
			if channels == 0 {
				return nil, fmt.Errorf("%s: data before fmt", path)
			}
			var x []int16
			for i := 0; i+2*channels <= len(body); i += 2 * channels {
				x = append(x, int16(binary.LittleEndian.Uint16(body[i:])))
			}
			return x, nil
		}
		p += 8 + n + n&1
	}
	return nil, fmt.Errorf("%s: no data chunk", path)
}

// writeToneWAV writes a mono 8 kHz 16-bit WAV of a sine at freq (half
// full scale), what aufile plays as the phone's microphone.
func writeToneWAV(t *testing.T, path string, freq float64, d time.Duration) {
	t.Helper()
	writeToneWAVAmp(t, path, freq, 0.5, d)
}

// writeToneWAVAmp is writeToneWAV with amplitude amp (full scale 1).
func writeToneWAVAmp(t *testing.T, path string, freq, amp float64, d time.Duration) {
	t.Helper()
	n := int(d.Seconds() * phones.SampleRate)
	x := make([]int16, n)
	(&phones.Tone{Freq: freq, Amplitude: amp}).Fill(x)
	b := make([]byte, 44+2*n)
	copy(b, "RIFF")
	binary.LittleEndian.PutUint32(b[4:], uint32(36+2*n))
	copy(b[8:], "WAVEfmt ")
	binary.LittleEndian.PutUint32(b[16:], 16)
	binary.LittleEndian.PutUint16(b[20:], 1) // PCM
	binary.LittleEndian.PutUint16(b[22:], 1) // mono
	binary.LittleEndian.PutUint32(b[24:], phones.SampleRate)
	binary.LittleEndian.PutUint32(b[28:], 2*phones.SampleRate)
	binary.LittleEndian.PutUint16(b[32:], 2)
	binary.LittleEndian.PutUint16(b[34:], 16)
	copy(b[36:], "data")
	binary.LittleEndian.PutUint32(b[40:], uint32(2*n))
	for i, v := range x {
		binary.LittleEndian.PutUint16(b[44+2*i:], uint16(v))
	}
	writeFile(t, path, string(b))
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// grepLines returns the lines of s that start with one of prefixes.
func grepLines(s string, prefixes ...string) string {
	var b strings.Builder
	for line := range strings.Lines(s) {
		for _, p := range prefixes {
			if strings.HasPrefix(line, p) {
				b.WriteString(line)
			}
		}
	}
	return b.String()
}
