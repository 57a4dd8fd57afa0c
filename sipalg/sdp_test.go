package sipalg

import (
	"bytes"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pion/sdp/v3"
)

var update = flag.Bool("update", false, "rewrite the golden .out.sdp files")

var (
	meshAddr = netip.MustParseAddr("fd5a:0:0:1::2")
	lanAddr  = netip.MustParseAddr("192.168.10.1")
)

// meshPlan is what node N advertises towards the mesh: its mesh address and
// relay ports 20000+2i.
func meshPlan(n int, o *OriginState) Plan {
	p := Plan{Addr: meshAddr, Origin: o}
	for i := range n {
		p.Streams = append(p.Streams, StreamPlan{Port: uint16(20000 + 2*i)})
	}
	return p
}

func TestRewriteGolden(t *testing.T) {
	reinvite := &OriginState{}
	tests := []struct {
		name string
		plan func(n int) Plan
	}{
		{"srtp-crypto", func(n int) Plan { return meshPlan(n, nil) }},
		{"zrtp-ice", func(n int) Plan { return meshPlan(n, nil) }},
		{"audio-video", func(n int) Plan {
			p := meshPlan(n, nil)
			// The video stream is anchored on a second address, so the
			// audio stream keeps the session c= and video's own c= changes.
			p.Streams[1].Addr = netip.MustParseAddr("fd5a:0:0:1::3")
			p.Streams[1].RTCPPort = 20099
			return p
		}},
		{"split-addr", func(n int) Plan {
			// Audio moves off the session address: it inherits the session
			// c=, so it gets a media c= after its i= line.
			p := meshPlan(n, nil)
			p.Streams[0].Addr = netip.MustParseAddr("fd5a:0:0:1::3")
			return p
		}},
		{"hold-sendonly", func(n int) Plan { return meshPlan(n, nil) }},
		{"hold-c0", func(n int) Plan { return meshPlan(n, nil) }},
		{"lf-only", func(n int) Plan { return meshPlan(n, nil) }},
		{"ipv6-in", func(n int) Plan {
			return Plan{Addr: lanAddr, Streams: []StreamPlan{{Port: 16000}}}
		}},
		// One dialog side: versions continue from the sender's first one
		// and move only when the output changes (RFC 3264 §8).
		{"reinvite-1", func(n int) Plan { return meshPlan(n, reinvite) }},
		{"reinvite-2", func(n int) Plan { return meshPlan(n, reinvite) }},
		{"reinvite-3", func(n int) Plan { return meshPlan(n, reinvite) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in, err := os.ReadFile(filepath.Join("testdata", tt.name+".in.sdp"))
			if err != nil {
				t.Fatal(err)
			}
			d, err := Parse(in)
			if err != nil {
				t.Fatal(err)
			}
			got, err := d.Rewrite(tt.plan(len(d.Streams)))
			if err != nil {
				t.Fatal(err)
			}
			outPath := filepath.Join("testdata", tt.name+".out.sdp")
			if *update {
				if err := os.WriteFile(outPath, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(outPath)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("rewrite differs from %s\n got: %q\nwant: %q", outPath, got, want)
			}
			checkUntouched(t, in, got)
		})
	}
}

// checkUntouched verifies the ALG promise independently of the golden
// files: line endings are the input's, and every line other than o=, c=,
// m= and a=rtcp: is byte-identical and in the same order.
func checkUntouched(t *testing.T, in, out []byte) {
	t.Helper()
	keep := func(b []byte) []string {
		var ls []string
		for _, l := range strings.SplitAfter(string(b), "\n") {
			if l == "" {
				continue
			}
			switch {
			case strings.HasPrefix(l, "o="), strings.HasPrefix(l, "c="), strings.HasPrefix(l, "m="),
				strings.HasPrefix(l, "a=rtcp:"):
				// Rewritten lines keep their ending.
				ls = append(ls, l[:2]+"…"+l[len(strings.TrimRight(l, "\r\n")):])
			default:
				ls = append(ls, l)
			}
		}
		return ls
	}
	// c= lines may be inserted (a stream moved off the session address);
	// everything else must match one to one.
	noC := func(ls []string) (rest []string, c int) {
		for _, l := range ls {
			if strings.HasPrefix(l, "c=") {
				c++
				continue
			}
			rest = append(rest, l)
		}
		return rest, c
	}
	a, ca := noC(keep(in))
	b, cb := noC(keep(out))
	if strings.Join(a, "") != strings.Join(b, "") || cb < ca {
		t.Errorf("untouched lines changed:\n in: %q\nout: %q", a, b)
	}
}

func TestParse(t *testing.T) {
	in, err := os.ReadFile("testdata/audio-video.in.sdp")
	if err != nil {
		t.Fatal(err)
	}
	d, err := Parse(in)
	if err != nil {
		t.Fatal(err)
	}
	if d.Origin != (Origin{Username: "bob", SessionID: "1001", Version: "1", Addr: netip.MustParseAddr("192.168.10.23")}) {
		t.Errorf("origin %+v", d.Origin)
	}
	if len(d.Streams) != 3 {
		t.Fatalf("%d streams", len(d.Streams))
	}
	a, v, x := d.Streams[0], d.Streams[1], d.Streams[2]
	if a.Media != "audio" || a.RTP() != netip.MustParseAddrPort("192.168.10.23:49170") ||
		a.RTCP != netip.MustParseAddrPort("192.168.10.23:49171") || a.ClockRate(0) != 8000 || a.ClockRate(8) != 8000 {
		t.Errorf("audio %+v", a)
	}
	if v.Media != "video" || v.RTCP != netip.MustParseAddrPort("192.168.10.23:51399") || v.ClockRate(99) != 90000 {
		t.Errorf("video %+v", v)
	}
	if !x.Rejected() || x.ClockRate(98) != 1000 {
		t.Errorf("text %+v", x)
	}

	for _, tt := range []struct {
		file string
		hold bool
		mux  bool
		rtcp string
	}{
		{"hold-sendonly", true, false, "192.168.10.21:11781"},
		{"hold-c0", true, false, "0.0.0.0:11781"},
		{"zrtp-ice", false, true, "192.168.10.22:7078"},
		{"ipv6-in", false, false, "[fd5a:1:2:3::1]:40001"},
		{"lf-only", false, false, "192.168.10.30:7079"},
	} {
		in, err := os.ReadFile("testdata/" + tt.file + ".in.sdp")
		if err != nil {
			t.Fatal(err)
		}
		d, err := Parse(in)
		if err != nil {
			t.Fatalf("%s: %v", tt.file, err)
		}
		s := d.Streams[0]
		if s.Hold() != tt.hold || s.Mux != tt.mux || s.RTCP.String() != tt.rtcp {
			t.Errorf("%s: hold %v mux %v rtcp %v, want %v %v %v", tt.file, s.Hold(), s.Mux, s.RTCP, tt.hold, tt.mux, tt.rtcp)
		}
	}
}

func TestParseErrors(t *testing.T) {
	const ok = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
	tests := []struct {
		name, sdp, want string
	}{
		{"empty", "", "empty"},
		{"not v=0", "v=1\r\n", "want v=0"},
		{"garbage", "hello\r\n", "not <type>=<value>"},
		{"no origin", "v=0\r\ns=-\r\n", "no o= line"},
		{"short origin", "v=0\r\no=- 1 IN IP4 10.0.0.1\r\n", "6 fields"},
		{"version not digits", strings.Replace(ok, "1 1 IN", "1 x1 IN", 1), "not decimal"},
		{"fqdn c=", strings.Replace(ok, "c=IN IP4 10.0.0.1", "c=IN IP4 phone.example", 1), "not an IP literal"},
		{"family mismatch", strings.Replace(ok, "c=IN IP4 10.0.0.1", "c=IN IP6 10.0.0.1", 1), "does not match"},
		{"multicast", strings.Replace(ok, "c=IN IP4 10.0.0.1", "c=IN IP4 224.2.1.1/127", 1), "not an IP literal"},
		{"multicast6", strings.Replace(ok, "c=IN IP4 10.0.0.1", "c=IN IP6 ff0e::1", 1), "multicast"},
		{"port", strings.Replace(ok, "4000", "70000", 1), "not a number"},
		{"port count", strings.Replace(ok, "4000", "4000/2", 1), "not a number"},
		{"no c=", strings.Replace(ok, "c=IN IP4 10.0.0.1\r\n", "", 1), "without a c= line"},
		{"bad rtcp", ok + "a=rtcp:x\r\n", "a=rtcp port"},
		{"rtcp fields", ok + "a=rtcp:5 IN IP4\r\n", "a=rtcp needs"},
		{"two c=", ok + "c=IN IP4 10.0.0.2\r\nc=IN IP4 10.0.0.3\r\n", "second c="},
		{"too big", "v=0\r\n" + strings.Repeat("a=x\r\n", MaxSDPSize/5), "more than"},
		{"too many", "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\nc=IN IP4 10.0.0.1\r\n" + strings.Repeat("m=audio 1 RTP/AVP 0\r\n", MaxStreams+1), "more than 16"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.sdp))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Parse error %v, want one containing %q", err, tt.want)
			}
		})
	}
	d, err := Parse([]byte(ok))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Rewrite(Plan{Addr: meshAddr}); err == nil {
		t.Error("Rewrite with too few streams in the plan succeeded")
	}
	if _, err := d.Rewrite(Plan{Addr: meshAddr, Streams: []StreamPlan{{}}}); err == nil {
		t.Error("Rewrite of a live stream to port 0 succeeded")
	}
	if _, err := d.Rewrite(Plan{Streams: []StreamPlan{{Port: 2}}}); err == nil {
		t.Error("Rewrite without an address succeeded")
	}
}

