// Package repotest holds tests of the repository as a whole rather than of
// code: that it stands alone (no file names a path outside it, or design
// notes it does not contain) and that scripts/test-deps.sh, the one list of
// Debian packages `make test` and CI install, names every package a test
// needs. It has no non-test code.
package repotest
