package deptest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
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

// rule is one allowed import direction: for the packages it applies to,
// which of the module's packages their non-test code may depend on.
type rule struct {
	name    string
	applies func(p string) bool   // to the importing package
	allowed func(dep string) bool // for a dependency inside the module
	why     string                // printed on violation
}

// anyOf reports whether p is one of the module packages rels (or below).
func anyOf(p string, rels ...string) bool {
	return slices.ContainsFunc(rels, func(r string) bool { return under(p, r) })
}

// none allows no dependency among rels.
func none(rels ...string) func(string) bool {
	return func(dep string) bool { return !anyOf(dep, rels...) }
}

// The layers, bottom up:
//
//	netx ← memnet, sipnet, the protocol packages, ssr ← registrar ← proxy ← gateway ← cmd/sipmesh
//	                                         phones (features, simulated phone) ← proxy
//
// The SIP roles are the registrar (REGISTER, digest, accounts, location),
// the proxy (RFC 3261 §16, call legs, the SIP service) and the features
// in phones; sipnet is the transport layer they share; gateway is the
// daemon that wires everything.
var (
	// app are the packages above mesh routing: only gateway wires them
	// to the router and the DHT.
	app = []string{"gateway", "registrar", "proxy", "sipnet", "sipalg", "dns64", "provisioning", "phones", "nat64", "uplink"}
	// protocols are the packages of one protocol each, below every SIP
	// role and the daemon.
	protocols = []string{"sipalg", "dns64", "provisioning", "nat64"}

	rules = []rule{
		{
			name:    "netx",
			applies: func(p string) bool { return under(p, "netx") },
			allowed: func(dep string) bool { return under(dep, "netx") },
			why:     "netx is the socket interface everything else implements or uses; it imports nothing from sipmesh",
		},
		{
			name:    "memnet",
			applies: func(p string) bool { return under(p, "memnet") },
			allowed: func(dep string) bool { return anyOf(dep, "memnet", "netx") },
			why:     "memnet is the in-memory network every package's tests use; it may import only netx",
		},
		{
			name:    "ssr",
			applies: func(p string) bool { return under(p, "ssr") },
			allowed: none(app...),
			why:     "mesh routing and the DHT are below the telephone services; only gateway wires them together",
		},
		{
			name:    "sipnet",
			applies: func(p string) bool { return under(p, "sipnet") },
			allowed: func(dep string) bool { return under(dep, "sipnet") },
			why:     "sipnet is the SIP transport layer below every SIP role; it imports nothing from sipmesh",
		},
		{
			name:    "protocols",
			applies: func(p string) bool { return anyOf(p, protocols...) },
			allowed: none("gateway", "registrar", "proxy", "phones"),
			why:     "the protocol packages (SIP ALG, DNS64, DHCP, NAT64) know no SIP role and no daemon",
		},
		{
			name:    "phones",
			applies: func(p string) bool { return under(p, "phones") },
			allowed: none("gateway", "registrar", "proxy"),
			why:     "features and the simulated phone are below the roles: the proxy calls the features (phones.EchoHost), never the reverse",
		},
		{
			name:    "registrar",
			applies: func(p string) bool { return under(p, "registrar") },
			allowed: none("gateway", "proxy", "phones"),
			why:     "the registrar (REGISTER, location, accounts) is below the proxy, the features and the daemon, which build on it",
		},
		{
			name:    "uplink",
			applies: func(p string) bool { return under(p, "uplink") },
			allowed: none("gateway", "registrar", "proxy", "phones"),
			why:     "the Internet uplink (RFC 3263 location, trunks) is a SIP client below the roles: the proxy will call it, never the reverse",
		},
		{
			name:    "proxy",
			applies: func(p string) bool { return under(p, "proxy") },
			allowed: none("gateway"),
			why:     "the proxy is a SIP role; only the daemon (gateway) starts it",
		},
	}
)

// violations lists the forbidden dependencies among pkgs. Rules look at
// what a package's non-test code pulls in transitively (Deps), because
// that is what ends up in the router binary and what a cycle would form
// through; tests may use other packages' fakes.
func violations(pkgs []pkg) []string {
	var out []string
	for _, p := range pkgs {
		for _, r := range rules {
			if !r.applies(p.ImportPath) {
				continue
			}
			for _, dep := range p.Deps {
				if inModule(dep) && !r.allowed(dep) {
					out = append(out, fmt.Sprintf("%s imports %s (rule %s): %s", rel(p.ImportPath), rel(dep), r.name, r.why))
				}
			}
		}
	}
	return out
}

// TestImportDirection checks that lower layers never depend on higher ones.
func TestImportDirection(t *testing.T) {
	for _, v := range violations(loadPackages(t)) {
		t.Error(v)
	}
}

// TestImportRulesFail shows that the rules fail on a forbidden import:
// each synthetic package below adds one, and the legal ones pass.
func TestImportRulesFail(t *testing.T) {
	m := func(rel string) string { return module + "/" + rel }
	for _, tt := range []struct {
		name     string
		pkg, dep string
		wantRule string // "" for a legal import
	}{
		{"registrar imports proxy", "registrar", "proxy", "registrar"},
		{"registrar imports the daemon", "registrar", "gateway", "registrar"},
		{"feature imports the daemon", "phones", "gateway", "phones"},
		{"feature imports the proxy", "phones", "proxy", "phones"},
		{"feature imports the registrar", "phones", "registrar", "phones"},
		{"transport imports the registrar", "sipnet", "registrar", "sipnet"},
		{"transport imports the proxy", "sipnet", "proxy", "sipnet"},
		{"transport imports ssr", "sipnet", "ssr", "sipnet"},
		{"proxy imports the daemon", "proxy", "gateway", "proxy"},
		{"ALG imports the proxy", "sipalg", "proxy", "protocols"},
		{"DNS64 imports the daemon", "dns64", "gateway", "protocols"},
		{"DHT imports the registrar", "ssr/dht", "registrar", "ssr"},
		{"netx imports memnet", "netx", "memnet", "netx"},
		{"proxy imports registrar", "proxy", "registrar", ""},
		{"proxy imports phones", "proxy", "phones", ""},
		{"registrar imports sipnet", "registrar", "sipnet", ""},
		{"phones imports sipnet", "phones", "sipnet", ""},
		{"gateway imports everything", "gateway", "proxy", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := violations([]pkg{{ImportPath: m(tt.pkg), Deps: []string{m(tt.dep), "net/netip"}}})
			switch {
			case tt.wantRule == "" && len(got) != 0:
				t.Errorf("legal import reported: %v", got)
			case tt.wantRule != "" && len(got) == 0:
				t.Errorf("%s → %s not reported", tt.pkg, tt.dep)
			case tt.wantRule != "" && !strings.Contains(got[0], "(rule "+tt.wantRule+")"):
				t.Errorf("reported %q, want rule %s", got[0], tt.wantRule)
			}
		})
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
