package main

import (
	"testing"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
)

// TestForwardCommand: sipmesh forward show and set through a node's
// control socket; bad extensions, targets and argument counts are usage
// errors.
func TestForwardCommand(t *testing.T) {
	leakcheck.Check(t)
	sock, _ := startNode(t, "n1", "")
	runSteps(t, []cliStep{
		{[]string{"forward", "show", "--control", sock, "201"}, 0, "201: no forwarding"},
		{[]string{"forward", "set", "--control", sock, "--always", "202", "201"}, 0, "201: always → 202"},
		{[]string{"forward", "show", "--control", sock, "201"}, 0, "201: always → 202"},
		{[]string{"forward", "set", "--control", sock, "--busy", "203", "--no-answer", "204", "--after", "15s", "201"}, 0,
			"201: busy → 203, no answer after 15s → 204"},
		{[]string{"forward", "show", "--control", sock, "201"}, 0, "201: busy → 203, no answer after 15s → 204"},
		{[]string{"forward", "set", "--control", sock, "201"}, 0, "201: no forwarding"},
		{[]string{"forward", "set", "--control", sock, "--always", "201", "201"}, 2, ""},
		{[]string{"forward", "set", "--control", sock, "--always", "x y", "201"}, 2, ""},
		{[]string{"forward", "show", "--control", sock}, 2, ""},
		{[]string{"forward", "move", "201"}, 2, ""},
		{[]string{"forward"}, 2, ""},
	})
}
