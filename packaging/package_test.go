package packaging

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/gateway"
)

// -packages checks the packages `make package` wrote as well, with their
// real binaries: go test ./packaging -packages ../bin/pkg
var packagesDir = flag.String("packages", "", "also check the packages in `DIR` (the output of make package)")

func TestDefaultConfigParses(t *testing.T) {
	for _, tt := range []struct {
		format         Format
		state, control string
	}{
		{IPK, OpenWrtStateDir, OpenWrtControl},
		{Deb, DebianStateDir, DebianControl},
	} {
		t.Run(string(tt.format), func(t *testing.T) {
			conf, err := DefaultConfig(tt.format)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(conf, []byte("@")) {
				t.Errorf("a placeholder is left in the config:\n%s", conf)
			}
			o, err := gateway.ParseConfig(bytes.NewReader(conf))
			if err != nil {
				t.Fatalf("the default config does not parse: %v\n%s", err, conf)
			}
			if o.StateDir != tt.state || o.Control != tt.control || len(o.MeshInterfaces) != 1 || o.LANInterface != "" {
				t.Errorf("state %q control %q mesh %q lan %q; want %q %q, one mesh interface, no LAN",
					o.StateDir, o.Control, o.MeshInterfaces, o.LANInterface, tt.state, tt.control)
			}
			// Every commented-out example must work once uncommented: a
			// key renamed in the parser must not leave a stale example.
			for line := range strings.Lines(string(conf)) {
				key, _, _ := strings.Cut(strings.TrimPrefix(line, "#"), " ")
				if !strings.HasPrefix(line, "#") || key == "" || key != strings.ToLower(key) || strings.ContainsAny(key, "`:(") {
					continue // prose
				}
				example := strings.TrimPrefix(line, "#")
				_, err := gateway.ParseConfig(strings.NewReader("mesh-interface m0\n" + example))
				if key == "admin-public-key" {
					// A placeholder, not a key: it must fail as a bad
					// value of a known key.
					if err == nil || !strings.Contains(err.Error(), "admin-public-key:") {
						t.Errorf("example %q: %v; want a bad-value error", strings.TrimSpace(example), err)
					}
					continue
				}
				if err != nil {
					t.Errorf("example %q: %v", strings.TrimSpace(example), err)
				}
			}
		})
	}
}

func TestSpecValidation(t *testing.T) {
	good := Spec{Format: IPK, Arch: "mipsel_24kc", Version: "1.2+git3.gabc", Maintainer: "m", Binary: "/nonexistent"}
	for _, tt := range []struct {
		name string
		edit func(*Spec)
		want string
	}{
		{"bad format", func(s *Spec) { s.Format = "rpm" }, `format "rpm"`},
		{"version from a hash", func(s *Spec) { s.Version = "c57f8d9-dirty" }, `version "c57f8d9-dirty"`},
		{"version with a space", func(s *Spec) { s.Version = "1.0 beta" }, `version "1.0 beta"`},
		{"empty arch", func(s *Spec) { s.Arch = "" }, `architecture ""`},
		{"no maintainer", func(s *Spec) { s.Maintainer = "" }, `maintainer ""`},
		{"missing binary", func(s *Spec) {}, "the binary"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := good
			tt.edit(&s)
			err := Build(io.Discard, s)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Build: %v; want an error with %q", err, tt.want)
			}
		})
	}
}

// file is one entry of an unpacked tarball.
type file struct {
	mode  int64
	dir   bool
	body  []byte
	owner string
	mtime time.Time
}

