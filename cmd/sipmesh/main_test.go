package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"maps"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
)

// run drives the CLI like a user would and returns exit code, stdout and
// stderr.
func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = runMain(args, &out, &errb)
	return code, out.String(), errb.String()
}

// withCommands registers extra commands for one test and restores the real
// registry afterwards. Tests that use it must not run in parallel.
func withCommands(t *testing.T, cs ...command) {
	t.Helper()
	saved := maps.Clone(commands)
	t.Cleanup(func() { commands = saved })
	for _, c := range cs {
		register(c)
	}
}

func TestHelpListsCommandsSorted(t *testing.T) {
	withCommands(t,
		command{name: "zebra", summary: "last one", run: func(context.Context, []string, io.Writer, io.Writer) error { return nil }},
		command{name: "alpha", summary: "first one", run: func(context.Context, []string, io.Writer, io.Writer) error { return nil }},
	)
	for _, args := range [][]string{{}, {"help"}, {"-h"}, {"--help"}} {
		t.Run(strings.Join(append([]string{"sipmesh"}, args...), " "), func(t *testing.T) {
			code, stdout, stderr := run(t, args...)
			if code != 0 {
				t.Fatalf("exit code %d, want 0; stderr:\n%s", code, stderr)
			}
			// Collect the command names in the order the listing shows them.
			var listed []string
			for _, m := range regexp.MustCompile(`(?m)^  (\S+)\s+(.*)$`).FindAllStringSubmatch(stdout, -1) {
				listed = append(listed, m[1])
				if want := commands[m[1]].summary; m[2] != want {
					t.Errorf("summary of %s = %q, want %q", m[1], m[2], want)
				}
			}
			want := slices.Sorted(maps.Keys(commands))
			if !slices.Equal(listed, want) {
				t.Errorf("listed commands %q, want %q; stdout:\n%s", listed, want, stdout)
			}
		})
	}
}

func TestUnknownCommand(t *testing.T) {
	code, stdout, stderr := run(t, "no-such-command")
	if code != 2 {
		t.Errorf("exit code %d, want 2", code)
	}
	if stdout != "" {
		t.Errorf("stdout = %q, want nothing", stdout)
	}
	if !strings.Contains(stderr, `unknown command "no-such-command"`) {
		t.Errorf("stderr = %q, want it to name the unknown command", stderr)
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		code, stdout, stderr := run(t, args...)
		if code != 0 {
			t.Fatalf("%q: exit code %d, want 0; stderr:\n%s", args, code, stderr)
		}
		if !strings.HasPrefix(stdout, "sipmesh "+version) {
			t.Errorf("%q: stdout = %q, want prefix %q", args, stdout, "sipmesh "+version)
		}
		if !strings.Contains(stdout, runtime.Version()) {
			t.Errorf("%q: stdout = %q, want the Go version %s", args, stdout, runtime.Version())
		}
	}
}

func TestVersionFromLinker(t *testing.T) {
	saved := version
	t.Cleanup(func() { version = saved })
	version = "v1.2.3"
	if got := versionString(); !strings.HasPrefix(got, "sipmesh v1.2.3 ") {
		t.Errorf("versionString() = %q, want it to start with the -X version", got)
	}
}

func TestExitCodes(t *testing.T) {
	fail := func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
		fs := newFlagSet("fail", "[flags] WORD", "Fail fails.", stderr)
		n := fs.Int("n", 0, "a number")
		if err := parseFlags(fs, args); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return usageErrorf("want one WORD, got %d arguments", fs.NArg())
		}
		return errors.New("broken " + fs.Arg(0) + " " + string(rune('0'+*n)))
	}
	withCommands(t, command{name: "fail", summary: "always fails", run: fail})

	tests := []struct {
		name       string
		args       []string
		code       int
		wantStderr string
		wantStdout string // requested help goes to stdout, errors to stderr
	}{
		{"command error", []string{"fail", "-n", "1", "pipe"}, 1, "sipmesh: broken pipe 1\n", ""},
		{"bad flag", []string{"fail", "-bogus", "x"}, 2, "flag provided but not defined: -bogus", ""},
		{"bad flag value", []string{"fail", "-n", "many", "x"}, 2, `invalid value "many" for flag -n`, ""},
		{"missing argument", []string{"fail"}, 2, "sipmesh fail: want one WORD, got 0 arguments", ""},
		{"command -h", []string{"fail", "-h"}, 0, "", "Usage: sipmesh fail [flags] WORD"},
		{"command --help", []string{"fail", "--help"}, 0, "", "Usage: sipmesh fail [flags] WORD"},
		{"help command", []string{"help", "fail"}, 0, "", "Usage: sipmesh fail [flags] WORD"},
		{"help unknown", []string{"help", "nope"}, 2, `unknown command "nope"`, ""},
		{"help no such subcommand", []string{"help", "fail", "b"}, 2, `fail has no subcommand "b"`, ""},
		{"help too many", []string{"help", "a", "b", "c"}, 2, "want a command and at most one subcommand", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := run(t, tt.args...)
			if code != tt.code {
				t.Errorf("exit code %d, want %d; stderr:\n%s", code, tt.code, stderr)
			}
			if !strings.Contains(stderr, tt.wantStderr) || tt.wantStderr == "" && stderr != "" {
				t.Errorf("stderr = %q, want it to contain %q", stderr, tt.wantStderr)
			}
			if !strings.Contains(stdout, tt.wantStdout) || tt.wantStdout == "" && stdout != "" {
				t.Errorf("stdout = %q, want it to contain %q", stdout, tt.wantStdout)
			}
		})
	}
}

// TestSignalCancelsContext checks that SIGINT reaches a running command as a
// cancelled context rather than killing the process, so a node can shut
// down cleanly.
func TestSignalCancelsContext(t *testing.T) {
	leakcheck.Check(t)
	wait := func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
		// The signal is sent from inside run, when runMain's handler is
		// certainly installed; before that it would kill the test binary.
		p, err := os.FindProcess(os.Getpid())
		if err != nil {
			return err
		}
		if err := p.Signal(os.Interrupt); err != nil {
			return errSkip
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(10 * time.Second):
			return errors.New("context not cancelled 10s after SIGINT")
		}
	}
	withCommands(t, command{name: "wait", summary: "waits for a signal", run: wait})
	var out, errb bytes.Buffer
	code := runMain([]string{"wait"}, &out, &errb)
	if strings.Contains(errb.String(), errSkip.Error()) {
		t.Skip("cannot send SIGINT to self on", runtime.GOOS)
	}
	if code != 0 {
		t.Errorf("exit code %d, want 0; stderr:\n%s", code, errb.String())
	}
}

var errSkip = errors.New("skip: signals unsupported")

func TestRegisterRejectsDuplicates(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("register of a duplicate name did not panic")
		}
	}()
	withCommands(t, command{name: "version", run: runVersion})
}
