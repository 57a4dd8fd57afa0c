// Package stats holds the order statistics that the simulators
// (ssr/ssrsim, ssr/dht/dhtsim) report: one definition of a percentile, so
// that "p95" means the same in `sipmesh sim` and `sipmesh sim dht`.
package stats

import (
	"math"
	"slices"
)

// Quantile returns the q-quantile (0 ≤ q ≤ 1) of v by nearest rank without
// interpolation: the element at index ⌊q·n⌋ of the sorted values, the
// largest for q = 1. It sorts v in place. An empty v has no quantile: NaN.
func Quantile(v []float64, q float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	slices.Sort(v)
	return v[min(len(v)-1, int(q*float64(len(v))))]
}