// layouts are what each format installs: path → mode (directories end
// in /). The test writes them down rather than asking the code under test.
var layouts = map[Format]map[string]int64{
	IPK: {
		"./": 0o755, "./usr/": 0o755, "./usr/bin/": 0o755, "./usr/bin/sipmesh": 0o755,
		"./etc/": 0o755, "./etc/sipmesh/": 0o755, "./etc/sipmesh/sipmesh.conf": 0o644,
		"./etc/init.d/": 0o755, "./etc/init.d/sipmesh": 0o755,
		"./lib/": 0o755, "./lib/upgrade/": 0o755, "./lib/upgrade/keep.d/": 0o755, "./lib/upgrade/keep.d/sipmesh": 0o644,
	},
	Deb: {
		"./": 0o755, "./usr/": 0o755, "./usr/bin/": 0o755, "./usr/bin/sipmesh": 0o755,
		"./etc/": 0o755, "./etc/sipmesh/": 0o755, "./etc/sipmesh/sipmesh.conf": 0o644,
		"./lib/": 0o755, "./lib/systemd/": 0o755, "./lib/systemd/system/": 0o755, "./lib/systemd/system/sipmesh.service": 0o644,
	},
}

var controlMembers = map[Format][]string{
	IPK: {"./", "./control", "./conffiles", "./postinst", "./prerm", "./postrm"},
	Deb: {"./", "./control", "./conffiles", "./postinst", "./prerm", "./postrm", "./md5sums"},
}

// TestPackages builds every package `make package` builds, around a small
// fake binary, unpacks each and checks its layout, control fields,
// conffiles and scripts.
func TestPackages(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "sipmesh")
	fake := []byte("\x7fELF not really a sipmesh binary\n")
	if err := os.WriteFile(bin, fake, 0o755); err != nil {
		t.Fatal(err)
	}
	mtime := time.Unix(1700000000, 0)
	specs := []Spec{
		{Format: IPK, Arch: OpenWrtArch["mipsle"]},
		{Format: IPK, Arch: OpenWrtArch["arm"]},
		{Format: IPK, Arch: OpenWrtArch["arm64"]},
		{Format: Deb, Arch: "amd64"},
	}
	for _, s := range specs {
		s.Version, s.Maintainer, s.Binary, s.MTime = "1.2+git3.gabc", "sipmesh developers", bin, mtime
		t.Run(s.FileName(), func(t *testing.T) {
			var buf bytes.Buffer
			if err := Build(&buf, s); err != nil {
				t.Fatal(err)
			}
			var again bytes.Buffer
			if err := Build(&again, s); err != nil || !bytes.Equal(buf.Bytes(), again.Bytes()) {
				t.Errorf("two builds differ (err %v): packages must be reproducible", err)
			}
			pkgPath := filepath.Join(t.TempDir(), s.FileName())
			if err := os.WriteFile(pkgPath, buf.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			data := checkPackage(t, pkgPath, s.Format, s.Arch, s.Version)
			if got := data["./usr/bin/sipmesh"].body; !bytes.Equal(got, fake) {
				t.Errorf("/usr/bin/sipmesh is %q, want the binary given", got)
			}
			for name, f := range data {
				if f.owner != "root:root 0:0" {
					t.Errorf("%s owned by %s, want root:root 0:0", name, f.owner)
				}
				if !f.mtime.Equal(mtime) {
					t.Errorf("%s: mtime %v, want the one given, %v", name, f.mtime, mtime)
				}
			}
			if s.Format == Deb {
				checkDpkgDeb(t, pkgPath)
			}
		})
	}
}

