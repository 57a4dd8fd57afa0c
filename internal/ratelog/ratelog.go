// Package ratelog is a slog.Handler wrapper for log lines built from peer
// input (a malformed DHCP packet, an unparsable SIP datagram, a DNS name a
// client asked for): it rate-limits them per source and in total, with a
// "log lines suppressed" summary, and truncates and escapes every string
// value, so a flood of junk from the LAN costs a bounded number of bytes
// of log (on a router the log is a RAM disk) and cannot forge lines with
// control characters.
//
// A component keeps its ordinary logger for its own events and logs what a
// peer caused through a logger wrapped here:
//
//	peerLog := slog.New(ratelog.New(log.Handler(), ratelog.Options{}))
//	peerLog.Warn("DHCP: dropped short datagram", "from", src, "len", n)
//
// The source of a record is the value of its first attribute named in
// Options.SourceKeys (default "from", "peer", "src", "source", "remote",
// "raddr"), also when it was attached with Logger.With. Records without
// one count against the total budget only. Each source and the total have
// a token bucket; the table of sources is bounded and, when full of active
// sources, the unknown ones share one bucket. Suppressed lines are counted
// and reported by one summary record before the next line that passes, or
// by Flush (call it from a periodic loop so a flood that stops is
// reported).
package ratelog

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"
)

// Defaults of Options. A flood at the limits writes about TotalRate
// lines of at most MaxAttrs×MaxLen bytes per second: 2 × ~1 KB/s, under
// 8 MB an hour, against the 49 MB a junk flood wrote in minutes without it.
const (
	DefaultSourceRate  = 0.1 // lines per second per source (one per 10 s)
	DefaultSourceBurst = 5
	DefaultTotalRate   = 2 // lines per second from all sources
	DefaultTotalBurst  = 20
	DefaultMaxSources  = 1024
	DefaultMaxLen      = 200 // bytes per string value, after escaping
	DefaultMaxAttrs    = 16  // attributes per record, beyond which they are dropped
)

// DefaultSourceKeys are the attribute keys that name a record's source.
var DefaultSourceKeys = []string{"from", "peer", "src", "source", "remote", "raddr"}

// Options configures a Handler; zero fields take the defaults.
type Options struct {
	SourceRate  float64 // lines per second per source
	SourceBurst int
	TotalRate   float64 // lines per second in total
	TotalBurst  int
	MaxSources  int // bound of the per-source table
	MaxLen      int // bytes per string value (message included)
	MaxAttrs    int // attributes per record
	SourceKeys  []string
	// SummaryLevel is the level of the "log lines suppressed" records;
	// default slog.LevelWarn.
	SummaryLevel slog.Level
	// Now is the clock; default time.Now.
	Now func() time.Time
}

