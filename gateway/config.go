package gateway

import (
	"bufio"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/sipmesh/sipmesh/dns64"
	"github.com/sipmesh/sipmesh/proxy"
	"github.com/sipmesh/sipmesh/registrar"
	"github.com/sipmesh/sipmesh/ssr"
	"github.com/sipmesh/sipmesh/ssr/dht"
	"github.com/sipmesh/sipmesh/webui"
)

// Defaults of the node configuration.
const (
	DefaultName     = "sipmesh"
	DefaultStateDir = "/var/lib/sipmesh"
	// DefaultControl is where `sipmesh node` serves its control socket and
	// where `sipmesh ping` and `sipmesh status` look for it.
	DefaultControl = "/run/sipmesh/sipmesh.sock"
	// DefaultWebPort is the web UI's port on the LAN address.
	DefaultWebPort = 8080
)

// Options are a node's validated settings: the typed form of the config
// file, defaults first (DefaultOptions), then what the file sets.
type Options struct {
	// Name labels the node in logs and status; it is not its identity (the
	// key is).
	Name string
	// StateDir keeps what must survive a restart: node.key, the ed25519
	// key the node ID derives from (created on first start, mode 0600).
	StateDir string
	// MeshInterfaces are the interfaces SSR runs on (at least one).
	MeshInterfaces []string
	// MeshPort is the UDP port of SSR frames on the mesh interfaces.
	MeshPort uint16
	// MeshEncryption encrypts the payloads of mesh frames per link; off,
	// they are authenticated only (amateur-radio bands). One value for
	// the whole mesh: neighbours that differ are refused.
	MeshEncryption bool
	// MeshAdmissionClosed: only nodes whose key the mesh administrator
	// signed (an admission, AdmissionFile) get links; open, anyone may
	// join. Needs the administrator's public key.
	MeshAdmissionClosed bool
	// IPNetwork makes the mesh an IPv6 network (package meship): a TUN
	// (IPNetworkTUN) carrying the mesh /48, the node's LAN prefix on the
	// LAN interface, IPv6 forwarding on. Off by default: it needs
	// CAP_NET_ADMIN and changes the kernel's routing, which a node on a
	// laptop may not want; routers turn it on.
	IPNetwork bool
	// Control is the path of the local control socket (HTTP+JSON over a
	// Unix socket) that `sipmesh status` and `sipmesh ping` talk to; empty
	// means none.
	Control string
	// LogLevel is the least severe level logged.
	LogLevel slog.Level
	// AdminKey is the path of the mesh administrator key (ed25519, PKCS #8
	// PEM), which signs subscriber account records. Empty: this node cannot
	// add or remove subscribers (`sipmesh user add` fails on it), but it
	// still serves them. Created on first start when the path is set and
	// no file exists; copy that one file to every node from which
	// subscribers are managed.
	AdminKey string
	// AdminPublicKey is the mesh administrator's public key (hex), which
	// every node needs to check subscriber records; taken from AdminKey
	// when that is set.
	AdminPublicKey []byte

	// LANInterface is the interface phones plug into (empty: a relay-only
	// mesh node without phones).
	LANInterface string
	// LANAddress is the node's IPv4 address and subnet on it. Zero: derived
	// from the node ID inside LANSupernet and claimed in the DHT, so that
	// no two nodes hand out the same addresses.
	LANAddress netip.Prefix
	// LANSupernet is where derived LAN subnets come from.
	LANSupernet netip.Prefix
	// DHCP serves addresses and option 120 on the LAN (default on).
	DHCP bool
	// SIPPort is the SIP port on the LAN and mesh addresses.
	SIPPort uint16
	// DigestAlgorithms are offered in challenges, in order (RFC 8760
	// §2.4). The default is MD5 alone, which every SIP phone answers:
	// Debian's baresip 1.0.0 (libre 1.1.0) gives up on a 401 that holds a
	// SHA-256 challenge in any place ("Register: Function not
	// implemented"), and sipsak reads only the first challenge. SHA-256
	// (first, then MD5) is for meshes whose phones all know RFC 8760.
	DigestAlgorithms []string
	// DNSUpstreams are the resolvers names outside .mesh go to (DNS64).
	DNSUpstreams []netip.AddrPort
	// NAT64Prefix is the prefix a gateway's NAT64 translates (RFC 6052),
	// announced with it; DNS64 synthesizes with the prefix of the
	// gateway a node would use (RFC 6147; nat64exit.go).
	NAT64Prefix netip.Prefix
	// NAT64 runs the NAT64 on a gateway (gwnat64.go); NAT64Pool is its
	// IPv4 pool, masqueraded out of the uplink.
	NAT64     bool
	NAT64Pool netip.Prefix
	// CLATPrefix is this node's CLAT prefix (clat.go; invalid: no CLAT).
	CLATPrefix netip.Prefix
	// RingGroups map a group extension to its members (proxy/groups.go);
	// every node should carry the same.
	RingGroups map[string][]string
	// HuntGroups map a group extension to the members it rings in turn
	// (proxy/groups.go); every node should carry the same.
	HuntGroups map[string]proxy.HuntGroup
	// RelayPorts bound the RTP relay's ports on each side.
	RelayPortMin, RelayPortMax uint16

	// Limits of what one source may ask (issue 12: they bite on abusers
	// when the node is busy, not on a busy LAN when it is idle; sipnet's
	// Guard). SIPRate and SIPBurst are the per-source ceiling of SIP
	// requests (responses are not limited), SIPMaxTransactions the live
	// server transactions past which sources get fair shares, DNSRate and
	// DNSBurst the per-source ceiling of DNS queries. A rate of -1 ("off")
	// disables the limit.
	SIPRate            float64
	SIPBurst           int
	SIPMaxTransactions int
	DNSRate            float64
	DNSBurst           int

	// WebListen are the addresses of the web UI and /metrics. Empty (the
	// default, "auto"): the phone LAN address on WebPort, once the LAN is
	// up. Never an unspecified address, which would include an uplink.
	WebListen []netip.AddrPort
	// WebPort is the web UI's port on the automatic addresses; 8080
	// because OpenWrt's own web interface (uhttpd/LuCI) holds port 80.
	WebPort uint16
	// WebOff turns the web UI off ("web-listen none").
	WebOff bool

	// The gateway role (issue 14): a node whose config names an uplink is
	// the mesh's door to the SIP Internet (gateway.go, uplink package).
	//
	// UplinkInterface is the interface towards the Internet (empty: not a
	// gateway). Every other gateway key needs it.
	UplinkInterface string
	// PublicAddress is the IPv4 address the Internet reaches the gateway
	// at (a NAT router's, with SIP and the relay ports forwarded); zero:
	// learned by STUN from STUNServer.
	PublicAddress netip.Addr
	// STUNServer learns the public address (RFC 8489) and, probed every
	// few seconds, measures the uplink's RTT and loss for the gateway's
	// announcement.
	STUNServer netip.AddrPort
	// SIPDomain is the mesh's public SIP domain: requests from the
	// Internet for sip:ext@SIPDomain are routed to the mesh phone; for
	// any other domain the gateway answers 403 (never an open relay).
	SIPDomain string
	// DialPrefix sends sip:<prefix><digits>@mesh to the trunk, without
	// the prefix (empty: no prefix dialling). Needs a trunk.
	DialPrefix string
	// The trunk, the gateway's account with a SIP provider: TrunkRegistrar
	// (sip:provider.example), TrunkUser and the file holding the password
	// (mode 0600, read at start, never logged, never in the DHT or status).
	TrunkRegistrar    string
	TrunkUser         string
	TrunkPasswordFile string

	// LogTail keeps the last log lines for the web UI's node page; set by
	// cmd/sipmesh (nil: none).
	LogTail *webui.LogBuffer

	// Version is the binary's version, shown by the web UI and metrics;
	// set by cmd/sipmesh, not by the config file.
	Version string

	// routerParams tune the SSR timers; tests make them fast. The config
	// file does not expose them: the defaults suit real meshes.
	routerParams ssr.Params
	// dhtParams tune the DHT's timers the same way.
	dhtParams dht.Params
}

