// Package deptest holds a test that enforces the import direction between
// sipmesh's packages (docs/CONVENTIONS.md, "Shape"): the socket interface
// depends on nothing, mesh routing knows no SIP, the SIP transport (sipnet)
// is below the SIP roles, the registrar imports neither the proxy nor the
// features, the features (phones) import no SIP role and no daemon, only the
// daemon (gateway) wires the roles together, and only cmd/sipmesh is a main
// package (besides internal/testsum, a helper of `make test` that never
// ships). It has no non-test code; the rules and a test showing that a
// forbidden import fails them live in deptest_test.go.
package deptest