// TestOriginVersion: the version sent moves by exactly one when the output
// changes, for whatever reason, and stays when it does not (RFC 3264 §8).
func TestOriginVersion(t *testing.T) {
	const offer = "v=0\r\no=- 42 18446744073709551615 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
	var o OriginState
	steps := []struct {
		sdp  string
		port uint16
		want string
	}{
		{offer, 20000, "18446744073709551615"},                                     // first: the sender's, even beyond 64 bits
		{offer, 20000, "18446744073709551615"},                                     // retransmission / refresh
		{offer, 20002, "18446744073709551616"},                                     // relay port moved, phone unchanged
		{strings.Replace(offer, "4000", "4002", 1), 20002, "18446744073709551616"}, // phone moved, relay hides it
		{strings.Replace(offer, "\r\nt=", "\r\na=sendonly\r\nt=", 1), 20002, "18446744073709551617"},
	}
	for i, s := range steps {
		out, err := Rewrite([]byte(s.sdp), Plan{Addr: meshAddr, Streams: []StreamPlan{{Port: s.port}}, Origin: &o})
		if err != nil {
			t.Fatal(err)
		}
		d, err := Parse(out)
		if err != nil {
			t.Fatal(err)
		}
		if d.Origin.Version != s.want || o.Version() != s.want || d.Origin.SessionID != "42" {
			t.Errorf("step %d: o= %+v, want version %s", i, d.Origin, s.want)
		}
	}
	if got := incDecimal("999"); got != "1000" {
		t.Errorf("incDecimal(999) = %s", got)
	}
}

