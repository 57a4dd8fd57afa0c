package gateway

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/sipmesh/sipmesh/meship"
	"github.com/sipmesh/sipmesh/nat64/tun64"
	"github.com/sipmesh/sipmesh/netx"
	"github.com/sipmesh/sipmesh/registrar"
	"github.com/sipmesh/sipmesh/ssr"
	"github.com/sipmesh/sipmesh/webui"
)

// KeyFile is the name of the node key inside the state directory.
const KeyFile = "node.key"

// Node is the sipmesh daemon of one machine: for now the SSR router on the
// mesh interfaces and the local control socket.
type Node struct {
	opts   Options
	log    *slog.Logger
	base   *slog.Logger
	router *ssr.Router
	// admin signs account records (nil without admin-key); accounts is
	// the subscriber store behind the control socket's /users.
	admin    ed25519.PrivateKey
	accounts registrar.Accounts
	// phones are this node's phone bindings and their passwords
	// (phones.go).
	phones *phoneStore

	network netx.Network
	svc     *services
	start   time.Time // when NewNode ran, for uptime

	webOnce sync.Once
	web     *webui.Server
	// webHandler is web with the phone files in front (WebHandler).
	webHandler http.Handler
	pathMu     sync.Mutex
	paths      map[ssr.NodeID]pathEntry // mesh paths of calls, for the web UI
	cancel     context.CancelFunc       // stops Run
	// dnsPort is the DNS server's port (0: 53). addAddress puts a LAN
	// address on the interface, reporting whether it was not there yet,
	// and removeAddress takes one off (nil: the caller does both).
	// trunkPassword is the trunk's password from trunk-password-file,
	// never logged, never in status or the DHT.
	trunkPassword string

	dnsPort       int
	addAddress    func(ifname string, addr netip.Prefix) (added bool, err error)
	removeAddress func(ifname string, addr netip.Prefix) error
	// openTUN and wire open a TUN device and put the NAT64's kernel
	// wiring in place (gwnat64.go); nil off the kernel network (memnet
	// tests), where no NAT64 runs.
	openTUN  func(name string, mtu int) (tun64.Device, error)
	wire     func(tun64.Wiring) (interface{ Down() error }, error)
	wireCLAT func(tun64.CLATWiring) (interface{ Down() error }, error)

	ip ipNet // the IP network (ip-network on)
}

// NewNode loads (or, on first start, creates) the node key in
// opts.StateDir and prepares the router on network (netx.Kernel{} on a
// real machine). log is the base logger; each component adds its own
// "component" attribute.
func NewNode(opts Options, network netx.Network, log *slog.Logger) (*Node, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	base := log.With("name", opts.Name)
	n := &Node{opts: opts, base: base, log: base.With("component", "gateway.node"), network: network, start: time.Now()}
	_, kernel := network.(netx.Kernel)
	if kernel {
		n.addAddress, n.removeAddress = netx.AddAddress, netx.RemoveAddress
		n.openTUN = tun64.OpenTUN
		n.wire = func(w tun64.Wiring) (interface{ Down() error }, error) { return w.Up() }
		n.wireCLAT = func(w tun64.CLATWiring) (interface{ Down() error }, error) { return w.Up() }
	}
	if opts.IPNetwork && !kernel {
		// The TUN and routes are the kernel's: a node on an emulated
		// network (memnet, a namespace's sockets) has none to give.
		return nil, &ConfigError{Field: "ip-network", Err: errors.New("on needs the kernel's network, not an emulated one")}
	}
	key, created, err := LoadOrCreateKey(opts.StateDir)
	if err != nil {
		return nil, err
	}
	if n.phones, err = loadPhoneStore(opts.StateDir); err != nil {
		return nil, err
	}
	if opts.TrunkPasswordFile != "" {
		if n.trunkPassword, err = readSecretFile(opts.TrunkPasswordFile); err != nil {
			return nil, &ConfigError{Field: "trunk-password-file", Err: err}
		}
	}
	adminPub := ed25519.PublicKey(opts.AdminPublicKey)
	if opts.AdminKey != "" {
		var created bool
		n.admin, created, err = LoadOrCreateAdminKey(opts.AdminKey)
		if err != nil {
			return nil, err
		}
		if pub := n.admin.Public().(ed25519.PublicKey); adminPub != nil && !pub.Equal(adminPub) {
			return nil, &ConfigError{Field: "admin-public-key", Err: fmt.Errorf("does not match the key in %s", opts.AdminKey)}
		} else {
			adminPub = pub
		}
		if created {
			n.log.Info("created mesh administrator key", "file", opts.AdminKey)
		}
	}
	// The administrator key is loaded first: link security presents the
	// node's admission to a closed mesh, and checks its neighbours'.
	pub := key.Public().(ed25519.PublicKey)
	admission, err := loadAdmission(opts.StateDir, n.admin, adminPub, pub)
	if err != nil {
		return nil, err
	}
	if opts.MeshAdmissionClosed && admission == nil {
		n.log.Error("mesh-admission closed but this node has no admission: its neighbours will refuse it; run `sipmesh admit` with the administrator key and put its output in the state directory",
			"file", filepath.Join(opts.StateDir, AdmissionFile), "public_key", fmt.Sprintf("%x", []byte(pub)))
	}
	n.router, err = ssr.NewRouter(ssr.RouterConfig{
		Network:    network,
		Key:        key,
		Interfaces: opts.MeshInterfaces,
		Port:       opts.MeshPort,
		Encrypt:    opts.MeshEncryption,
		Admission:  admission,
		Closed:     opts.MeshAdmissionClosed,
		Admin:      adminPub,
		Params:     opts.routerParams,
		Logger:     base,
	})
	if err != nil {
		return nil, err
	}
	if created {
		n.log.Info("created node key", "file", filepath.Join(opts.StateDir, KeyFile), "id", n.router.ID())
	}
	if opts.IPNetwork && opts.LANInterface != "" && !opts.CLATPrefix.IsValid() {
		// The CLAT prefix the whole mesh routes back to this node (meship:
		// CLATNet + ID), so the IPv4 LAN reaches the Internet through the
		// mesh and a gateway's NAT64 (clat.go).
		n.opts.CLATPrefix = meship.CLATPrefix(n.router.ID())
	}
	if err := n.newServices(key, adminPub); err != nil {
		return nil, err
	}
	n.accounts = n.svc.accounts
	return n, nil
}

