package main

import (
	"strings"
	"testing"
)

// run is a `go test -json` stream of two packages: one passes with a test
// skipped for want of root and a subtest skipped by choice, one fails.
const run = `{"Action":"start","Package":"m/a"}
{"Action":"run","Package":"m/a","Test":"TestOK"}
{"Action":"output","Package":"m/a","Test":"TestOK","Output":"=== RUN   TestOK\n"}
{"Action":"output","Package":"m/a","Test":"TestOK","Output":"    a_test.go:9: chatter nobody needs\n"}
{"Action":"output","Package":"m/a","Test":"TestOK","Output":"--- PASS: TestOK (0.00s)\n"}
{"Action":"pass","Package":"m/a","Test":"TestOK"}
{"Action":"run","Package":"m/a","Test":"TestNS"}
{"Action":"output","Package":"m/a","Test":"TestNS","Output":"=== RUN   TestNS\n"}
{"Action":"output","Package":"m/a","Test":"TestNS","Output":"    netns_linux.go:40: \n"}
{"Action":"output","Package":"m/a","Test":"TestNS","Output":"        *** SKIPPED: needs root ***\n"}
{"Action":"output","Package":"m/a","Test":"TestNS","Output":"--- SKIP: TestNS (0.00s)\n"}
{"Action":"skip","Package":"m/a","Test":"TestNS"}
{"Action":"output","Package":"m/a","Test":"TestSub/slow","Output":"    a_test.go:30: set SLOW=1\n"}
{"Action":"skip","Package":"m/a","Test":"TestSub/slow"}
{"Action":"output","Package":"m/a","Output":"PASS\n"}
{"Action":"output","Package":"m/a","Output":"ok  \tm/a\t0.01s\n"}
{"Action":"pass","Package":"m/a"}
{"Action":"output","Package":"m/c","Test":"TestNS2","Output":"    x.go:1: \n        *** SKIPPED: needs root ***\n"}
{"Action":"skip","Package":"m/c","Test":"TestNS2"}
{"Action":"run","Package":"m/b","Test":"TestBad"}
{"Action":"output","Package":"m/b","Test":"TestBad","Output":"=== RUN   TestBad\n"}
{"Action":"output","Package":"m/b","Test":"TestBad","Output":"    b_test.go:5: got 1, want 2\n"}
{"Action":"output","Package":"m/b","Test":"TestBad","Output":"--- FAIL: TestBad (0.00s)\n"}
{"Action":"fail","Package":"m/b","Test":"TestBad"}
{"Action":"run","Package":"m/b","Test":"TestHang"}
{"Action":"output","Package":"m/b","Test":"TestHang","Output":"    b_test.go:7: waiting for the peer\n"}
{"Action":"run","Package":"m/b","Test":"TestQuiet"}
{"Action":"output","Package":"m/b","Output":"ThreadSanitizer: CHECK failed: tsan_rtl.cpp:346\n"}
{"Action":"output","Package":"m/b","Output":"FAIL\tm/b\t0.02s\n"}
{"Action":"fail","Package":"m/b"}
`

func TestSummarize(t *testing.T) {
	var out strings.Builder
	failed, err := summarize(strings.NewReader(run), &out)
	if err != nil {
		t.Fatal(err)
	}
	if !failed {
		t.Error("failed = false for a run with a failing test")
	}
	got := out.String()
	for _, want := range []string{
		"ok  \tm/a\t0.01s\n",
		"b_test.go:5: got 1, want 2\n--- FAIL: TestBad",
		"--- still running when m/b failed: TestHang\n    b_test.go:7: waiting for the peer\n", // never ended: shown before the package failure
		"--- still running when m/b failed: TestQuiet\nFAIL\tm/b",                              // named though it printed nothing (a crash of the test binary)
		"*** 3 test(s) SKIPPED:",
		"  needs root\n    m/a: TestNS\n    m/c: TestNS2\n",
		"  set SLOW=1\n    m/a: TestSub/slow\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	for _, bad := range []string{"chatter", "=== RUN", "PASS\n"} {
		if strings.Contains(got, bad) {
			t.Errorf("output has %q, which plain go test would not show:\n%s", bad, got)
		}
	}
	// The group of two comes before the group of one.
	if strings.Index(got, "needs root") > strings.Index(got, "set SLOW=1") {
		t.Errorf("reasons not ordered by count:\n%s", got)
	}
}

func TestSummarizePassing(t *testing.T) {
	var out strings.Builder
	in := `{"Action":"output","Package":"m/a","Output":"ok  \tm/a\t0.01s\n"}` + "\n" +
		`{"Action":"pass","Package":"m/a"}` + "\n" +
		"go: warning: something not JSON\n"
	failed, err := summarize(strings.NewReader(in), &out)
	if err != nil || failed {
		t.Fatalf("summarize = %v, %v; want a pass", failed, err)
	}
	if got := out.String(); !strings.Contains(got, "something not JSON") || !strings.Contains(got, "No test was skipped.") {
		t.Errorf("output:\n%s", got)
	}
}

func TestSkipReason(t *testing.T) {
	for _, c := range []struct{ out, want string }{
		{"=== RUN   TestX\n    x_test.go:3: measures allocations\n--- SKIP: TestX (0.00s)\n", "measures allocations"},
		{"    netns_linux.go:40: \n        *** SKIPPED: it needs root. Run as root. ***\n", "it needs root. Run as root."},
		{"--- SKIP: TestX (0.00s)\n", "(no reason given)"},
	} {
		if got := skipReason(c.out); got != c.want {
			t.Errorf("skipReason(%q) = %q, want %q", c.out, got, c.want)
		}
	}
}