// TestMakePackageOutput checks the real packages of `make package` when
// -packages names their directory: each holds a static, stripped ELF
// binary for its CPU.
func TestMakePackageOutput(t *testing.T) {
	if *packagesDir == "" {
		t.Skip("run with -packages DIR to check the output of make package")
	}
	machines := map[string]elf.Machine{
		OpenWrtArch["mipsle"]: elf.EM_MIPS, OpenWrtArch["arm"]: elf.EM_ARM,
		OpenWrtArch["arm64"]: elf.EM_AARCH64, "amd64": elf.EM_X86_64,
	}
	pkgs, _ := filepath.Glob(filepath.Join(*packagesDir, "sipmesh_*"))
	if len(pkgs) != 4 {
		t.Fatalf("%s holds %d packages, want 4: %v", *packagesDir, len(pkgs), pkgs)
	}
	for _, p := range pkgs {
		t.Run(filepath.Base(p), func(t *testing.T) {
			base := strings.TrimPrefix(filepath.Base(p), "sipmesh_")
			format := Format(strings.TrimPrefix(filepath.Ext(base), "."))
			rest := strings.TrimSuffix(base, filepath.Ext(base))
			i := strings.IndexByte(rest, '_')
			version, arch := rest[:i], rest[i+1:]
			data := checkPackage(t, p, format, arch, version)
			f, err := elf.NewFile(bytes.NewReader(data["./usr/bin/sipmesh"].body))
			if err != nil {
				t.Fatalf("/usr/bin/sipmesh: %v", err)
			}
			want, ok := machines[arch]
			if !ok {
				t.Fatalf("architecture %s is not one of the defaults (IPK_ARCH_*); no CPU to check against", arch)
			}
			if f.Machine != want {
				t.Errorf("binary for %v, want %v", f.Machine, want)
			}
			for _, prog := range f.Progs {
				if prog.Type == elf.PT_INTERP {
					t.Error("binary is dynamically linked (has PT_INTERP); routers need a static one")
				}
			}
			if f.Section(".symtab") != nil {
				t.Error("binary has a symbol table: not stripped")
			}
		})
	}
}