// SetRouterParams sets the SSR timers and bounds (zero fields: the
// defaults). The config file does not expose them; the in-memory demo
// (`sipmesh demo`) and tests outside this package use it for fast timers.
func (o *Options) SetRouterParams(p ssr.Params) { o.routerParams = p }

// SetDHTParams sets the DHT's timers and bounds (zero fields: the
// defaults), for the same uses: the defaults' request timeouts suit radio
// links, not an in-memory mesh with millisecond links.
func (o *Options) SetDHTParams(p dht.Params) { o.dhtParams = p }

// DefaultOptions returns the settings of an empty config file (which is
// still invalid: it names no mesh interface).
func DefaultOptions() Options {
	return Options{
		Name:     DefaultName,
		StateDir: DefaultStateDir,
		MeshPort: ssr.DefaultPort,
		Control:  DefaultControl,
		LogLevel: slog.LevelInfo,

		LANSupernet:        netip.MustParsePrefix("10.64.0.0/10"),
		DHCP:               true,
		SIPPort:            5060,
		DigestAlgorithms:   []string{"MD5"},
		NAT64Prefix:        netip.MustParsePrefix("64:ff9b::/96"),
		NAT64:              true,
		NAT64Pool:          netip.MustParsePrefix("198.18.64.0/30"),
		RelayPortMin:       20000,
		RelayPortMax:       29999,
		SIPRate:            proxy.DefaultSIPRate,
		SIPBurst:           proxy.DefaultSIPBurst,
		SIPMaxTransactions: proxy.DefaultMaxTransactions,
		DNSRate:            dns64.DefaultRate,
		DNSBurst:           dns64.DefaultBurst,
		WebPort:            DefaultWebPort,
		Version:            "dev",
	}
}

