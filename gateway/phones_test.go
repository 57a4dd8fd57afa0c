package gateway

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/sipmesh/sipmesh/memnet"
	"github.com/sipmesh/sipmesh/provisioning"
	"github.com/sipmesh/sipmesh/registrar"
)

// recordingAccounts is MemAccounts that keeps every record written, as
// the DHT would hold it.
type recordingAccounts struct {
	*registrar.MemAccounts
	admin   ed25519.PublicKey
	mu      sync.Mutex
	records [][]byte
}

func (r *recordingAccounts) PutRecord(ctx context.Context, rec []byte) error {
	r.mu.Lock()
	r.records = append(r.records, bytes.Clone(rec))
	r.mu.Unlock()
	return r.MemAccounts.PutRecord(ctx, rec)
}

// newPhoneTestNode is a node (not running) whose subscriber store is in
// memory and records what it is given; admin chooses whether it holds
// the administrator key. Its log (debug and up) goes to the returned
// buffer (the node does not run: only the test's goroutine logs).
func newPhoneTestNode(t *testing.T, admin bool, store *recordingAccounts) (*Node, *bytes.Buffer) {
	t.Helper()
	dir := t.TempDir()
	o := DefaultOptions()
	o.Name = "p"
	o.StateDir = filepath.Join(dir, "state")
	o.MeshInterfaces = []string{"m0"}
	o.Control = ""
	if admin {
		o.AdminKey = filepath.Join(dir, "admin.key")
	} else {
		o.AdminPublicKey = store.admin
	}
	h := memnet.New(memnet.Config{}).AddHost("p")
	h.AddInterface("m0", 1500)
	logs := &bytes.Buffer{}
	n, err := NewNode(o, h, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	if admin {
		store.admin = n.admin.Public().(ed25519.PublicKey)
		store.MemAccounts = registrar.NewMemAccounts(store.admin)
	}
	n.accounts = store
	return n, logs
}

// TestPhoneSecretStore: binding a phone on a node with the administrator
// key generates a strong password, publishes the account as HA1 values
// only (no record, no log line holds the password), keeps the password in
// a 0600 file that survives a restart, and gives it to the provisioning
// server; a password changed elsewhere or a removed subscriber stops the
// file from being served. A file readable by others is refused at start.
func TestPhoneSecretStore(t *testing.T) {
	ctx := context.Background()
	store := &recordingAccounts{}
	n, logs := newPhoneTestNode(t, true, store)

	info, err := n.AddPhone(ctx, AddPhoneRequest{MAC: "00-15-65-A1-B2-C3", Ext: "201"})
	if err != nil {
		t.Fatal(err)
	}
	if info.MAC != "00:15:65:a1:b2:c3" || info.Ext != "201" || info.PasswordChanged {
		t.Fatalf("AddPhone: %+v", info)
	}
	mac, _ := net.ParseMAC(info.MAC)
	acct, ok, err := phoneAccounts{n}.AccountForMAC(ctx, mac)
	if err != nil || !ok || acct.Extension != "201" {
		t.Fatalf("AccountForMAC: %+v %v %v", acct, ok, err)
	}
	pw := acct.Password
	if len(pw) < 24 {
		t.Fatalf("generated password %d characters, want ≥ 24", len(pw))
	}
	stored, err := store.Account(ctx, "201")
	if err != nil || !passwordMatches(stored, pw) {
		t.Fatalf("the account in the store does not have the phone's password: %v", err)
	}

	// The secret file: mode 0600, the password in it, reloaded after a
	// restart.
	path := filepath.Join(n.opts.StateDir, PhonesFile)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s: mode %04o, want 0600", PhonesFile, fi.Mode().Perm())
	}
	if b, _ := os.ReadFile(path); !strings.Contains(string(b), pw) {
		t.Fatalf("%s does not hold the password", PhonesFile)
	}
	again, err := loadPhoneStore(n.opts.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := again.get(mac); !ok || p.Password != pw || p.Ext != "201" {
		t.Fatalf("after reload: %+v %v", p, ok)
	}

	// A second phone of 201 on this node gets the same password (the
	// first keeps working); a third phone of a new extension its own.
	if info, err := n.AddPhone(ctx, AddPhoneRequest{MAC: "001565a1b2c4", Ext: "201"}); err != nil || info.PasswordChanged {
		t.Fatalf("second phone of 201: %+v %v", info, err)
	}
	mac2, _ := net.ParseMAC("00:15:65:a1:b2:c4")
	if a, _, _ := (phoneAccounts{n}).AccountForMAC(ctx, mac2); a.Password != pw {
		t.Fatal("second phone of 201 got another password")
	}
	if _, err := n.AddPhone(ctx, AddPhoneRequest{MAC: "00:15:65:a1:b2:c5", Ext: "202", Password: "given-202"}); err != nil {
		t.Fatal(err)
	}

	// Nothing the mesh or the log holds carries a password.
	for i, rec := range store.records {
		for _, secret := range []string{pw, "given-202"} {
			if bytes.Contains(rec, []byte(secret)) {
				t.Fatalf("DHT record %d holds a clear password", i)
			}
		}
	}
	if len(store.records) != 2 {
		t.Fatalf("%d account records written, want 2 (201, 202)", len(store.records))
	}
	for _, secret := range []string{pw, "given-202"} {
		if strings.Contains(logs.String(), secret) {
			t.Fatalf("the log holds a password:\n%s", logs)
		}
	}
	if !strings.Contains(logs.String(), "phone bound") {
		t.Fatalf("no log line of the binding:\n%s", logs)
	}
	for _, p := range n.Phones() {
		if p.MAC == "" || p.Ext == "" {
			t.Fatalf("Phones: %+v", p)
		}
	}

	// The password changed elsewhere (web UI, `sipmesh user add`): the
	// stale binding is not served.
	a, _ := registrar.NewAccount("202", "changed-elsewhere", "")
	if _, err := n.storeAccount(ctx, a); err != nil {
		t.Fatal(err)
	}
	mac3, _ := net.ParseMAC("00:15:65:a1:b2:c5")
	if _, ok, err := (phoneAccounts{n}).AccountForMAC(ctx, mac3); ok || err != nil {
		t.Fatalf("stale binding served: %v %v", ok, err)
	}
	// Binding another phone of 202 then sets a fresh password (the stale
	// one is not put back) and every phone of 202 here follows it.
	info, err = n.AddPhone(ctx, AddPhoneRequest{MAC: "00:15:65:a1:b2:c6", Ext: "202"})
	if err != nil || !info.PasswordChanged {
		t.Fatalf("rebinding 202: %+v %v", info, err)
	}
	a3, ok3, _ := phoneAccounts{n}.AccountForMAC(ctx, mac3)
	mac4, _ := net.ParseMAC("00:15:65:a1:b2:c6")
	a4, ok4, _ := phoneAccounts{n}.AccountForMAC(ctx, mac4)
	if !ok3 || !ok4 || a3.Password != a4.Password || a3.Password == "given-202" || a3.Password == "changed-elsewhere" {
		t.Fatalf("phones of 202 after rebinding: %v %v", ok3, ok4)
	}
	// A removed subscriber: not served either.
	if _, err := n.removeAccount(ctx, "201"); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := (phoneAccounts{n}).AccountForMAC(ctx, mac); ok {
		t.Fatal("binding of a removed subscriber served")
	}
	if _, err := n.RemovePhone("00:15:65:a1:b2:c3"); err != nil {
		t.Fatal(err)
	}
	if _, err := n.RemovePhone("00:15:65:a1:b2:c3"); !errors.Is(err, registrar.ErrNoAccount) {
		t.Fatalf("removing twice: %v", err)
	}
	if strings.Contains(logs.String(), "changed-elsewhere") {
		t.Fatal("the log holds a password")
	}

	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := loadPhoneStore(n.opts.StateDir); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("a world-readable %s loaded: %v", PhonesFile, err)
	}
}

