package deptest

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/sipmesh/sipmesh"

// pkg is the part of `go list -json` output the rules read.
type pkg struct {
	ImportPath   string
	Name         string
	Imports      []string // direct imports of the non-test files
	Deps         []string // transitive imports of the non-test files
	TestImports  []string
	XTestImports []string
	Error        *struct{ Err string }
}

// loadPackages lists every package of the module with the go command.
// golang.org/x/tools/go/packages would do the same through a dependency; the
// go command is already there, and `go test` puts the running toolchain's go
// first on PATH.
func loadPackages(t *testing.T) []pkg {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go command not found: %v", err)
	}
	// -e: a package someone is still writing may not compile; the rules
	// still apply to the imports it declares, and go vet reports the rest.
	cmd := exec.Command(gobin, "list", "-e", "-json", module+"/...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	var pkgs []pkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decoding go list output: %v", err)
		}
		if p.Error != nil {
			t.Logf("%s does not load (rules checked on what it declares): %s", p.ImportPath, p.Error.Err)
		}
		pkgs = append(pkgs, p)
	}
	if !slices.ContainsFunc(pkgs, func(p pkg) bool { return p.ImportPath == module+"/cmd/sipmesh" }) {
		t.Fatalf("go list did not find %s/cmd/sipmesh; is the test running inside the module?", module)
	}
	return pkgs
}

// under reports whether import path p is the module's package rel or one of
// its subpackages.
func under(p, rel string) bool {
	full := module + "/" + rel
	return p == full || strings.HasPrefix(p, full+"/")
}

func inModule(p string) bool { return p == module || strings.HasPrefix(p, module+"/") }

func rel(p string) string { return strings.TrimPrefix(p, module+"/") }

// TestOnlyCmdSipmeshIsMain: there is one binary; every other package is a
// library the daemon links in. The exception is internal/testsum, a helper
// `make test` runs on the build machine that never ships.
func TestOnlyCmdSipmeshIsMain(t *testing.T) {
	for _, p := range loadPackages(t) {
		if p.Name == "main" && p.ImportPath != module+"/cmd/sipmesh" && p.ImportPath != module+"/internal/testsum" {
			t.Errorf("%s is package main; only cmd/sipmesh may be (add a subcommand there instead)", rel(p.ImportPath))
		}
	}
}

// TestImportDirection checks that lower layers never depend on higher ones.
// Rules look at what a package's non-test code pulls in transitively (Deps),
// because that is what ends up in the router binary and what a cycle would
// form through; tests may use other packages' fakes.
func TestImportDirection(t *testing.T) {
	// The application packages that only gateway wires together.
	app := []string{"gateway", "sipalg", "dns64", "provisioning", "phones", "nat64"}

	rules := []struct {
		name    string
		applies func(p string) bool   // to the importing package
		allowed func(dep string) bool // for a dependency inside the module
		why     string                // printed on violation
	}{
		{
			name:    "netx",
			applies: func(p string) bool { return under(p, "netx") },
			allowed: func(dep string) bool { return under(dep, "netx") },
			why:     "netx is the socket interface everything else implements or uses; it imports nothing from sipmesh",
		},
		{
			name:    "memnet",
			applies: func(p string) bool { return under(p, "memnet") },
			allowed: func(dep string) bool { return under(dep, "memnet") || under(dep, "netx") },
			why:     "memnet is the in-memory network every package's tests use; it may import only netx",
		},
		{
			name:    "ssr",
			applies: func(p string) bool { return under(p, "ssr") },
			allowed: func(dep string) bool {
				return !slices.ContainsFunc(app, func(a string) bool { return under(dep, a) })
			},
			why: "mesh routing and the DHT are below the telephone services; only gateway wires them together",
		},
	}
	for _, p := range loadPackages(t) {
		for _, r := range rules {
			if !r.applies(p.ImportPath) {
				continue
			}
			for _, dep := range p.Deps {
				if inModule(dep) && !r.allowed(dep) {
					t.Errorf("%s imports %s: %s", rel(p.ImportPath), rel(dep), r.why)
				}
			}
		}
	}
}

// TestNothingImportsCmd: commands are leaves; code shared by a command and
// anything else belongs in a library package. Test imports count here too,
// since a test importing a command's package would be testing the wrong
// layer.
func TestNothingImportsCmd(t *testing.T) {
	for _, p := range loadPackages(t) {
		imports := slices.Concat(p.Imports, p.TestImports, p.XTestImports)
		for _, imp := range imports {
			if under(imp, "cmd") && imp != p.ImportPath {
				t.Errorf("%s imports %s; nothing may import a command", rel(p.ImportPath), rel(imp))
			}
		}
	}
}

// TestRulesCatchViolations guards the rule helpers against silently
// matching nothing, e.g. after a module rename.
func TestRulesCatchViolations(t *testing.T) {
	for _, tt := range []struct {
		path, rel string
		want      bool
	}{
		{module + "/ssr", "ssr", true},
		{module + "/ssr/dht", "ssr", true},
		{module + "/ssrx", "ssr", false},
		{"example.com/ssr", "ssr", false},
		{module + "/cmd/sipmesh", "cmd", true},
	} {
		if got := under(tt.path, tt.rel); got != tt.want {
			t.Errorf("under(%q, %q) = %v, want %v", tt.path, tt.rel, got, tt.want)
		}
	}
	if inModule("github.com/sipmesh/sipmeshx") {
		t.Error(`inModule("github.com/sipmesh/sipmeshx") = true, want false`)
	}
}