// rateSetter sets a per-source rate: requests per second, or off (-1).
func rateSetter(field func(*Options) *float64) setter {
	return setter{fn: func(o *Options, v string) error {
		if v == "off" {
			*field(o) = -1
			return nil
		}
		r, err := strconv.ParseFloat(v, 64)
		if err != nil || !(r > 0 && r <= 1e9) {
			return fmt.Errorf("%q is not a rate (per second, > 0 and ≤ 1e9, or off)", v)
		}
		*field(o) = r
		return nil
	}}
}

// countSetter sets a bucket or table size: 1 to 2^24.
func countSetter(field func(*Options) *int) setter {
	return setter{fn: func(o *Options, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1<<24 {
			return fmt.Errorf("%q is not a count from 1 to 16777216", v)
		}
		*field(o) = n
		return nil
	}}
}

// ConfigError is a problem in a config file, located by line and field so a
// user can fix it without reading code.
type ConfigError struct {
	File  string // empty when parsed from a reader without a name
	Line  int    // 0: the file as a whole (a missing field)
	Field string // the key, when known
	Err   error
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File + ": ")
	}
	b.WriteString("config")
	if e.Line > 0 {
		fmt.Fprintf(&b, " line %d", e.Line)
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field + ": ")
	}
	b.WriteString(e.Err.Error())
	return b.String()
}

func (e *ConfigError) Unwrap() error { return e.Err }

// LoadConfig reads and validates the config file at path.
func LoadConfig(path string) (Options, error) {
	f, err := os.Open(path)
	if err != nil {
		return Options{}, fmt.Errorf("reading config: %w", err)
	}
	defer f.Close()
	opts, err := ParseConfig(f)
	var ce *ConfigError
	if errors.As(err, &ce) {
		ce.File = path
	}
	return opts, err
}

