// Package webui is the operator's web interface that every node serves:
// pages for the mesh (neighbours with link quality, ring neighbours,
// fingers), live calls (path, hop count and per-leg MOS, loss and jitter
// from the media relay), registered phones, subscribers (add, remove,
// reset a password, bind a desk phone's MAC on this node), and the node itself (config, version, uptime, log
// tail), plus the Prometheus /metrics endpoint.
//
// Reading is open to whoever reaches the listener (the node listens on its
// LAN, never on an uplink); every change needs the administrator's log-in:
// a password hashed with scrypt, a session cookie (HttpOnly,
// SameSite=Strict), a per-session CSRF token on every form, and a
// per-source rate limit on log-in attempts.
//
// Pages are written with html.EscapeString around every value rather than
// html/template: html/template and text/template's reflection cost the
// mipsle build 2.7 MB stripped (0.5 MB xz), more than the router budget
// left. Assets (one CSS file, a few lines of script for the live calls
// table) are embedded; nothing is fetched from elsewhere.
package webui

import (
	"context"
	_ "embed"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/sipmesh/sipmesh/metrics"
	"github.com/sipmesh/sipmesh/ssr"
)

// The assets, served by serveStatic (http.FileServer and its MIME
// tables would cost more than the files).
var (
	//go:embed static/style.css
	styleCSS string
	//go:embed static/app.js
	appJS string
)

// Backend is what the UI shows and changes of a node; gateway implements
// it on a running node, tests with a fake.
type Backend interface {
	Mesh() ssr.RouterStatus
	Calls(ctx context.Context) []Call
	Phones(ctx context.Context) ([]Phone, error)
	Users(ctx context.Context) ([]User, error)
	// SetUser adds a subscriber or resets its password (and display name).
	SetUser(ctx context.Context, ext, display, password string) error
	DeleteUser(ctx context.Context, ext string) error
	Node() NodeInfo
	WriteMetrics(w io.Writer) error
}

// PhoneBinder is a Backend that can also bind a desk phone (by MAC) to a
// subscriber on this node, so that the phone fetches its configuration
// file with that account (gateway: `sipmesh phone add`). The subscribers
// form shows a MAC field only for such a Backend.
type PhoneBinder interface {
	BindPhone(ctx context.Context, mac, ext, password string) error
}

// Call is a call whose media this node relays.
type Call struct {
	ID, From, To string
	Answered     bool
	Age          time.Duration
	// Remote is the other node of the call (empty: both phones are here);
	// Path the mesh route to it, this node first, and Hops its length.
	Remote string
	Path   []string
	Hops   int
	Legs   []Leg
}

// Leg is what one side sent into the relay on one stream.
type Leg struct {
	Side, Peer        string
	Packets           uint64
	LossPct, JitterMs float64
	MOS               float64
}

// Phone is a current registration of a subscriber.
type Phone struct {
	Ext, Display    string
	Node, NodeName  string
	Contact, Source string
	Expires         time.Time
	Here            bool // registered with this node
}

// User is a subscriber account, without its secrets.
type User struct {
	Ext, Display string
	Updated      time.Time
}

// NodeInfo describes the node for the node page.
type NodeInfo struct {
	Name, ID, Addr, LAN, Version string
	Start                        time.Time
	// Config are key, value pairs of the effective settings.
	Config [][2]string
	// CanManage: the node holds the mesh administrator key, so
	// subscribers can be changed from here.
	CanManage bool
}

// Config configures the UI.
type Config struct {
	Backend Backend
	// PasswordFile holds the administrator password's hash (SetPassword);
	// read at every log-in, so `sipmesh web-password` takes effect at once.
	// Without it no one can log in and nothing can be changed.
	PasswordFile string
	Logs         *LogBuffer // nil: no log tail
	Logger       *slog.Logger
	// Now is the clock (nil: time.Now); tests move it.
	Now func() time.Time
}

// Server is the UI's HTTP handler.
type Server struct {
	cfg      Config
	log      *slog.Logger
	mux      *http.ServeMux
	sessions sessions
	limit    limiter
}

// New returns the UI handler.
func New(cfg Config) *Server {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: cfg.Logger.With("component", "webui"), mux: http.NewServeMux()}
	m := s.mux
	m.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/mesh", http.StatusSeeOther) })
	m.HandleFunc("GET /mesh", s.mesh)
	m.HandleFunc("GET /calls", s.calls)
	m.HandleFunc("GET /phones", s.phones)
	m.HandleFunc("GET /subscribers", s.subscribers)
	m.HandleFunc("GET /node", s.node)
	m.HandleFunc("GET /login", s.loginPage)
	m.HandleFunc("POST /login", s.login)
	m.HandleFunc("POST /logout", s.admin(s.logout))
	m.HandleFunc("POST /subscribers", s.admin(s.setUser))
	m.HandleFunc("POST /subscribers/delete", s.admin(s.deleteUser))
	m.HandleFunc("GET /metrics", s.metrics)
	m.HandleFunc("GET /static/style.css", serveStatic("text/css; charset=utf-8", styleCSS))
	m.HandleFunc("GET /static/app.js", serveStatic("text/javascript; charset=utf-8", appJS))
	return s
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	// Nothing is loaded from elsewhere, no page is framed (clickjacking).
	h.Set("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'; form-action 'self'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	s.mux.ServeHTTP(w, r)
}

func serveStatic(ctype, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", ctype)
		w.Header().Set("Cache-Control", "max-age=3600")
		io.WriteString(w, body)
	}
}

