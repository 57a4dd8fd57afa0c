// Command testsum reads `go test -json` on stdin and writes what plain
// `go test` would (a line per package, the full output of failing tests),
// then a summary of every skipped test grouped by reason: `make test` pipes
// its run through it so that a test skipped for want of root or a tool is
// never silent. It exits 1 when a test, a package or a build failed.
//
//	go test -json ./... | go run ./internal/testsum
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
)

func main() {
	failed, err := summarize(os.Stdin, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testsum:", err)
		os.Exit(2)
	}
	if failed {
		os.Exit(1)
	}
}

// event is one line of `go test -json` (cmd/test2json), including the build
// events go test emits since Go 1.24.
type event struct {
	Action     string
	Package    string
	Test       string
	Output     string
	ImportPath string
}

// skip is one skipped test and why.
type skip struct {
	pkg, test, reason string
}

// maxBuffered bounds the output kept per running test: a test that logs
// without end keeps its last lines, which hold the failure.
const maxBuffered = 1 << 20

// summarize copies the run to w as plain go test would show it and appends
// the skip summary. failed reports a failed test, package or build.
func summarize(r io.Reader, w io.Writer) (failed bool, err error) {
	type key struct{ pkg, test string }
	buf := make(map[key]*strings.Builder) // output of tests still running
	var skips []skip
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 4<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil {
			// Not JSON: go test's own complaint (a bad flag, a missing
			// package); pass it through.
			fmt.Fprintf(w, "%s\n", line)
			continue
		}
		switch {
		case e.Action == "build-output":
			io.WriteString(w, e.Output)
		case e.Action == "build-fail":
			failed = true
		case e.Test == "":
			if e.Action == "fail" {
				failed = true
			}
			if e.Action != "output" || e.Output == "PASS\n" {
				// "PASS" alone repeats the ok line that follows.
				continue
			}
			if strings.HasPrefix(e.Output, "FAIL") {
				// Tests that never ended (a panic, the timeout): show what
				// they printed before the package's verdict; it is the
				// only clue.
				var running []key
				for k := range buf {
					if k.pkg == e.Package {
						running = append(running, k)
					}
				}
				slices.SortFunc(running, func(a, b key) int { return strings.Compare(a.test, b.test) })
				for _, k := range running {
					// Named even when it printed nothing: a crash of the
					// test binary (a runtime CHECK, a fatal error) is
					// otherwise blamed on the whole package.
					fmt.Fprintf(w, "--- still running when %s failed: %s\n", k.pkg, k.test)
					io.WriteString(w, buf[k].String())
					delete(buf, k)
				}
			}
			io.WriteString(w, e.Output)
		default:
			k := key{e.Package, e.Test}
			switch e.Action {
			case "run":
				if buf[k] == nil {
					buf[k] = new(strings.Builder)
				}
			case "output":
				b := buf[k]
				if b == nil {
					b = new(strings.Builder)
					buf[k] = b
				}
				// The === RUN/PAUSE/CONT lines are -v's, which plain go
				// test does not print.
				if b.Len() < maxBuffered && !strings.HasPrefix(e.Output, "=== ") {
					b.WriteString(e.Output)
				}
			case "pass":
				delete(buf, k)
			case "fail":
				failed = true
				if b := buf[k]; b != nil {
					io.WriteString(w, b.String())
				}
				delete(buf, k)
			case "skip":
				var out string
				if b := buf[k]; b != nil {
					out = b.String()
				}
				skips = append(skips, skip{e.Package, e.Test, skipReason(out)})
				delete(buf, k)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return true, err
	}
	writeSkips(w, skips)
	return failed, nil
}

// logPrefix is what t.Log puts before a message: "    file_test.go:12: ".
var logPrefix = regexp.MustCompile(`^\s*[\w.-]+\.go:\d+: ?`)

// skipReason extracts the message of t.Skip from a skipped test's output:
// everything but the === and --- lines the testing package adds, with the
// file:line prefixes and the decoration stripped, on one line.
func skipReason(out string) string {
	var parts []string
	for _, l := range strings.Split(out, "\n") {
		t := strings.TrimSpace(l)
		if strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- ") {
			continue
		}
		t = strings.TrimSpace(logPrefix.ReplaceAllString(l, ""))
		t = strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(t, "***"), "***"))
		t = strings.TrimSpace(strings.TrimPrefix(t, "SKIPPED:"))
		if t != "" {
			parts = append(parts, t)
		}
	}
	if len(parts) == 0 {
		return "(no reason given)"
	}
	return strings.Join(parts, " ")
}

// writeSkips prints the skipped tests grouped by reason, reasons in order of
// how many tests they cover, tests by package.
func writeSkips(w io.Writer, skips []skip) {
	if len(skips) == 0 {
		fmt.Fprintln(w, "\nNo test was skipped.")
		return
	}
	byReason := make(map[string][]skip)
	for _, s := range skips {
		byReason[s.reason] = append(byReason[s.reason], s)
	}
	reasons := make([]string, 0, len(byReason))
	for r := range byReason {
		reasons = append(reasons, r)
	}
	slices.SortFunc(reasons, func(a, b string) int {
		if d := len(byReason[b]) - len(byReason[a]); d != 0 {
			return d
		}
		return strings.Compare(a, b)
	})
	fmt.Fprintf(w, "\n*** %d test(s) SKIPPED:\n", len(skips))
	for _, r := range reasons {
		ss := byReason[r]
		fmt.Fprintf(w, "\n  %s\n", r)
		var pkgs []string
		tests := make(map[string][]string)
		for _, s := range ss {
			if tests[s.pkg] == nil {
				pkgs = append(pkgs, s.pkg)
			}
			tests[s.pkg] = append(tests[s.pkg], s.test)
		}
		slices.Sort(pkgs)
		for _, p := range pkgs {
			slices.Sort(tests[p])
			fmt.Fprintf(w, "    %s: %s\n", p, strings.Join(tests[p], ", "))
		}
	}
}
