// Package metricstest parses a /metrics answer with the Prometheus
// reference parser (github.com/prometheus/common/expfmt), for tests only:
// the daemon never imports it, so the parser and protobuf stay out of the
// router build.
package metricstest

import (
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Parse parses text exposition format 0.0.4 with the reference parser and
// fails the test on an error or a family name outside the classic
// character set.
func Parse(t testing.TB, text string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("parsing metrics: %v\n%s", err, text)
	}
	for name := range fams {
		if !model.LegacyValidation.IsValidMetricName(name) {
			t.Errorf("metric name %q is not a valid classic name", name)
		}
	}
	return fams
}

// Value returns the value of the sample of family name whose labels include
// the given name, value pairs, and whether there is one.
func Value(fams map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.Metric {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.Label {
				if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}
