// Command sipmesh is the one binary of the sipmesh mesh telephone system: the
// node daemon and the tools around it (demo, simulator, testbed, status).
//
// Each subcommand lives in its own file of package main and adds itself to
// the registry from an init function, so adding a command never touches this
// file:
//
//	func init() {
//		register(command{name: "ping", summary: "send mesh echo requests to ADDR", run: runPing})
//	}
//
//	func runPing(ctx context.Context, args []string, stdout, stderr io.Writer) error {
//		fs := newFlagSet("ping", "[flags] ADDR", "Ping sends ...", stderr)
//		count := fs.Int("c", 3, "number of echo requests")
//		if err := parseFlags(fs, args); err != nil {
//			return err
//		}
//		if fs.NArg() != 1 {
//			return usageErrorf("want exactly one ADDR, got %d arguments", fs.NArg())
//		}
//		...
//	}
//
// A command's context is cancelled on SIGINT or SIGTERM; a long-running
// command (node, demo) shuts down, waits for its goroutines and returns nil
// for a clean stop. Exit codes: 0 success, 1 the command failed, 2 bad usage.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
)

// version is set at link time by the Makefile
// (-ldflags "-X main.version=...") so a binary copied onto a router says
// which release it is; a plain `go build` leaves "dev".
var version = "dev"

// command is one subcommand of the sipmesh binary.
type command struct {
	name    string // the word typed after "sipmesh"
	summary string // one line for "sipmesh help", lower case, no period
	// run executes the command. args are the arguments after the command
	// name. Output goes to stdout and stderr rather than os.Stdout so tests
	// can capture it. ctx is cancelled on SIGINT/SIGTERM.
	run func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

// commands is the registry filled by register from init functions. It is
// only written during package initialisation, so it needs no lock.
var commands = map[string]command{}

// register adds c to the commands sipmesh knows. It panics on an empty or
// duplicate name: both are programming errors that every test run catches.
func register(c command) {
	if c.name == "" || c.run == nil {
		panic("sipmesh: register: command needs a name and a run function")
	}
	if _, dup := commands[c.name]; dup {
		panic("sipmesh: register: duplicate command " + c.name)
	}
	commands[c.name] = c
}

func init() {
	register(command{name: "help", summary: "list commands, or show one command's flags", run: runHelp})
	register(command{name: "version", summary: "print the version and build information", run: runVersion})
}

func main() {
	os.Exit(runMain(os.Args[1:], os.Stdout, os.Stderr))
}

// runMain runs the command named by args[0] and returns the process exit
// code. It is main without os.Exit, so tests can drive the whole CLI.
func runMain(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// After the first signal, restore the default handlers so that a second
	// Ctrl-C kills a node whose shutdown is stuck instead of being swallowed.
	context.AfterFunc(ctx, stop)

	if len(args) == 0 {
		// A newcomer typing the bare name gets the same list as "help".
		args = []string{"help"}
	}
	name, rest := args[0], args[1:]
	switch name {
	case "-h", "-help", "--help":
		name = "help"
	case "-version", "--version":
		name = "version"
	}
	c, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "sipmesh: unknown command %q\nRun 'sipmesh help' for a list of commands.\n", name)
		return 2
	}
	return exitCode(c.name, c.run(ctx, rest, stdout, stderr), stderr)
}

// exitCode reports err on stderr (unless the flag package already did) and
// maps it to the process exit code.
func exitCode(name string, err error, stderr io.Writer) int {
	var ue *usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		// -h is a request, not a failure: the usage went to stderr already.
		return 0
	case errors.As(err, &ue):
		if !ue.printed {
			fmt.Fprintf(stderr, "sipmesh %s: %v\nRun 'sipmesh help %s' for usage.\n", name, ue.err, name)
		}
		return 2
	default:
		fmt.Fprintf(stderr, "sipmesh: %v\n", err)
		return 1
	}
}

// usageError marks an error in the command line (exit code 2) as opposed to a
// failure of the command itself (exit code 1).
type usageError struct {
	err     error
	printed bool // the flag package already printed it with the usage
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// usageErrorf returns a usage error, for arguments the flag package cannot
// check (missing or extra positional arguments, conflicting flags).
func usageErrorf(format string, args ...any) error {
	return &usageError{err: fmt.Errorf(format, args...)}
}

// newFlagSet returns a FlagSet for command name that reports errors instead
// of exiting, so commands stay testable through runMain. argsUsage follows
// the command name in the usage line ("[flags] ADDR"); doc is the paragraph
// printed between the usage line and the flag defaults.
func newFlagSet(name, argsUsage, doc string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("sipmesh "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: %s\n", strings.TrimSpace("sipmesh "+name+" "+argsUsage))
		if doc != "" {
			fmt.Fprintf(stderr, "\n%s\n", strings.TrimSpace(doc))
		}
		hasFlags := false
		fs.VisitAll(func(*flag.Flag) { hasFlags = true })
		if hasFlags {
			fmt.Fprintf(stderr, "\nFlags:\n")
			fs.PrintDefaults()
		}
	}
	return fs
}

// parseFlags parses args into fs and marks a bad flag as a usage error. The
// flag package has already printed the error and the usage on fs's output,
// so runMain only sets the exit code.
func parseFlags(fs *flag.FlagSet, args []string) error {
	err := fs.Parse(args)
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return err
	}
	return &usageError{err: err, printed: true}
}

func printUsage(w io.Writer) {
	fmt.Fprintf(w, "sipmesh turns a mesh of small Linux routers into one telephone system.\n\n")
	fmt.Fprintf(w, "Usage: sipmesh <command> [flags] [arguments]\n\nCommands:\n")
	names := make([]string, 0, len(commands))
	for name := range commands {
		names = append(names, name)
	}
	slices.Sort(names)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, name := range names {
		fmt.Fprintf(tw, "  %s\t%s\n", name, commands[name].summary)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nRun 'sipmesh help <command>' for a command's flags.\n")
}

func runHelp(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("help", "[command]", "Help lists the commands, or shows the flags of one command.", stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	switch fs.NArg() {
	case 0:
		// Asked-for help goes to stdout so it can be piped into a pager.
		printUsage(stdout)
		return nil
	case 1:
		c, ok := commands[fs.Arg(0)]
		if !ok {
			return usageErrorf("unknown command %q", fs.Arg(0))
		}
		// Every command answers -h with its usage and flag.ErrHelp.
		return c.run(ctx, []string{"-h"}, stdout, stderr)
	default:
		return usageErrorf("want at most one command name, got %d arguments", fs.NArg())
	}
}

func runVersion(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("version", "", "Version prints the release, the source revision and the Go toolchain that built this binary.", stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usageErrorf("takes no arguments")
	}
	fmt.Fprintln(stdout, versionString())
	return nil
}

// versionString describes this binary: the -X version (or the module version
// when built with `go install module@vX`), the VCS revision the go command
// stamped into the build info, and the toolchain and target.
func versionString() string {
	v := version
	var rev, modified string
	if info, ok := debug.ReadBuildInfo(); ok {
		if v == "dev" && info.Main.Version != "" && info.Main.Version != "(devel)" {
			v = info.Main.Version
		}
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value
			}
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "sipmesh %s", v)
	if rev != "" {
		if len(rev) > 12 {
			rev = rev[:12]
		}
		fmt.Fprintf(&b, " (%s", rev)
		if modified == "true" {
			b.WriteString(", modified")
		}
		b.WriteString(")")
	}
	fmt.Fprintf(&b, " %s %s/%s", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return b.String()
}
