package gateway

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/sipmesh/sipmesh/proxy"
	"github.com/sipmesh/sipmesh/ssr"
	"github.com/sipmesh/sipmesh/ssr/dht"
)

// The control socket is the node's local admin interface: HTTP with JSON
// bodies over a Unix socket, so only local users with access to the file
// reach it and no port is opened. Endpoints:
//
//	GET /status                      NodeStatus
//	GET /ping?dst=ADDR&timeout=2s    PingResult (dst: mesh address or node ID)
//	GET /users                       []UserInfo
//	POST /users                      Account (HA1s, no password) → UserInfo
//	DELETE /users/{ext}              UserInfo of the removed account
//	GET /bindings/{ext}              []BindingInfo
//	GET /forwards/{ext}              registrar.Forward
//	PUT /forwards/{ext}              registrar.Forward (all of it) → the stored one
//	POST /web-password               {"password": ...}: the web UI's administrator
//	GET /phones                      []PhoneInfo: phone bindings of this node
//	POST /phones                     AddPhoneRequest → PhoneInfo
//	DELETE /phones/{mac}             PhoneInfo of the removed binding
//	GET /gateways                    []GatewayInfo: the live gateways, best first
//
// Errors come back as {"error": "..."} with a 4xx/5xx status.

// Ping timeouts the control socket accepts.
const (
	DefaultPingTimeout = 2 * time.Second
	MaxPingTimeout     = 30 * time.Second
)

// NodeStatus is the answer of GET /status.
type NodeStatus struct {
	Name string `json:"name"`
	ssr.RouterStatus
	// DHT: records held, hand-offs, lookups and their hops.
	DHT *dht.Metrics `json:"dht,omitempty"`
	// LAN is the phone LAN address, when the node has one and it is up.
	LAN string `json:"lan,omitempty"`
	// SIP: registrar, proxy and relay counters.
	SIP *proxy.SIPStats `json:"sip,omitempty"`
	// Gateway is this node's gateway role (uplink-interface set).
	Gateway *GatewayRoleStatus `json:"gateway,omitempty"`
	// Gateways are the live gateways this node knows, best first.
	Gateways []GatewayInfo `json:"gateways,omitempty"`
	// IPNetwork is the IPv6 data plane (ip-network on).
	IPNetwork *IPNetworkStatus `json:"ip_network,omitempty"`
}

// PingResult is the answer of GET /ping.
type PingResult struct {
	Dst   string   `json:"dst"`    // the node ID pinged
	Addr  string   `json:"addr"`   // its mesh address
	RTTMs float64  `json:"rtt_ms"` // round trip in milliseconds
	Hops  int      `json:"hops"`   // physical hops of the request
	Route []string `json:"route"`  // node IDs, this node first, dst last
}

// ErrNoNode is returned by ControlClient when nothing answers on the
// control socket: the node is not running, or runs with another socket.
var ErrNoNode = errors.New("no node answering")

type controlError struct {
	Error string `json:"error"`
}

type controlServer struct {
	path string
	ln   net.Listener
	node *Node
	log  *slog.Logger
}

// listenControl opens the control socket at path. A socket file left by a
// node that died is replaced; one that a running node answers on is not.
func listenControl(path string, node *Node, log *slog.Logger) (*controlServer, error) {
	// Only the socket's own directory (/run/sipmesh) is created, never a
	// tree: a mistyped path fails here instead of appearing somewhere.
	switch err := os.Mkdir(filepath.Dir(path), 0o755); {
	case err == nil:
		log.Info("created control socket directory", "dir", filepath.Dir(path))
	case !errors.Is(err, fs.ErrExist):
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("control socket %s: exists and is not a socket", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("control socket %s: a running node is using it", path)
		}
		log.Info("removing stale control socket", "path", path)
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("control socket %s: removing stale file: %w", path, err)
		}
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(context.Background(), "unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	// Status shows the topology and ping sends traffic: the node's own
	// user and group only.
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	return &controlServer{path: path, ln: ln, node: node, log: log}, nil
}

// serve answers requests until ctx ends, then shuts the server down, waits
// for its handlers and removes the socket file.
func (s *controlServer) serve(ctx context.Context) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", s.handleStatus)
	mux.HandleFunc("GET /ping", s.handlePing)
	mux.HandleFunc("GET /users", s.handleUsers)
	mux.HandleFunc("POST /users", s.handleAddUser)
	mux.HandleFunc("DELETE /users/{ext}", s.handleDeleteUser)
	mux.HandleFunc("GET /bindings/{ext}", s.handleBindings)
	mux.HandleFunc("GET /forwards/{ext}", s.handleForward)
	mux.HandleFunc("PUT /forwards/{ext}", s.handleSetForward)
	mux.HandleFunc("GET /aliases/{name}", s.handleAlias)
	mux.HandleFunc("PUT /aliases/{name}", s.handleSetAlias)
	mux.HandleFunc("DELETE /aliases/{name}", s.handleSetAlias)
	mux.HandleFunc("POST /web-password", s.handleWebPassword)
	mux.HandleFunc("GET /phones", s.handlePhones)
	mux.HandleFunc("POST /phones", s.handleAddPhone)
	mux.HandleFunc("DELETE /phones/{mac}", s.handleDeletePhone)
	mux.HandleFunc("GET /gateways", s.handleGateways)
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		// Handlers (a ping waiting for its reply) see the node stop.
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	s.log.Info("control socket listening", "path", s.path)
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Go(func() { errc <- srv.Serve(s.ln) })

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		// Serve failed on its own (the listener broke).
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if serr := srv.Shutdown(sctx); serr != nil {
		srv.Close()
	}
	wg.Wait()
	if rerr := os.Remove(s.path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
		s.log.Warn("removing control socket", "path", s.path, "err", rerr)
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("control socket %s: %w", s.path, err)
	}
	return nil
}