// checkPackage unpacks the package at path and checks everything but the
// binary; it returns the data files.
func checkPackage(t *testing.T, path string, format Format, arch, version string) map[string]file {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var members []string
	var outer map[string]file
	if format == Deb {
		outer, members = readAr(t, raw)
	} else {
		outer, members = readTarGz(t, raw)
		for i := range members {
			members[i] = strings.TrimPrefix(members[i], "./")
		}
		for name, f := range outer {
			outer[strings.TrimPrefix(name, "./")] = f
		}
	}
	if want := []string{"debian-binary", "control.tar.gz", "data.tar.gz"}; !slices.Equal(members, want) {
		t.Fatalf("members %q, want %q", members, want)
	}
	if got := string(outer["debian-binary"].body); got != "2.0\n" {
		t.Errorf("debian-binary %q, want \"2.0\\n\"", got)
	}
	control, cnames := readTarGz(t, outer["control.tar.gz"].body)
	if want := controlMembers[format]; !slices.Equal(cnames, want) {
		t.Errorf("control.tar.gz holds %q, want %q", cnames, want)
	}
	data, dnames := readTarGz(t, outer["data.tar.gz"].body)
	want := layouts[format]
	for _, name := range dnames {
		f := data[name]
		wantMode, ok := want[name]
		switch {
		case !ok:
			t.Errorf("unexpected %s in the package", name)
		case f.mode != wantMode || f.dir != strings.HasSuffix(name, "/"):
			t.Errorf("%s: mode %o dir %v, want %o", name, f.mode, f.dir, wantMode)
		}
	}
	for name := range want {
		if _, ok := data[name]; !ok {
			t.Errorf("%s missing from the package", name)
		}
	}

	fields := parseControl(t, control["./control"].body)
	var installed int
	for _, f := range data {
		installed += len(f.body)
	}
	wantSize := strconv.Itoa(installed) // opkg: bytes
	if format == Deb {
		wantSize = strconv.Itoa((installed + 1023) / 1024) // dpkg: KiB
	}
	for k, v := range map[string]string{
		"Package": "sipmesh", "Version": version, "Architecture": arch, "Installed-Size": wantSize, "Section": "net",
	} {
		if fields[k] != v {
			t.Errorf("control field %s: %q, want %q", k, fields[k], v)
		}
	}
	for _, k := range []string{"Maintainer", "Description"} {
		if fields[k] == "" {
			t.Errorf("control field %s missing", k)
		}
	}
	if got := string(control["./conffiles"].body); got != ConfigPath+"\n" {
		t.Errorf("conffiles %q, want %q", got, ConfigPath+"\n")
	}
	if conf, _ := DefaultConfig(format); !bytes.Equal(data["."+ConfigPath].body, conf) {
		t.Errorf("%s is not the default config of %s", ConfigPath, format)
	}

	// Scripts: every one parses, in dash (Debian's sh) and in busybox ash
	// (OpenWrt's).
	scripts := map[string][]byte{}
	for _, n := range []string{"postinst", "prerm", "postrm"} {
		scripts[n] = control["./"+n].body
	}
	if format == IPK {
		init := data["./etc/init.d/sipmesh"].body
		scripts["init.d/sipmesh"] = init
		for _, s := range []string{"#!/bin/sh /etc/rc.common\n", "\nUSE_PROCD=1\n", "\nstart_service() {", "\nstop_service() {",
			"procd_set_param command /usr/bin/sipmesh node --config /etc/sipmesh/sipmesh.conf", "procd_set_param respawn"} {
			if !bytes.Contains(expandInit(init), []byte(s)) {
				t.Errorf("init script lacks %q", s)
			}
		}
		if keep := string(data["./lib/upgrade/keep.d/sipmesh"].body); !strings.Contains(keep, "\n/etc/sipmesh/\n") {
			t.Errorf("keep.d/sipmesh does not keep /etc/sipmesh/ across sysupgrade:\n%s", keep)
		}
	} else {
		unit := string(data["./lib/systemd/system/sipmesh.service"].body)
		for _, s := range []string{
			"ExecStart=/usr/bin/sipmesh node --config /etc/sipmesh/sipmesh.conf\n",
			"CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_NET_RAW\n",
			"StateDirectory=sipmesh\n", "RuntimeDirectory=sipmesh\n", "WantedBy=multi-user.target\n",
		} {
			if !strings.Contains(unit, s) {
				t.Errorf("systemd unit lacks %q", strings.TrimSpace(s))
			}
		}
		sums := string(control["./md5sums"].body)
		for _, n := range []string{"usr/bin/sipmesh", "etc/sipmesh/sipmesh.conf", "lib/systemd/system/sipmesh.service"} {
			if !strings.Contains(sums, "  "+n+"\n") {
				t.Errorf("md5sums lacks %s:\n%s", n, sums)
			}
		}
	}
	for name, body := range scripts {
		if !bytes.HasPrefix(body, []byte("#!/bin/sh")) {
			t.Errorf("%s does not start with #!/bin/sh", name)
		}
		for _, shell := range [][]string{{"sh"}, {busybox(t), "sh"}} {
			cmd := exec.Command(shell[0], append(shell[1:], "-n")...)
			cmd.Stdin = bytes.NewReader(body)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("%s -n %s: %v\n%s", strings.Join(shell, " "), name, err, out)
			}
		}
	}
	return data
}

// expandInit replaces the init script's variables by their values, so the
// test reads the command line procd gets.
func expandInit(b []byte) []byte {
	return []byte(strings.NewReplacer(`"$PROG"`, "/usr/bin/sipmesh", `"$CONF"`, ConfigPath).Replace(string(b)))
}

// busybox returns the busybox binary: its ash is OpenWrt's /bin/sh.
func busybox(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatalf("needs busybox, whose ash is OpenWrt's shell (Debian package busybox): %v", err)
	}
	return p
}

// needTool fails t when tool is not on PATH, naming the Debian package
// that has it (scripts/test-deps.sh installs them all for make test).
func needTool(t *testing.T, tool, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		t.Fatalf("needs %s (Debian package %s): %v", tool, pkg, err)
	}
}

