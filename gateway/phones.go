package gateway

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sipmesh/sipmesh/provisioning"
	"github.com/sipmesh/sipmesh/registrar"
)

// Phone provisioning: which phone gets which account, and where the clear
// password its configuration file needs is kept.
//
// The operator binds a phone's MAC to an extension on the node the phone
// is plugged into (`sipmesh phone add MAC EXT`, control socket POST
// /phones). On a node with the administrator key the node makes a strong
// random password (or takes the one given), publishes the account to the
// DHT as every account is published — a record signed by the
// administrator key holding only the digest HA1 values — and keeps the
// clear password in PhonesFile in its state directory (mode 0600, like
// the node key), nowhere else. On a node without the administrator key
// the operator gives the password of an existing subscriber; the node
// checks it against the account's HA1 in the DHT and keeps it the same
// way. Nothing of the password goes into the DHT, a log line, the status
// or the control socket's answers.
//
// A phone moved to another node is provisioned there again: the binding
// and the secret stay on the node where they were made. No password, not
// even encrypted, travels the mesh: a node that is taken (its flash read)
// gives away the passwords of the phones bound on it, and no others.
//
// The configuration file is served (provisioning.HTTPServer under
// ProvisionPath, on the web UI's LAN listener) only to the address
// holding the MAC's current DHCP lease on this node's LAN, and only while
// the stored password still matches the account in the DHT (a password
// changed elsewhere makes the binding stale: it is not served, and the
// log says so).

// PhonesFile holds the phone bindings and their clear SIP passwords
// inside the state directory.
const PhonesFile = "phones.json"

// ProvisionPath is where the web UI's LAN listener serves phone
// configuration files; DHCP option 66 points there.
const ProvisionPath = "/provision/"

// MaxPhones bounds the bindings of one node (a LAN has at most a few
// hundred phones).
const MaxPhones = 1024

// phonePasswordBytes of randomness in a generated password: 120 bits,
// 30 hex digits a phone never needs a person to type.
const phonePasswordBytes = 15

// PhoneInfo is what the control socket shows of a binding: never the
// password.
type PhoneInfo struct {
	MAC   string    `json:"mac"`
	Ext   string    `json:"ext"`
	Added time.Time `json:"added"`
	// PasswordChanged reports (on add) that the node set a new password
	// on the account: the phones of the extension bound on this node
	// follow (at their next fetch), those bound elsewhere must be added
	// again there.
	PasswordChanged bool `json:"password_changed,omitempty"`
}

// AddPhoneRequest is the body of POST /phones. Password is optional on
// a node with the administrator key (one is generated).
type AddPhoneRequest struct {
	MAC      string `json:"mac"`
	Ext      string `json:"ext"`
	Password string `json:"password,omitempty"`
}

// phoneSecret is one binding as PhonesFile keeps it.
type phoneSecret struct {
	MAC      string    `json:"mac"`
	Ext      string    `json:"ext"`
	Password string    `json:"password"`
	Added    time.Time `json:"added"`
}

// errBadPhone is the caller's mistake in a phone binding.
var errBadPhone = errors.New("bad phone binding")

// phoneStore is the local secret store: the bindings in memory and in
// PhonesFile, rewritten atomically on each change.
type phoneStore struct {
	path string
	max  int // MaxPhones; tests lower it
	// adding serialises AddPhone: two bindings of one extension made at
	// once must not publish one password and keep another.
	adding sync.Mutex

	mu     sync.Mutex
	phones map[string]phoneSecret // by MAC, net.HardwareAddr.String()
}

// loadPhoneStore reads dir/PhonesFile (none yet: no bindings). A file
// readable by others is refused, as for the node key.
func loadPhoneStore(dir string) (*phoneStore, error) {
	s := &phoneStore{path: filepath.Join(dir, PhonesFile), max: MaxPhones, phones: make(map[string]phoneSecret)}
	b, err := os.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("phone bindings: %w", err)
	}
	fi, err := os.Stat(s.path)
	if err != nil {
		return nil, fmt.Errorf("phone bindings: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("phone bindings %s: mode %04o lets others read the SIP passwords in it; chmod 600 it", s.path, fi.Mode().Perm())
	}
	var list []phoneSecret
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("phone bindings %s: %w", s.path, err)
	}
	for _, p := range list {
		s.phones[p.MAC] = p
	}
	return s, nil
}

