package webui

import (
	"context"
	"log/slog"
	"sync"
)

// LogBuffer keeps the last lines a node logged, for the node page: a ring
// of at most its capacity, each line cut at maxLogLine bytes, so its memory
// is bounded whatever is logged.
type LogBuffer struct {
	mu    sync.Mutex
	lines []string
	next  int
	full  bool
}

const maxLogLine = 512

// NewLogBuffer returns a buffer of the last n lines.
func NewLogBuffer(n int) *LogBuffer { return &LogBuffer{lines: make([]string, max(n, 1))} }

// Write stores p as one line (slog's text handler writes one record per
// call).
func (b *LogBuffer) Write(p []byte) (int, error) {
	s := string(p[:min(len(p), maxLogLine)])
	if len(s) > 0 && s[len(s)-1] == '\n' {
		s = s[:len(s)-1]
	}
	b.mu.Lock()
	b.lines[b.next] = s
	b.next = (b.next + 1) % len(b.lines)
	if b.next == 0 {
		b.full = true
	}
	b.mu.Unlock()
	return len(p), nil
}

// Lines returns the stored lines, oldest first.
func (b *LogBuffer) Lines() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.full {
		return append([]string(nil), b.lines[:b.next]...)
	}
	return append(append([]string(nil), b.lines[b.next:]...), b.lines[:b.next]...)
}

// Handler returns a slog handler that passes every record to next and
// also writes it, in slog's text format, into b.
func (b *LogBuffer) Handler(next slog.Handler, level slog.Leveler) slog.Handler {
	return tee{next, slog.NewTextHandler(b, &slog.HandlerOptions{Level: level})}
}

type tee struct{ a, b slog.Handler }

func (t tee) Enabled(ctx context.Context, l slog.Level) bool {
	return t.a.Enabled(ctx, l) || t.b.Enabled(ctx, l)
}

func (t tee) Handle(ctx context.Context, r slog.Record) error {
	var err error
	if t.a.Enabled(ctx, r.Level) {
		err = t.a.Handle(ctx, r.Clone())
	}
	if t.b.Enabled(ctx, r.Level) {
		t.b.Handle(ctx, r)
	}
	return err
}

func (t tee) WithAttrs(as []slog.Attr) slog.Handler { return tee{t.a.WithAttrs(as), t.b.WithAttrs(as)} }
func (t tee) WithGroup(g string) slog.Handler       { return tee{t.a.WithGroup(g), t.b.WithGroup(g)} }