// checkDpkgDeb has dpkg-deb, the reference, read the .deb.
func checkDpkgDeb(t *testing.T, path string) {
	t.Helper()
	needTool(t, "dpkg-deb", "dpkg")
	out, err := exec.Command("dpkg-deb", "--info", path).CombinedOutput()
	if err != nil || !strings.Contains(string(out), " Package: sipmesh\n") {
		t.Errorf("dpkg-deb --info: %v\n%s", err, out)
	}
	out, err = exec.Command("dpkg-deb", "--contents", path).CombinedOutput()
	if err != nil || !strings.Contains(string(out), " ./lib/systemd/system/sipmesh.service\n") {
		t.Errorf("dpkg-deb --contents: %v\n%s", err, out)
	}
	needTool(t, "systemd-analyze", "systemd") // checks the unit
	root := t.TempDir()
	if out, err := exec.Command("dpkg-deb", "--extract", path, root).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb --extract: %v\n%s", err, out)
	}
	// verify checks every directive against this systemd, and that
	// ExecStart= is executable: point it at the unpacked binary.
	unit, err := os.ReadFile(filepath.Join(root, "lib/systemd/system/sipmesh.service"))
	if err != nil {
		t.Fatal(err)
	}
	unitPath := filepath.Join(t.TempDir(), "sipmesh.service")
	unit = bytes.ReplaceAll(unit, []byte("ExecStart=/usr/bin/sipmesh"), []byte("ExecStart="+root+"/usr/bin/sipmesh"))
	if err := os.WriteFile(unitPath, unit, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command("systemd-analyze", "verify", "--man=no", unitPath).CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify sipmesh.service: %v\n%s", err, out)
	}
}

func parseControl(t *testing.T, b []byte) map[string]string {
	t.Helper()
	fields := map[string]string{}
	var last string
	for line := range strings.Lines(string(b)) {
		line = strings.TrimSuffix(line, "\n")
		if strings.HasPrefix(line, " ") {
			if last == "" {
				t.Fatalf("control: continuation line first: %q", line)
			}
			continue
		}
		k, v, ok := strings.Cut(line, ": ")
		if !ok {
			t.Fatalf("control: bad line %q", line)
		}
		if _, dup := fields[k]; dup {
			t.Errorf("control: field %s twice", k)
		}
		fields[k], last = v, k
	}
	return fields
}

func readTarGz(t *testing.T, b []byte) (map[string]file, []string) {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("gzip: %v", err)
	}
	tr := tar.NewReader(zr)
	files := map[string]file{}
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("tar: %v", err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("tar %s: %v", h.Name, err)
		}
		if _, dup := files[h.Name]; dup {
			t.Errorf("tar: %s twice", h.Name)
		}
		files[h.Name] = file{
			mode: h.Mode, dir: h.Typeflag == tar.TypeDir, body: body,
			owner: fmt.Sprintf("%s:%s %d:%d", h.Uname, h.Gname, h.Uid, h.Gid),
			mtime: h.ModTime,
		}
		names = append(names, h.Name)
	}
	return files, names
}

// readAr reads a common ar archive (deb(5)) independently of writeAr.
func readAr(t *testing.T, b []byte) (map[string]file, []string) {
	t.Helper()
	if !bytes.HasPrefix(b, []byte("!<arch>\n")) {
		t.Fatalf("not an ar archive: %q", b[:min(8, len(b))])
	}
	b = b[8:]
	files := map[string]file{}
	var names []string
	for len(b) > 0 {
		if len(b) < 60 || string(b[58:60]) != "`\n" {
			t.Fatalf("ar: bad member header %q", b[:min(60, len(b))])
		}
		name := strings.TrimSuffix(strings.TrimSpace(string(b[:16])), "/")
		size, err := strconv.Atoi(strings.TrimSpace(string(b[48:58])))
		mode, err2 := strconv.ParseInt(strings.TrimSpace(string(b[40:48])), 8, 64)
		if err != nil || err2 != nil || 60+size > len(b) {
			t.Fatalf("ar: member %s: bad size or mode in %q", name, b[:60])
		}
		files[name] = file{mode: mode & 0o7777, body: b[60 : 60+size]}
		names = append(names, name)
		b = b[60+size+size%2:]
	}
	return files, names
}
