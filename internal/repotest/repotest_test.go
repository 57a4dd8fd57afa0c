package repotest

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// root is the repository, from this package's directory.
const root = "../.."

// files lists the repository's files relative to root: what git tracks (and
// what is new but not ignored), or, outside a git checkout (an exported
// tarball), every file but .git and bin.
func files(t *testing.T) []string {
	t.Helper()
	if git, err := exec.LookPath("git"); err == nil {
		cmd := exec.Command(git, "ls-files", "--cached", "--others", "--exclude-standard")
		cmd.Dir = root
		if out, err := cmd.Output(); err == nil {
			var fs []string
			for _, f := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				if f == "" {
					continue
				}
				if _, err := os.Stat(filepath.Join(root, f)); err == nil { // deleted but still tracked: skip
					fs = append(fs, f)
				}
			}
			return fs
		}
	}
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() && (rel == ".git" || rel == "bin") {
			return filepath.SkipDir
		}
		if !d.IsDir() {
			out = append(out, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// textFile reports whether f is source or documentation this test reads:
// Go, Markdown, the Makefile, CI and scripts. Test data (corpora, fuzz
// inputs) is not prose and may hold anything.
func textFile(f string) bool {
	switch {
	case strings.HasSuffix(f, ".go"), strings.HasSuffix(f, ".md"),
		f == "Makefile", f == "go.mod", f == ".gitignore",
		strings.HasPrefix(f, ".ci/"), strings.HasPrefix(f, "scripts/"):
		return true
	}
	return false
}

// TestStandsAlone: no file names a path outside the repository, so a clone
// anywhere finds everything it refers to. Design notes are cited by their
// place in the repository, docs/.
func TestStandsAlone(t *testing.T) {
	// Built from pieces so that this file does not match itself.
	outside := []string{"../" + "shared", "shared" + "/peers", "shared" + "/research", "shared" + "/seeds", "/" + "work/", "/" + "home/", "/" + "root/"}
	// A bare DESIGN.md or CONVENTIONS.md in Go code points nowhere: they
	// live in docs/.
	bareDoc := regexp.MustCompile(`(^|[^/\w])(DESIGN\.md|CONVENTIONS)\b`)
	n := 0
	for _, f := range files(t) {
		if !textFile(f) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		n++
		for i, line := range strings.Split(string(b), "\n") {
			for _, o := range outside {
				if strings.Contains(line, o) {
					t.Errorf("%s:%d names %q, a path outside the repository: bring what it needs into the repository (testdata/, docs/)\n\t%s", f, i+1, o, strings.TrimSpace(line))
				}
			}
			if strings.HasSuffix(f, ".go") && !strings.HasPrefix(f, "internal/repotest/") && bareDoc.MatchString(line) {
				t.Errorf("%s:%d cites a design note without its place: write docs/DESIGN.md or docs/CONVENTIONS.md\n\t%s", f, i+1, strings.TrimSpace(line))
			}
		}
	}
	if n < 50 {
		t.Fatalf("read only %d source and documentation files; is the test running inside the repository?", n)
	}
}

// depsList parses the package table of scripts/test-deps.sh: package name →
// the command that proves it.
func depsList(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "scripts/test-deps.sh"))
	if err != nil {
		t.Fatal(err)
	}
	entry := regexp.MustCompile(`(?m)^\s*"([a-z0-9][a-z0-9.+-]*)\|([^|"]*)\|[^"]*"\s*$`)
	pkgs := make(map[string]string)
	for _, m := range entry.FindAllStringSubmatch(string(b), -1) {
		pkgs[m[1]] = m[2]
	}
	if len(pkgs) < 5 {
		t.Fatalf("scripts/test-deps.sh: found %d package entries; did its format change?", len(pkgs))
	}
	return pkgs
}

// TestDepsListed: every Debian package a test or benchmark names, and every
// tool it looks up on PATH, is in scripts/test-deps.sh, so `make test` as
// root installs it rather than the test failing on a fresh machine.
func TestDepsListed(t *testing.T) {
	pkgs := depsList(t)
	cmds := map[string]bool{"go": true} // go is the toolchain, not a Debian package
	for _, c := range pkgs {
		if c != "" {
			cmds[c] = true
		}
	}
	var (
		// "Debian package unbound", in the messages of tests that need it.
		debPkg = regexp.MustCompile(`Debian package ([a-z0-9][a-z0-9.+-]*[a-z0-9+])`)
		// need(t, "sipsak", "sipsak"), needTool(t, "dig", "dnsutils")
		needCall = regexp.MustCompile(`need\w*\(\w+, "([^"]+)", "([^"]+)"\)`)
		// requireTools(t, map[string]string{"dig": "dnsutils", ...})
		reqTools = regexp.MustCompile(`requireTools\(\w+, map\[string\]string\{([^}]*)\}`)
		pair     = regexp.MustCompile(`"([^"]+)":\s*"([^"]+)"`)
		lookPath = regexp.MustCompile(`exec\.LookPath\("([^"]+)"\)`)
	)
	checked := 0
	for _, f := range files(t) {
		if !strings.HasSuffix(f, "_test.go") && !strings.HasPrefix(f, "internal/netns/") {
			continue
		}
		if strings.HasPrefix(f, "internal/repotest/") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		src := string(b)
		wantPkg := func(p string) {
			checked++
			if _, ok := pkgs[p]; !ok {
				t.Errorf("%s needs Debian package %s, which scripts/test-deps.sh does not list: add it there", f, p)
			}
		}
		for _, m := range debPkg.FindAllStringSubmatch(src, -1) {
			wantPkg(m[1])
		}
		for _, m := range needCall.FindAllStringSubmatch(src, -1) {
			cmds[m[1]] = true
			wantPkg(m[2])
		}
		for _, m := range reqTools.FindAllStringSubmatch(src, -1) {
			for _, p := range pair.FindAllStringSubmatch(m[1], -1) {
				cmds[p[1]] = true
				wantPkg(p[2])
			}
		}
		for _, m := range lookPath.FindAllStringSubmatch(src, -1) {
			checked++
			if !cmds[m[1]] {
				// cmds grows as files are read; re-check at the end.
				defer func(tool, f string) {
					if !cmds[tool] {
						t.Errorf("%s looks up %q, which no package in scripts/test-deps.sh provides: add the package (with %q as its command)", f, tool, tool)
					}
				}(m[1], f)
			}
		}
	}
	if checked < 10 {
		t.Fatalf("found only %d tool and package references in the tests; did their form change?", checked)
	}
	// The list holds nothing that no test uses.
	var unused []string
	for p, c := range pkgs {
		if c == "" || p == "make" || p == "git" || p == "gcc" {
			continue // build prerequisites, not peers
		}
		if !cmds[c] {
			unused = append(unused, p)
		}
	}
	slices.Sort(unused)
	if len(unused) > 0 {
		t.Errorf("scripts/test-deps.sh lists %v, whose commands no test looks up: drop them or name the test", unused)
	}
}
