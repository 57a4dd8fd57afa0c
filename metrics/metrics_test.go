package metrics_test

import (
	"bytes"
	"math"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/sipmesh/sipmesh/metrics"
	"github.com/sipmesh/sipmesh/metrics/metricstest"
)

// TestParsesWithPrometheusParser checks the output against the reference
// parser of the text format, including the escapes.
func TestParsesWithPrometheusParser(t *testing.T) {
	var b bytes.Buffer
	w := metrics.NewWriter(&b)
	w.One("sipmesh_sip_requests_total", metrics.Counter, "SIP requests read.", 42)
	w.Family("sipmesh_link_quality_ratio", metrics.Gauge, "Fraction of beacons heard,\nper neighbour \\ link.")
	w.Sample("sipmesh_link_quality_ratio", 0.75, "neighbour", "ab12", "iface", `we"ird\`+"\n")
	w.Sample("sipmesh_link_quality_ratio", math.Inf(1), "neighbour", "cd34", "iface", "wlan0")
	w.One("sipmesh_up", metrics.Gauge, "Always 1.", 1)
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	fams := metricstest.Parse(t, b.String())
	c := fams["sipmesh_sip_requests_total"]
	if c.GetType() != dto.MetricType_COUNTER || c.Metric[0].GetCounter().GetValue() != 42 || c.GetHelp() != "SIP requests read." {
		t.Errorf("counter: %v", c)
	}
	g := fams["sipmesh_link_quality_ratio"]
	if g.GetType() != dto.MetricType_GAUGE || len(g.Metric) != 2 {
		t.Fatalf("gauge: %v", g)
	}
	if g.GetHelp() != "Fraction of beacons heard,\nper neighbour \\ link." {
		t.Errorf("help %q", g.GetHelp())
	}
	labels := map[string]string{}
	for _, l := range g.Metric[0].Label {
		labels[l.GetName()] = l.GetValue()
	}
	if labels["iface"] != `we"ird\`+"\n" || labels["neighbour"] != "ab12" || g.Metric[0].GetGauge().GetValue() != 0.75 {
		t.Errorf("sample 0: %v", g.Metric[0])
	}
	if !math.IsInf(g.Metric[1].GetGauge().GetValue(), 1) {
		t.Errorf("sample 1: %v", g.Metric[1])
	}
}

type failWriter struct{}

func (f *failWriter) Write(p []byte) (int, error) {
	return 0, bytes.ErrTooLarge
}

func TestWriteErrorSticks(t *testing.T) {
	w := metrics.NewWriter(&failWriter{})
	for range 1000 {
		w.One("sipmesh_x_total", metrics.Counter, strings.Repeat("h", 100), 1)
	}
	if err := w.Flush(); err == nil {
		t.Fatal("no error from a failing writer")
	}
}
