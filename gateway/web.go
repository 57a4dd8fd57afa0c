package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/netutil"

	"github.com/sipmesh/sipmesh/registrar"
	"github.com/sipmesh/sipmesh/sipalg"
	"github.com/sipmesh/sipmesh/ssr"
	"github.com/sipmesh/sipmesh/webui"
)

// WebPasswordFile is the web administrator's password hash inside the
// state directory.
const WebPasswordFile = "web-password"

// Bounds of the web UI's look-ups.
const (
	maxWebPhones = 200 // subscribers whose bindings the phones page looks up
	pathCacheAge = 10 * time.Second
	maxPathCache = 64
	maxWebConns  = 32 // open connections per web listener
)

// WebHandler returns the node's web UI (and /metrics) handler, with the
// phones' configuration files under ProvisionPath; Run serves it on the
// web-listen addresses, tests on their own listeners. One HTTP server on
// the LAN: phones and the operator's browser reach the same port.
func (n *Node) WebHandler() http.Handler {
	n.webOnce.Do(func() {
		n.web = webui.New(webui.Config{
			Backend:      webBackend{n},
			PasswordFile: filepath.Join(n.opts.StateDir, WebPasswordFile),
			Logs:         n.opts.LogTail,
			Logger:       n.base,
		})
		n.webHandler = n.withProvisioning(n.web)
	})
	return n.webHandler
}

// runWeb serves the web UI on addrs (the LAN address on web-port unless
// web-listen names others) until ctx ends.
func (n *Node) runWeb(ctx context.Context, addrs []netip.AddrPort) error {
	h := n.WebHandler()
	var lns []net.Listener
	for _, a := range addrs {
		ln, err := n.network.Listen(ctx, "tcp", a.String())
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return fmt.Errorf("web UI on %s: %w", a, err)
		}
		// Bounded like everything else: a LAN host opening connections
		// cannot take the router's memory.
		lns = append(lns, netutil.LimitListener(ln, maxWebConns))
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(n.base.With("component", "webui").Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	var wg sync.WaitGroup
	for _, ln := range lns {
		n.log.Info("web UI listening", "addr", ln.Addr())
		wg.Go(func() { srv.Serve(ln) })
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	wg.Wait()
	return nil
}

// webAddrs are the addresses the web UI listens on.
func (n *Node) webAddrs(lan netip.Prefix) []netip.AddrPort {
	if n.opts.WebOff {
		return nil
	}
	if len(n.opts.WebListen) > 0 {
		return n.opts.WebListen
	}
	if lan.IsValid() {
		return []netip.AddrPort{netip.AddrPortFrom(lan.Addr(), n.opts.WebPort)}
	}
	return nil
}

// webBackend is the node as the web UI sees it; it binds phones too.
type webBackend struct{ n *Node }

var _ webui.PhoneBinder = webBackend{}

func (b webBackend) Mesh() ssr.RouterStatus         { return b.n.router.Status() }
func (b webBackend) WriteMetrics(w io.Writer) error { return b.n.WriteMetrics(w) }

func (b webBackend) Node() webui.NodeInfo {
	n := b.n
	o := n.opts
	info := webui.NodeInfo{Name: o.Name, ID: n.router.ID().String(), Addr: n.router.Addr().String(),
		Version: o.Version, Start: n.start, CanManage: n.admin != nil}
	if lan := n.LANAddress(); lan.IsValid() {
		info.LAN = lan.String()
	}
	kv := func(k, v string) { info.Config = append(info.Config, [2]string{k, v}) }
	kv("mesh-interface", strings.Join(o.MeshInterfaces, " "))
	kv("mesh-port", strconv.Itoa(int(o.MeshPort)))
	kv("mesh-encryption", map[bool]string{true: "on", false: "off"}[o.MeshEncryption])
	kv("lan-interface", o.LANInterface)
	kv("dhcp", map[bool]string{true: "on", false: "off"}[o.DHCP])
	kv("sip-port", strconv.Itoa(int(o.SIPPort)))
	kv("digest-algorithms", strings.Join(o.DigestAlgorithms, " "))
	kv("nat64-prefix", o.NAT64Prefix.String())
	kv("relay-ports", fmt.Sprintf("%d-%d", o.RelayPortMin, o.RelayPortMax))
	kv("state-dir", o.StateDir)
	kv("admin-key", o.AdminKey)
	var ups []string
	for _, u := range o.DNSUpstreams {
		ups = append(ups, u.String())
	}
	kv("dns-upstream", strings.Join(ups, " "))
	return info
}

func (b webBackend) Users(ctx context.Context) ([]webui.User, error) {
	accts, err := b.n.accounts.ListAccounts(ctx)
	out := make([]webui.User, 0, len(accts))
	for _, a := range accts {
		out = append(out, webui.User{Ext: a.Ext, Display: a.Display, Updated: a.Updated})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Ext < out[j].Ext })
	return out, err
}

// SetUser goes the way of `sipmesh user add`: HA1s computed here, the
// record signed with the administrator key and stored in the DHT.
func (b webBackend) SetUser(ctx context.Context, ext, display, password string) error {
	a, err := registrar.NewAccount(ext, password, display)
	if err != nil {
		return err
	}
	_, err = b.n.storeAccount(ctx, a)
	return err
}

// BindPhone binds a desk phone to the subscriber just stored, as
// `sipmesh phone add` does (phones.go).
func (b webBackend) BindPhone(ctx context.Context, mac, ext, password string) error {
	_, err := b.n.AddPhone(ctx, AddPhoneRequest{MAC: mac, Ext: ext, Password: password})
	return err
}

func (b webBackend) DeleteUser(ctx context.Context, ext string) error {
	_, err := b.n.removeAccount(ctx, ext)
	return err
}

// Phones looks up the bindings of every subscriber (at most
// maxWebPhones), eight look-ups at a time.
func (b webBackend) Phones(ctx context.Context) ([]webui.Phone, error) {
	users, err := b.Users(ctx)
	if err != nil && len(users) == 0 {
		return nil, err
	}
	users = users[:min(len(users), maxWebPhones)]
	self := b.n.router.ID()
	var (
		mu   sync.Mutex
		out  []webui.Phone
		wg   sync.WaitGroup
		sem  = make(chan struct{}, 8)
		errs []error
	)
	now := time.Now()
	for _, u := range users {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			all, err := b.n.Locations().Bindings(ctx, registrar.AOR(u.Ext))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", u.Ext, err))
				return
			}
			for _, bd := range registrar.MergeBindings(all, now) {
				p := webui.Phone{Ext: u.Ext, Display: u.Display, Node: bd.Node.String(), Contact: bd.Contact,
					Expires: bd.Expires, Here: bd.Node == self}
				if bd.Source.IsValid() {
					p.Source = bd.Source.String()
				}
				out = append(out, p)
			}
		})
	}
	wg.Wait()
	sort.Slice(out, func(i, j int) bool { return out[i].Ext+out[i].Contact < out[j].Ext+out[j].Contact })
	return out, errors.Join(err, errors.Join(errs...))
}