func (s *controlServer) handleStatus(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.node.Status())
}

func (s *controlServer) handlePing(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	dst, err := ssr.ParseNodeID(q.Get("dst"))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, controlError{fmt.Sprintf("dst: %v", err)})
		return
	}
	timeout := DefaultPingTimeout
	if t := q.Get("timeout"); t != "" {
		timeout, err = time.ParseDuration(t)
		if err != nil || timeout <= 0 || timeout > MaxPingTimeout {
			writeJSON(w, http.StatusBadRequest, controlError{fmt.Sprintf("timeout: %q is not a duration in (0, %v]", t, MaxPingTimeout)})
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	reply, rtt, err := s.node.router.Ping(ctx, dst)
	if err != nil {
		code := http.StatusBadGateway // unreachable
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			code = http.StatusGatewayTimeout
		case errors.Is(err, ssr.ErrRouterClosed), errors.Is(err, context.Canceled):
			code = http.StatusServiceUnavailable
		}
		s.log.Debug("ping failed", "dst", dst, "err", err)
		writeJSON(w, code, controlError{err.Error()})
		return
	}
	res := PingResult{
		Dst: dst.String(), Addr: dst.Addr().String(),
		RTTMs: float64(rtt) / float64(time.Millisecond), Hops: reply.Hops,
		Route: make([]string, 0, len(reply.Route)),
	}
	for _, id := range reply.Route {
		res.Route = append(res.Route, id.String())
	}
	writeJSON(w, http.StatusOK, res)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v) // a failed write means the client went away
}

// ControlClient talks to a node's control socket: one connection per
// request, the request written and the answer read with net/http's own
// wire code (Request.Write, ReadResponse). Not http.Client: its
// Transport (connection pooling, proxies, HTTP/2) is ~120 KB of the
// router binary for a few local requests per command.
type ControlClient struct {
	path string
}

// NewControlClient returns a client for the control socket at path.
func NewControlClient(path string) *ControlClient { return &ControlClient{path: path} }

// Close is a no-op, kept so callers can release the client either way:
// no connection outlives a request.
func (c *ControlClient) Close() {}

// roundTrip sends req over a new connection to the socket and returns
// the answer; closing its Body closes the connection. ctx's end closes
// the connection, which ends a read or write in progress.
func (c *ControlClient) roundTrip(ctx context.Context, req *http.Request) (*http.Response, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.path)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	req.Close = true // one request per connection: the server closes after it
	if err := req.Write(conn); err != nil {
		stop()
		conn.Close()
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		stop()
		conn.Close()
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, err
	}
	resp.Body = &connBody{ReadCloser: resp.Body, conn: conn, stop: stop}
	return resp, nil
}

// connBody closes the connection with the answer's body.
type connBody struct {
	io.ReadCloser
	conn net.Conn
	stop func() bool
}

func (b *connBody) Close() error {
	b.stop()
	err := b.ReadCloser.Close()
	b.conn.Close()
	return err
}

// get fetches endpoint and decodes the JSON answer into v, or returns the
// error the node reported.
func (c *ControlClient) get(ctx context.Context, endpoint string, v any) error {
	return c.do(ctx, http.MethodGet, endpoint, nil, v)
}

// Status returns the node's status.
func (c *ControlClient) Status(ctx context.Context) (NodeStatus, error) {
	var st NodeStatus
	err := c.get(ctx, "/status", &st)
	return st, err
}

// StatusJSON returns the node's status as the JSON the node sent.
func (c *ControlClient) StatusJSON(ctx context.Context) (json.RawMessage, error) {
	var raw json.RawMessage
	err := c.get(ctx, "/status", &raw)
	return raw, err
}

func (s *controlServer) handleGateways(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), claimTimeout)
	defer cancel()
	gws, err := s.node.Gateways(ctx)
	if err != nil && len(gws) == 0 {
		writeJSON(w, http.StatusServiceUnavailable, controlError{"reading the gateways' announcements: " + err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, gws)
}

// Gateways returns the live gateways the node knows, best first.
func (c *ControlClient) Gateways(ctx context.Context) ([]GatewayInfo, error) {
	var gws []GatewayInfo
	err := c.get(ctx, "/gateways", &gws)
	return gws, err
}

// Ping asks the node to ping dst (a mesh address or node ID) and wait up to
// timeout for the reply.
func (c *ControlClient) Ping(ctx context.Context, dst string, timeout time.Duration) (PingResult, error) {
	v := url.Values{"dst": {dst}, "timeout": {timeout.String()}}
	var res PingResult
	err := c.get(ctx, "/ping?"+v.Encode(), &res)
	return res, err
}
