// Package deptest holds a test that enforces the import direction between
// sipmesh's packages (docs/CONVENTIONS.md, "Shape"): protocol packages stay
// independent of the node daemon that wires them, the socket interface
// depends on nothing, and only cmd/sipmesh is a main package (besides
// internal/testsum, a helper of `make test` that never ships). It has no
// non-test code; the rules live in deptest_test.go.
package deptest