// Calls lists the calls this node relays, with the mesh path to the other
// node of each (from a ping, cached for pathCacheAge).
func (b webBackend) Calls(ctx context.Context) []webui.Call {
	sip := b.n.SIP()
	if sip == nil {
		return nil
	}
	var out []webui.Call
	for _, c := range sip.Calls() {
		wc := webui.Call{ID: c.CallID, From: c.From, To: c.To, Answered: c.Answered, Age: time.Since(c.Created)}
		for _, st := range c.Streams {
			wc.Legs = append(wc.Legs, webLeg("from LAN", st.A), webLeg("from mesh", st.B))
			if id, ok := ssr.IDFromAddr(st.B.Peer.Addr()); ok && wc.Remote == "" && id != b.n.router.ID() {
				wc.Remote = id.String()
				wc.Path, wc.Hops = b.n.pathTo(ctx, id)
			}
		}
		out = append(out, wc)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// pathTo returns the route to id (this node first) and its hop count,
// from a cached ping.
func (n *Node) pathTo(ctx context.Context, id ssr.NodeID) ([]string, int) {
	n.pathMu.Lock()
	if e, ok := n.paths[id]; ok && time.Since(e.at) < pathCacheAge {
		n.pathMu.Unlock()
		return e.route, e.hops
	}
	n.pathMu.Unlock()
	pctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	rep, _, err := n.router.Ping(pctx, id)
	if err != nil {
		return nil, 0
	}
	route := make([]string, len(rep.Route))
	for i, r := range rep.Route {
		route[i] = r.String()
	}
	n.pathMu.Lock()
	defer n.pathMu.Unlock()
	if n.paths == nil || len(n.paths) >= maxPathCache {
		n.paths = make(map[ssr.NodeID]pathEntry)
	}
	n.paths[id] = pathEntry{route: route, hops: rep.Hops, at: time.Now()}
	return route, rep.Hops
}

// webLeg is what one side's peer sent into the relay (sipalg side A is
// the LAN, B the mesh).
func webLeg(name string, s sipalg.StreamStats) webui.Leg {
	return webui.Leg{Side: name, Peer: s.Peer.String(), Packets: s.Packets, LossPct: 100 * s.RTP.LossRate,
		JitterMs: float64(s.RTP.Jitter) / float64(time.Millisecond), MOS: s.MOS}
}

type pathEntry struct {
	route []string
	hops  int
	at    time.Time
}

// handleWebPassword sets the web administrator password (POST
// /web-password, {"password": "..."}): `sipmesh web-password`.
func (s *controlServer) handleWebPassword(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Password string `json:"password"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, maxControlBody)).Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, controlError{"bad request: " + err.Error()})
		return
	}
	if err := webui.SetPassword(filepath.Join(s.node.opts.StateDir, WebPasswordFile), req.Password); err != nil {
		writeJSON(w, http.StatusBadRequest, controlError{err.Error()})
		return
	}
	s.log.Info("web administrator password set")
	writeJSON(w, http.StatusOK, struct{}{})
}

// SetWebPassword sets the node's web administrator password.
func (c *ControlClient) SetWebPassword(ctx context.Context, password string) error {
	var out struct{}
	return c.do(ctx, http.MethodPost, "/web-password", map[string]string{"password": password}, &out)
}