func (o *Options) setDefaults() {
	if o.SourceRate <= 0 {
		o.SourceRate = DefaultSourceRate
	}
	if o.SourceBurst <= 0 {
		o.SourceBurst = DefaultSourceBurst
	}
	if o.TotalRate <= 0 {
		o.TotalRate = DefaultTotalRate
	}
	if o.TotalBurst <= 0 {
		o.TotalBurst = DefaultTotalBurst
	}
	if o.MaxSources <= 0 {
		o.MaxSources = DefaultMaxSources
	}
	if o.MaxLen <= 0 {
		o.MaxLen = DefaultMaxLen
	}
	if o.MaxAttrs <= 0 {
		o.MaxAttrs = DefaultMaxAttrs
	}
	if o.SourceKeys == nil {
		o.SourceKeys = DefaultSourceKeys
	}
	if o.SummaryLevel == 0 {
		o.SummaryLevel = slog.LevelWarn
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Stats counts what a Handler (and every handler derived from it with
// WithAttrs or WithGroup) passed and suppressed.
type Stats struct {
	Passed, Suppressed uint64
}

// Handler wraps another slog.Handler; see the package comment.
type Handler struct {
	h      slog.Handler
	st     *state
	source string // from WithAttrs, "" if none
	groups int    // open groups: attributes below them are not sources
}

// state is shared by a Handler and its derivatives.
type state struct {
	opt  Options
	keys map[string]bool

	mu        sync.Mutex // guards the fields below
	total     bucket
	sources   map[string]*bucket
	overflow  bucket
	lastSweep time.Time
	pending   uint64              // suppressed since the last summary
	pendSrc   map[string]struct{} // distinct sources among them, bounded
	since     time.Time           // first suppressed line since the last summary
	stats     Stats
}

type bucket struct {
	tokens float64
	last   time.Time
}

// maxPendingSources bounds the set of sources a summary counts.
const maxPendingSources = 256

// New wraps h.
func New(h slog.Handler, opt Options) *Handler {
	opt.setDefaults()
	st := &state{opt: opt, keys: make(map[string]bool), sources: make(map[string]*bucket),
		pendSrc: make(map[string]struct{})}
	for _, k := range opt.SourceKeys {
		st.keys[k] = true
	}
	now := opt.Now()
	st.total = bucket{tokens: float64(opt.TotalBurst), last: now}
	st.overflow = bucket{tokens: float64(opt.SourceBurst), last: now}
	return &Handler{h: h, st: st}
}

// Stats returns the counters.
func (h *Handler) Stats() Stats {
	h.st.mu.Lock()
	defer h.st.mu.Unlock()
	return h.st.stats
}

// Enabled implements slog.Handler.
func (h *Handler) Enabled(ctx context.Context, l slog.Level) bool { return h.h.Enabled(ctx, l) }

// WithAttrs implements slog.Handler; the attributes are sanitized too.
func (h *Handler) WithAttrs(as []slog.Attr) slog.Handler {
	n := *h
	clean := make([]slog.Attr, 0, len(as))
	for _, a := range as {
		if n.source == "" && n.groups == 0 && h.st.keys[a.Key] {
			n.source = sourceString(a.Value)
		}
		clean = append(clean, h.st.sanitizeAttr(a))
	}
	n.h = h.h.WithAttrs(clean)
	return &n
}

// WithGroup implements slog.Handler.
func (h *Handler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	n := *h
	n.h = h.h.WithGroup(h.st.sanitize(name))
	n.groups++
	return &n
}

// Handle implements slog.Handler: it passes r on, sanitized, if the
// buckets of its source and the total have a token, else counts it.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	src := h.source
	if src == "" && h.groups == 0 {
		r.Attrs(func(a slog.Attr) bool {
			if h.st.keys[a.Key] {
				src = sourceString(a.Value)
				return false
			}
			return true
		})
	}
	summary, ok := h.st.admit(src)
	if summary != nil {
		// The summary goes to the handler without groups or attributes
		// of this logger: it describes the whole stream.
		if err := h.h.Handle(ctx, *summary); err != nil {
			return err
		}
	}
	if !ok {
		return nil
	}
	out := slog.NewRecord(r.Time, r.Level, h.st.sanitize(r.Message), r.PC)
	n := 0
	r.Attrs(func(a slog.Attr) bool {
		if n == h.st.opt.MaxAttrs {
			out.AddAttrs(slog.Int("attrs_dropped", r.NumAttrs()-n))
			return false
		}
		n++
		out.AddAttrs(h.st.sanitizeAttr(a))
		return true
	})
	return h.h.Handle(ctx, out)
}

// Flush writes the summary of lines suppressed since the last one, if
// any, to the wrapped handler.
func (h *Handler) Flush(ctx context.Context) error {
	h.st.mu.Lock()
	s := h.st.summaryLocked(h.st.opt.Now())
	h.st.mu.Unlock()
	if s == nil {
		return nil
	}
	return h.h.Handle(ctx, *s)
}

// admit takes a token for a line from src and reports whether it passes,
// and the summary record to write first, if one is due.
func (st *state) admit(src string) (*slog.Record, bool) {
	now := st.opt.Now()
	st.mu.Lock()
	defer st.mu.Unlock()
	ok := true
	if src != "" {
		ok = st.sourceBucketLocked(src, now).peek(now, st.opt.SourceRate, float64(st.opt.SourceBurst))
	}
	ok = ok && st.total.peek(now, st.opt.TotalRate, float64(st.opt.TotalBurst))
	if !ok {
		st.stats.Suppressed++
		if st.pending == 0 {
			st.since = now
		}
		st.pending++
		if len(st.pendSrc) < maxPendingSources {
			st.pendSrc[src] = struct{}{}
		}
		return nil, false
	}
	if src != "" {
		st.sourceBucketLocked(src, now).tokens--
	}
	st.total.tokens--
	st.stats.Passed++
	return st.summaryLocked(now), true
}

// sourceBucketLocked returns src's bucket, creating it; when the table is
// full of sources whose buckets have not refilled, src shares the
// overflow bucket (so a flood of spoofed sources cannot grow memory).
func (st *state) sourceBucketLocked(src string, now time.Time) *bucket {
	if b, ok := st.sources[src]; ok {
		return b
	}
	if len(st.sources) >= st.opt.MaxSources && now.Sub(st.lastSweep) >= time.Second {
		// O(MaxSources), at most once a second.
		st.lastSweep = now
		for k, b := range st.sources {
			if b.tokens+now.Sub(b.last).Seconds()*st.opt.SourceRate >= float64(st.opt.SourceBurst) {
				delete(st.sources, k)
			}
		}
	}
	if len(st.sources) >= st.opt.MaxSources {
		return &st.overflow
	}
	b := &bucket{tokens: float64(st.opt.SourceBurst), last: now}
	st.sources[src] = b
	return b
}

// peek refills b and reports whether it holds a token (without taking it).
func (b *bucket) peek(now time.Time, rate, burst float64) bool {
	if el := now.Sub(b.last).Seconds(); el > 0 {
		b.tokens = min(burst, b.tokens+el*rate)
		b.last = now
	}
	return b.tokens >= 1
}

func (st *state) summaryLocked(now time.Time) *slog.Record {
	if st.pending == 0 {
		return nil
	}
	r := slog.NewRecord(now, st.opt.SummaryLevel, "log lines suppressed", 0)
	srcs := strconv.Itoa(len(st.pendSrc))
	if len(st.pendSrc) == maxPendingSources {
		srcs += "+"
	}
	r.AddAttrs(slog.Uint64("suppressed", st.pending), slog.String("sources", srcs),
		slog.Duration("over", now.Sub(st.since).Round(time.Millisecond)))
	st.pending = 0
	clear(st.pendSrc)
	return &r
}

// sourceString renders a source attribute's value.
func sourceString(v slog.Value) string {
	v = v.Resolve()
	if v.Kind() == slog.KindString {
		return v.String()
	}
	return fmt.Sprint(v.Any())
}

// sanitizeAttr bounds and escapes an attribute's key and string-like
// value; groups are sanitized recursively and bounded like a record.
func (st *state) sanitizeAttr(a slog.Attr) slog.Attr {
	a.Key = st.sanitize(a.Key)
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		a.Value = slog.StringValue(st.sanitize(v.String()))
	case slog.KindGroup:
		g := v.Group()
		out := make([]slog.Attr, 0, min(len(g), st.opt.MaxAttrs))
		for i, ga := range g {
			if i == st.opt.MaxAttrs {
				out = append(out, slog.Int("attrs_dropped", len(g)-i))
				break
			}
			out = append(out, st.sanitizeAttr(ga))
		}
		a.Value = slog.GroupValue(out...)
	case slog.KindAny:
		switch x := v.Any().(type) {
		case []byte:
			a.Value = slog.StringValue(st.sanitize(string(x)))
		case error:
			a.Value = slog.StringValue(st.sanitize(x.Error()))
		case fmt.Stringer:
			a.Value = slog.StringValue(st.sanitize(x.String()))
		default:
			a.Value = slog.StringValue(st.sanitize(fmt.Sprint(x)))
		}
	default:
		a.Value = v // numbers, bools, times, durations: bounded already
	}
	return a
}

// sanitize escapes what is not printable (control characters, invalid
// UTF-8, and Unicode format characters such as bidi overrides, which can
// disguise a line) and truncates the result to MaxLen bytes, marking the
// cut with the number of input bytes left out.
func (st *state) sanitize(s string) string {
	return Sanitize(s, st.opt.MaxLen)
}

// Sanitize escapes s as a Handler does and truncates it to max bytes
// (0: DefaultMaxLen). Tabs are escaped too: a log line stays one line of
// visible text.
func Sanitize(s string, max int) string {
	if max <= 0 {
		max = DefaultMaxLen
	}
	clean := true
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsPrint(r) && r != ' ' {
			clean = false
			break
		}
	}
	if clean && len(s) <= max {
		return s
	}
	b := make([]byte, 0, min(len(s), max)+16)
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		var piece string
		switch {
		case r == utf8.RuneError && size <= 1:
			piece = fmt.Sprintf(`\x%02x`, s[i])
		case r == ' ' || unicode.IsPrint(r):
			piece = s[i : i+size]
		case r < 0x80:
			piece = fmt.Sprintf(`\x%02x`, r)
		default:
			piece = fmt.Sprintf(`\u%04x`, r)
		}
		if len(b)+len(piece) > max {
			return string(b) + "…(+" + strconv.Itoa(len(s)-i) + " bytes)"
		}
		b = append(b, piece...)
		i += size
	}
	return string(b)
}
