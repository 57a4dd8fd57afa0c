package ssr

// PlainRouterConfig returns c for a Router without link security, for
// benchmarks that compare its cost (BenchmarkRouterMemnetPingPong).
func PlainRouterConfig(c RouterConfig) RouterConfig {
	c.plain = true
	return c
}
