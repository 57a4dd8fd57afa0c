// Package packaging writes sipmesh's installable packages: OpenWrt .ipk
// files for routers (opkg) and a Debian .deb with a systemd unit for x86
// boxes. Both formats are three members — debian-binary ("2.0"),
// control.tar.gz (control fields, conffiles, maintainer scripts) and
// data.tar.gz (the files) — in an ar archive (deb(5)) or, as OpenWrt's own
// ipkg-build makes them, a gzip'd tar (opkg reads both). That is a few
// dozen lines of the standard library, so `make package` needs neither the
// OpenWrt SDK nor a packaging tool from the network.
//
// The files that go into the packages — the default config, the procd init
// script, the systemd unit and the maintainer scripts — live in files/ and
// are embedded, so the build (`go run packaging/mkpkg.go`, see the
// Makefile) and the tests use the same bytes.
package packaging

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/md5"
	"embed"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"time"
)

//go:embed files
var files embed.FS

// Format is a package format.
type Format string

const (
	IPK Format = "ipk" // OpenWrt, installed by opkg
	Deb Format = "deb" // Debian, installed by dpkg/apt
)

// Where each target keeps the node's state and control socket.
const (
	// OpenWrt's /var is a tmpfs: a key kept there would give the node a
	// new identity on every boot and lose the DHCP leases. The state goes
	// on flash under /etc, which sysupgrade keeps (files/openwrt/keep).
	// It is written rarely: the key once, the leases when a lease is
	// granted or renewed.
	OpenWrtStateDir = "/etc/sipmesh/state"
	// OpenWrt has no /run; /var/run is its tmpfs run directory.
	OpenWrtControl = "/var/run/sipmesh/sipmesh.sock"
	// systemd's StateDirectory= and RuntimeDirectory= make these.
	DebianStateDir = "/var/lib/sipmesh"
	DebianControl  = "/run/sipmesh/sipmesh.sock"
)

// ConfigPath is where both package formats install the default config.
const ConfigPath = "/etc/sipmesh/sipmesh.conf"

// OpenWrtArch maps GOARCH to the OpenWrt package architecture a package is
// labelled with by default. opkg installs only packages whose architecture
// is listed in /etc/opkg.conf (`opkg print-architecture`); these are the
// most common router targets for each CPU, and the Makefile's IPK_ARCH_*
// variables relabel for others (the binary itself runs on any CPU of the
// family: GOMIPS=softfloat, GOARM=7 with VFP).
var OpenWrtArch = map[string]string{
	"mipsle": "mipsel_24kc",              // ramips mt7621/mt76x8
	"arm":    "arm_cortex-a7_neon-vfpv4", // ipq40xx
	"arm64":  "aarch64_cortex-a53",       // mediatek filogic, ipq807x, bcm27xx
}

// Spec says what to build.
type Spec struct {
	Format     Format
	Arch       string // the control file's Architecture (mipsel_24kc, amd64, …)
	Version    string // a Debian-style version: starts with a digit
	Maintainer string
	Binary     string    // path of the static stripped sipmesh binary
	MTime      time.Time // of every archive entry, for reproducible packages
}

// FileName is the package's conventional file name, e.g.
// sipmesh_1.0_mipsel_24kc.ipk.
func (s Spec) FileName() string {
	return fmt.Sprintf("sipmesh_%s_%s.%s", s.Version, s.Arch, s.Format)
}

// versionRE is what both dpkg and opkg accept as a version: an upstream
// part starting with a digit, an optional revision after the last '-'.
var versionRE = regexp.MustCompile(`^[0-9][A-Za-z0-9.+~]*(-[A-Za-z0-9.+~]+)?$`)

var archRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]*$`)

func (s Spec) validate() error {
	switch s.Format {
	case IPK, Deb:
	default:
		return fmt.Errorf("packaging: format %q: want ipk or deb", s.Format)
	}
	if !versionRE.MatchString(s.Version) {
		return fmt.Errorf("packaging: version %q: want a digit first, then letters, digits and .+~ (one - before a revision)", s.Version)
	}
	if !archRE.MatchString(s.Arch) {
		return fmt.Errorf("packaging: architecture %q is not a package architecture", s.Arch)
	}
	if s.Maintainer == "" || strings.ContainsAny(s.Maintainer, "\n") {
		return fmt.Errorf("packaging: maintainer %q: want one non-empty line", s.Maintainer)
	}
	return nil
}

// DefaultConfig returns the default config file of a package format:
// the same keys for both, with that target's state and socket paths.
func DefaultConfig(f Format) ([]byte, error) {
	tmpl, err := files.ReadFile("files/sipmesh.conf")
	if err != nil {
		return nil, err
	}
	state, control := DebianStateDir, DebianControl
	if f == IPK {
		state, control = OpenWrtStateDir, OpenWrtControl
	}
	r := strings.NewReplacer("@STATE_DIR@", state, "@CONTROL@", control)
	return []byte(r.Replace(string(tmpl))), nil
}

// entry is one file or directory of a tarball.
type entry struct {
	name string // without the leading "./"
	mode int64  // permission bits; a directory when body is nil
	body []byte
}

func dir(name string) entry { return entry{name: name, mode: 0o755} }

// Contents returns the files a package installs (data.tar.gz) and its
// control members (control.tar.gz) besides the control file itself.
func (s Spec) contents(bin []byte) (data, control []entry, err error) {
	conf, err := DefaultConfig(s.Format)
	if err != nil {
		return nil, nil, err
	}
	embedded := func(name string, mode int64, dst string) entry {
		b, rerr := files.ReadFile("files/" + name)
		if rerr != nil {
			err = errors.Join(err, rerr)
		}
		return entry{name: dst, mode: mode, body: b}
	}
	data = []entry{
		dir("usr"), dir("usr/bin"), {name: "usr/bin/sipmesh", mode: 0o755, body: bin},
		dir("etc"), dir("etc/sipmesh"), {name: "etc/sipmesh/sipmesh.conf", mode: 0o644, body: conf},
	}
	control = []entry{{name: "conffiles", mode: 0o644, body: []byte(ConfigPath + "\n")}}
	switch s.Format {
	case IPK:
		data = append(data,
			dir("etc/init.d"), embedded("openwrt/sipmesh.init", 0o755, "etc/init.d/sipmesh"),
			dir("lib"), dir("lib/upgrade"), dir("lib/upgrade/keep.d"),
			embedded("openwrt/keep", 0o644, "lib/upgrade/keep.d/sipmesh"))
		for _, sc := range []string{"postinst", "prerm", "postrm"} {
			control = append(control, embedded("openwrt/"+sc, 0o755, sc))
		}
	case Deb:
		data = append(data,
			dir("lib"), dir("lib/systemd"), dir("lib/systemd/system"),
			embedded("debian/sipmesh.service", 0o644, "lib/systemd/system/sipmesh.service"))
		for _, sc := range []string{"postinst", "prerm", "postrm"} {
			control = append(control, embedded("debian/"+sc, 0o755, sc))
		}
		// md5sums lets debsums and dpkg --verify check the installed files.
		var sums bytes.Buffer
		for _, e := range data {
			if e.body != nil {
				fmt.Fprintf(&sums, "%x  %s\n", md5.Sum(e.body), e.name)
			}
		}
		control = append(control, entry{name: "md5sums", mode: 0o644, body: sums.Bytes()})
	}
	return data, control, err
}

// controlFile returns the package's control file (deb-control(5); opkg
// reads the same fields).
func (s Spec) controlFile(data []entry) []byte {
	var size int64
	for _, e := range data {
		size += int64(len(e.body))
	}
	var b strings.Builder
	field := func(k, v string) { fmt.Fprintf(&b, "%s: %s\n", k, v) }
	field("Package", "sipmesh")
	field("Version", s.Version)
	field("Architecture", s.Arch)
	field("Maintainer", s.Maintainer)
	if s.Format == Deb {
		// dpkg counts KiB; opkg counts bytes.
		field("Installed-Size", fmt.Sprint((size+1023)/1024))
		field("Section", "net")
		field("Priority", "optional")
		// The node adds its phone-LAN address with `ip addr`.
		field("Recommends", "iproute2")
	} else {
		field("Installed-Size", fmt.Sprint(size))
		field("Section", "net")
		field("SourceName", "sipmesh")
	}
	field("Homepage", "https://github.com/sipmesh/sipmesh")
	field("Description", "mesh telephone system node")
	b.WriteString(` sipmesh turns a wireless mesh of small Linux routers into one telephone
 system: plug an IPv4 SIP desk phone into any node and it registers and calls
 every other phone on the mesh. The package holds the static node daemon, a
 default configuration in /etc/sipmesh and the service that runs it.