// TestAddPhoneWithoutAdminKey: a node without the administrator key binds
// a phone only with the subscriber's own password, which it checks
// against the account; it publishes nothing.
func TestAddPhoneWithoutAdminKey(t *testing.T) {
	ctx := context.Background()
	store := &recordingAccounts{}
	adminNode, _ := newPhoneTestNode(t, true, store)
	a, _ := registrar.NewAccount("301", "right-password", "Carol")
	if _, err := adminNode.storeAccount(ctx, a); err != nil {
		t.Fatal(err)
	}
	n, logs := newPhoneTestNode(t, false, store)
	written := len(store.records)
	for _, tc := range []struct {
		name string
		req  AddPhoneRequest
	}{
		{"no password", AddPhoneRequest{MAC: "00:15:65:00:00:01", Ext: "301"}},
		{"wrong password", AddPhoneRequest{MAC: "00:15:65:00:00:01", Ext: "301", Password: "wrong-password"}},
		{"no such subscriber", AddPhoneRequest{MAC: "00:15:65:00:00:01", Ext: "399", Password: "right-password"}},
		{"bad MAC", AddPhoneRequest{MAC: "00:15:65:00:01", Ext: "301", Password: "right-password"}},
		{"EUI-64", AddPhoneRequest{MAC: "00:15:65:00:00:01:02:03", Ext: "301", Password: "right-password"}},
		{"bad extension", AddPhoneRequest{MAC: "00:15:65:00:00:01", Ext: "3 01", Password: "right-password"}},
	} {
		if _, err := n.AddPhone(ctx, tc.req); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
	if len(n.Phones()) != 0 {
		t.Fatalf("refused bindings were kept: %+v", n.Phones())
	}
	if _, err := n.AddPhone(ctx, AddPhoneRequest{MAC: "00:15:65:00:00:01", Ext: "301", Password: "right-password"}); err != nil {
		t.Fatal(err)
	}
	// The table of bindings is bounded; rebinding a phone it holds is not
	// a new entry.
	n.phones.max = 1
	if _, err := n.AddPhone(ctx, AddPhoneRequest{MAC: "00:15:65:00:00:02", Ext: "301", Password: "right-password"}); !errors.Is(err, errBadPhone) {
		t.Fatalf("a binding over the bound: %v", err)
	}
	if _, err := n.AddPhone(ctx, AddPhoneRequest{MAC: "00:15:65:00:00:01", Ext: "301", Password: "right-password"}); err != nil {
		t.Fatalf("rebinding at the bound: %v", err)
	}
	if len(store.records) != written {
		t.Fatal("a node without the administrator key wrote an account record")
	}
	mac, _ := net.ParseMAC("00:15:65:00:00:01")
	acct, ok, err := phoneAccounts{n}.AccountForMAC(ctx, mac)
	if !ok || err != nil || acct.Password != "right-password" || acct.DisplayName != "Carol" {
		t.Fatalf("AccountForMAC: %+v %v %v", acct, ok, err)
	}
	if strings.Contains(logs.String(), "password\"") || strings.Contains(logs.String(), "right-password") || strings.Contains(logs.String(), "wrong-password") {
		t.Fatalf("the log holds a password:\n%s", logs)
	}
}

type fixedLeases map[string]netip.Addr

func (f fixedLeases) LeaseByMAC(mac net.HardwareAddr) (provisioning.Lease, bool) {
	ip, ok := f[mac.String()]
	return provisioning.Lease{MAC: mac, IP: ip}, ok
}

// TestWebHandlerServesPhoneFiles: the web listener's handler serves a
// bound phone's file under /provision/ to its lease holder only, the
// phonebook from the subscribers and ring groups, and the web UI beside.
func TestWebHandlerServesPhoneFiles(t *testing.T) {
	ctx := context.Background()
	store := &recordingAccounts{}
	n, logs := newPhoneTestNode(t, true, store)
	n.opts.RingGroups = map[string][]string{"600": {"201", "202"}}
	h := n.WebHandler()
	get := func(path, remote string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, "http://10.64.7.1:8080"+path, nil)
		req.RemoteAddr = remote
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w
	}
	// Before the LAN is up: nothing under /provision/.
	if w := get("/provision/001565a1b2c3.cfg", "10.64.7.23:1000"); w.Code != http.StatusNotFound {
		t.Fatalf("before the LAN: %d", w.Code)
	}
	if _, err := n.AddPhone(ctx, AddPhoneRequest{MAC: "00:15:65:a1:b2:c3", Ext: "201"}); err != nil {
		t.Fatal(err)
	}
	lan := netip.MustParsePrefix("10.64.7.1/24")
	prov, err := n.newProvisioner(lan, fixedLeases{"00:15:65:a1:b2:c3": netip.MustParseAddr("10.64.7.23")})
	if err != nil {
		t.Fatal(err)
	}
	n.svc.mu.Lock()
	n.svc.prov = prov
	n.svc.mu.Unlock()
	if got := n.provisioningURL(lan); got != "http://10.64.7.1:8080/provision/" {
		t.Fatalf("option 66: %q", got)
	}
	w := get("/provision/001565a1b2c3.cfg", "10.64.7.23:1000")
	if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), "account.1.user_name = 201\n") ||
		!strings.Contains(w.Body.String(), "remote_phonebook.data.1.url = http://10.64.7.1:8080/provision/phonebook.xml\n") {
		t.Fatalf("phone's file: %d\n%s", w.Code, w.Body)
	}
	refused := get("/provision/001565a1b2c3.cfg", "10.64.7.24:1000")
	if refused.Code != http.StatusNotFound {
		t.Fatalf("from another address: %d", refused.Code)
	}
	pb := get("/provision/phonebook.xml", "10.64.7.24:1000").Body.String()
	if !strings.Contains(pb, "<Telephone>201</Telephone>") || !strings.Contains(pb, "<Telephone>600</Telephone>") {
		t.Fatalf("phonebook:\n%s", pb)
	}
	if w := get("/mesh", "10.64.7.24:1000"); w.Code != http.StatusOK {
		t.Fatalf("web UI beside: %d", w.Code)
	}
	pw, _ := n.phones.get(net.HardwareAddr{0, 0x15, 0x65, 0xa1, 0xb2, 0xc3})
	if strings.Contains(logs.String(), pw.Password) {
		t.Fatal("the log holds the password")
	}
	// The web UI's subscribers form binds a phone the same way.
	if err := (webBackend{n}).BindPhone(ctx, "00:15:65:a1:b2:c9", "201", ""); err != nil {
		t.Fatal(err)
	}
	if p, ok := n.phones.get(net.HardwareAddr{0, 0x15, 0x65, 0xa1, 0xb2, 0xc9}); !ok || p.Ext != "201" || p.Password != pw.Password {
		t.Fatalf("bound from the web UI: %+v %v", p, ok)
	}
	// Without a web listener on the LAN, DHCP sends no option 66.
	n.opts.WebOff = true
	if got := n.provisioningURL(lan); got != "-" {
		t.Fatalf("option 66 with the web UI off: %q", got)
	}
}