// form parses a POST body (urlencoded only: no multipart parser linked in)
// and returns its values; bodies are bounded by MaxBytesReader.
func form(r *http.Request) url.Values {
	if err := r.ParseForm(); err != nil {
		return url.Values{}
	}
	return r.PostForm
}

// passwordHash returns the stored hash, "" when none is set.
func (s *Server) passwordHash() string {
	if s.cfg.PasswordFile == "" {
		return ""
	}
	b, err := os.ReadFile(s.cfg.PasswordFile)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("reading the web password", "err", err)
		}
		return ""
	}
	return strings.TrimSpace(string(b))
}

// current returns the request's session, nil when not logged in.
func (s *Server) current(r *http.Request) (string, *session) {
	c, err := r.Cookie(cookieName)
	if err != nil || c.Value == "" {
		return "", nil
	}
	h := s.passwordHash()
	if h == "" {
		return "", nil
	}
	return c.Value, s.sessions.get(c.Value, s.cfg.Now(), h)
}

// admin wraps a change: refused (403) without a session or without the
// session's CSRF token in the form.
func (s *Server) admin(f func(http.ResponseWriter, *http.Request, string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
		id, sess := s.current(r)
		if sess == nil {
			http.Error(w, "log in as administrator first", http.StatusForbidden)
			return
		}
		tok := form(r).Get(csrfField)
		if len(tok) != len(sess.csrf) || !constEq(tok, sess.csrf) {
			http.Error(w, "missing or wrong CSRF token: reload the page", http.StatusForbidden)
			return
		}
		f(w, r, id)
	}
}

func constEq(a, b string) bool {
	var v byte
	for i := range len(a) {
		v |= a[i] ^ b[i]
	}
	return v == 0
}

func (s *Server) loginPage(w http.ResponseWriter, r *http.Request) {
	p := s.begin(r, "Log in")
	if s.passwordHash() == "" {
		p.raw(`<p class="warn">No administrator password is set on this node. Set one on the node with <code>sipmesh web-password</code>.</p>`)
	}
	if r.URL.Query().Get("m") == "wrong" {
		p.raw(`<p class="warn">Wrong password.</p>`)
	}
	p.raw(`<form method="post" action="/login" class="card"><label>Password <input type="password" name="password" autocomplete="current-password" required autofocus></label> <button>Log in</button></form>`)
	p.end(w)
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
	src := remoteAddr(r)
	if !s.limit.allow(src, s.cfg.Now()) {
		s.log.Warn("web log-in rate limited", "source", src)
		http.Error(w, "too many log-in attempts; wait a minute", http.StatusTooManyRequests)
		return
	}
	h := s.passwordHash()
	if h == "" {
		http.Redirect(w, r, "/login", http.StatusSeeOther)
		return
	}
	ok, err := checkPassword(h, form(r).Get("password"))
	if err != nil {
		s.log.Error("web password file", "file", s.cfg.PasswordFile, "err", err)
	}
	if !ok {
		s.log.Warn("web log-in failed", "source", src)
		http.Redirect(w, r, "/login?m=wrong", http.StatusSeeOther)
		return
	}
	id, _ := s.sessions.create(s.cfg.Now(), h)
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: id, Path: "/", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, MaxAge: int(sessionLife / time.Second)})
	s.log.Info("web administrator logged in", "source", src)
	http.Redirect(w, r, "/subscribers", http.StatusSeeOther)
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request, id string) {
	s.sessions.drop(id)
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode, MaxAge: -1})
	http.Redirect(w, r, "/mesh", http.StatusSeeOther)
}

func (s *Server) setUser(w http.ResponseWriter, r *http.Request, id string) {
	ext, pw := strings.TrimSpace(form(r).Get("ext")), form(r).Get("password")
	err := s.cfg.Backend.SetUser(r.Context(), ext, strings.TrimSpace(form(r).Get("display")), pw)
	msg := "Stored " + ext
	if err != nil {
		msg = "Not stored: " + err.Error()
	} else {
		s.log.Info("subscriber stored from the web UI", "ext", ext, "source", remoteAddr(r))
	}
	if b, ok := s.cfg.Backend.(PhoneBinder); ok && err == nil {
		if mac := strings.TrimSpace(form(r).Get("mac")); mac != "" {
			if err := b.BindPhone(r.Context(), mac, ext, pw); err != nil {
				msg += "; phone not bound: " + err.Error()
			} else {
				msg += "; phone " + mac + " bound on this node"
			}
		}
	}
	s.sessions.setFlash(id, msg)
	http.Redirect(w, r, "/subscribers", http.StatusSeeOther)
}

func (s *Server) deleteUser(w http.ResponseWriter, r *http.Request, id string) {
	ext := form(r).Get("ext")
	msg := "Removed " + ext
	if err := s.cfg.Backend.DeleteUser(r.Context(), ext); err != nil {
		msg = "Not removed: " + err.Error()
	} else {
		s.log.Info("subscriber removed from the web UI", "ext", ext, "source", remoteAddr(r))
	}
	s.sessions.setFlash(id, msg)
	http.Redirect(w, r, "/subscribers", http.StatusSeeOther)
}

func (s *Server) metrics(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", metrics.ContentType)
	if err := s.cfg.Backend.WriteMetrics(w); err != nil {
		s.log.Debug("writing metrics", "err", err)
	}
}

// remoteAddr is the request's source address (the rate limit's key).
func remoteAddr(r *http.Request) netip.Addr {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	a, _ := netip.ParseAddr(host)
	return a.Unmap()
}
