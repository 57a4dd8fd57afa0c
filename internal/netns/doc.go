// Package netns builds throw-away Linux network namespaces for tests and
// benchmarks: uniquely named namespaces (prefix "smt-<pid>-"), veth pairs
// between them, links set up and down, commands run inside ("ip netns
// exec"), and a netx.Network (Network) that opens sockets inside a
// namespace from this process, so the same service code runs on real kernel
// sockets in several namespaces of one test binary.
//
// Everything it creates is removed by t.Cleanup, and only what it created:
// namespaces of other tests or of the host are never touched. Tests that
// need it call RequireRoot first: without root they are skipped with a loud
// message on a developer's machine (and listed at the end of `make test`),
// and they fail in CI (CI=true) and as root without ip or sysctl, because a
// real-network test must run rather than skip silently
// (docs/CONVENTIONS.md, "Tests").
//
// The package is Linux-only.
package netns