// TestRewriteAgainstPion uses pion/sdp as an independent parser: when it
// accepts the input, it must accept the output too, and the two must differ
// only in the fields the ALG owns.
func TestRewriteAgainstPion(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.in.sdp")
	for _, f := range files {
		in, _ := os.ReadFile(f)
		comparePion(t, f, in)
	}
}

func comparePion(t *testing.T, name string, in []byte) {
	t.Helper()
	var a sdp.SessionDescription
	if a.Unmarshal(in) != nil {
		return // pion is stricter than the ALG (no final CRLF, unknown lines)
	}
	d, err := Parse(in)
	if err != nil {
		t.Errorf("%s: pion accepts what Parse rejects: %v", name, err)
		return
	}
	out, err := d.Rewrite(meshPlan(len(d.Streams), nil))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	var b sdp.SessionDescription
	if err := b.Unmarshal(out); err != nil {
		t.Errorf("%s: pion rejects the rewrite: %v\n%q", name, err, out)
		return
	}
	if len(a.MediaDescriptions) != len(d.Streams) {
		// pion reads some garbage differently (an m= inside another
		// line's value); nothing to compare field by field.
		return
	}
	if len(a.MediaDescriptions) != len(b.MediaDescriptions) {
		t.Errorf("%s: media count %d → %d", name, len(a.MediaDescriptions), len(b.MediaDescriptions))
		return
	}
	if b.Origin.UnicastAddress != meshAddr.String() || b.Origin.AddressType != "IP6" ||
		b.Origin.SessionID != a.Origin.SessionID || b.Origin.Username != a.Origin.Username {
		t.Errorf("%s: origin %+v", name, b.Origin)
	}
	for i, mb := range b.MediaDescriptions {
		ma := a.MediaDescriptions[i]
		wantPort := 20000 + 2*i
		if ma.MediaName.Port.Value == 0 {
			wantPort = 0
		}
		if mb.MediaName.Port.Value != wantPort {
			t.Errorf("%s: m[%d] port %d, want %d", name, i, mb.MediaName.Port.Value, wantPort)
		}
		if len(ma.Attributes) != len(mb.Attributes) {
			t.Errorf("%s: m[%d] attribute count changed", name, i)
			continue
		}
		for j, at := range mb.Attributes {
			if at.Key != "rtcp" && at != ma.Attributes[j] {
				t.Errorf("%s: m[%d] attribute %v → %v", name, i, ma.Attributes[j], at)
			}
		}
		if c := mb.ConnectionInformation; c != nil && c.AddressType != "IP6" {
			t.Errorf("%s: m[%d] c= %v", name, i, c)
		}
	}
	if len(a.Attributes) != len(b.Attributes) || a.SessionName != b.SessionName {
		t.Errorf("%s: session attributes changed", name)
	}
}

