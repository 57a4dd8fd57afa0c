//go:build linux

package packaging

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// chroot makes a throwaway root that maintainer scripts can run in: busybox
// (with the libraries it links) as /bin/sh and the few commands the scripts
// use, and /dev/null. Nothing in it reaches this machine's services: there
// is no systemctl, no /run/systemd and no procd inside.
func chroot(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("\n*** SKIPPED: installing into a throwaway root needs root (chroot, mknod). Run `go test` as root (as CI does) to cover it. ***")
	}
	root := t.TempDir()
	bb := busybox(t)
	copyFile(t, bb, filepath.Join(root, "bin/busybox"), 0o755)
	out, err := exec.Command("ldd", bb).Output()
	if err != nil && !strings.Contains(string(out), "not a dynamic executable") {
		t.Fatalf("ldd %s: %v", bb, err)
	}
	for _, f := range strings.Fields(string(out)) {
		if strings.HasPrefix(f, "/") {
			copyFile(t, f, filepath.Join(root, f), 0o755)
		}
	}
	for _, cmd := range []string{"sh", "rm", "rmdir", "mkdir", "echo", "cat", "touch"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", cmd)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "dev"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mknod", "-m", "666", filepath.Join(root, "dev/null"), "c", "1", "3").CombinedOutput(); err != nil {
		t.Fatalf("mknod: %v\n%s", err, out)
	}
	return root
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	copyBytes(t, to, b, mode)
}

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	copyBytes(t, path, []byte(body), 0o644)
}

