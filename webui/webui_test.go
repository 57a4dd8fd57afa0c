package webui

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/metrics"
	"github.com/sipmesh/sipmesh/metrics/metricstest"
	"github.com/sipmesh/sipmesh/ssr"
)

func init() { scryptCost = 1 << 10 }

// fakeBackend is a node with a few subscribers, a neighbour and a call.
type fakeBackend struct {
	mu     sync.Mutex
	users  map[string]User
	pw     map[string]string
	phones map[string]string // MAC → extension
}

func (f *fakeBackend) BindPhone(_ context.Context, mac, ext, _ string) error {
	if len(mac) != 17 {
		return errors.New("bad MAC")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.phones == nil {
		f.phones = make(map[string]string)
	}
	f.phones[mac] = ext
	return nil
}

func newFake() *fakeBackend {
	return &fakeBackend{users: map[string]User{"201": {Ext: "201", Display: "Ann <script>alert(1)</script>"}}, pw: map[string]string{}}
}

func (f *fakeBackend) Mesh() ssr.RouterStatus {
	return ssr.RouterStatus{ID: "aaaaaaaaaaaaaaaa", Addr: "fd00::1", Running: true,
		Neighbours: []ssr.NeighbourStatus{{ID: "bbbbbbbbbbbbbbbb", Interface: "wlan0", Quality: 0.8, LastSeen: 120}},
		Successors: []ssr.PeerStatus{{ID: "bbbbbbbbbbbbbbbb", Route: []string{"bbbbbbbbbbbbbbbb"}}},
		Fingers:    []string{"cccccccccccccccc"}}
}

func (f *fakeBackend) Calls(context.Context) []Call {
	return []Call{{ID: "c1", From: "201", To: "302", Answered: true, Age: 65 * time.Second, Remote: "cccccccccccccccc",
		Path: []string{"aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb", "cccccccccccccccc"}, Hops: 2,
		Legs: []Leg{{Side: "from LAN", MOS: 4.38, LossPct: 0.5, JitterMs: 2.25, Packets: 3000}}}}
}

func (f *fakeBackend) Phones(context.Context) ([]Phone, error) {
	return []Phone{{Ext: "201", Node: "aaaaaaaaaaaaaaaa", Contact: "sip:201@10.64.1.20:5060", Here: true, Expires: time.Now().Add(time.Minute)}}, nil
}

func (f *fakeBackend) Users(context.Context) ([]User, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []User
	for _, u := range f.users {
		out = append(out, u)
	}
	return out, nil
}

func (f *fakeBackend) SetUser(_ context.Context, ext, display, pw string) error {
	if len(pw) < 8 {
		return errors.New("password: at least 8 characters")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.users[ext] = User{Ext: ext, Display: display, Updated: time.Now()}
	f.pw[ext] = pw
	return nil
}

func (f *fakeBackend) DeleteUser(_ context.Context, ext string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.users[ext]; !ok {
		return fmt.Errorf("no subscriber %q", ext)
	}
	delete(f.users, ext)
	return nil
}

func (f *fakeBackend) has(ext string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.users[ext]
	return ok
}

func (f *fakeBackend) Node() NodeInfo {
	return NodeInfo{Name: "n1", ID: "aaaaaaaaaaaaaaaa", Version: "v-test", Start: time.Now().Add(-time.Hour),
		Config: [][2]string{{"mesh-interface", "wlan0"}}, CanManage: true}
}

func (f *fakeBackend) WriteMetrics(w io.Writer) error {
	mw := metrics.NewWriter(w)
	mw.One("sipmesh_sip_requests_total", metrics.Counter, "SIP requests.", 7)
	return mw.Flush()
}

const adminPW = "correct horse battery"

type env struct {
	t    *testing.T
	srv  *httptest.Server
	be   *fakeBackend
	file string
	logs *LogBuffer
}

func newEnv(t *testing.T) *env {
	e := &env{t: t, be: newFake(), file: filepath.Join(t.TempDir(), "web-password"), logs: NewLogBuffer(10)}
	if err := SetPassword(e.file, adminPW); err != nil {
		t.Fatal(err)
	}
	log := slog.New(e.logs.Handler(slog.DiscardHandler, slog.LevelInfo))
	e.srv = httptest.NewServer(New(Config{Backend: e.be, PasswordFile: e.file, Logs: e.logs, Logger: log}))
	t.Cleanup(e.srv.Close)
	return e
}

// client returns an HTTP client with a cookie jar that does not follow
// redirects.
func (e *env) client() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func (e *env) get(c *http.Client, path string) (int, string) {
	e.t.Helper()
	resp, err := c.Get(e.srv.URL + path)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (e *env) post(c *http.Client, path string, v url.Values) (*http.Response, string) {
	e.t.Helper()
	resp, err := c.PostForm(e.srv.URL+path, v)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func (e *env) login(c *http.Client, pw string) *http.Response {
	e.t.Helper()
	resp, _ := e.post(c, "/login", url.Values{"password": {pw}})
	return resp
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf returns the CSRF token of the logged-in client's forms.
func (e *env) csrf(c *http.Client) string {
	e.t.Helper()
	_, body := e.get(c, "/subscribers")
	m := csrfRE.FindStringSubmatch(body)
	if m == nil {
		e.t.Fatalf("no CSRF token on the subscribers page:\n%s", body)
	}
	return m[1]
}

func TestPages(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	for _, tt := range []struct {
		path string
		want []string
	}{
		{"/mesh", []string{"bbbbbbbb", "80%", "wlan0", "successor", "cccccccc"}},
		{"/calls", []string{"201", "302", "aaaaaaaa → bbbbbbbb → cccccccc", "<td data-h=\"Hops\">2</td>", "4.38", "jitter 2.2 ms", "app.js"}},
		{"/calls?part=table", []string{"4.38", "302"}},
		{"/phones", []string{"sip:201@10.64.1.20:5060", "this node"}},
		{"/subscribers", []string{"Ann &lt;script&gt;alert(1)&lt;/script&gt;", "Log in</a> to add"}},
		{"/node", []string{"v-test", "mesh-interface", "1h0m0s"}},
		{"/login", []string{`type="password"`}},
		{"/static/style.css", []string{"@media"}},
		{"/static/app.js", []string{"setInterval"}},
	} {
		code, body := e.get(c, tt.path)
		if code != http.StatusOK {
			t.Errorf("GET %s: %d", tt.path, code)
		}
		for _, w := range tt.want {
			if !strings.Contains(body, w) {
				t.Errorf("GET %s: no %q in\n%s", tt.path, w, body)
			}
		}
		if strings.Contains(body, "<script>alert") {
			t.Errorf("GET %s: unescaped value", tt.path)
		}
	}
	if code, _ := e.get(c, "/"); code != http.StatusSeeOther {
		t.Errorf("GET /: %d, want a redirect", code)
	}
	if code, _ := e.get(c, "/nope"); code != http.StatusNotFound {
		t.Errorf("GET /nope: %d", code)
	}
}

func TestMetricsEndpoint(t *testing.T) {
	e := newEnv(t)
	resp, err := http.Get(e.srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != metrics.ContentType {
		t.Errorf("Content-Type %q", ct)
	}
	b, _ := io.ReadAll(resp.Body)
	fams := metricstest.Parse(t, string(b))
	if v, ok := metricstest.Value(fams, "sipmesh_sip_requests_total"); !ok || v != 7 {
		t.Errorf("sipmesh_sip_requests_total = %v, %v", v, ok)
	}
}

// TestNoChangeWithoutAuth: every state-changing request is refused
// without a session, and with a session but without the right CSRF token.
func TestNoChangeWithoutAuth(t *testing.T) {
	e := newEnv(t)
	anon := e.client()
	admin := e.client()
	if resp := e.login(admin, adminPW); resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/subscribers" {
		t.Fatalf("log-in: %v %v", resp.Status, resp.Header.Get("Location"))
	}
	tok := e.csrf(admin)
	add := url.Values{"ext": {"777"}, "display": {"Eve"}, "password": {"secret-pass"}}
	with := func(v url.Values, csrf string) url.Values {
		out := url.Values{}
		for k, vs := range v {
			out[k] = vs
		}
		if csrf != "" {
			out.Set("csrf", csrf)
		}
		return out
	}
	for _, tt := range []struct {
		name   string
		c      *http.Client
		path   string
		values url.Values
	}{
		{"add without session", anon, "/subscribers", add},
		{"add without session, with a token", anon, "/subscribers", with(add, tok)},
		{"add without token", admin, "/subscribers", add},
		{"add with a wrong token", admin, "/subscribers", with(add, tok[:len(tok)-1]+"x")},
		{"add with a short token", admin, "/subscribers", with(add, "x")},
		{"delete without session", anon, "/subscribers/delete", url.Values{"ext": {"201"}}},
		{"delete without token", admin, "/subscribers/delete", url.Values{"ext": {"201"}}},
		{"logout without token", admin, "/logout", url.Values{}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, _ := e.post(tt.c, tt.path, tt.values)
			if resp.StatusCode != http.StatusForbidden {
				t.Errorf("%s: %s, want 403", tt.path, resp.Status)
			}
		})
	}
	if e.be.has("777") || !e.be.has("201") {
		t.Fatal("a refused request changed the subscribers")
	}
	// GET does not change anything either.
	if code, _ := e.get(admin, "/subscribers/delete?ext=201"); code != http.StatusMethodNotAllowed {
		t.Errorf("GET of a change: %d", code)
	}

	// With session and token: done.
	resp, _ := e.post(admin, "/subscribers", with(add, tok))
	if resp.StatusCode != http.StatusSeeOther || !e.be.has("777") {
		t.Fatalf("add with session and token: %s", resp.Status)
	}
	if _, body := e.get(admin, resp.Header.Get("Location")); !strings.Contains(body, "Stored 777") {
		t.Errorf("no confirmation:\n%s", body)
	}
	if _, body := e.get(admin, "/subscribers?m=Call+555+for+support"); strings.Contains(body, "Stored 777") || strings.Contains(body, "support") {
		t.Errorf("a message shown twice, or taken from the URL:\n%s", body)
	}
	resp, _ = e.post(admin, "/subscribers", with(url.Values{"ext": {"778"}, "password": {"short"}}, tok))
	if _, body := e.get(admin, resp.Header.Get("Location")); !strings.Contains(body, "Not stored: password") {
		t.Errorf("a refused add is not shown:\n%s", body)
	}
	resp, _ = e.post(admin, "/subscribers/delete", with(url.Values{"ext": {"201"}}, tok))
	if resp.StatusCode != http.StatusSeeOther || e.be.has("201") {
		t.Fatalf("delete: %s", resp.Status)
	}
	// Log out ends the session: the same token no longer works.
	if resp, _ := e.post(admin, "/logout", with(nil, tok)); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("logout: %s", resp.Status)
	}
	if resp, _ := e.post(admin, "/subscribers/delete", with(url.Values{"ext": {"777"}}, tok)); resp.StatusCode != http.StatusForbidden {
		t.Errorf("after log-out: %s", resp.Status)
	}
	if !strings.Contains(strings.Join(e.logs.Lines(), "\n"), "subscriber stored from the web UI") {
		t.Errorf("log tail: %q", e.logs.Lines())
	}
}

func TestLoginCookieAndPasswordChange(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	resp := e.login(c, "wrong password")
	if loc := resp.Header.Get("Location"); loc != "/login?m=wrong" || len(resp.Cookies()) != 0 {
		t.Fatalf("wrong password: %v %v", loc, resp.Cookies())
	}
	resp = e.login(c, adminPW)
	ck := resp.Cookies()
	if len(ck) != 1 || !ck[0].HttpOnly || ck[0].SameSite != http.SameSiteStrictMode || ck[0].Name != cookieName || len(ck[0].Value) < 40 {
		t.Fatalf("session cookie: %+v", ck)
	}
	tok := e.csrf(c)
	// A new password (sipmesh web-password) ends the old sessions.
	if err := SetPassword(e.file, "another password"); err != nil {
		t.Fatal(err)
	}
	resp, _ = e.post(c, "/subscribers", url.Values{"ext": {"9"}, "password": {"12345678"}, "csrf": {tok}})
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("session of the old password: %s", resp.Status)
	}
	if resp := e.login(c, "another password"); resp.Header.Get("Location") != "/subscribers" {
		t.Errorf("log-in with the new password: %v", resp.Header.Get("Location"))
	}
}

func TestLoginWithoutPassword(t *testing.T) {
	be := newFake()
	srv := httptest.NewServer(New(Config{Backend: be, PasswordFile: filepath.Join(t.TempDir(), "none")}))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/login")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "sipmesh web-password") {
		t.Errorf("no hint to set a password:\n%s", b)
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err = c.PostForm(srv.URL+"/login", url.Values{"password": {""}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if len(resp.Cookies()) != 0 {
		t.Error("a session without a password set")
	}
}

func TestLoginRateLimit(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	for i := range loginBurst {
		if resp := e.login(c, "wrong"); resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("attempt %d: %s", i, resp.Status)
		}
	}
	if resp := e.login(c, adminPW); resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("attempt past the burst: %s, want 429", resp.Status)
	}
}

func TestLimiterRefillAndBound(t *testing.T) {
	var l limiter
	now := time.Unix(1e9, 0)
	a := netip.MustParseAddr("10.0.0.1")
	for range loginBurst {
		if !l.allow(a, now) {
			t.Fatal("refused within the burst")
		}
	}
	if l.allow(a, now) {
		t.Fatal("allowed past the burst")
	}
	if !l.allow(a, now.Add(loginRate)) {
		t.Fatal("not refilled after loginRate")
	}
	for i := range 3 * maxLimiterIP {
		l.allow(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), now)
	}
	if len(l.m) > maxLimiterIP {
		t.Errorf("%d sources tracked, bound %d", len(l.m), maxLimiterIP)
	}
}

func TestSessionsBounded(t *testing.T) {
	var s sessions
	now := time.Unix(1e9, 0)
	first, _ := s.create(now, "h")
	for i := range 2 * maxSessions {
		s.create(now.Add(time.Duration(i+1)*time.Second), "h")
	}
	if len(s.m) != maxSessions {
		t.Errorf("%d sessions, bound %d", len(s.m), maxSessions)
	}
	if s.get(first, now, "h") != nil {
		t.Error("the oldest session survived")
	}
	id, _ := s.create(now, "h")
	if s.get(id, now.Add(sessionIdle+time.Second), "h") != nil {
		t.Error("an idle session survived")
	}
}

func TestPasswordHash(t *testing.T) {
	h, err := HashPassword("a good password")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		stored, pw string
		ok         bool
		err        bool
	}{
		{h, "a good password", true, false},
		{h, "a good passworD", false, false},
		{h, "", false, false},
		{"scrypt$1024$8$1$AAAA", "x", false, true},
		{"bcrypt$...", "x", false, true},
		{"scrypt$1073741824$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "x", false, true},
	} {
		ok, err := checkPassword(tt.stored, tt.pw)
		if ok != tt.ok || (err != nil) != tt.err {
			t.Errorf("checkPassword(%.20q, %q) = %v, %v", tt.stored, tt.pw, ok, err)
		}
	}
	if _, err := HashPassword("short"); err == nil {
		t.Error("short password hashed")
	}
}

func TestLogBufferBounded(t *testing.T) {
	b := NewLogBuffer(3)
	log := slog.New(b.Handler(slog.DiscardHandler, slog.LevelInfo))
	for i := range 5 {
		log.Info("line", "i", i, "long", strings.Repeat("x", 2*maxLogLine))
	}
	log.Debug("not kept")
	lines := b.Lines()
	if len(lines) != 3 || !strings.Contains(lines[0], "i=2") || !strings.Contains(lines[2], "i=4") {
		t.Fatalf("lines: %q", lines)
	}
	for _, l := range lines {
		if len(l) > maxLogLine {
			t.Errorf("line of %d bytes", len(l))
		}
	}
}

// TestBindPhoneFromSubscribersForm: the subscribers form of a Backend that
// binds phones has a MAC field; a subscriber stored with a MAC binds that
// phone (with a session and the CSRF token only), a bad MAC is reported
// and the subscriber still stored.
func TestBindPhoneFromSubscribersForm(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	e.login(admin, adminPW)
	tok := e.csrf(admin)
	if _, body := e.get(admin, "/subscribers"); !strings.Contains(body, `name="mac"`) {
		t.Fatalf("no MAC field:\n%s", body)
	}
	v := url.Values{"ext": {"205"}, "password": {"secret-pass"}, "mac": {"00:15:65:a1:b2:c3"}}
	if resp, _ := e.post(e.client(), "/subscribers", v); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("without a session: %s", resp.Status)
	}
	v.Set("csrf", tok)
	resp, _ := e.post(admin, "/subscribers", v)
	if _, body := e.get(admin, resp.Header.Get("Location")); !strings.Contains(body, "Stored 205; phone 00:15:65:a1:b2:c3 bound on this node") {
		t.Errorf("no confirmation:\n%s", body)
	}
	v.Set("ext", "206")
	v.Set("mac", "00:15")
	resp, _ = e.post(admin, "/subscribers", v)
	if _, body := e.get(admin, resp.Header.Get("Location")); !strings.Contains(body, "Stored 206; phone not bound: bad MAC") {
		t.Errorf("a refused binding is not shown:\n%s", body)
	}
	e.be.mu.Lock()
	defer e.be.mu.Unlock()
	if e.be.phones["00:15:65:a1:b2:c3"] != "205" || len(e.be.phones) != 1 {
		t.Fatalf("bindings: %v", e.be.phones)
	}
}
