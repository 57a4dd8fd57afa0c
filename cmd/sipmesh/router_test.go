package main

import (
	"bytes"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestRouterBuild builds the binary as `make cross` builds it for routers
// (-tags router) and checks that it still runs a node and that the
// developer tools it leaves out say so instead of vanishing.
func TestRouterBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a binary")
	}
	bin := filepath.Join(t.TempDir(), "sipmesh")
	build := exec.Command("go", "build", "-tags", "router", "-o", bin, ".")
	build.Env = append(build.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build -tags router: %v\n%s", err, out)
	}
	run := func(args ...string) (string, int) {
		var out bytes.Buffer
		cmd := exec.Command(bin, args...)
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		var ee *exec.ExitError
		switch {
		case err == nil:
			return out.String(), 0
		case errors.As(err, &ee):
			return out.String(), ee.ExitCode()
		default:
			t.Fatalf("%v: %v", args, err)
			return "", -1
		}
	}
	for _, tool := range []string{"demo", "sim"} {
		out, code := run(tool)
		if code == 0 || !strings.Contains(out, "router build leaves out") || !strings.Contains(out, "make build") {
			t.Errorf("router build: sipmesh %s exited %d with %q; want a non-zero exit that names the PC build", tool, code, out)
		}
	}
	if out, code := run("node", "--help"); code != 0 || !strings.Contains(out, "lan-interface") {
		t.Errorf("router build: sipmesh node --help exited %d: %q", code, out)
	}
}