`)
	return []byte(b.String())
}

// Build writes the package described by s to w.
func Build(w io.Writer, s Spec) error {
	if err := s.validate(); err != nil {
		return err
	}
	bin, err := os.ReadFile(s.Binary)
	if err != nil {
		return fmt.Errorf("packaging: the binary: %w", err)
	}
	data, control, err := s.contents(bin)
	if err != nil {
		return fmt.Errorf("packaging: %w", err)
	}
	control = append([]entry{{name: "control", mode: 0o644, body: s.controlFile(data)}}, control...)
	dataTGZ, err := tarGz(data, s.MTime, true)
	if err != nil {
		return err
	}
	controlTGZ, err := tarGz(control, s.MTime, true)
	if err != nil {
		return err
	}
	members := []entry{
		{name: "debian-binary", mode: 0o644, body: []byte("2.0\n")},
		{name: "control.tar.gz", mode: 0o644, body: controlTGZ},
		{name: "data.tar.gz", mode: 0o644, body: dataTGZ},
	}
	if s.Format == Deb {
		// deb(5): debian-binary must come first, then control, then data.
		return writeAr(w, members, s.MTime)
	}
	outer, err := tarGz(members, s.MTime, false)
	if err != nil {
		return err
	}
	_, err = w.Write(outer)
	return err
}

// tarGz returns a gzip'd tar of entries, owned by root, named "./name"
// (with a "./" entry first when root is set), in the order given.
func tarGz(entries []entry, mtime time.Time, root bool) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	tw := tar.NewWriter(zw)
	if root {
		entries = append([]entry{{name: "", mode: 0o755}}, entries...)
	}
	for _, e := range entries {
		h := &tar.Header{
			Name: "./" + e.name, Mode: e.mode, ModTime: mtime,
			Uname: "root", Gname: "root", Format: tar.FormatGNU,
		}
		if e.body == nil {
			h.Typeflag = tar.TypeDir
			if e.name != "" {
				h.Name += "/"
			}
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("packaging: tar %s: %w", e.name, err)
		}
		if _, err := tw.Write(e.body); err != nil {
			return nil, fmt.Errorf("packaging: tar %s: %w", e.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeAr writes members as a common ar archive (the format of deb(5)):
// the "!<arch>\n" magic, then per member a 60-byte header of
// space-padded decimal fields (name, mtime, uid, gid, octal mode, size)
// ending in "`\n", the data, and a newline pad to an even offset.
func writeAr(w io.Writer, members []entry, mtime time.Time) error {
	if _, err := io.WriteString(w, "!<arch>\n"); err != nil {
		return err
	}
	for _, m := range members {
		if len(m.name) > 16 {
			return fmt.Errorf("packaging: ar member name %q over 16 bytes", m.name)
		}
		hdr := fmt.Sprintf("%-16s%-12d%-6d%-6d%-8o%-10d`\n", m.name, mtime.Unix(), 0, 0, 0o100000|m.mode, len(m.body))
		if _, err := io.WriteString(w, hdr); err != nil {
			return err
		}
		if _, err := w.Write(m.body); err != nil {
			return err
		}
		if len(m.body)%2 == 1 {
			if _, err := io.WriteString(w, "\n"); err != nil {
				return err
			}
		}
	}
	return nil
}