func (s *phoneStore) get(mac net.HardwareAddr) (phoneSecret, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.phones[mac.String()]
	return p, ok
}

// full reports whether a binding of mac would be one too many.
func (s *phoneStore) full(mac net.HardwareAddr) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.phones[mac.String()]
	return !ok && len(s.phones) >= s.max
}

// passwordOf returns the password of another binding of ext, if any.
func (s *phoneStore) passwordOf(ext string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.phones {
		if p.Ext == ext {
			return p.Password, true
		}
	}
	return "", false
}

func (s *phoneStore) list() []PhoneInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]PhoneInfo, 0, len(s.phones))
	for _, p := range s.phones {
		out = append(out, PhoneInfo{MAC: p.MAC, Ext: p.Ext, Added: p.Added})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].MAC < out[j].MAC })
	return out
}

// update applies f to a copy of the bindings, writes it and only then
// makes it current.
func (s *phoneStore) update(f func(m map[string]phoneSecret) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[string]phoneSecret, len(s.phones)+1)
	for k, v := range s.phones {
		m[k] = v
	}
	if err := f(m); err != nil {
		return err
	}
	if len(m) > s.max {
		return fmt.Errorf("%w: this node holds %d phone bindings already", errBadPhone, s.max)
	}
	if err := s.writeLocked(m); err != nil {
		return fmt.Errorf("phone bindings: %w", err)
	}
	s.phones = m
	return nil
}

// writeLocked writes the bindings to a temporary file (mode 0600 before a
// byte is written), syncs it and renames it over PhonesFile.
func (s *phoneStore) writeLocked(m map[string]phoneSecret) error {
	list := make([]phoneSecret, 0, len(m))
	for _, p := range m {
		list = append(list, p)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].MAC < list[j].MAC })
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(s.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, PhonesFile+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after the rename, a no-op
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), s.path)
}

// parsePhoneMAC accepts a 48-bit MAC in the usual notations
// (00:15:65:a1:b2:c3, 00-15-65-..., 0015.65a1.b2c3) or as the 12 hex
// digits of a phone's file name.
func parsePhoneMAC(s string) (net.HardwareAddr, error) {
	if len(s) == 12 && !strings.ContainsAny(s, ":-.") {
		var b strings.Builder
		for i := 0; i < 12; i += 2 {
			if i > 0 {
				b.WriteByte(':')
			}
			b.WriteString(s[i : i+2])
		}
		s = b.String()
	}
	mac, err := net.ParseMAC(s)
	if err != nil || len(mac) != 6 {
		return nil, fmt.Errorf("%w: MAC %q: want 6 bytes such as 00:15:65:a1:b2:c3", errBadPhone, s)
	}
	return mac, nil
}

// passwordMatches reports whether password is the account's, by its HA1
// values (compared in constant time).
func passwordMatches(a registrar.Account, password string) bool {
	b, err := registrar.NewAccount(a.Ext, password, "")
	if err != nil {
		return false
	}
	return subtle.ConstantTimeCompare(a.HA1MD5, b.HA1MD5)&subtle.ConstantTimeCompare(a.HA1SHA256, b.HA1SHA256) == 1
}

// newPhonePassword is a fresh random SIP password.
func newPhonePassword() string {
	b := make([]byte, phonePasswordBytes)
	rand.Read(b) // never fails (crypto/rand, Go ≥ 1.24)
	return hex.EncodeToString(b)
}

