package main

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestSimDHTJSON(t *testing.T) {
	code, out, stderr := run(t, "sim", "dht", "--nodes", "20", "--aors", "60", "--kill", "2", "--join", "2", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var rep map[string]any
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	for _, k := range []string{"resolvable_before", "resolvable_after", "recovery_s", "records_per_node_p95",
		"lookup_hops_p50", "lookup_ms_p50", "lost", "wall_s", "peak_rss_mb"} {
		if _, ok := rep[k]; !ok {
			t.Errorf("report lacks %q", k)
		}
	}
	if rep["lost"].(float64) != 0 || rep["resolvable_after"].(float64) != 1 {
		t.Errorf("lost %v, resolvable_after %v", rep["lost"], rep["resolvable_after"])
	}
}

func TestSimDHTUsage(t *testing.T) {
	for _, args := range [][]string{
		{"sim", "dht", "--nodes", "1"},
		{"sim", "dht", "--kill", "99"},
		{"sim", "dht", "--replicas", "9"},
		{"sim", "dht", "extra"},
	} {
		code, _, stderr := run(t, args...)
		if code != 2 || !strings.Contains(stderr, "want") && !strings.Contains(stderr, "unexpected") {
			t.Errorf("%q: exit %d, stderr %q", args, code, stderr)
		}
	}
	code, out, _ := run(t, "sim", "dht", "--nodes", "12", "--aors", "20", "--kill", "1", "--join", "1")
	if code != 0 || !strings.Contains(out, "resolvable after") {
		t.Errorf("table output: exit %d\n%s", code, out)
	}
}
