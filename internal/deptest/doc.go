// Package deptest holds a test that enforces the import direction between
// sipmesh's packages (CONVENTIONS.md, "Shape"): protocol packages stay
// independent of the node daemon that wires them, the socket interface
// depends on nothing, and only cmd/sipmesh is a main package. It has no
// non-test code; the rules live in deptest_test.go.
package deptest