// ParseConfig reads a config file: one "key value" per line, "#" starting
// a comment (at the start of a line or after white space), blank lines
// ignored. Unknown keys are errors, as are single-valued keys given twice:
// a typo must not silently leave a default in force.
//
//	name node1
//	state-dir /var/lib/sipmesh     # node.key lives here
//	mesh-interface wlan0           # repeatable
//	mesh-port 7447
//	control /run/sipmesh/node1.sock
//	log-level info                 # debug, info, warn or error
//	admin-key /etc/sipmesh/admin.key  # mesh administrator key: manage subscribers here
func ParseConfig(r io.Reader) (Options, error) {
	opts := DefaultOptions()
	seen := make(map[string]int) // key → line it was first set on
	sc := bufio.NewScanner(r)
	lineNo := 0
	for sc.Scan() {
		lineNo++
		fields := strings.Fields(stripComment(sc.Text()))
		if len(fields) == 0 {
			continue
		}
		key, vals := fields[0], fields[1:]
		fail := func(format string, args ...any) error {
			return &ConfigError{Line: lineNo, Field: key, Err: fmt.Errorf(format, args...)}
		}
		set, ok := setters[key]
		if !ok {
			return Options{}, &ConfigError{Line: lineNo, Err: fmt.Errorf("unknown key %q (known: %s)", key, knownKeys())}
		}
		if len(vals) == 0 {
			return Options{}, fail("missing value")
		}
		if !set.repeat {
			if first, dup := seen[key]; dup {
				return Options{}, fail("set twice (first on line %d)", first)
			}
			if len(vals) > 1 {
				return Options{}, fail("want one value, got %d: %q", len(vals), strings.Join(vals, " "))
			}
		}
		seen[key] = lineNo
		for _, v := range vals {
			if err := set.fn(&opts, v); err != nil {
				return Options{}, fail("%w", err)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return Options{}, &ConfigError{Line: lineNo + 1, Err: err}
	}
	if err := opts.Validate(); err != nil {
		return Options{}, err
	}
	return opts, nil
}

// Validate checks what no single line can: required fields.
func (o Options) Validate() error {
	if len(o.MeshInterfaces) == 0 {
		return &ConfigError{Field: "mesh-interface", Err: errors.New("none given; list each mesh interface on a line of its own")}
	}
	if o.MeshAdmissionClosed && o.AdminKey == "" && len(o.AdminPublicKey) == 0 {
		return &ConfigError{Field: "mesh-admission", Err: errors.New("closed needs the administrator's key: set admin-public-key (or admin-key)")}
	}
	return o.validateGateway()
}

// validateGateway checks the gateway keys together: each needs
// uplink-interface, a gateway needs a way to learn its public address,
// and the trunk keys come all three or not at all.
func (o Options) validateGateway() error {
	set := map[string]bool{
		"public-address":      o.PublicAddress.IsValid(),
		"stun-server":         o.STUNServer.IsValid(),
		"sip-domain":          o.SIPDomain != "",
		"dial-prefix":         o.DialPrefix != "",
		"trunk-registrar":     o.TrunkRegistrar != "",
		"trunk-user":          o.TrunkUser != "",
		"trunk-password-file": o.TrunkPasswordFile != "",
	}
	if o.UplinkInterface == "" {
		for _, k := range slices.Sorted(maps.Keys(set)) {
			if set[k] {
				return &ConfigError{Field: k, Err: errors.New("needs uplink-interface: only a gateway node has an Internet side")}
			}
		}
		return nil
	}
	if slices.Contains(o.MeshInterfaces, o.UplinkInterface) || o.UplinkInterface == o.LANInterface {
		return &ConfigError{Field: "uplink-interface", Err: fmt.Errorf("%s is also a mesh or LAN interface; the uplink must be an interface of its own", o.UplinkInterface)}
	}
	if !set["public-address"] && !set["stun-server"] {
		return &ConfigError{Field: "uplink-interface", Err: errors.New("a gateway needs public-address or stun-server to know the address the Internet reaches it at")}
	}
	if len(o.DNSUpstreams) == 0 {
		return &ConfigError{Field: "uplink-interface", Err: errors.New("a gateway needs dns-upstream: it locates Internet SIP servers by DNS (RFC 3263)")}
	}
	trunk := set["trunk-registrar"] || set["trunk-user"] || set["trunk-password-file"]
	for _, k := range []string{"trunk-registrar", "trunk-user", "trunk-password-file"} {
		if trunk && !set[k] {
			return &ConfigError{Field: k, Err: errors.New("missing: a trunk needs trunk-registrar, trunk-user and trunk-password-file")}
		}
	}
	if set["dial-prefix"] && !trunk {
		return &ConfigError{Field: "dial-prefix", Err: errors.New("numbers dialled with the prefix go to the trunk: configure trunk-registrar, trunk-user and trunk-password-file")}
	}
	return nil
}

// Gateway reports whether the config makes this node a gateway.
func (o Options) Gateway() bool { return o.UplinkInterface != "" }

func stripComment(line string) string {
	for i, c := range line {
		if c == '#' && (i == 0 || line[i-1] == ' ' || line[i-1] == '\t') {
			return line[:i]
		}
	}
	return line
}

type setter struct {
	repeat bool
	fn     func(o *Options, v string) error
}

var setters = map[string]setter{
	"name": {fn: func(o *Options, v string) error {
		o.Name = v
		return nil
	}},
	"state-dir": {fn: func(o *Options, v string) error {
		if !filepath.IsAbs(v) {
			return fmt.Errorf("%q is not an absolute path", v)
		}
		o.StateDir = filepath.Clean(v)
		return nil
	}},
	"mesh-interface": {repeat: true, fn: func(o *Options, v string) error {
		if len(v) > 15 || strings.ContainsAny(v, "/:") {
			// IFNAMSIZ-1 on Linux; '/' and ':' are never in a name.
			return fmt.Errorf("%q is not an interface name", v)
		}
		for _, have := range o.MeshInterfaces {
			if have == v {
				return fmt.Errorf("%s listed twice", v)
			}
		}
		o.MeshInterfaces = append(o.MeshInterfaces, v)
		return nil
	}},
	"mesh-port": {fn: func(o *Options, v string) error {
		p, err := strconv.ParseUint(v, 10, 16)
		if err != nil || p == 0 {
			return fmt.Errorf("%q is not a port", v)
		}
		o.MeshPort = uint16(p)
		return nil
	}},
	"mesh-encryption": {fn: func(o *Options, v string) error { return parseOnOff(v, &o.MeshEncryption) }},
	"ip-network":      {fn: func(o *Options, v string) error { return parseOnOff(v, &o.IPNetwork) }},
	"mesh-admission": {fn: func(o *Options, v string) error {
		switch v {
		case "open", "closed":
			o.MeshAdmissionClosed = v == "closed"
			return nil
		}
		return fmt.Errorf("%q: want open or closed", v)
	}},
	"control": {fn: func(o *Options, v string) error {
		if v == "none" {
			o.Control = ""
			return nil
		}
		if !filepath.IsAbs(v) {
			return fmt.Errorf("%q is not an absolute path (or \"none\")", v)
		}
		o.Control = filepath.Clean(v)
		return nil
	}},
	"admin-key": {fn: func(o *Options, v string) error {
		if !filepath.IsAbs(v) {
			return fmt.Errorf("%q is not an absolute path", v)
		}
		o.AdminKey = filepath.Clean(v)
		return nil
	}},
	"admin-public-key": {fn: func(o *Options, v string) error {
		b, err := hex.DecodeString(v)
		if err != nil || len(b) != ed25519.PublicKeySize {
			return fmt.Errorf("%q is not an ed25519 public key in hex (%d bytes)", v, ed25519.PublicKeySize)
		}
		o.AdminPublicKey = b
		return nil
	}},
	"web-listen": {repeat: true, fn: func(o *Options, v string) error {
		switch v {
		case "none":
			o.WebOff = true
			return nil
		case "auto":
			return nil
		}
		ap, err := netip.ParseAddrPort(v)
		if err != nil || ap.Port() == 0 {
			return fmt.Errorf("%q is not an address:port (or \"auto\", \"none\")", v)
		}
		if ap.Addr().IsUnspecified() {
			// 0.0.0.0 and :: include the uplink, where the UI must never be.
			return fmt.Errorf("%q listens on every interface, the uplink too; name the LAN or mesh address", v)
		}
		o.WebListen = append(o.WebListen, ap)
		return nil
	}},
	"web-port": {fn: func(o *Options, v string) error {
		p, err := strconv.ParseUint(v, 10, 16)
		if err != nil || p == 0 {
			return fmt.Errorf("%q is not a port", v)
		}
		o.WebPort = uint16(p)
		return nil
	}},
	"lan-interface": {fn: func(o *Options, v string) error {
		if len(v) > 15 || strings.ContainsAny(v, "/:") {
			return fmt.Errorf("%q is not an interface name", v)
		}
		o.LANInterface = v
		return nil
	}},
	"lan-address": {fn: func(o *Options, v string) error {
		p, err := netip.ParsePrefix(v)
		if err != nil || !p.Addr().Is4() || p.Bits() > 30 || p.Addr() == p.Masked().Addr() {
			return fmt.Errorf("%q is not an IPv4 host address with its subnet, like 10.64.7.1/24", v)
		}
		o.LANAddress = p
		return nil
	}},
	"lan-supernet": {fn: func(o *Options, v string) error {
		p, err := netip.ParsePrefix(v)
		if err != nil || !p.Addr().Is4() || p.Bits() > 24 || p != p.Masked() {
			return fmt.Errorf("%q is not an IPv4 network of /24 or larger, like 10.64.0.0/10", v)
		}
		o.LANSupernet = p
		return nil
	}},
	"dhcp": {fn: func(o *Options, v string) error { return parseOnOff(v, &o.DHCP) }},
	"sip-port": {fn: func(o *Options, v string) error {
		p, err := strconv.ParseUint(v, 10, 16)
		if err != nil || p == 0 {
			return fmt.Errorf("%q is not a port", v)
		}
		o.SIPPort = uint16(p)
		return nil
	}},
	"digest-algorithms": {fn: func(o *Options, v string) error {
		var algs []string
		for _, a := range strings.Split(v, ",") {
			switch strings.ToUpper(a) {
			case "MD5", "SHA-256":
				algs = append(algs, strings.ToUpper(a))
			default:
				return fmt.Errorf("%q: want SHA-256, MD5 or both, comma-separated", a)
			}
		}
		o.DigestAlgorithms = algs
		return nil
	}},
	"dns-upstream": {repeat: true, fn: func(o *Options, v string) error {
		ap, err := netip.ParseAddrPort(v)
		if err != nil {
			a, err2 := netip.ParseAddr(v)
			if err2 != nil {
				return fmt.Errorf("%q is not an address or address:port", v)
			}
			ap = netip.AddrPortFrom(a, 53)
		}
		o.DNSUpstreams = append(o.DNSUpstreams, ap)
		return nil
	}},
	"ring-group": {repeat: true, fn: func(o *Options, v string) error {
		group, members, err := parseGroup(o, v, "600=201,202")
		if err != nil {
			return err
		}
		if o.RingGroups == nil {
			o.RingGroups = make(map[string][]string)
		}
		o.RingGroups[group] = members
		return nil
	}},
	"hunt-group": {repeat: true, fn: func(o *Options, v string) error {
		v, secs, timed := strings.Cut(v, "/")
		hg := proxy.HuntGroup{Timeout: proxy.DefaultHuntTimeout}
		if timed {
			n, err := strconv.Atoi(secs)
			if err != nil || n < 1 || n > 300 {
				return fmt.Errorf("%q: the timeout after / is 1 to 300 seconds", secs)
			}
			hg.Timeout = time.Duration(n) * time.Second
		}
		group, members, err := parseGroup(o, v, "700=201,202/15")
		if err != nil {
			return err
		}
		hg.Members = members
		if o.HuntGroups == nil {
			o.HuntGroups = make(map[string]proxy.HuntGroup)
		}
		o.HuntGroups[group] = hg
		return nil
	}},
	"nat64-prefix": {fn: func(o *Options, v string) error {
		p, err := netip.ParsePrefix(v)
		if err != nil || !p.Addr().Is6() {
			return fmt.Errorf("%q is not an IPv6 prefix", v)
		}
		if err := dns64.ValidatePrefix(p); err != nil {
			return err
		}
		o.NAT64Prefix = p
		return nil
	}},
	"nat64": {fn: func(o *Options, v string) error { return parseOnOff(v, &o.NAT64) }},
	"nat64-pool": {fn: func(o *Options, v string) error {
		p, err := netip.ParsePrefix(v)
		if err != nil || !p.Addr().Is4() || p.Bits() < 24 {
			return fmt.Errorf("%q is not an IPv4 pool like 198.18.64.0/30 (at most a /24)", v)
		}
		o.NAT64Pool = p.Masked()
		return nil
	}},
	"clat-prefix": {fn: func(o *Options, v string) error {
		p, err := netip.ParsePrefix(v)
		if err != nil || !p.Addr().Is6() || p.Bits() != 96 {
			return fmt.Errorf("%q is not an IPv6 /96", v)
		}
		if err := dns64.ValidatePrefix(p); err != nil {
			return err
		}
		o.CLATPrefix = p
		return nil
	}},
	"relay-ports": {fn: func(o *Options, v string) error {
		lo, hi, ok := strings.Cut(v, "-")
		a, err1 := strconv.ParseUint(lo, 10, 16)
		b, err2 := strconv.ParseUint(hi, 10, 16)
		if !ok || err1 != nil || err2 != nil || a < 1024 || b < a+3 {
			return fmt.Errorf("%q is not a port range like 20000-29999 (above 1023, at least 4 ports)", v)
		}
		o.RelayPortMin, o.RelayPortMax = uint16(a), uint16(b)
		return nil
	}},
	"sip-rate":             rateSetter(func(o *Options) *float64 { return &o.SIPRate }),
	"sip-burst":            countSetter(func(o *Options) *int { return &o.SIPBurst }),
	"sip-max-transactions": countSetter(func(o *Options) *int { return &o.SIPMaxTransactions }),
	"dns-rate":             rateSetter(func(o *Options) *float64 { return &o.DNSRate }),
	"dns-burst":            countSetter(func(o *Options) *int { return &o.DNSBurst }),
	"uplink-interface": {fn: func(o *Options, v string) error {
		if len(v) > 15 || strings.ContainsAny(v, "/:") {
			return fmt.Errorf("%q is not an interface name", v)
		}
		o.UplinkInterface = v
		return nil
	}},
	"public-address": {fn: func(o *Options, v string) error {
		a, err := netip.ParseAddr(v)
		if err != nil || !a.Is4() || !a.IsGlobalUnicast() || a.IsPrivate() {
			return fmt.Errorf("%q is not a public IPv4 address (a private one needs no gateway key; behind NAT give the router's public address or use stun-server)", v)
		}
		o.PublicAddress = a
		return nil
	}},
	"stun-server": {fn: func(o *Options, v string) error {
		ap, err := netip.ParseAddrPort(v)
		if err != nil {
			a, err2 := netip.ParseAddr(v)
			if err2 != nil || a.Zone() != "" {
				return fmt.Errorf("%q is not an IPv4 address or address:port (port 3478 by default, RFC 8489 §18.4)", v)
			}
			ap = netip.AddrPortFrom(a, 3478)
		}
		if !ap.Addr().Unmap().Is4() || ap.Port() == 0 || ap.Addr().IsUnspecified() {
			return fmt.Errorf("%q is not an IPv4 address or address:port (port 3478 by default, RFC 8489 §18.4)", v)
		}
		o.STUNServer = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		return nil
	}},
	"sip-domain": {fn: func(o *Options, v string) error {
		d := strings.TrimSuffix(strings.ToLower(v), ".")
		if !validDomain(d) || d == "mesh" || strings.HasSuffix(d, ".mesh") {
			return fmt.Errorf("%q is not a public DNS domain like voice.example.org (not .mesh)", v)
		}
		o.SIPDomain = d
		return nil
	}},
	"dial-prefix": {fn: func(o *Options, v string) error {
		if len(v) > 4 || strings.Trim(v, "0123456789") != "" {
			return fmt.Errorf("%q is not a dial prefix of 1 to 4 digits", v)
		}
		o.DialPrefix = v
		return nil
	}},
	"trunk-registrar": {fn: func(o *Options, v string) error {
		var u sip.Uri
		if err := sip.ParseUri(v, &u); err != nil || !strings.EqualFold(u.Scheme, "sip") || u.User != "" || u.Host == "" {
			return fmt.Errorf("%q is not the provider's registrar as a sip: URI without user, like sip:sip.provider.example", v)
		}
		o.TrunkRegistrar = v
		return nil
	}},
	"trunk-user": {fn: func(o *Options, v string) error {
		if len(v) > 64 || strings.ContainsAny(v, "@:;<>\"\\") {
			return fmt.Errorf("%q is not an account name (up to 64 characters, no @ : ; < > or quotes)", v)
		}
		o.TrunkUser = v
		return nil
	}},
	"trunk-password-file": {fn: func(o *Options, v string) error {
		if !filepath.IsAbs(v) {
			return fmt.Errorf("%q is not an absolute path", v)
		}
		o.TrunkPasswordFile = filepath.Clean(v)
		return nil
	}},
	"log-level": {fn: func(o *Options, v string) error {
		var l slog.Level
		if err := l.UnmarshalText([]byte(v)); err != nil {
			return fmt.Errorf("%q is not a level (debug, info, warn or error)", v)
		}
		o.LogLevel = l
		return nil
	}},
}

func knownKeys() string {
	keys := make([]string, 0, len(setters))
	for k := range setters {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return strings.Join(keys, ", ")
}

// parseGroup parses a ring or hunt group's GROUP=EXT,EXT,… (example: the
// syntax to show in the error).
func parseGroup(o *Options, v, example string) (string, []string, error) {
	group, list, ok := strings.Cut(v, "=")
	members := strings.Split(list, ",")
	if !ok || registrar.ValidExt(group) != nil || list == "" {
		return "", nil, fmt.Errorf("%q: want GROUP=EXT,EXT,... like %s", v, example)
	}
	for _, m := range members {
		if registrar.ValidExt(m) != nil || m == group {
			return "", nil, fmt.Errorf("%q: member %q is not an extension", v, m)
		}
	}
	if _, hunt := o.HuntGroups[group]; hunt || o.RingGroups[group] != nil {
		return "", nil, fmt.Errorf("group %s listed twice", group)
	}
	return group, members, nil
}

// validDomain reports a DNS name of letters, digits and hyphens with at
// least two labels (RFC 1035 §2.3.1, RFC 1123 §2.1).
func validDomain(d string) bool {
	labels := strings.Split(d, ".")
	if len(d) > 253 || len(labels) < 2 {
		return false
	}
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' || strings.Trim(l, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
			return false
		}
	}
	return true
}

// parseOnOff reads the value of an on/off key.
func parseOnOff(v string, dst *bool) error {
	switch v {
	case "on":
		*dst = true
	case "off":
		*dst = false
	default:
		return fmt.Errorf("%q: want on or off", v)
	}
	return nil
}
