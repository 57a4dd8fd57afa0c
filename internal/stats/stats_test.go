package stats

import (
	"math"
	"testing"
)

func TestQuantile(t *testing.T) {
	tests := []struct {
		name string
		v    []float64
		q    float64
		want float64
	}{
		{"median of odd", []float64{3, 1, 2}, 0.5, 2},
		{"median of even takes the upper", []float64{4, 1, 3, 2}, 0.5, 3},
		{"p95 of 100", func() []float64 {
			v := make([]float64, 100)
			for i := range v {
				v[i] = float64(100 - i)
			}
			return v
		}(), 0.95, 96},
		{"max", []float64{5, 9, 1}, 1, 9},
		{"min", []float64{5, 9, 1}, 0, 1},
		{"one value", []float64{7}, 0.95, 7},
	}
	for _, tt := range tests {
		if got := Quantile(tt.v, tt.q); got != tt.want {
			t.Errorf("%s: Quantile(%v, %v) = %v, want %v", tt.name, tt.v, tt.q, got, tt.want)
		}
	}
	if got := Quantile(nil, 0.5); !math.IsNaN(got) {
		t.Errorf("Quantile(nil) = %v, want NaN", got)
	}
}
