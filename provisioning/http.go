package provisioning

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/sipmesh/sipmesh/internal/ratelog"
	"github.com/sipmesh/sipmesh/netx"
)

// Accounts looks up the SIP account assigned to a phone by its MAC
// address (the subscriber store; a reservation ties the MAC to an
// extension). ok is false for a MAC with no account.
type Accounts interface {
	AccountForMAC(ctx context.Context, mac net.HardwareAddr) (acct Account, ok bool, err error)
}

// Directory lists the mesh's subscribers for the phonebook.
type Directory interface {
	Entries(ctx context.Context) ([]DirectoryEntry, error)
}

// LeaseChecker tells which address holds a MAC's lease; DHCPServer
// implements it.
type LeaseChecker interface {
	LeaseByMAC(mac net.HardwareAddr) (Lease, bool)
}

// HTTPConfig configures the provisioning HTTP server.
type HTTPConfig struct {
	// Network and Address are where it listens (required), e.g. the
	// node's LAN address "10.64.7.1:80".
	Network netx.Network
	Address string
	// Accounts provides the phones' accounts (required).
	Accounts Accounts
	// Directory provides the phonebook; nil serves none (404).
	Directory Directory
	// Domain is the SIP domain of the accounts (default "mesh") and Proxy
	// the outbound proxy the phones send everything to (default
	// "sipserver.mesh", which every node's DNS answers with itself).
	Domain, Proxy string
	// SIPPort defaults to 5060.
	SIPPort int
	// Leases, if set, restricts a MAC's configuration file (it holds the
	// SIP password) to the address leased to that MAC. Phones fetch their
	// file right after DHCP, from their leased address.
	Leases LeaseChecker
	// PathPrefix is the URL path the server is mounted at, "/" by
	// default; it must begin and end with "/". A node serves the files
	// under "/provision/" beside its web UI.
	PathPrefix string
	// SourceRate and SourceBurst bound the requests of one source
	// address (per second, and at once); defaults DefaultSourceRate and
	// DefaultSourceBurst. MaxSources bounds the table of sources
	// (DefaultMaxSources).
	SourceRate  float64
	SourceBurst int
	MaxSources  int
	// Now is the clock of the rate limits (default time.Now).
	Now func() time.Time
	// Logger; default discards.
	Logger *slog.Logger
}

// Defaults of the per-source request limit: a phone fetches a handful of
// files after each boot, and again at its resync interval.
const (
	DefaultSourceRate  = 1.0
	DefaultSourceBurst = 20
	DefaultMaxSources  = 1024
)

// HTTPServer serves phone configuration files and the phonebook.
type HTTPServer struct {
	cfg   HTTPConfig
	limit *sourceLimiter
	log   *slog.Logger
	// peerLog logs per-request lines, which any LAN host can cause at
	// will: rate-limited per requester and in total, values truncated.
	peerLog *slog.Logger
}