func FuzzRewrite(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.in.sdp")
	for _, file := range files {
		b, _ := os.ReadFile(file)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		d, err := Parse(in)
		if err != nil {
			return
		}
		var o OriginState
		out, err := d.Rewrite(meshPlan(len(d.Streams), &o))
		if err != nil {
			t.Fatalf("Rewrite of a parsed description: %v", err)
		}
		d2, err := Parse(out)
		if err != nil {
			t.Fatalf("rewrite does not parse: %v\nin:  %q\nout: %q", err, in, out)
		}
		if len(d2.Streams) != len(d.Streams) {
			t.Fatalf("stream count %d → %d", len(d.Streams), len(d2.Streams))
		}
		for i, s := range d2.Streams {
			want := uint16(20000 + 2*i)
			if d.Streams[i].Rejected() {
				want = 0
			}
			if s.Port != want {
				t.Fatalf("stream %d port %d, want %d", i, s.Port, want)
			}
			if s.Addr.IsValid() && s.Addr.Is4() {
				t.Fatalf("stream %d still IPv4: %v", i, s.Addr)
			}
			if s.Hold() != d.Streams[i].Hold() || s.Mux != d.Streams[i].Mux {
				t.Fatalf("stream %d hold/mux changed", i)
			}
		}
		// Rewriting is idempotent once the addresses are the relay's.
		out2, err := d2.Rewrite(meshPlan(len(d.Streams), &o))
		if err != nil || !bytes.Equal(out, out2) {
			t.Fatalf("second rewrite differs: %v\n%q\n%q", err, out, out2)
		}
		comparePion(t, "fuzz", in)
	})
}