// Accounts returns the node's subscriber store.
func (n *Node) Accounts() registrar.Accounts { return n.accounts }

// Router returns the node's SSR router.
func (n *Node) Router() *ssr.Router { return n.router }

// Run runs the node until ctx ends, then stops everything it started and
// returns after the last goroutine has ended, with the control socket file
// removed. A failure of one part (the control socket cannot be opened, the
// router fails) stops the others and is returned.
func (n *Node) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	n.cancel = cancel

	var ctl *controlServer
	if n.opts.Control != "" {
		var err error
		// Opened before the router starts, so that a second node started
		// by mistake with the same config fails at once.
		ctl, err = listenControl(n.opts.Control, n, n.base.With("component", "gateway.control"))
		if err != nil {
			return err
		}
	}
	n.log.Info("node starting", "id", n.router.ID(), "addr", n.router.Addr(),
		"mesh_interfaces", n.opts.MeshInterfaces, "control", n.opts.Control)

	var (
		wg                        sync.WaitGroup
		routerErr, ctlErr, svcErr error
	)
	wg.Go(func() {
		routerErr = n.router.Run(ctx)
		cancel()
	})
	wg.Go(func() {
		svcErr = n.runServices(ctx)
		cancel()
	})
	var ipErr error
	if n.opts.IPNetwork {
		wg.Go(func() {
			ipErr = n.runIPNetwork(ctx)
			cancel()
		})
	}
	if ctl != nil {
		wg.Go(func() {
			ctlErr = ctl.serve(ctx)
			cancel()
		})
	}
	<-ctx.Done()
	wg.Wait()
	n.log.Info("node stopped")
	if err := errors.Join(routerErr, ctlErr, svcErr, ipErr); err != nil {
		return fmt.Errorf("node %s: %w", n.opts.Name, err)
	}
	return nil
}

// LoadOrCreateKey returns the node key kept in dir/node.key, creating the
// directory (mode 0700) and a fresh key (mode 0600) if there is none. The
// key is PKCS #8 in PEM ("PRIVATE KEY"), so standard tools read it. created
// reports a new key. A key file readable by others is refused, as ssh does:
// whoever holds the key can impersonate the node.
func LoadOrCreateKey(dir string) (key ed25519.PrivateKey, created bool, err error) {
	return loadOrCreateKey(filepath.Join(dir, KeyFile), "node key")
}

// loadOrCreateKey returns the ed25519 key kept at path (PKCS #8 PEM),
// creating the directory (mode 0700) and a fresh key (mode 0600) when the
// file does not exist; what names the key in errors. A key file readable
// by others is refused. The new key is written to a temporary file and
// linked into place: a crash never leaves a half-written key, and a key
// another process created meanwhile is kept, not replaced.
func loadOrCreateKey(path, what string) (key ed25519.PrivateKey, created bool, err error) {
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		fi, err := os.Stat(path)
		if err != nil {
			return nil, false, fmt.Errorf("%s %s: %w", what, path, err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return nil, false, fmt.Errorf("%s %s: mode %04o lets others read it; chmod 600 it", what, path, fi.Mode().Perm())
		}
		key, err := parseKey(b)
		if err != nil {
			return nil, false, fmt.Errorf("%s %s: %w", what, path, err)
		}
		return key, false, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, false, fmt.Errorf("%s: %w", what, err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("%s: %w", what, err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, false, fmt.Errorf("generating %s: %w", what, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, false, fmt.Errorf("encoding %s: %w", what, err)
	}
	data := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".tmp*")
	if err != nil {
		return nil, false, fmt.Errorf("writing %s: %w", what, err)
	}
	defer os.Remove(tmp.Name()) // after a successful link, the temporary name goes
	write := func() error {
		if err := tmp.Chmod(0o600); err != nil {
			return err
		}
		if _, err := tmp.Write(data); err != nil {
			return err
		}
		return tmp.Sync()
	}
	if err := write(); err != nil {
		tmp.Close()
		return nil, false, fmt.Errorf("writing %s: %w", what, err)
	}
	if err := tmp.Close(); err != nil {
		return nil, false, fmt.Errorf("writing %s: %w", what, err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return loadOrCreateKey(path, what)
		}
		return nil, false, fmt.Errorf("writing %s: %w", what, err)
	}
	return priv, true, nil
}

func parseKey(b []byte) (ed25519.PrivateKey, error) {
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("not a PEM \"PRIVATE KEY\" block")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("a %T, want an ed25519 key", k)
	}
	return priv, nil
}
