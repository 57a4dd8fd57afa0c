package provisioning

import (
	"bufio"
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/memnet"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

type mapAccounts map[string]Account

func (m mapAccounts) AccountForMAC(_ context.Context, mac net.HardwareAddr) (Account, bool, error) {
	if mac.String() == "de:ad:00:00:00:00" {
		return Account{}, false, errors.New("store offline")
	}
	a, ok := m[mac.String()]
	return a, ok, nil
}

type listDirectory []DirectoryEntry

func (l listDirectory) Entries(context.Context) ([]DirectoryEntry, error) { return l, nil }

// The accounts carry characters that need escaping, and one tries to
// inject a configuration line through its display name.
var (
	yealinkMAC = "001565a1b2c3"
	gsMAC      = "000b82d4e5f6"
	polyMAC    = "0004f2112233"
	testAccts  = mapAccounts{
		"00:15:65:a1:b2:c3": {Extension: "201", Password: `p&ss<w>"rd'`, DisplayName: `Zoë "Z" <Ops> & Co`},
		"00:0b:82:d4:e5:f6": {Extension: "202", AuthUser: "u202", Password: "s3cret", DisplayName: "Bob\naccount.1.password = evil"},
		"00:04:f2:11:22:33": {Extension: "203", Password: "a<b", DisplayName: "Conf & Room"},
	}
	testDir = listDirectory{
		{Name: "Zoë & Co", Number: "201"},
		{Name: "Bob", Number: "202"},
		{Name: `<Conf "Room">`, Number: "203"},
	}
)

func newTestHTTP(t *testing.T, mod func(*HTTPConfig)) *HTTPServer {
	t.Helper()
	cfg := HTTPConfig{Network: memnet.New(memnet.Config{}).AddHost("n"), Address: "10.64.7.1:80",
		Accounts: testAccts, Directory: testDir}
	if mod != nil {
		mod(&cfg)
	}
	s, err := NewHTTPServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func get(t *testing.T, h http.Handler, path, ua string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, "http://10.64.7.1"+path, nil)
	req.RemoteAddr = "10.64.7.23:4711"
	if ua != "" {
		req.Header.Set("User-Agent", ua)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("golden file: %v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from the golden file:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func TestPhoneConfigsGolden(t *testing.T) {
	s := newTestHTTP(t, nil)
	tests := []struct {
		golden, path, ua, ctype string
		xml                     bool
	}{
		{"yealink.cfg", "/" + yealinkMAC + ".cfg", "Yealink SIP-T46S 66.86.0.15 00:15:65:a1:b2:c3", "text/plain", false},
		{"grandstream.xml", "/cfg" + gsMAC + ".xml", "Grandstream Model HW GXP2170 SW 1.0.11.3 DevId 000b82d4e5f6", "application/xml", true},
		{"polycom-master.cfg", "/" + polyMAC + ".cfg", "FileTransport PolycomVVX-VVX_410-UA/5.9.5.0614", "application/xml", true},
		{"polycom-phone.cfg", "/" + polyMAC + "-phone.cfg", "FileTransport PolycomVVX-VVX_410-UA/5.9.5.0614", "application/xml", true},
		{"phonebook.xml", "/phonebook.xml", "", "application/xml", true},
		{"yealink-upper.cfg", "/" + strings.ToUpper(yealinkMAC) + ".cfg", "", "text/plain", false},
	}
	for _, tc := range tests {
		t.Run(tc.golden, func(t *testing.T) {
			w := get(t, s, tc.path, tc.ua)
			if w.Code != http.StatusOK {
				t.Fatalf("GET %s: %d %s", tc.path, w.Code, w.Body)
			}
			if ct := w.Header().Get("Content-Type"); !strings.HasPrefix(ct, tc.ctype) {
				t.Errorf("Content-Type %q, want %s", ct, tc.ctype)
			}
			body := w.Body.String()
			golden(t, tc.golden, body)
			if tc.xml {
				// Well-formed XML: the escaping held.
				d := xml.NewDecoder(strings.NewReader(body))
				for {
					_, err := d.Token()
					if err == io.EOF {
						break
					}
					if err != nil {
						t.Fatalf("not well-formed XML: %v", err)
					}
				}
			}
		})
	}
	// The display name with a newline did not inject a key into the
	// line-based Yealink format.
	body := get(t, s, "/"+gsMAC+".cfg", "").Body.String()
	for line := range strings.Lines(body) {
		if strings.HasPrefix(line, "account.1.password = evil") {
			t.Errorf("display name injected a line:\n%s", body)
		}
	}
	if !strings.Contains(body, "account.1.display_name = Bob account.1.password = evil\n") {
		t.Errorf("display name not kept on one line:\n%s", body)
	}
}

func TestPhonebookParsesBack(t *testing.T) {
	s := newTestHTTP(t, nil)
	var dir struct {
		Entries []struct {
			Name      string `xml:"Name"`
			Telephone string `xml:"Telephone"`
		} `xml:"DirectoryEntry"`
	}
	if err := xml.Unmarshal(get(t, s, "/phonebook.xml", "").Body.Bytes(), &dir); err != nil {
		t.Fatal(err)
	}
	if len(dir.Entries) != 3 || dir.Entries[0].Name != `<Conf "Room">` || dir.Entries[2].Name != "Zoë & Co" {
		t.Fatalf("phonebook = %+v", dir.Entries)
	}
}

func TestProvisioningErrors(t *testing.T) {
	s := newTestHTTP(t, nil)
	for _, tc := range []struct {
		path string
		code int
	}{
		{"/112233445566.cfg", http.StatusNotFound}, // unknown MAC
		{"/cfg112233445566.xml", http.StatusNotFound},
		{"/001565a1b2c.cfg", http.StatusNotFound},  // 11 digits
		{"/001565a1b2cx.cfg", http.StatusNotFound}, // not hex
		{"/../etc/passwd", http.StatusNotFound},
		{"/", http.StatusNotFound},
		{"/dead00000000.cfg", http.StatusServiceUnavailable}, // store error
	} {
		if w := get(t, s, tc.path, ""); w.Code != tc.code {
			t.Errorf("GET %s: %d, want %d", tc.path, w.Code, tc.code)
		}
	}
	req := httptest.NewRequest(http.MethodPost, "/phonebook.xml", nil)
	w := httptest.NewRecorder()
	s.ServeHTTP(w, req)
	if w.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d", w.Code)
	}
	noDir := newTestHTTP(t, func(c *HTTPConfig) { c.Directory = nil })
	if w := get(t, noDir, "/phonebook.xml", ""); w.Code != http.StatusNotFound {
		t.Errorf("phonebook without directory: %d", w.Code)
	}
	if strings.Contains(get(t, noDir, "/"+yealinkMAC+".cfg", "").Body.String(), "phonebook") {
		t.Error("phonebook URL in a config without a directory")
	}
	if _, err := NewHTTPServer(HTTPConfig{Network: noDir.cfg.Network, Address: ":80"}); err == nil || !strings.Contains(err.Error(), "Accounts") {
		t.Errorf("missing Accounts: %v", err)
	}
}

type leaseMap map[string]netip.Addr

func (m leaseMap) LeaseByMAC(mac net.HardwareAddr) (Lease, bool) {
	ip, ok := m[mac.String()]
	return Lease{MAC: mac, IP: ip}, ok
}

// TestConfigOnlyToLeaseHolder: a configuration file (it holds the SIP
// password) goes only to the address holding that MAC's current lease;
// every refusal — another MAC, the right MAC from another address (the
// mesh, another LAN, another phone of this LAN), a MAC with no lease or no
// account, a name that is no file — is the same answer, so nobody learns
// which MACs exist.
func TestConfigOnlyToLeaseHolder(t *testing.T) {
	s := newTestHTTP(t, func(c *HTTPConfig) {
		c.Leases = leaseMap{
			"00:15:65:a1:b2:c3": netip.MustParseAddr("10.64.7.23"),
			"00:0b:82:d4:e5:f6": netip.MustParseAddr("10.64.7.24"),
			"11:22:33:44:55:66": netip.MustParseAddr("10.64.7.25"), // no account
		}
	})
	from := func(path, remote string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, "http://10.64.7.1"+path, nil)
		req.RemoteAddr = remote
		w := httptest.NewRecorder()
		s.ServeHTTP(w, req)
		return w
	}
	if w := from("/"+yealinkMAC+".cfg", "10.64.7.23:4711"); w.Code != http.StatusOK || !strings.Contains(w.Body.String(), "account.1.password") {
		t.Fatalf("lease holder: %d\n%s", w.Code, w.Body)
	}
	if w := from("/cfg"+gsMAC+".xml", "10.64.7.24:4711"); w.Code != http.StatusOK {
		t.Fatalf("Grandstream lease holder: %d", w.Code)
	}
	want := from("/no-such-file", "10.64.7.23:4711")
	if want.Code != http.StatusNotFound {
		t.Fatalf("unknown name: %d", want.Code)
	}
	for _, tc := range []struct{ name, path, remote string }{
		{"another phone's MAC", "/cfg" + gsMAC + ".xml", "10.64.7.23:4711"},
		{"another phone's MAC, Polycom name", "/" + gsMAC + "-phone.cfg", "10.64.7.23:4711"},
		{"a MAC with no lease", "/" + polyMAC + "-phone.cfg", "10.64.7.23:4711"},
		{"a MAC with a lease but no account, from its address", "/112233445566.cfg", "10.64.7.25:4711"},
		{"from the mesh", "/" + yealinkMAC + ".cfg", "[fd00:5ec::1234]:4711"},
		{"from another LAN", "/" + yealinkMAC + ".cfg", "10.64.9.23:4711"},
		{"from another address of this LAN", "/" + yealinkMAC + ".cfg", "10.64.7.99:4711"},
		{"IPv4-mapped from another address", "/" + yealinkMAC + ".cfg", "[::ffff:10.64.7.99]:4711"},
		{"unparsable remote", "/" + yealinkMAC + ".cfg", "garbage"},
	} {
		w := from(tc.path, tc.remote)
		if w.Code != want.Code || w.Body.String() != want.Body.String() || w.Header().Get("Content-Type") != want.Header().Get("Content-Type") {
			t.Errorf("%s: %d %q, want the same answer as an unknown name (%d %q)", tc.name, w.Code, w.Body, want.Code, want.Body)
		}
	}
	if w := from("/"+yealinkMAC+".cfg", "[::ffff:10.64.7.23]:4711"); w.Code != http.StatusOK {
		t.Errorf("lease holder as an IPv4-mapped address: %d", w.Code)
	}
}

// TestPathPrefix: mounted under /provision/, files are found there only,
// and the phonebook URL in a file names the prefix.
func TestPathPrefix(t *testing.T) {
	s := newTestHTTP(t, func(c *HTTPConfig) { c.PathPrefix = "/provision/" })
	w := get(t, s, "/provision/"+yealinkMAC+".cfg", "")
	if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), "remote_phonebook.data.1.url = http://10.64.7.1/provision/phonebook.xml\n") {
		t.Fatalf("%d\n%s", w.Code, w.Body)
	}
	if w := get(t, s, "/provision/phonebook.xml", ""); w.Code != http.StatusOK {
		t.Errorf("phonebook: %d", w.Code)
	}
	if w := get(t, s, "/"+yealinkMAC+".cfg", ""); w.Code != http.StatusNotFound {
		t.Errorf("outside the prefix: %d", w.Code)
	}
	for _, bad := range []string{"provision/", "/provision"} {
		if _, err := NewHTTPServer(HTTPConfig{Network: s.cfg.Network, Address: "x", Accounts: testAccts, PathPrefix: bad}); err == nil {
			t.Errorf("PathPrefix %q accepted", bad)
		}
	}
}

