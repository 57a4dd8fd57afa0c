package provisioning

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/insomniacslk/dhcp/rfc1035label"
)

// Option codes this package uses that insomniacslk/dhcp names differently
// or not at all.
const (
	optTFTPServerAddrs   = 150 // Cisco/Grandstream "TFTP server address" list
	optProvisioningURL   = 160 // Polycom UC / Grandstream / AudioCodes provisioning URL
	optClientFQDN        = 81  // RFC 4702
	optSIPServers        = 120 // RFC 3361
	sipEncodingNames     = 0   // RFC 3361 §3.1
	sipEncodingAddresses = 1   // RFC 3361 §3.2
)

// EncodeSIPServerNames encodes option 120 with encoding 0 (RFC 3361 §3.1):
// the byte 0 and the names as a sequence of RFC 1035 §3.1 labels,
// uncompressed (compression is optional; every client that decodes
// compressed names decodes plain ones).
func EncodeSIPServerNames(names ...string) ([]byte, error) {
	if len(names) == 0 {
		return nil, fmt.Errorf("provisioning: option 120: no SIP server name")
	}
	for _, n := range names {
		if err := checkDomainName(n); err != nil {
			return nil, fmt.Errorf("provisioning: option 120: %w", err)
		}
	}
	b := append([]byte{sipEncodingNames}, (&rfc1035label.Labels{Labels: names}).ToBytes()...)
	if len(b) > 255 {
		return nil, fmt.Errorf("provisioning: option 120: %d bytes, more than one option holds", len(b))
	}
	return b, nil
}

// EncodeSIPServerAddrs encodes option 120 with encoding 1 (RFC 3361 §3.2):
// the byte 1 and the IPv4 addresses, in order of preference.
func EncodeSIPServerAddrs(addrs ...netip.Addr) ([]byte, error) {
	if len(addrs) == 0 || len(addrs) > 63 {
		return nil, fmt.Errorf("provisioning: option 120: %d SIP server addresses, want 1 to 63", len(addrs))
	}
	b := []byte{sipEncodingAddresses}
	for _, a := range addrs {
		if !a.Unmap().Is4() {
			return nil, fmt.Errorf("provisioning: option 120: %v is not an IPv4 address", a)
		}
		v := a.Unmap().As4()
		b = append(b, v[:]...)
	}
	return b, nil
}

// checkDomainName accepts a host name (RFC 1035 §2.3.4 lengths; letters,
// digits, hyphens and underscores per label).
func checkDomainName(n string) error {
	n = strings.TrimSuffix(n, ".")
	if n == "" || len(n) > 253 {
		return fmt.Errorf("domain name %q: empty or longer than 253 bytes", n)
	}
	for _, l := range strings.Split(n, ".") {
		if l == "" || len(l) > 63 {
			return fmt.Errorf("domain name %q: label %q empty or longer than 63 bytes", n, l)
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("domain name %q: byte %q not allowed", n, c)
			}
		}
	}
	return nil
}

// hostLabel reduces a client's host name (option 12) to one DNS label the
// mesh DNS can publish as <label>.<node>.mesh: lower case, letters, digits
// and hyphens, no leading or trailing hyphen, at most 63 bytes. Only the
// first label of a dotted name counts. "" means nothing usable.
func hostLabel(s string) string {
	if i := strings.IndexByte(s, '.'); i >= 0 {
		s = s[:i]
	}
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < 63; i++ {
		c := s[i]
		switch {
		case c >= 'A' && c <= 'Z':
			b.WriteByte(c + 'a' - 'A')
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
			b.WriteByte(c)
		case c == '-' || c == '_' || c == ' ':
			b.WriteByte('-')
		}
	}
	return strings.Trim(b.String(), "-")
}

// decodeFQDN reads the domain name of a client FQDN option (RFC 4702 §2):
// flags, two deprecated RCODE bytes, then the name in canonical wire format
// if the E flag is set, else in ASCII. It returns "" for anything
// malformed: the name is only recorded.
func decodeFQDN(b []byte) string {
	if len(b) < 4 {
		return ""
	}
	const flagE = 0x04
	name := b[3:]
	if b[0]&flagE != 0 {
		l, err := rfc1035label.FromBytes(name)
		if err != nil || len(l.Labels) == 0 {
			return ""
		}
		s := l.Labels[0]
		if checkDomainName(s) != nil {
			return ""
		}
		return s
	}
	s := strings.TrimSuffix(string(name), ".")
	if checkDomainName(s) != nil {
		return ""
	}
	return s
}

// ipv4Bytes concatenates addresses for list options (3, 6, 42, 150).
func ipv4Bytes(addrs []netip.Addr) []byte {
	b := make([]byte, 0, 4*len(addrs))
	for _, a := range addrs {
		v := a.As4()
		b = append(b, v[:]...)
	}
	return b
}
