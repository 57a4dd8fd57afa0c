package gateway

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"text/tabwriter"
)

// ConfigKey documents one key of the config file: the README's table of
// keys and `sipmesh node --help` are both made from ConfigKeys, and a test
// checks that it names exactly the keys ParseConfig knows.
type ConfigKey struct {
	Name string
	// Repeatable keys may be given on several lines; each adds a value.
	Repeatable bool
	// Default is the value in force when the file does not set the key,
	// formatted from DefaultOptions.
	Default string
	// Doc says what the key sets, in one line.
	Doc string
}

// configKeyDocs lists the keys in the order a config file would set them.
// show formats the key's value in o; an empty string means "not set", for
// which unset (or "none") is printed.
var configKeyDocs = []struct {
	name, unset, doc string
	show             func(o Options) string
}{
	{"name", "", "label of the node in logs and status (not its identity: the key is)",
		func(o Options) string { return o.Name }},
	{"state-dir", "", "directory of node.key and other state that survives a restart",
		func(o Options) string { return o.StateDir }},
	{"mesh-interface", "required", "interface SSR runs on; at least one",
		func(o Options) string { return strings.Join(o.MeshInterfaces, " ") }},
	{"mesh-port", "", "UDP port of SSR frames on the mesh interfaces",
		func(o Options) string { return strconv.Itoa(int(o.MeshPort)) }},
	{"mesh-encryption", "", "encrypt mesh frames per link: on or off (off: authenticated only, for amateur-radio bands; one value for the whole mesh)",
		func(o Options) string {
			if o.MeshEncryption {
				return "on"
			}
			return "off"
		}},
	{"mesh-admission", "", "who may join the mesh: open (any key) or closed (keys the administrator signed: `sipmesh admit`)",
		func(o Options) string {
			if o.MeshAdmissionClosed {
				return "closed"
			}
			return "open"
		}},
	{"ip-network", "", "IPv6 over the mesh (TUN " + IPNetworkTUN + ", the mesh /48, a LAN /116 and a CLAT /96 per node; needs root): on or off",
		func(o Options) string {
			if o.IPNetwork {
				return "on"
			}
			return "off"
		}},
	{"control", "none", "control socket of `sipmesh status`, `ping`, `user`, `phone`, `forward`, `alias`, `lookup`, `gateways` (none: no socket)",
		func(o Options) string { return o.Control }},
	{"log-level", "", "least severe level logged: debug, info, warn or error",
		func(o Options) string { return strings.ToLower(o.LogLevel.String()) }},
	{"admin-key", "none", "mesh administrator key (created if missing); subscribers are managed on nodes that have it",
		func(o Options) string { return o.AdminKey }},
	{"admin-public-key", "from admin-key", "the administrator key's public half (hex), on nodes without admin-key",
		func(o Options) string { return fmt.Sprintf("%x", o.AdminPublicKey) }},
	{"lan-interface", "none", "interface phones plug into (none: the node only routes and stores)",
		func(o Options) string { return o.LANInterface }},
	{"lan-address", "derived", "the node's IPv4 address/prefix on the LAN (default: derived from the node ID inside lan-supernet and claimed in the DHT)",
		func(o Options) string {
			if !o.LANAddress.IsValid() {
				return ""
			}
			return o.LANAddress.String()
		}},
	{"lan-supernet", "", "where derived LAN subnets come from",
		func(o Options) string { return o.LANSupernet.String() }},
	{"dhcp", "", "serve DHCP (addresses, DNS = the node, option 120 sipserver.mesh) on the LAN: on or off",
		func(o Options) string {
			if o.DHCP {
				return "on"
			}
			return "off"
		}},
	{"sip-port", "", "SIP port on the LAN and mesh addresses",
		func(o Options) string { return strconv.Itoa(int(o.SIPPort)) }},
	{"digest-algorithms", "", "digest algorithms offered in challenges, in order (RFC 8760): SHA-256, MD5 or both",
		func(o Options) string { return strings.Join(o.DigestAlgorithms, ",") }},
	{"dns-upstream", "none", "resolver (address or address:port) for names outside .mesh",
		func(o Options) string {
			s := make([]string, len(o.DNSUpstreams))
			for i, u := range o.DNSUpstreams {
				s[i] = u.String()
			}
			return strings.Join(s, " ")
		}},
	{"nat64-prefix", "", "prefix a gateway's NAT64 translates, announced in the DHT (RFC 6052); DNS64 synthesises with the prefix of the gateway the node would use (RFC 6147)",
		func(o Options) string { return o.NAT64Prefix.String() }},
	{"nat64", "", "run the NAT64 on a gateway (a TUN device and iptables rules, see \"NAT64 at gateways\"): on or off",
		func(o Options) string {
			if o.NAT64 {
				return "on"
			}
			return "off"
		}},
	{"clat-prefix", "none", "this node's CLAT prefix (an IPv6 /96 routed to the node): IPv4 hosts on the LAN reach the IPv4 Internet through it and a gateway's NAT64 (RFC 6877; none: no CLAT, but with ip-network on a node with a LAN takes its own /96 in fdca:654::/32)",
		func(o Options) string { return showPrefix(o.CLATPrefix) }},
	{"nat64-pool", "", "the IPv4 addresses of the gateway's NAT64 (a prefix, at most a /24; every address in it), masqueraded out of the uplink",
		func(o Options) string { return o.NAT64Pool.String() }},
	{"relay-ports", "", "UDP ports of the RTP relay on each side",
		func(o Options) string { return fmt.Sprintf("%d-%d", o.RelayPortMin, o.RelayPortMax) }},
	{"sip-rate", "", "SIP requests per second from one source address, a ceiling (responses are not limited; off: none)",
		func(o Options) string { return showRate(o.SIPRate) }},
	{"sip-burst", "", "SIP requests one source address may send at once above sip-rate",
		func(o Options) string { return strconv.Itoa(o.SIPBurst) }},
	{"sip-max-transactions", "", "live SIP server transactions past which each source gets a fair share (new requests over it dropped)",
		func(o Options) string { return strconv.Itoa(o.SIPMaxTransactions) }},
	{"dns-rate", "", "DNS queries per second from one source address, a ceiling (off: none)",
		func(o Options) string { return showRate(o.DNSRate) }},
	{"dns-burst", "", "DNS queries one source address may send at once above dns-rate",
		func(o Options) string { return strconv.Itoa(o.DNSBurst) }},
	{"web-listen", "auto", "addresses (ADDR:PORT) of the web UI and /metrics; auto: the LAN address on web-port; none: off; never 0.0.0.0 or ::",
		func(o Options) string {
			if o.WebOff {
				return "none"
			}
			s := make([]string, len(o.WebListen))
			for i, a := range o.WebListen {
				s[i] = a.String()
			}
			return strings.Join(s, " ")
		}},
	{"web-port", "", "port of the web UI on the automatic (LAN) address",
		func(o Options) string { return strconv.Itoa(int(o.WebPort)) }},
	{"uplink-interface", "none", "interface towards the Internet: makes the node a gateway, announced in the DHT (none: not a gateway)",
		func(o Options) string { return o.UplinkInterface }},
	{"public-address", "by STUN", "public IPv4 address the Internet reaches the gateway at (behind NAT: the router's, with SIP and relay ports forwarded)",
		func(o Options) string { return showAddr(o.PublicAddress) }},
	{"stun-server", "none", "STUN server (IPv4[:port], port 3478) that tells the gateway its public address and measures the uplink's RTT and loss",
		func(o Options) string {
			if !o.STUNServer.IsValid() {
				return ""
			}
			return o.STUNServer.String()
		}},
	{"sip-domain", "none", "the mesh's public SIP domain, pointed at the gateway in DNS: Internet calls to sip:EXT@domain reach the phone",
		func(o Options) string { return o.SIPDomain }},
	{"dial-prefix", "none", "digits that send a dialled number to the trunk (0 + 5550100 → 5550100 at the provider)",
		func(o Options) string { return o.DialPrefix }},
	{"trunk-registrar", "none", "the SIP provider's registrar, a sip: URI (sip:sip.provider.example); with trunk-user and trunk-password-file",
		func(o Options) string { return o.TrunkRegistrar }},
	{"trunk-user", "none", "the trunk account's user name (AOR and digest user)",
		func(o Options) string { return o.TrunkUser }},
	{"trunk-password-file", "none", "file holding the trunk password (mode 0600; never logged, never in the DHT or status)",
		func(o Options) string { return o.TrunkPasswordFile }},
	{"ring-group", "none", "a group extension and the members it rings in parallel, GROUP=EXT,EXT,…; the same on every node",
		func(o Options) string { return "" }},
	{"hunt-group", "none", "a group extension and the members it rings one after the other, each for S seconds (default 15), GROUP=EXT,EXT,…[/S]; the same on every node",
		func(o Options) string { return "" }},
}

// showAddr formats an optional address ("" when unset).
func showAddr(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// showRate formats a rate key's value (-1: off).
func showRate(r float64) string {
	if r < 0 {
		return "off"
	}
	return strconv.FormatFloat(r, 'f', -1, 64)
}

// ConfigKeys returns every key of the config file with its default, in the
// order a config file would set them.
func ConfigKeys() []ConfigKey {
	def := DefaultOptions()
	keys := make([]ConfigKey, len(configKeyDocs))
	for i, k := range configKeyDocs {
		d := k.show(def)
		if d == "" {
			d = "(" + k.unset + ")"
		}
		keys[i] = ConfigKey{Name: k.name, Repeatable: setters[k.name].repeat, Default: d, Doc: k.doc}
	}
	return keys
}

// ConfigKeysText is the table of keys for `sipmesh node --help`: key,
// default, what it sets.
func ConfigKeysText() string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "  key\tdefault\tsets\n")
	for _, k := range ConfigKeys() {
		doc := k.Doc
		if k.Repeatable {
			doc += " (repeatable)"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", k.Name, k.Default, doc)
	}
	tw.Flush()
	return b.String()
}

func showPrefix(p netip.Prefix) string {
	if !p.IsValid() {
		return ""
	}
	return p.String()
}
