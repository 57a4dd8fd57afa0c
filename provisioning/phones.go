package provisioning

import (
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
)

// Account is the SIP account assigned to a phone. The password is needed
// in clear only to write the phone's configuration file; the provisioning
// server asks its Accounts provider for it on every request and keeps no
// copy.
type Account struct {
	Extension   string // SIP user part, e.g. "201"
	AuthUser    string // digest user name; default Extension
	Password    string
	DisplayName string
}

// DirectoryEntry is one line of the phonebook.
type DirectoryEntry struct {
	Name   string
	Number string
}

// MaxPhonebookEntries bounds the generated phonebook (Yealink phones hold
// about a thousand remote entries; the rest would be dropped by the phone).
const MaxPhonebookEntries = 1000

// phoneSite are what every format needs besides the account.
type phoneSite struct {
	mac          net.HardwareAddr
	domain       string // SIP domain of the AOR ("mesh")
	proxy        string // outbound proxy / registrar host ("sipserver.mesh")
	port         int
	phonebookURL string // "" if there is no phonebook
}

// macHex is the MAC as phones write it in file names: 12 lower-case hex
// digits.
func macHex(mac net.HardwareAddr) string { return fmt.Sprintf("%x", []byte(mac)) }

// parseMACHex parses 12 hex digits, either case.
func parseMACHex(s string) (net.HardwareAddr, bool) {
	if len(s) != 12 {
		return nil, false
	}
	mac := make(net.HardwareAddr, 6)
	for i := range 6 {
		v, err := strconv.ParseUint(s[2*i:2*i+2], 16, 8)
		if err != nil {
			return nil, false
		}
		mac[i] = byte(v)
	}
	return mac, true
}

// xesc escapes text for XML character data and attribute values as
// encoding/xml's EscapeText does (which costs the router binary its escape
// tables): the five special characters as entities, and what XML 1.0
// §2.2 does not allow in a document (and invalid UTF-8) as U+FFFD.
func xesc(s string) string {
	var b strings.Builder
	for _, r := range stripControl(s) {
		switch {
		case r == '&':
			b.WriteString("&amp;")
		case r == '<':
			b.WriteString("&lt;")
		case r == '>':
			b.WriteString("&gt;")
		case r == '"':
			b.WriteString("&#34;")
		case r == '\'':
			b.WriteString("&#39;")
		case r >= 0x20 && r <= 0xD7FF, r >= 0xE000 && r <= 0xFFFD, r >= 0x10000 && r <= 0x10FFFF:
			b.WriteRune(r)
		default:
			b.WriteRune('\uFFFD')
		}
	}
	return b.String()
}

// stripControl turns control characters into spaces: a line-based format
// has no escaping, so a CR or LF in a display name would inject
// configuration keys; XML 1.0 forbids most of them anyway.
func stripControl(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}

func authUser(a Account) string {
	if a.AuthUser != "" {
		return a.AuthUser
	}
	return a.Extension
}

func label(a Account) string {
	if a.DisplayName != "" {
		return a.DisplayName
	}
	return a.Extension
}

// yealinkConfig is a Yealink <mac>.cfg (auto-provisioning format of
// firmware V73 and later: "#!version:1.0.0.1" on the first line, then
// key = value). The account registers as <ext>@<domain> through the
// outbound proxy, so every phone's AOR is in the mesh domain whatever
// host name the node answers to.
func yealinkConfig(p phoneSite, a Account) string {
	v := stripControl
	var b strings.Builder
	b.WriteString("#!version:1.0.0.1\n")
	fmt.Fprintf(&b, "## sipmesh: account %s for %s\n", v(a.Extension), p.mac)
	kv := func(k, val string) { fmt.Fprintf(&b, "%s = %s\n", k, v(val)) }
	kv("account.1.enable", "1")
	kv("account.1.label", label(a))
	kv("account.1.display_name", a.DisplayName)
	kv("account.1.auth_name", authUser(a))
	kv("account.1.user_name", a.Extension)
	kv("account.1.password", a.Password)
	kv("account.1.sip_server.1.address", p.domain)
	kv("account.1.sip_server.1.port", strconv.Itoa(p.port))
	kv("account.1.sip_server.1.transport_type", "0") // UDP
	kv("account.1.outbound_proxy_enable", "1")
	kv("account.1.outbound_proxy.1.address", p.proxy)
	kv("account.1.outbound_proxy.1.port", strconv.Itoa(p.port))
	if p.phonebookURL != "" {
		kv("remote_phonebook.data.1.url", p.phonebookURL)
		kv("remote_phonebook.data.1.name", p.domain)
	}
	return b.String()
}

