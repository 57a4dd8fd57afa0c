package main

import (
	"strings"
	"testing"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
)

// TestAliasCommand: sipmesh alias set, show and del through a node's
// control socket (the DHT of a node alone); bad names, targets and
// argument counts are usage errors.
func TestAliasCommand(t *testing.T) {
	leakcheck.Check(t)
	sock, _ := startNode(t, "n1", "")
	runSteps(t, []cliStep{
		{[]string{"alias", "show", "--control", sock, "doctor"}, 0, "doctor is no alias"},
		{[]string{"alias", "set", "--control", sock, "doctor", "205"}, 0, "doctor → 205"},
		{[]string{"alias", "show", "--control", sock, "doctor"}, 0, "doctor → 205"},
		{[]string{"alias", "set", "--control", sock, "doctor", "sip:206@mesh"}, 0, "doctor → sip:206@mesh"},
		{[]string{"alias", "show", "--control", sock, "doctor"}, 0, "doctor → sip:206@mesh"},
		{[]string{"alias", "del", "--control", sock, "doctor"}, 0, "alias doctor deleted"},
		{[]string{"alias", "show", "--control", sock, "doctor"}, 0, "doctor is no alias"},
		{[]string{"alias", "set", "--control", sock, "doctor", "tel:+1"}, 2, ""},
		{[]string{"alias", "set", "--control", sock, "doc tor", "205"}, 2, ""},
		{[]string{"alias", "set", "--control", sock, "doctor"}, 2, ""},
		{[]string{"alias", "rename", "doctor"}, 2, ""},
		{[]string{"alias"}, 2, ""},
	})
}

// cliStep is one command of a CLI test: its arguments, the exit code and
// a part of stdout it must print.
type cliStep struct {
	args []string
	code int
	out  string
}

// runSteps runs the steps in order through runMain.
func runSteps(t *testing.T, steps []cliStep) {
	t.Helper()
	for _, step := range steps {
		code, stdout, stderr := run(t, step.args...)
		if code != step.code || !strings.Contains(stdout, step.out) {
			t.Errorf("%q: exit %d, stdout %q, want %d and %q\n%s", step.args, code, stdout, step.code, step.out, stderr)
		}
	}
}

// TestDIDCommand: sipmesh did maps a provider's number to an extension
// (a dial-plan alias whose name is a number); a name that is no number
// is a usage error.
func TestDIDCommand(t *testing.T) {
	leakcheck.Check(t)
	sock, _ := startNode(t, "n1", "")
	runSteps(t, []cliStep{
		{[]string{"did", "show", "--control", sock, "5550100"}, 0, "5550100 is no did"},
		{[]string{"did", "set", "--control", sock, "5550100", "201"}, 0, "5550100 → 201"},
		{[]string{"alias", "show", "--control", sock, "5550100"}, 0, "5550100 → 201"},
		{[]string{"did", "set", "--control", sock, "15550101", "202"}, 0, "15550101 → 202"},
		{[]string{"did", "del", "--control", sock, "5550100"}, 0, "did 5550100 deleted"},
		{[]string{"did", "show", "--control", sock, "5550100"}, 0, "5550100 is no did"},
		{[]string{"did", "set", "--control", sock, "doctor", "205"}, 2, ""},
		{[]string{"did", "set", "--control", sock, "+15550101", "205"}, 2, ""},
		{[]string{"did"}, 2, ""},
	})
}