// NewHTTPServer validates cfg and fills in defaults.
func NewHTTPServer(cfg HTTPConfig) (*HTTPServer, error) {
	if cfg.Network == nil {
		return nil, errors.New("provisioning: HTTP config Network: required")
	}
	if cfg.Address == "" {
		return nil, errors.New("provisioning: HTTP config Address: required")
	}
	if cfg.Accounts == nil {
		return nil, errors.New("provisioning: HTTP config Accounts: required")
	}
	if cfg.Domain == "" {
		cfg.Domain = DefaultDomain
	}
	if cfg.Proxy == "" {
		cfg.Proxy = DefaultSIPServer
	}
	if err := checkDomainName(cfg.Domain); err != nil {
		return nil, fmt.Errorf("provisioning: HTTP config Domain: %w", err)
	}
	if err := checkDomainName(cfg.Proxy); err != nil {
		return nil, fmt.Errorf("provisioning: HTTP config Proxy: %w", err)
	}
	if cfg.SIPPort == 0 {
		cfg.SIPPort = 5060
	}
	if cfg.PathPrefix == "" {
		cfg.PathPrefix = "/"
	}
	if !strings.HasPrefix(cfg.PathPrefix, "/") || !strings.HasSuffix(cfg.PathPrefix, "/") {
		return nil, fmt.Errorf("provisioning: HTTP config PathPrefix %q: must begin and end with /", cfg.PathPrefix)
	}
	if cfg.SourceRate == 0 {
		cfg.SourceRate = DefaultSourceRate
	}
	if cfg.SourceBurst == 0 {
		cfg.SourceBurst = DefaultSourceBurst
	}
	if cfg.MaxSources == 0 {
		cfg.MaxSources = DefaultMaxSources
	}
	if cfg.SourceRate < 0 || cfg.SourceBurst < 0 || cfg.MaxSources < 0 {
		return nil, errors.New("provisioning: HTTP config SourceRate/SourceBurst/MaxSources: negative")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.SIPPort < 1 || cfg.SIPPort > 65535 {
		return nil, fmt.Errorf("provisioning: HTTP config SIPPort: %d out of range", cfg.SIPPort)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "provisioning-http")
	return &HTTPServer{cfg: cfg, log: log, peerLog: slog.New(ratelog.New(log.Handler(), ratelog.Options{})),
		limit: newSourceLimiter(cfg.SourceRate, cfg.SourceBurst, cfg.MaxSources, cfg.Now)}, nil
}

// Run serves until ctx is done, then shuts down and returns nil once
// every connection is closed.
func (s *HTTPServer) Run(ctx context.Context) error {
	ln, err := s.cfg.Network.Listen(ctx, "tcp", s.cfg.Address)
	if err != nil {
		return fmt.Errorf("provisioning: HTTP listen %s: %w", s.cfg.Address, err)
	}
	return s.Serve(ctx, ln)
}

// Serve is Run on a listener the caller opened; it closes ln.
func (s *HTTPServer) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       20 * time.Second,
		WriteTimeout:      20 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		// net/http logs peers' TLS and protocol errors here.
		ErrorLog: slog.NewLogLogger(s.peerLog.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("provisioning: HTTP serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		hs.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("provisioning: HTTP serve: %w", err)
	}
	return nil
}

// ServeHTTP implements http.Handler. Paths (phones fetch from the root of
// the provisioning URL, PathPrefix): <mac>.cfg (Yealink; Polycom's master
// file when the User-Agent is a Polycom's), <mac>-phone.cfg (Polycom),
// cfg<mac>.xml (Grandstream), phonebook.xml (Yealink remote phonebook).
//
// Who gets a file: with Leases set, only the address holding the current
// lease of that MAC. Every refusal (a name that is no file, another MAC, a
// requester from the mesh or another LAN, a MAC with no account) is the
// same 404, so a LAN host learns nothing about which MACs exist or have
// accounts.
func (s *HTTPServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	remote, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		s.refuse(w)
		return
	}
	if !s.limit.allow(remote.Addr().Unmap()) {
		s.peerLog.Warn("provisioning request over the per-source rate", "remote", remote.Addr())
		w.Header().Set("Retry-After", "5")
		http.Error(w, "too many requests", http.StatusTooManyRequests)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	name, ok := strings.CutPrefix(r.URL.Path, s.cfg.PathPrefix)
	if !ok {
		s.refuse(w)
		return
	}
	if name == "phonebook.xml" {
		s.servePhonebook(w, r)
		return
	}
	var (
		hexMAC string
		kind   string
	)
	switch {
	case strings.HasPrefix(name, "cfg") && strings.HasSuffix(name, ".xml"):
		hexMAC, kind = name[3:len(name)-4], "grandstream"
	case strings.HasSuffix(name, "-phone.cfg"):
		hexMAC, kind = strings.TrimSuffix(name, "-phone.cfg"), "polycom-phone"
	case strings.HasSuffix(name, ".cfg"):
		hexMAC, kind = strings.TrimSuffix(name, ".cfg"), "yealink"
		if strings.Contains(strings.ToLower(r.UserAgent()), "polycom") {
			kind = "polycom-master"
		}
	}
	mac, ok := parseMACHex(hexMAC)
	if !ok {
		s.refuse(w)
		return
	}
	if s.cfg.Leases != nil {
		l, ok := s.cfg.Leases.LeaseByMAC(mac)
		if !ok || remote.Addr().Unmap() != l.IP {
			s.peerLog.Warn("configuration file refused: requester does not hold the MAC's lease", "mac", mac, "remote", r.RemoteAddr)
			s.refuse(w)
			return
		}
	}
	acct, ok, err := s.cfg.Accounts.AccountForMAC(r.Context(), mac)
	if err != nil {
		s.log.Error("account lookup failed", "mac", mac, "err", err)
		http.Error(w, "account lookup failed", http.StatusServiceUnavailable)
		return
	}
	if !ok {
		s.peerLog.Info("configuration file refused: no account for the MAC", "mac", mac, "remote", r.RemoteAddr)
		s.refuse(w)
		return
	}
	p := phoneSite{mac: mac, domain: s.cfg.Domain, proxy: s.cfg.Proxy, port: s.cfg.SIPPort}
	if s.cfg.Directory != nil {
		p.phonebookURL = s.baseURL(r) + strings.TrimPrefix(s.cfg.PathPrefix, "/") + "phonebook.xml"
	}
	var body, ctype string
	switch kind {
	case "yealink":
		body, ctype = yealinkConfig(p, acct), "text/plain; charset=utf-8"
	case "grandstream":
		body, ctype = grandstreamConfig(p, acct), "application/xml; charset=utf-8"
	case "polycom-master":
		body, ctype = polycomMaster(p), "application/xml; charset=utf-8"
	case "polycom-phone":
		body, ctype = polycomPhone(p, acct), "application/xml; charset=utf-8"
	}
	s.peerLog.Info("configuration served", "mac", mac, "format", kind, "extension", acct.Extension, "remote", r.RemoteAddr)
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Cache-Control", "no-store") // it carries a password
	w.Write([]byte(body))
}

func (s *HTTPServer) servePhonebook(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Directory == nil {
		s.refuse(w)
		return
	}
	es, err := s.cfg.Directory.Entries(r.Context())
	if err != nil {
		s.log.Error("directory lookup failed", "err", err)
		http.Error(w, "directory lookup failed", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/xml; charset=utf-8")
	w.Write([]byte(yealinkPhonebook(es)))
}

// refuse is the one answer to every request that gets no file.
func (s *HTTPServer) refuse(w http.ResponseWriter) {
	http.Error(w, "404 page not found", http.StatusNotFound)
}

// baseURL is the URL the phone reached us at, from the Host header (which
// package net/http has already checked for valid characters).
func (s *HTTPServer) baseURL(r *http.Request) string {
	host := r.Host
	if host == "" || strings.ContainsAny(host, "/?#@ \t\r\n") {
		host = s.cfg.Address
	}
	return "http://" + host + "/"
}