// TestRateLimitPerSource: one source gets its burst, then one request per
// second of (fake) time; another source is not affected; the table of
// sources stays bounded.
func TestRateLimitPerSource(t *testing.T) {
	now := time.Unix(1e9, 0)
	s := newTestHTTP(t, func(c *HTTPConfig) {
		c.SourceRate, c.SourceBurst, c.MaxSources = 1, 5, 8
		c.Now = func() time.Time { return now }
	})
	from := func(remote string) int {
		req := httptest.NewRequest(http.MethodGet, "http://10.64.7.1/phonebook.xml", nil)
		req.RemoteAddr = remote
		w := httptest.NewRecorder()
		s.ServeHTTP(w, req)
		return w.Code
	}
	for i := range 5 {
		if c := from("10.64.7.23:1"); c != http.StatusOK {
			t.Fatalf("request %d of the burst: %d", i, c)
		}
	}
	if c := from("10.64.7.23:2"); c != http.StatusTooManyRequests {
		t.Fatalf("over the burst: %d", c)
	}
	if c := from("10.64.7.24:1"); c != http.StatusOK {
		t.Fatalf("another source: %d", c)
	}
	now = now.Add(time.Second)
	if c := from("10.64.7.23:3"); c != http.StatusOK {
		t.Fatalf("a second later: %d", c)
	}
	if c := from("10.64.7.23:4"); c != http.StatusTooManyRequests {
		t.Fatalf("second request in that second: %d", c)
	}
	for i := range 100 {
		from(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 64, 8, byte(i)}), 1).String())
	}
	if n := len(s.limit.src); n > 8 {
		t.Fatalf("%d sources in the table, bound 8", n)
	}
}

