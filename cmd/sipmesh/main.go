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
// A command's context is cancelled on SIGINT, SIGTERM, SIGHUP or a failed
// write to a closed stdout or stderr, as SIGPIPE (signals.go); a long-running command shuts down, waits for its goroutines
// and either returns nil (the node: a stop is what SIGTERM asks for) or
// prints its partial results and returns the context's cause (demo, sim),
// which exits 128+signal (130 after Ctrl-C). Requested help goes to stdout.
// Exit codes: 0 success, 1 the command failed, 2 bad usage, 128+N stopped by
// signal N.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
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
	// subcommands are the words after name that select another flag set
	// ("sim dht", "user add"), so that "sipmesh help sim dht" works.
	subcommands []string
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
	ctx, stdout, stderr, stop := notifySignals(stdout, stderr)
	defer stop()

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
	return exitCode(ctx, c.name, c.run(ctx, rest, stdout, stderr), stdout, stderr)
}

// exitCode reports err (unless the flag package already did) and maps it to
// the process exit code. Requested help goes to stdout, so that
// "sipmesh demo --help | less" shows it.
func exitCode(ctx context.Context, name string, err error, stdout, stderr io.Writer) int {
	var (
		ue   *usageError
		help *helpRequest
		sig  *signalError
	)
	switch {
	case err == nil:
		return 0
	case errors.As(err, &help):
		io.WriteString(stdout, help.text)
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		if !ue.printed {
			if ue.cmd != "" {
				name = ue.cmd
			}
			fmt.Fprintf(stderr, "sipmesh %s: %v\nRun 'sipmesh help %s' for usage.\n", name, ue.err, name)
		}
		return 2
	case errors.As(err, &sig), errors.Is(err, context.Canceled) && errors.As(context.Cause(ctx), &sig):
		// Stopped by a signal: the command printed what it had; say why
		// it ends early, once, without the chain of wrapped cancellations.
		fmt.Fprintf(stderr, "sipmesh %s: stopped by %v\n", name, sig)
		return sig.exitCode()
	default:
		fmt.Fprintf(stderr, "sipmesh: %v\n", err)
		return 1
	}
}

// usageError marks an error in the command line (exit code 2) as opposed to a
// failure of the command itself (exit code 1).
type usageError struct {
	err     error
	printed bool   // the flag package already printed it with the usage
	cmd     string // the (sub)command it belongs to, when not the top one
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// usageErrorf returns a usage error, for arguments the flag package cannot
// check (missing or extra positional arguments, conflicting flags).
func usageErrorf(format string, args ...any) error {
	return &usageError{err: fmt.Errorf(format, args...)}
}

// subcommandFunc runs one subcommand with its arguments.
type subcommandFunc func(ctx context.Context, args []string, stdout, stderr io.Writer) error

// runAddDelList runs the add, del (delete, rm) or list (ls) subcommand
// of command name ("user", "phone").
func runAddDelList(ctx context.Context, name, usage, doc string, args []string, stdout, stderr io.Writer, add, del, list subcommandFunc) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" {
		fs := newFlagSet(name, usage, doc, stderr)
		if err := parseFlags(fs, args); err != nil {
			return err
		}
		return usageErrorf("want a subcommand: add, del or list")
	}
	sub, rest := args[0], args[1:]
	switch sub {
	case "add":
		return inSubcommand(name+" add", add(ctx, rest, stdout, stderr))
	case "del", "delete", "rm":
		return inSubcommand(name+" del", del(ctx, rest, stdout, stderr))
	case "list", "ls":
		return inSubcommand(name+" list", list(ctx, rest, stdout, stderr))
	}
	return usageErrorf("unknown subcommand %q (want add, del or list)", sub)
}

// inSubcommand marks a usage error of subcommand cmd ("sim dht") so that
// the hint names its help.
func inSubcommand(cmd string, err error) error {
	var ue *usageError
	if errors.As(err, &ue) && ue.cmd == "" {
		ue.cmd = cmd
	}
	return err
}

// helpRequest is what parseFlags returns for -h: the usage text, which
// exitCode prints on stdout with exit status 0. It wraps flag.ErrHelp.
type helpRequest struct{ text string }

func (h *helpRequest) Error() string { return flag.ErrHelp.Error() }
func (h *helpRequest) Unwrap() error { return flag.ErrHelp }

// newFlagSet returns a FlagSet for command name that reports errors instead
// of exiting, so commands stay testable through runMain. argsUsage follows
// the command name in the usage line ("[flags] ADDR"); doc is the paragraph
// printed between the usage line and the flag defaults.
func newFlagSet(name, argsUsage, doc string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("sipmesh "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage: %s\n", strings.TrimSpace("sipmesh "+name+" "+argsUsage))
		if doc != "" {
			fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(doc))
		}
		hasFlags := false
		fs.VisitAll(func(*flag.Flag) { hasFlags = true })
		if hasFlags {
			fmt.Fprintf(w, "\nFlags:\n")
			fs.PrintDefaults()
		}
	}
	return fs
}

// parseFlags parses args into fs. A bad flag is a usage error whose message
// and usage it prints on fs's output (stderr); -h returns a helpRequest
// carrying the usage, which exitCode prints on stdout.
func parseFlags(fs *flag.FlagSet, args []string) error {
	out := fs.Output()
	var buf bytes.Buffer
	fs.SetOutput(&buf)
	err := fs.Parse(args)
	fs.SetOutput(out)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, flag.ErrHelp):
		return &helpRequest{text: buf.String()}
	}
	out.Write(buf.Bytes())
	return &usageError{err: err, printed: true}
}

// optInt is an int flag whose default is computed from other flags
// ("default phones/2"): unset, it prints no "(default …)" of its own, and
// the command can tell "not given" from any value, negative ones included.
type optInt struct {
	v   int
	set bool
}

func (o *optInt) String() string {
	if o == nil || !o.set {
		return ""
	}
	return strconv.Itoa(o.v)
}

func (o *optInt) Set(s string) error {
	v, err := strconv.ParseInt(s, 0, strconv.IntSize)
	if err != nil {
		return errors.New("not an integer")
	}
	o.v, o.set = int(v), true
	return nil
}

// or returns the flag's value, or def when it was not given.
func (o *optInt) or(def int) int {
	if o.set {
		return o.v
	}
	return def
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
	fs := newFlagSet("help", "[command [subcommand]]", "Help lists the commands, or shows the flags of one command or subcommand.", stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	switch fs.NArg() {
	case 0:
		// Asked-for help goes to stdout so it can be piped into a pager.
		printUsage(stdout)
		return nil
	case 1, 2:
		c, ok := commands[fs.Arg(0)]
		if !ok {
			return usageErrorf("unknown command %q", fs.Arg(0))
		}
		args := []string{"-h"}
		if fs.NArg() == 2 {
			// Only a listed subcommand: "help ping ADDR" must not ping.
			if !slices.Contains(c.subcommands, fs.Arg(1)) {
				return usageErrorf("%s has no subcommand %q", c.name, fs.Arg(1))
			}
			args = []string{fs.Arg(1), "-h"}
		}
		// Every command answers -h with its usage in a helpRequest.
		return c.run(ctx, args, stdout, stderr)
	default:
		return usageErrorf("want a command and at most one subcommand, got %d arguments", fs.NArg())
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
