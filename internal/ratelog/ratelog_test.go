package ratelog

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newTest(opt Options) (*slog.Logger, *Handler, *bytes.Buffer, *clock) {
	c := &clock{t: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)}
	opt.Now = c.now
	var buf bytes.Buffer
	h := New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}), opt)
	return slog.New(h), h, &buf, c
}

func lines(buf *bytes.Buffer) []string {
	s := strings.TrimSpace(buf.String())
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

func count(ls []string, sub string) int {
	n := 0
	for _, l := range ls {
		if strings.Contains(l, sub) {
			n++
		}
	}
	return n
}

// TestFlood: one source floods 1000 lines in 10 s; it gets its burst and
// its rate, the others their own share, and the summary counts the rest.
func TestFlood(t *testing.T) {
	log, h, buf, c := newTest(Options{SourceRate: 1, SourceBurst: 5, TotalRate: 10, TotalBurst: 20})
	for i := range 1000 {
		log.Warn("bad datagram", "from", "10.0.0.66:5060", "i", i)
		if i%100 == 99 {
			c.advance(time.Second)
			log.Warn("bad datagram", "from", "10.0.0.2:5060") // a second source still gets through
		}
	}
	ls := lines(buf)
	got := count(ls, "10.0.0.66")
	// Burst 5, then 1 per second over 10 s: 5 + 9 (the last second's
	// token arrives after the flood's last line).
	if got < 5 || got > 15 {
		t.Errorf("flooding source logged %d lines, want 5..15", got)
	}
	if n := count(ls, "10.0.0.2:"); n != 10 {
		t.Errorf("other source logged %d of 10 lines", n)
	}
	st := h.Stats()
	if st.Passed+st.Suppressed != 1010 || st.Suppressed < 980 {
		t.Errorf("stats %+v", st)
	}
	var sum uint64
	for _, l := range ls {
		if strings.Contains(l, "log lines suppressed") {
			var n uint64
			i := strings.Index(l, "suppressed=")
			fmt.Sscan(l[i+len("suppressed="):], &n)
			sum += n
		}
	}
	h.Flush(context.Background())
	ls = lines(buf)
	if l := ls[len(ls)-1]; strings.Contains(l, "log lines suppressed") {
		var n uint64
		fmt.Sscan(l[strings.Index(l, "suppressed=")+len("suppressed="):], &n)
		sum += n
	}
	if sum != st.Suppressed {
		t.Errorf("summaries report %d suppressed lines, stats %d", sum, st.Suppressed)
	}
	if h.Flush(context.Background()); len(lines(buf)) != len(ls) {
		t.Error("second Flush wrote another summary")
	}
}

// TestTotal: many sources, each within its own rate, are held to the
// total rate.
func TestTotal(t *testing.T) {
	log, h, buf, c := newTest(Options{SourceRate: 1, SourceBurst: 5, TotalRate: 2, TotalBurst: 10, MaxSources: 64})
	for sec := range 10 {
		for src := range 1000 {
			log.Info("x", "peer", fmt.Sprintf("10.0.%d.%d", src/256, src%256))
		}
		c.advance(time.Second)
		_ = sec
	}
	ls := lines(buf)
	if n := count(ls, "msg=x"); n > 10+2*10 {
		t.Errorf("%d lines passed, want ≤ 30 (burst 10 + 2/s × 10 s)", n)
	}
	if n := len(h.st.sources); n > 64 {
		t.Errorf("source table holds %d entries, bound 64", n)
	}
}

// TestSourceFromWith: a source attached with Logger.With counts.
func TestSourceFromWith(t *testing.T) {
	log, _, buf, _ := newTest(Options{SourceBurst: 2, TotalBurst: 100})
	peer := log.With("peer", "10.0.0.9")
	for range 10 {
		peer.Warn("junk")
	}
	if n := count(lines(buf), "msg=junk"); n != 2 {
		t.Errorf("%d lines, want the burst of 2", n)
	}
}

func TestSanitize(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		max      int
		want     string
	}{
		{"plain", "REGISTER sip:mesh SIP/2.0", 100, "REGISTER sip:mesh SIP/2.0"},
		{"crlf", "SIP/2.0 200 OK\r\nVia: x", 100, `SIP/2.0 200 OK\x0d\x0aVia: x`},
		{"nul and bad utf8", "a\x00b\xffc", 100, `a\x00b\xffc`},
		{"bidi override", "ab\u202ecd", 100, `ab\u202ecd`},
		{"unicode kept", "Grüße", 100, "Grüße"},
		{"truncated", strings.Repeat("x", 50), 10, "xxxxxxxxxx…(+40 bytes)"},
		{"escape not split", "aaaaaaaa\x01\x02", 10, `aaaaaaaa…(+2 bytes)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Sanitize(tc.in, tc.max); got != tc.want {
				t.Errorf("Sanitize(%q, %d) = %q, want %q", tc.in, tc.max, got, tc.want)
			}
		})
	}
}

// TestRecordBounded: a huge datagram logged as []byte, an error and a
// string comes out bounded and on one line.
func TestRecordBounded(t *testing.T) {
	log, _, buf, _ := newTest(Options{MaxLen: 64, MaxAttrs: 4})
	junk := []byte("SIP/2.0 \r\n" + strings.Repeat("A\x00", 20000))
	log.Error("failed to parse", "data", junk, "error", fmt.Errorf("parse: %s", junk),
		"s", string(junk), "a", 1, "b", 2, "c", 3)
	ls := lines(buf)
	if len(ls) != 1 {
		t.Fatalf("%d lines: %q", len(ls), ls)
	}
	if len(ls[0]) > 600 {
		t.Errorf("line of %d bytes: %s", len(ls[0]), ls[0])
	}
	if !strings.Contains(ls[0], "attrs_dropped=2") {
		t.Errorf("no attrs_dropped: %s", ls[0])
	}
}

func BenchmarkSuppressed(b *testing.B) {
	log, _, _, _ := newTest(Options{})
	b.ReportAllocs()
	for b.Loop() {
		log.Warn("bad datagram", "from", "10.0.0.66:5060", "len", 1400)
	}
}