// TestHTTPOverMemnet runs the server on the in-memory network and fetches
// a phone's file with net/http's client, as a phone would after DHCP.
func TestHTTPOverMemnet(t *testing.T) {
	leakcheck.Check(t)
	mn := memnet.New(memnet.Config{})
	lan := mn.NewSegment("lan", memnet.LinkConfig{})
	node := mn.AddHost("node")
	lan.Attach(node.AddInterface("lan0", 0, netip.MustParsePrefix("10.64.7.1/24")))
	phone := mn.AddHost("phone")
	lan.Attach(phone.AddInterface("eth0", 0, netip.MustParsePrefix("10.64.7.23/24")))

	s, err := NewHTTPServer(HTTPConfig{Network: node, Address: "10.64.7.1:80", Accounts: testAccts, Directory: testDir,
		Leases: leaseMap{"00:15:65:a1:b2:c3": netip.MustParseAddr("10.64.7.23")}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := node.Listen(context.Background(), "tcp", "10.64.7.1:80")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return phone.Dial(ctx, network, addr)
	}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	resp, err := client.Get("http://10.64.7.1/" + yealinkMAC + ".cfg")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "account.1.user_name = 201") ||
		!strings.Contains(string(body), "remote_phonebook.data.1.url = http://10.64.7.1/phonebook.xml") {
		t.Fatalf("%d:\n%s", resp.StatusCode, body)
	}
}

