// Package metrics writes the Prometheus text exposition format, version
// 0.0.4 (https://prometheus.io/docs/instrumenting/exposition_formats/):
// HELP and TYPE lines, then one sample per line. It is what `/metrics`
// serves. The official client library links protobuf and would cost the
// router build about a megabyte for what is here a few dozen lines: the
// daemon's counters already live in its components, and a scrape only
// needs them written out.
package metrics

import (
	"bufio"
	"io"
	"math"
	"strconv"
	"strings"
)

// ContentType is the media type of the text format, for the Content-Type
// header of a scrape.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// Type is a metric family's type on its TYPE line.
type Type string

// The types this writer emits; summaries and histograms have no source in
// the daemon yet.
const (
	Counter Type = "counter"
	Gauge   Type = "gauge"
)

// Writer writes metric families. Errors stick: after the first failed
// write the rest are skipped and Flush returns it.
type Writer struct {
	w   *bufio.Writer
	err error
}

// NewWriter returns a Writer on w; call Flush at the end.
func NewWriter(w io.Writer) *Writer { return &Writer{w: bufio.NewWriter(w)} }

// Family starts a metric family: its HELP and TYPE lines. Names follow the
// conventions (https://prometheus.io/docs/practices/naming/): a
// sipmesh_ prefix, the unit as a suffix, _total on counters.
func (w *Writer) Family(name string, t Type, help string) {
	w.str("# HELP " + name + " ")
	w.str(helpEscaper.Replace(help))
	w.str("\n# TYPE " + name + " " + string(t) + "\n")
}

// Sample writes one sample of the family last started; labels are name,
// value pairs (an odd one out is ignored).
func (w *Writer) Sample(name string, v float64, labels ...string) {
	w.str(name)
	if len(labels) >= 2 {
		w.str("{")
		for i := 0; i+1 < len(labels); i += 2 {
			if i > 0 {
				w.str(",")
			}
			w.str(labels[i] + `="` + labelEscaper.Replace(labels[i+1]) + `"`)
		}
		w.str("}")
	}
	w.str(" " + formatValue(v) + "\n")
}

// One writes a family with a single unlabelled sample.
func (w *Writer) One(name string, t Type, help string, v float64) {
	w.Family(name, t, help)
	w.Sample(name, v)
}

// Flush writes out what is buffered and returns the first error.
func (w *Writer) Flush() error {
	if w.err == nil {
		w.err = w.w.Flush()
	}
	return w.err
}

func (w *Writer) str(s string) {
	if w.err == nil {
		_, w.err = w.w.WriteString(s)
	}
}

// The format escapes backslash and newline in HELP text, and also the
// double quote in label values.
var (
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
	labelEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)
)

func formatValue(v float64) string {
	switch {
	case math.IsNaN(v):
		return "NaN"
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}