// exists reports whether path is there, failing t on errors other than
// absence.
func exists(t *testing.T, path string) bool {
	t.Helper()
	_, err := os.Lstat(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return err == nil
}

func buildTestPackage(t *testing.T, format Format, arch string) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	s := Spec{Format: format, Arch: arch, Version: "1.0", Maintainer: "test", Binary: bin, MTime: time.Unix(0, 0)}
	var buf bytes.Buffer
	if err := Build(&buf, s); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, s.FileName())
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestDebInstallRemovePurge has dpkg install the .deb into a throwaway
// root (dpkg --root runs the maintainer scripts chrooted there), reinstall
// it over an edited config, remove it and purge it: remove keeps the
// config and the node's state, purge leaves nothing of sipmesh.
func TestDebInstallRemovePurge(t *testing.T) {
	if _, err := exec.LookPath("dpkg"); err != nil {
		t.Fatalf("needs dpkg (Debian package dpkg): %v", err)
	}
	root := chroot(t)
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(root, "var/lib/dpkg/status"), "")
	deb := buildTestPackage(t, Deb, "amd64")
	dpkg := func(args ...string) {
		t.Helper()
		// --force-bad-path: the throwaway root has no ldconfig or
		// start-stop-daemon, which dpkg looks for on PATH.
		cmd := exec.Command("dpkg", append([]string{"--root=" + root, "--force-bad-path", "--force-confold", "--log=/dev/null"}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil || bytes.Contains(out, []byte("can't")) || bytes.Contains(out, []byte("not found")) {
			t.Fatalf("dpkg %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		t.Logf("dpkg %s:\n%s", strings.Join(args, " "), out)
	}
	in := func(p string) string { return filepath.Join(root, p) }

	dpkg("--install", deb)
	for _, p := range []string{"usr/bin/sipmesh", "etc/sipmesh/sipmesh.conf", "lib/systemd/system/sipmesh.service"} {
		if !exists(t, in(p)) {
			t.Errorf("/%s not installed", p)
		}
	}
	// What a running node and its administrator leave behind.
	writeFile(t, in("var/lib/sipmesh/node.key"), "key")
	writeFile(t, in("etc/sipmesh/admin.key"), "admin")
	conf, err := os.ReadFile(in("etc/sipmesh/sipmesh.conf"))
	if err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(string(conf), "mesh-interface mesh0", "mesh-interface wlan0", 1)
	writeFile(t, in("etc/sipmesh/sipmesh.conf"), edited)

	dpkg("--install", deb) // an upgrade: postinst configure with the old version
	if b, _ := os.ReadFile(in("etc/sipmesh/sipmesh.conf")); string(b) != edited {
		t.Errorf("reinstalling lost the edited config:\n%s", b)
	}

	dpkg("--remove", "sipmesh")
	for _, p := range []string{"usr/bin/sipmesh", "lib/systemd/system/sipmesh.service"} {
		if exists(t, in(p)) {
			t.Errorf("/%s left after remove", p)
		}
	}
	for _, p := range []string{"etc/sipmesh/sipmesh.conf", "var/lib/sipmesh/node.key"} {
		if !exists(t, in(p)) {
			t.Errorf("/%s gone after remove; only purge deletes config and state", p)
		}
	}

	dpkg("--purge", "sipmesh")
	for _, p := range []string{"etc/sipmesh", "var/lib/sipmesh"} {
		if exists(t, in(p)) {
			t.Errorf("/%s left after purge", p)
		}
	}
}

// TestIPKScripts runs the .ipk's maintainer scripts in a throwaway root the
// way opkg does (there is no opkg on Debian): postinst after unpacking,
// prerm and postrm around deleting the files. A stub /etc/init.d/sipmesh
// records what the scripts ask of procd's init script.
func TestIPKScripts(t *testing.T) {
	root := chroot(t)
	ipk := buildTestPackage(t, IPK, OpenWrtArch["mipsle"])
	raw, err := os.ReadFile(ipk)
	if err != nil {
		t.Fatal(err)
	}
	outer, _ := readTarGz(t, raw)
	control, _ := readTarGz(t, outer["./control.tar.gz"].body)
	data, _ := readTarGz(t, outer["./data.tar.gz"].body)
	for name, f := range data {
		if !f.dir && name != "./etc/init.d/sipmesh" {
			copyBytes(t, filepath.Join(root, name), f.body, os.FileMode(f.mode))
		}
	}
	for _, sc := range []string{"postinst", "prerm", "postrm"} {
		copyBytes(t, filepath.Join(root, "usr/lib/opkg/info/sipmesh."+sc), control["./"+sc].body, 0o755)
	}
	copyBytes(t, filepath.Join(root, "etc/init.d/sipmesh"), []byte("#!/bin/sh\necho \"$1\" >> /initd.log\n"), 0o755)
	run := func(script, arg string, env ...string) {
		t.Helper()
		cmd := exec.Command("chroot", root, "/usr/lib/opkg/info/sipmesh."+script, arg)
		cmd.Env = append([]string{"PATH=/bin"}, env...)
		if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
			t.Fatalf("%s %s: %v\n%s", script, arg, err, out)
		}
	}
	initLog := func() string {
		b, _ := os.ReadFile(filepath.Join(root, "initd.log"))
		os.Remove(filepath.Join(root, "initd.log"))
		return strings.ReplaceAll(string(b), "\n", " ")
	}

	// Building a firmware image: nothing is enabled or started by the
	// script (the image builder enables init scripts itself).
	run("postinst", "configure", "IPKG_INSTROOT=/build/root")
	if got := initLog(); got != "" {
		t.Errorf("postinst in an image build called the init script: %q", got)
	}
	run("postinst", "configure")
	if got, want := initLog(), "enable restart "; got != want {
		t.Errorf("postinst: init script called with %q, want %q", got, want)
	}
	writeFile(t, filepath.Join(root, "etc/sipmesh/state/node.key"), "key")
	writeFile(t, filepath.Join(root, "var/run/sipmesh/sipmesh.sock"), "")

	run("prerm", "remove")
	if got, want := initLog(), "stop disable "; got != want {
		t.Errorf("prerm: init script called with %q, want %q", got, want)
	}
	// opkg deletes the package's files (keeping a modified conffile).
	for name, f := range data {
		if !f.dir {
			os.Remove(filepath.Join(root, name))
		}
	}
	run("postrm", "remove")
	for _, p := range []string{"etc/sipmesh", "var/run/sipmesh"} {
		if exists(t, filepath.Join(root, p)) {
			t.Errorf("/%s left after removal", p)
		}
	}

	// An administrator key placed by hand is never deleted: it may be the
	// mesh's only copy.
	writeFile(t, filepath.Join(root, "etc/sipmesh/admin.key"), "admin")
	writeFile(t, filepath.Join(root, "etc/sipmesh/state/node.key"), "key")
	run("postrm", "remove")
	if !exists(t, filepath.Join(root, "etc/sipmesh/admin.key")) || exists(t, filepath.Join(root, "etc/sipmesh/state")) {
		t.Error("postrm must delete the state and keep an admin key")
	}
}

func copyBytes(t *testing.T, path string, b []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, mode); err != nil {
		t.Fatal(err)
	}
}