// FuzzHTTPRequest feeds raw request bytes, as a LAN host sends them,
// through net/http's request parser into the provisioning handler: no
// panic, an answer the handler means (200 with a content type, 400, 404, 405,
// 429), and a configuration file only for a MAC with an account.
func FuzzHTTPRequest(f *testing.F) {
	for _, p := range []string{"/" + yealinkMAC + ".cfg", "/cfg" + gsMAC + ".xml", "/" + polyMAC + "-phone.cfg",
		"/phonebook.xml", "/" + strings.ToUpper(yealinkMAC) + ".cfg", "/../etc/passwd", "/cfg.xml", "/-phone.cfg"} {
		f.Add([]byte("GET " + p + " HTTP/1.1\r\nHost: 10.64.7.1\r\nUser-Agent: Polycom/1\r\n\r\n"))
	}
	f.Add([]byte("POST /phonebook.xml HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"))
	f.Add([]byte("GET /" + yealinkMAC + ".cfg HTTP/1.0\r\nHost: a/b?c\r\n\r\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		s := newTestHTTP(t, nil)
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil {
			return // net/http answers 400 itself
		}
		req.RemoteAddr = "10.64.7.23:4711"
		w := httptest.NewRecorder()
		s.ServeHTTP(w, req)
		switch w.Code {
		case http.StatusOK:
			if w.Header().Get("Content-Type") == "" {
				t.Fatal("200 without a content type")
			}
		case http.StatusBadRequest, http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusTooManyRequests:
		default:
			t.Fatalf("status %d for %q", w.Code, raw)
		}
	})
}