// AddPhone binds the phone with MAC mac to extension ext on this node
// (see the comment at the top of this file).
func (n *Node) AddPhone(ctx context.Context, req AddPhoneRequest) (PhoneInfo, error) {
	mac, err := parsePhoneMAC(req.MAC)
	if err != nil {
		return PhoneInfo{}, err
	}
	if err := registrar.ValidExt(req.Ext); err != nil {
		return PhoneInfo{}, fmt.Errorf("%w: %v", errBadPhone, err)
	}
	if req.Password != "" && len(req.Password) < registrar.MinPassword {
		return PhoneInfo{}, fmt.Errorf("%w: password: at least %d characters", errBadPhone, registrar.MinPassword)
	}
	n.phones.adding.Lock()
	defer n.phones.adding.Unlock()
	// Checked before a new password is published that nobody would keep.
	if n.phones.full(mac) {
		return PhoneInfo{}, fmt.Errorf("%w: this node holds %d phone bindings already", errBadPhone, n.phones.max)
	}
	info := PhoneInfo{MAC: mac.String(), Ext: req.Ext, Added: time.Now().UTC().Truncate(time.Second)}
	password := req.Password
	old, err := n.accounts.Account(ctx, req.Ext)
	switch {
	case err != nil && !errors.Is(err, registrar.ErrNoAccount):
		return PhoneInfo{}, fmt.Errorf("looking up subscriber %s: %w", req.Ext, err)
	case n.admin == nil && err != nil:
		return PhoneInfo{}, fmt.Errorf("no subscriber %s (create it on a node with the administrator key): %w", req.Ext, err)
	case n.admin == nil && password == "":
		return PhoneInfo{}, fmt.Errorf("%w: this node has no admin-key: give the password of subscriber %s", errBadPhone, req.Ext)
	case n.admin == nil:
		if !passwordMatches(old, password) {
			return PhoneInfo{}, fmt.Errorf("%w: the password is not subscriber %s's", errBadPhone, req.Ext)
		}
	default:
		// Another phone of the extension bound here keeps working (if
		// its password is still the account's).
		if p, ok := n.phones.passwordOf(req.Ext); ok && password == "" && err == nil && passwordMatches(old, p) {
			password = p
		}
		if err == nil && password != "" && passwordMatches(old, password) {
			break // the account has this password already
		}
		if password == "" {
			password = newPhonePassword()
		}
		a, aerr := registrar.NewAccount(req.Ext, password, old.Display)
		if aerr != nil {
			return PhoneInfo{}, fmt.Errorf("%w: %v", errBadPhone, aerr)
		}
		if _, aerr := n.storeAccount(ctx, a); aerr != nil {
			return PhoneInfo{}, aerr
		}
		info.PasswordChanged = err == nil
	}
	err = n.phones.update(func(m map[string]phoneSecret) error {
		// Every phone of the extension on this node follows the account.
		for k, p := range m {
			if p.Ext == info.Ext {
				p.Password = password
				m[k] = p
			}
		}
		m[info.MAC] = phoneSecret{MAC: info.MAC, Ext: info.Ext, Password: password, Added: info.Added}
		return nil
	})
	if err != nil {
		return PhoneInfo{}, err
	}
	n.log.Info("phone bound to an extension", "mac", info.MAC, "ext", info.Ext, "password_changed", info.PasswordChanged)
	return info, nil
}

// RemovePhone forgets the binding of mac (and its password) on this node;
// the subscriber's account stays.
func (n *Node) RemovePhone(mac string) (PhoneInfo, error) {
	hw, err := parsePhoneMAC(mac)
	if err != nil {
		return PhoneInfo{}, err
	}
	var old phoneSecret
	err = n.phones.update(func(m map[string]phoneSecret) error {
		var ok bool
		if old, ok = m[hw.String()]; !ok {
			return fmt.Errorf("no phone %s bound on this node: %w", hw, registrar.ErrNoAccount)
		}
		delete(m, hw.String())
		return nil
	})
	if err != nil {
		return PhoneInfo{}, err
	}
	n.log.Info("phone binding removed", "mac", old.MAC, "ext", old.Ext)
	return PhoneInfo{MAC: old.MAC, Ext: old.Ext, Added: old.Added}, nil
}

// Phones lists the phone bindings of this node.
func (n *Node) Phones() []PhoneInfo { return n.phones.list() }

// phoneAccounts gives the provisioning server a phone's account: the
// local binding, checked against the account in the DHT.
type phoneAccounts struct{ n *Node }

// accountLookupTimeout bounds the DHT look-up behind one file.
const accountLookupTimeout = 5 * time.Second

