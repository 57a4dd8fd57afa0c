package phones_test

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
)

// registrar is a minimal digest-challenging registrar for the tests (the
// real one is package gateway's): it challenges every REGISTER and INVITE
// without credentials (401 and 407), checks the response with the
// algorithm it offered, keeps bindings, and answers an authenticated
// INVITE with 404.
type registrar struct {
	r     *rig
	addr  netip.AddrPort
	algs  []string // offered, in this order; the first accepted
	maxEx int      // longest lifetime granted, seconds
	pass  map[string]string

	mu        sync.Mutex
	bindings  map[string]time.Time // user → expiry
	registers int                  // authenticated REGISTERs accepted
	invites   int                  // authenticated INVITEs
	nonce     int
}

func newRegistrar(r *rig, ip string, algs ...string) *registrar {
	h := r.host("registrar", ip)
	g := &registrar{r: r, addr: netip.AddrPortFrom(netip.MustParseAddr(ip), 5060), algs: algs, maxEx: 60,
		pass: make(map[string]string), bindings: make(map[string]time.Time)}
	conn, err := h.ListenPacket(r.ctx, "udp", g.addr.String())
	if err != nil {
		r.t.Fatal(err)
	}
	ua, err := sipgo.NewUA(sipgo.WithUserAgentHostname(ip), sipgo.WithUserAgentTransactionLayerOptions(sip.WithTransactionLayerLogger(logger())),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(logger())))
	if err != nil {
		r.t.Fatal(err)
	}
	srv, err := sipgo.NewServer(ua, sipgo.WithServerLogger(logger()))
	if err != nil {
		r.t.Fatal(err)
	}
	srv.OnRegister(g.onRegister)
	srv.OnInvite(g.onInvite)
	r.wg.Go(func() { srv.ServeUDP(conn) })
	r.wg.Go(func() {
		<-r.ctx.Done()
		ua.Close()
		conn.Close()
	})
	return g
}

// check challenges req (code 401 or 407) unless it carries valid
// credentials for the algorithm offered first.
func (g *registrar) check(req *sip.Request, tx sip.ServerTransaction, code int) (user string, ok bool) {
	chalHdr, credHdr := "WWW-Authenticate", "Authorization"
	if code == 407 {
		chalHdr, credHdr = "Proxy-Authenticate", "Proxy-Authorization"
	}
	if h := req.GetHeader(credHdr); h != nil {
		cred, err := digest.ParseCredentials(h.Value())
		if err != nil || !strings.EqualFold(cred.Algorithm, g.algs[0]) {
			tx.Respond(sip.NewResponseFromRequest(req, 403, "Forbidden", nil))
			return "", false
		}
		chal := &digest.Challenge{Realm: "mesh", Nonce: cred.Nonce, Algorithm: cred.Algorithm, QOP: []string{"auth"}}
		want, err := digest.Digest(chal, digest.Options{Method: string(req.Method), URI: cred.URI,
			Username: cred.Username, Password: g.pass[cred.Username], Cnonce: cred.Cnonce, Count: cred.Nc})
		if err != nil || want.Response != cred.Response || cred.URI != req.Recipient.String() {
			tx.Respond(sip.NewResponseFromRequest(req, 403, "Forbidden", nil))
			return "", false
		}
		return cred.Username, true
	}
	res := sip.NewResponseFromRequest(req, code, "Unauthorized", nil)
	g.mu.Lock()
	g.nonce++
	nonce := fmt.Sprintf("n%08d", g.nonce)
	g.mu.Unlock()
	for _, a := range g.algs {
		c := digest.Challenge{Realm: "mesh", Nonce: nonce, Algorithm: a, QOP: []string{"auth"}}
		res.AppendHeader(sip.NewHeader(chalHdr, c.String()))
	}
	tx.Respond(res)
	return "", false
}

func (g *registrar) onRegister(req *sip.Request, tx sip.ServerTransaction) {
	user, ok := g.check(req, tx, 401)
	if !ok {
		return
	}
	ex := g.maxEx
	if h := req.GetHeader("Expires"); h != nil {
		if n, err := strconv.Atoi(h.Value()); err == nil && n < ex {
			ex = n
		}
	}
	g.mu.Lock()
	g.registers++
	if ex == 0 {
		delete(g.bindings, user)
	} else {
		g.bindings[user] = time.Now().Add(time.Duration(ex) * time.Second)
	}
	g.mu.Unlock()
	res := sip.NewResponseFromRequest(req, 200, "OK", nil)
	if ct := req.Contact(); ct != nil && ex > 0 {
		c := ct.Clone()
		c.Params.Add("expires", strconv.Itoa(ex))
		res.AppendHeader(c)
	}
	tx.Respond(res)
}

func (g *registrar) onInvite(req *sip.Request, tx sip.ServerTransaction) {
	if _, ok := g.check(req, tx, 407); !ok {
		return
	}
	g.mu.Lock()
	g.invites++
	g.mu.Unlock()
	tx.Respond(sip.NewResponseFromRequest(req, 404, "Not Found", nil))
}

// bound reports whether user has a live binding.
func (g *registrar) bound(user string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	exp, ok := g.bindings[user]
	return ok && time.Now().Before(exp)
}

func (g *registrar) counts() (registers, invites int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.registers, g.invites
}