// grandstreamConfig is a Grandstream cfg<mac>.xml: P-values inside
// <gs_provision>. P271 account active, P270 account name, P47 SIP server
// (the domain), P48 outbound proxy, P35 SIP user ID, P36 authenticate ID,
// P34 password, P3 display name, P31 register.
func grandstreamConfig(p phoneSite, a Account) string {
	var b strings.Builder
	b.WriteString("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n")
	b.WriteString("<gs_provision version=\"1\">\n")
	fmt.Fprintf(&b, "  <mac>%s</mac>\n", macHex(p.mac))
	b.WriteString("  <config version=\"1\">\n")
	pv := func(n int, val, what string) {
		fmt.Fprintf(&b, "    <!-- %s -->\n    <P%d>%s</P%d>\n", what, n, xesc(val), n)
	}
	pv(271, "1", "account 1 active")
	pv(270, label(a), "account name")
	pv(47, fmt.Sprintf("%s:%d", p.domain, p.port), "SIP server")
	pv(48, fmt.Sprintf("%s:%d", p.proxy, p.port), "outbound proxy")
	pv(35, a.Extension, "SIP user ID")
	pv(36, authUser(a), "authenticate ID")
	pv(34, a.Password, "authenticate password")
	pv(3, a.DisplayName, "display name")
	pv(31, "1", "SIP registration")
	b.WriteString("  </config>\n</gs_provision>\n")
	return b.String()
}

// polycomMaster is the Polycom master configuration <mac>.cfg, which
// names the files the phone loads next.
func polycomMaster(p phoneSite) string {
	return "<?xml version=\"1.0\" standalone=\"yes\"?>\n" +
		"<APPLICATION APP_FILE_PATH=\"sip.ld\" CONFIG_FILES=\"" + macHex(p.mac) + "-phone.cfg\" " +
		"MISC_FILES=\"\" LOG_FILE_DIRECTORY=\"\" OVERRIDES_DIRECTORY=\"\" CONTACTS_DIRECTORY=\"\" " +
		"LICENSE_DIRECTORY=\"\" USER_PROFILES_DIRECTORY=\"\" CALL_LISTS_DIRECTORY=\"\"/>\n"
}

// polycomPhone is the Polycom UC Software <mac>-phone.cfg with the reg.1.*
// parameters of line 1.
func polycomPhone(p phoneSite, a Account) string {
	var b strings.Builder
	b.WriteString("<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n")
	fmt.Fprintf(&b, "<!-- sipmesh: account %s for %s -->\n", xesc(a.Extension), p.mac)
	b.WriteString("<polycomConfig>\n  <reg\n")
	attr := func(k, val string) { fmt.Fprintf(&b, "    %s=\"%s\"\n", k, xesc(val)) }
	attr("reg.1.address", a.Extension+"@"+p.domain)
	attr("reg.1.label", label(a))
	attr("reg.1.displayName", a.DisplayName)
	attr("reg.1.auth.userId", authUser(a))
	attr("reg.1.auth.password", a.Password)
	attr("reg.1.server.1.address", p.domain)
	attr("reg.1.server.1.port", strconv.Itoa(p.port))
	attr("reg.1.server.1.transport", "UDPOnly")
	attr("reg.1.outboundProxy.address", p.proxy)
	attr("reg.1.outboundProxy.port", strconv.Itoa(p.port))
	b.WriteString("  />\n</polycomConfig>\n")
	return b.String()
}

// yealinkPhonebook is a Yealink remote phonebook, sorted by name then
// number and cut at MaxPhonebookEntries.
func yealinkPhonebook(entries []DirectoryEntry) string {
	// sort.Slice, not slices.SortFunc: a generic sort instantiated for
	// this type costs the router binary 9 KB; sort's code is linked anyway.
	es := append([]DirectoryEntry(nil), entries...)
	sort.Slice(es, func(i, j int) bool {
		if es[i].Name != es[j].Name {
			return es[i].Name < es[j].Name
		}
		return es[i].Number < es[j].Number
	})
	if len(es) > MaxPhonebookEntries {
		es = es[:MaxPhonebookEntries]
	}
	var b strings.Builder
	b.WriteString("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<YealinkIPPhoneDirectory>\n")
	for _, e := range es {
		fmt.Fprintf(&b, "  <DirectoryEntry>\n    <Name>%s</Name>\n    <Telephone>%s</Telephone>\n  </DirectoryEntry>\n",
			xesc(e.Name), xesc(e.Number))
	}
	b.WriteString("</YealinkIPPhoneDirectory>\n")
	return b.String()
}