func (pa phoneAccounts) AccountForMAC(ctx context.Context, mac net.HardwareAddr) (provisioning.Account, bool, error) {
	n := pa.n
	p, ok := n.phones.get(mac)
	if !ok {
		return provisioning.Account{}, false, nil
	}
	ctx, cancel := context.WithTimeout(ctx, accountLookupTimeout)
	defer cancel()
	a, err := n.accounts.Account(ctx, p.Ext)
	switch {
	case errors.Is(err, registrar.ErrNoAccount):
		n.log.Warn("phone bound to a removed subscriber; its file is not served", "mac", p.MAC, "ext", p.Ext)
		return provisioning.Account{}, false, nil
	case err != nil:
		// The DHT out of reach (a ring in flux): the binding was checked
		// when it was made, and the registrar checks the password anyway.
		n.log.Info("subscriber look-up failed; serving the phone's stored account", "mac", p.MAC, "ext", p.Ext, "err", err)
		return provisioning.Account{Extension: p.Ext, Password: p.Password}, true, nil
	case !passwordMatches(a, p.Password):
		n.log.Warn("the subscriber's password was changed elsewhere; run `sipmesh phone add` again for this phone", "mac", p.MAC, "ext", p.Ext)
		return provisioning.Account{}, false, nil
	}
	return provisioning.Account{Extension: p.Ext, Password: p.Password, DisplayName: a.Display}, true, nil
}

// phoneDirectory is the phonebook: every subscriber, and the ring groups
// (the mesh's aliases for several phones).
type phoneDirectory struct{ n *Node }

func (d phoneDirectory) Entries(ctx context.Context) ([]provisioning.DirectoryEntry, error) {
	ctx, cancel := context.WithTimeout(ctx, accountLookupTimeout)
	defer cancel()
	accts, err := d.n.accounts.ListAccounts(ctx)
	if err != nil && len(accts) == 0 {
		return nil, err
	}
	out := make([]provisioning.DirectoryEntry, 0, len(accts)+len(d.n.opts.RingGroups))
	for _, a := range accts {
		name := a.Display
		if name == "" {
			name = a.Ext
		}
		out = append(out, provisioning.DirectoryEntry{Name: name, Number: a.Ext})
	}
	for g := range d.n.opts.RingGroups {
		out = append(out, provisioning.DirectoryEntry{Name: "Group " + g, Number: g})
	}
	return out, nil
}

// provisioningURL is the URL DHCP option 66 sends: the web listener on
// the LAN address, or "-" (no option) when the web UI does not listen
// there.
func (n *Node) provisioningURL(lan netip.Prefix) string {
	for _, a := range n.webAddrs(lan) {
		if a.Addr() == lan.Addr() {
			return "http://" + a.String() + ProvisionPath
		}
	}
	return "-"
}

// newProvisioner makes the provisioning server of the LAN, which the web
// listener serves under ProvisionPath.
func (n *Node) newProvisioner(lan netip.Prefix, leases provisioning.LeaseChecker) (*provisioning.HTTPServer, error) {
	return provisioning.NewHTTPServer(provisioning.HTTPConfig{
		Network:    n.network,
		Address:    netip.AddrPortFrom(lan.Addr(), n.opts.WebPort).String(),
		Accounts:   phoneAccounts{n},
		Directory:  phoneDirectory{n},
		Leases:     leases,
		PathPrefix: ProvisionPath,
		SIPPort:    int(n.opts.SIPPort),
		Logger:     n.base,
	})
}

// provisioner returns the LAN's provisioning server (nil before the LAN is
// up, or without DHCP: without a lease table no file is served).
func (n *Node) provisioner() *provisioning.HTTPServer {
	n.svc.mu.Lock()
	defer n.svc.mu.Unlock()
	return n.svc.prov
}

// withProvisioning puts the provisioning server under ProvisionPath in
// front of the web UI.
func (n *Node) withProvisioning(web http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, ProvisionPath) {
			web.ServeHTTP(w, r)
			return
		}
		if p := n.provisioner(); p != nil {
			p.ServeHTTP(w, r)
			return
		}
		http.Error(w, "404 page not found", http.StatusNotFound)
	})
}
