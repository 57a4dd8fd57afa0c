//go:build !router

package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/gateway"
	"github.com/sipmesh/sipmesh/ssr/dht/dhtsim"
	"github.com/sipmesh/sipmesh/ssr/ssrsim"
)

// TestUsageErrors checks that nonsense on the command line is refused with
// exit status 2 and a message naming the flag, the same for every command.
func TestUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string // in stderr
	}{
		{[]string{"sim", "--probes", "-3"}, "--probes -3: want at least 1"},
		{[]string{"sim", "--probes", "0"}, "--probes 0: want at least 1"},
		{[]string{"sim", "--nodes", "0"}, "--nodes 0: want at least 2"},
		{[]string{"sim", "--topology", "ring"}, `--topology "ring"`},
		{[]string{"sim", "dht", "--nodes", "0"}, "sipmesh sim dht: --nodes 0: want at least 2"},
		{[]string{"sim", "dht", "--nodes", "10", "--kill", "9"}, "--kill 9: want 0 to 8"},
		{[]string{"sim", "dht", "--join", "-1"}, "--join -1"},
		{[]string{"sim", "dht", "--attack", "0.9"}, "--attack 0.9: want 0 to 0.5"},
		{[]string{"sim", "dht", "--aors", "50", "--attack", "0.01", "--targets", "51"}, "--targets 51: want 1 to 50 (--aors)"},
		{[]string{"sim", "dht", "--attack-cluster", "-1"}, "--attack-cluster -1: want ≥ 0"},
		{[]string{"demo", "--calls", "-5"}, "--calls -5: want 0 to 1000"},
		{[]string{"demo", "--calls", "0", "--echo", "0"}, "nothing to call"},
		{[]string{"demo", "--calls", "x"}, `invalid value "x" for flag -calls`},
		{[]string{"phone", "add", "00:15:65:a1:b2:c3"}, "want MAC and EXT, got 1 arguments"},
		{[]string{"phone", "frob"}, `unknown subcommand "frob"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, stdout, stderr := run(t, tt.args...)
			if code != 2 || !strings.Contains(stderr, tt.want) || stdout != "" {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit 2 and %q on stderr", code, stdout, stderr, tt.want)
			}
		})
	}
	// A sub-command's usage error points at its own help.
	if _, _, stderr := run(t, "sim", "dht", "--nodes", "0"); !strings.Contains(stderr, "Run 'sipmesh help sim dht'") {
		t.Errorf("sim dht usage hint: %q", stderr)
	}
}

// TestSimDHTDefaultsScale checks that the churn defaults follow --nodes:
// a 10-node run kills and joins one node (10 %) instead of failing on a
// fixed default of 10.
func TestSimDHTDefaultsScale(t *testing.T) {
	code, stdout, stderr := run(t, "sim", "dht", "--nodes", "10", "--aors", "20", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var rep dhtsim.Report
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	if rep.Killed != 1 || rep.Joined != 1 {
		t.Errorf("killed %d, joined %d; want 1 and 1", rep.Killed, rep.Joined)
	}
}

// TestSimDHTAttack runs a small eclipse attack through the command line:
// the attacker's nodes are counted, the defence is on by default and holds,
// and --eclipse-defence=false shows what the attack does without it.
func TestSimDHTAttack(t *testing.T) {
	for _, defence := range []bool{true, false} {
		code, stdout, stderr := run(t, "sim", "dht", "--nodes", "100", "--aors", "40", "--kill", "0", "--join", "0",
			"--attack", "0.03", "--targets", "10", "--eclipse-defence="+fmt.Sprint(defence), "--json")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		var rep dhtsim.Report
		if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
			t.Fatalf("%v\n%s", err, stdout)
		}
		if rep.Attackers != 3 || rep.Targets != 10 || rep.EclipseDefence != defence {
			t.Fatalf("attackers %d, targets %d, defence %v", rep.Attackers, rep.Targets, rep.EclipseDefence)
		}
		// Without the defence each attacker node takes its target away.
		want := 0.0
		if !defence {
			want = 0.3
		}
		if rep.UnresolvableTargets < want || (defence && rep.UnresolvableTargets != 0) {
			t.Errorf("defence %v: %.2f of the targets unresolvable, want %.2f", defence, rep.UnresolvableTargets, want)
		}
	}
}

// TestHelpOnStdout checks that asked-for help goes to stdout with status 0
// (so it pipes into a pager), for commands and sub-commands, and that
// -calls names one default, not two.
func TestHelpOnStdout(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"demo", "--help"}, "Usage: sipmesh demo [flags]"},
		{[]string{"help", "demo"}, "Usage: sipmesh demo [flags]"},
		{[]string{"help", "sim", "dht"}, "Usage: sipmesh sim dht [flags]"},
		{[]string{"sim", "dht", "-h"}, "Usage: sipmesh sim dht [flags]"},
		{[]string{"help", "user", "add"}, "Usage: sipmesh user add [flags] EXT"},
		{[]string{"user", "--help"}, "Usage: sipmesh user add|del|list"},
		{[]string{"help", "phone", "add"}, "Usage: sipmesh phone add [flags] MAC EXT"},
		{[]string{"phone", "--help"}, "Usage: sipmesh phone add|del|list"},
	} {
		code, stdout, stderr := run(t, tt.args...)
		if code != 0 || !strings.Contains(stdout, tt.want) || stderr != "" {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit 0 and %q on stdout only", tt.args, code, stdout, stderr, tt.want)
		}
	}
	if code, _, stderr := run(t, "help", "ping", "2001:db8::1"); code != 2 || !strings.Contains(stderr, `ping has no subcommand`) {
		t.Errorf("help ping ADDR: exit %d, %q", code, stderr)
	}
	_, stdout, _ := run(t, "help", "demo")
	for _, line := range strings.Split(stdout, "\n") {
		if strings.Contains(line, "phone-to-phone calls") && strings.Count(line, "(default") != 1 {
			t.Errorf("-calls help shows %d defaults: %q", strings.Count(line, "(default"), line)
		}
	}
	if !strings.Contains(stdout, "(default phones/2)") {
		t.Errorf("-calls help lacks its default:\n%s", stdout)
	}
}

// TestUserAddChecksNodeFirst checks that `user add` finds no node before
// it reads a password, and that neither it nor status creates the
// directories of a --control path.
func TestUserAddChecksNodeFirst(t *testing.T) {
	saved := stdin
	t.Cleanup(func() { stdin = saved })
	stdin = readerFunc(func([]byte) (int, error) {
		t.Error("user add read the password before checking the node")
		return 0, io.EOF
	})
	dir := t.TempDir()
	sock := filepath.Join(dir, "no", "such", "s.sock")
	for _, args := range [][]string{
		{"user", "add", "--control", sock, "201"},
		{"status", "--control", sock},
		{"user", "list", "--control", sock},
		{"phone", "add", "--password-stdin", "--control", sock, "00:15:65:a1:b2:c3", "201"},
		{"phone", "list", "--control", sock},
	} {
		code, _, stderr := run(t, args...)
		if code != 1 || !strings.Contains(stderr, "no node answering") {
			t.Errorf("%q: exit %d, stderr %q; want 1 and \"no node answering\"", args, code, stderr)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "no")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a client created %s/no (%v)", dir, err)
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// TestNoProgressIntoPipes checks that the self-overwriting progress line
// ("\r") is not written when stderr is not a terminal.
func TestNoProgressIntoPipes(t *testing.T) {
	code, _, stderr := run(t, "sim", "--nodes", "40", "--churn", "0.1")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if strings.Contains(stderr, "\r") {
		t.Errorf("progress written into a non-terminal: %q", stderr)
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if isTerminal(f) || isTerminal(&bytes.Buffer{}) {
		t.Error("isTerminal says a file or a buffer is a terminal")
	}
	// A pseudo-terminal's master side answers TCGETS as a terminal does.
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("opening a pseudo-terminal: %v", err)
	}
	defer ptmx.Close()
	if !isTerminal(ptmx) {
		t.Error("isTerminal(/dev/ptmx) = false")
	}

	// The demo's status line (accounts stored under loss) shows on a
	// terminal only, and the next log line clears it.
	var b bytes.Buffer
	for _, tty := range []bool{false, true} {
		b.Reset()
		l := &demoLog{w: &b, tty: tty, start: time.Now()}
		l.status("storing accounts in the DHT: %d of %d", 3, 8)
		l.printf("accounts stored")
		switch out := b.String(); {
		case !tty && out != strings.TrimPrefix(out, "\r"), !tty && strings.Contains(out, "storing"):
			t.Errorf("status line into a non-terminal: %q", out)
		case tty && !strings.Contains(out, "\r[  0.0s] storing accounts in the DHT: 3 of 8"):
			t.Errorf("no status line on a terminal: %q", out)
		case tty && !strings.Contains(out, "\r"+strings.Repeat(" ", 72)+"\r[  0.0s] accounts stored\n"):
			t.Errorf("status line not cleared before the next line: %q", out)
		}
	}
}

// TestJSONNamesSnakeCase checks that every field of every JSON the CLI
// prints has an explicit snake_case name.
func TestJSONNamesSnakeCase(t *testing.T) {
	snake := regexp.MustCompile(`^[a-z][a-z0-9]*(_[a-z0-9]+)*$`)
	seen := map[reflect.Type]bool{}
	var walk func(path string, ty reflect.Type)
	walk = func(path string, ty reflect.Type) {
		for ty.Kind() == reflect.Pointer || ty.Kind() == reflect.Slice || ty.Kind() == reflect.Map || ty.Kind() == reflect.Array {
			ty = ty.Elem()
		}
		// Only the module's own structs: time.Time and the like marshal
		// themselves.
		if ty.Kind() != reflect.Struct || seen[ty] || !strings.HasPrefix(ty.PkgPath(), "github.com/sipmesh/sipmesh") {
			return
		}
		seen[ty] = true
		for i := range ty.NumField() {
			f := ty.Field(i)
			if !f.IsExported() {
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			switch {
			case name == "-":
				continue
			case name == "" && f.Anonymous:
				walk(path, f.Type) // inlined
				continue
			case !snake.MatchString(name):
				t.Errorf("%s.%s: JSON name %q is not snake_case", path, f.Name, name)
			}
			walk(path+"."+f.Name, f.Type)
		}
	}
	for _, v := range []any{gateway.NodeStatus{}, gateway.PingResult{}, gateway.UserInfo{}, gateway.BindingInfo{},
		gateway.PhoneInfo{}, gateway.AddPhoneRequest{},
		demoReport{}, ssrsim.Report{}, dhtsim.Report{}} {
		walk(reflect.TypeOf(v).String(), reflect.TypeOf(v))
	}
}

// TestDemoTable checks the demo's table: the echo test's callee column
// and JSON fields, the legend, and a partial report.
func TestDemoTable(t *testing.T) {
	rep := demoReport{Nodes: 3, Links: 2, Diameter: 2, Seed: 1, RingS: 0.5, Registered: 2,
		Phones: []phoneInfo{{Ext: "201", Node: "n1"}, {Ext: "202", Node: "n3"}},
		Calls: []callResult{
			{From: "201", To: "202", FromNode: "n1", ToNode: "n3", Hops: 2, PostDialDelayMs: 80, SetupMs: 180, AudioAB: true, AudioBA: true, MOS: 4.39},
			{From: "201", To: "3246", Feature: "echo", FromNode: "n1", ToNode: "n1", SetupMs: 2, AudioAB: true, AudioBA: true, MOS: 4.39},
		}, OK: true, WallS: 3}
	var b strings.Builder
	printDemo(&b, rep)
	out := b.String()
	for _, want := range []string{"3246 (echo)", "post-dial ms: INVITE sent until the callee's phone rings", `"-" when nothing rang`,
		"setup ms: INVITE sent until the call is answered", "MOS: ITU-T G.107", "2 of 2 calls with two-way audio"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "interrupted") {
		t.Errorf("a complete run says interrupted:\n%s", out)
	}
	js, err := json.Marshal(rep.Calls[1])
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(js), `"to":"3246"`) || !strings.Contains(string(js), `"feature":"echo"`) {
		t.Errorf("echo call JSON: %s", js)
	}

	rep.Calls, rep.Interrupted = nil, true
	b.Reset()
	printDemo(&b, rep)
	if !strings.Contains(b.String(), "interrupted after 3.0 s, before any call") {
		t.Errorf("partial report:\n%s", b.String())
	}
}

// TestReapDemoDirs checks that the key directories of a demo that died
// without cleaning up (SIGKILL) are removed by the next demo, and those
// of live processes are not.
func TestReapDemoDirs(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	deadDir := filepath.Join(tmp, fmt.Sprintf("%s%d-123", demoDirPrefix, dead.Process.Pid))
	liveDir := filepath.Join(tmp, fmt.Sprintf("%s%d-456", demoDirPrefix, os.Getppid()))
	for _, d := range []string{deadDir, liveDir} {
		if err := os.MkdirAll(filepath.Join(d, "n1"), 0o700); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(d, "admin.key"), []byte("secret"), 0o600)
	}
	reapDemoDirs()
	if _, err := os.Stat(deadDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dead demo's directory kept (%v)", err)
	}
	if _, err := os.Stat(liveDir); err != nil {
		t.Errorf("live process's directory removed: %v", err)
	}
}

// child is the sipmesh binary running as a separate process, so that a
// test can send it real signals.
type child struct {
	t      *testing.T
	cmd    *exec.Cmd
	tmp    string // its TMPDIR
	stdout bytes.Buffer
	lines  chan string // its stderr, line by line
	errLog strings.Builder
	done   chan struct{}
}

func startChild(t *testing.T, bin string, args ...string) *child {
	t.Helper()
	c := &child{t: t, tmp: t.TempDir(), lines: make(chan string, 1000), done: make(chan struct{})}
	c.cmd = exec.Command(bin, args...)
	c.cmd.Env = append(os.Environ(), "TMPDIR="+c.tmp)
	c.cmd.Stdout = &c.stdout
	errPipe, err := c.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(errPipe)
		for sc.Scan() {
			c.errLog.WriteString(sc.Text() + "\n")
			select {
			case c.lines <- sc.Text():
			default:
			}
		}
	}()
	return c
}

// waitLine waits for a line of stderr containing s: the child reached the
// state the test signals it in.
func (c *child) waitLine(s string) {
	c.t.Helper()
	timeout := time.After(2 * time.Minute)
	for {
		select {
		case l := <-c.lines:
			if strings.Contains(l, s) {
				return
			}
		case <-c.done:
			c.cmd.Wait()
			c.t.Fatalf("exited before printing %q; stderr:\n%s", s, c.errLog.String())
		case <-timeout:
			c.cmd.Process.Kill()
			c.t.Fatalf("no %q on stderr within 2 minutes; stderr:\n%s", s, c.errLog.String())
		}
	}
}

// wait waits for the exit and returns the status.
func (c *child) wait() int {
	c.t.Helper()
	<-c.done
	err := c.cmd.Wait()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		c.t.Fatal(err)
	}
	return c.cmd.ProcessState.ExitCode()
}

// checkClean checks what every interrupted run must show: no panic, no
// chain of "context canceled", a line naming the signal, nothing left in
// its TMPDIR (the demo's node and admin keys).
func (c *child) checkClean(sig string) {
	c.t.Helper()
	stderr := c.errLog.String()
	for _, bad := range []string{"panic", "context canceled", "goroutine "} {
		if strings.Contains(stderr, bad) {
			c.t.Errorf("stderr has %q:\n%s", bad, stderr)
		}
	}
	if sig != "" && !strings.Contains(stderr, "stopped by signal "+sig) {
		c.t.Errorf("stderr does not name %s:\n%s", sig, stderr)
	}
	left, _ := os.ReadDir(c.tmp)
	for _, e := range left {
		c.t.Errorf("left behind in TMPDIR: %s", e.Name())
	}
}

// TestInterruptIsACleanStop sends real signals to the sipmesh binary in
// the middle of a simulation or a demo: each stops with its partial
// results on stdout, exit status 128+signal, no panic, and no temporary
// key directory left.
func TestInterruptIsACleanStop(t *testing.T) {
	bin := buildSipmesh(t)
	signalled := []struct {
		name    string
		args    []string
		after   string // stderr line to wait for before the signal
		sig     syscall.Signal
		sigName string
		stdout  string
	}{
		// Killed during the writes, sim dht used to dereference a nil op
		// (dhtsim/sim.go:504); the "ring consistent" line comes just before.
		{"sim dht SIGINT", []string{"sim", "dht", "--nodes", "300"}, "ring consistent", syscall.SIGINT, "SIGINT", "partial results"},
		{"sim SIGINT", []string{"sim", "--nodes", "300", "--churn", "0.1"}, "nodes built", syscall.SIGINT, "SIGINT", "partial results"},
		{"demo SIGINT", []string{"demo", "--loss", "0.02"}, "ring formed", syscall.SIGINT, "SIGINT", "interrupted"},
		{"demo SIGTERM", []string{"demo"}, "mesh:", syscall.SIGTERM, "SIGTERM", "interrupted"},
		{"demo SIGHUP", []string{"demo"}, "ring formed", syscall.SIGHUP, "SIGHUP", "interrupted"},
	}
	for _, tt := range signalled {
		t.Run(tt.name, func(t *testing.T) {
			c := startChild(t, bin, tt.args...)
			c.waitLine(tt.after)
			c.cmd.Process.Signal(tt.sig)
			if code := c.wait(); code != 128+int(tt.sig) {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, 128+int(tt.sig), c.errLog.String())
			}
			if !strings.Contains(c.stdout.String(), tt.stdout) {
				t.Errorf("stdout lacks %q:\n%s", tt.stdout, c.stdout.String())
			}
			c.checkClean(tt.sigName)
		})
	}

	// `sipmesh demo 2>&1 | head -1`: the reader goes away, the next
	// progress line raises SIGPIPE. The Go runtime's default would kill
	// the process with the key directories on disk.
	t.Run("demo SIGPIPE", func(t *testing.T) {
		c := &child{t: t, tmp: t.TempDir()}
		c.cmd = exec.Command(bin, "demo")
		c.cmd.Env = append(os.Environ(), "TMPDIR="+c.tmp)
		c.cmd.Stdout = &c.stdout
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		c.cmd.Stderr = w
		if err := c.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		w.Close()
		first, err := bufio.NewReader(r).ReadString('\n')
		if err != nil || !strings.Contains(first, "mesh:") {
			t.Fatalf("first line %q, %v", first, err)
		}
		r.Close()
		err = c.cmd.Wait()
		if code := c.cmd.ProcessState.ExitCode(); code != 128+int(syscall.SIGPIPE) {
			t.Errorf("exit %d (%v), want %d", code, err, 128+int(syscall.SIGPIPE))
		}
		c.checkClean("")
	})

	// A second Ctrl-C does not wait for the shutdown, but still removes
	// the keys.
	t.Run("demo twice SIGINT", func(t *testing.T) {
		c := startChild(t, bin, "demo")
		c.waitLine("ring formed")
		c.cmd.Process.Signal(syscall.SIGINT)
		c.cmd.Process.Signal(syscall.SIGINT)
		if code := c.wait(); code != 130 {
			t.Errorf("exit %d, want 130; stderr:\n%s", code, c.errLog.String())
		}
		c.checkClean("")
	})
}
