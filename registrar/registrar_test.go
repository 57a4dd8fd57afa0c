package registrar

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
	"github.com/sipmesh/sipmesh/ssr"
)

// fakeClock is a settable clock for the registrar.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// rig is a registrar with accounts 201 (password "secret201") and 202,
// driven through its datagram path without sockets.
type rig struct {
	t     *testing.T
	r     *Registrar
	clock *fakeClock
	loc   *MemLocation
	accts *MemAccounts
	src   netip.AddrPort
	seq   int
}

func newRig(t *testing.T, mod ...func(*RegistrarConfig)) *rig {
	t.Helper()
	clock := newFakeClock()
	accts := newTestAccounts(t, "201", "202")
	loc := NewMemLocation()
	cfg := RegistrarConfig{Node: 0x1111, Locations: loc, Accounts: accts, Now: clock.Now,
		Addrs: []netip.Addr{netip.MustParseAddr("10.120.0.1"), netip.MustParseAddr("fd00::1")}, Rate: -1}
	for _, m := range mod {
		m(&cfg)
	}
	r, err := NewRegistrar(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &rig{t: t, r: r, clock: clock, loc: loc, accts: accts, src: netip.MustParseAddrPort("192.168.1.50:5062")}
}

// newTestAccounts returns a store with an account per extension, password
// "secret" + ext.
func newTestAccounts(t testing.TB, exts ...string) *MemAccounts {
	pub, priv, _ := ed25519.GenerateKey(nil)
	accts := NewMemAccounts(pub)
	for _, ext := range exts {
		a, err := NewAccount(ext, "secret"+ext, "Phone "+ext)
		if err != nil {
			t.Fatal(err)
		}
		rec, _ := SignAccount(priv, a, false)
		if err := accts.PutRecord(context.Background(), rec); err != nil {
			t.Fatal(err)
		}
	}
	return accts
}

// reg describes a REGISTER to build.
type reg struct {
	ruri, to   string // default sip:mesh, sip:201@mesh
	callID     string // default "call-1"
	cseq       int    // default: increasing
	branch     string // default: fresh
	contacts   []string
	expires    string // Expires header value; "" for none
	auth       string // Authorization value
	extra      string // more header lines, CRLF-terminated
	viaRport   bool
	viaSentBy  string
	noMaxFwd   bool
	methodLine string // overrides the request line method
}

func (g *rig) build(m reg) string {
	g.seq++
	if m.ruri == "" {
		m.ruri = "sip:mesh"
	}
	if m.to == "" {
		m.to = "sip:201@mesh"
	}
	if m.callID == "" {
		m.callID = "call-1"
	}
	if m.cseq == 0 {
		m.cseq = g.seq
	}
	if m.branch == "" {
		m.branch = fmt.Sprintf("z9hG4bK-%d", g.seq)
	}
	if m.viaSentBy == "" {
		m.viaSentBy = "192.168.1.50:5062"
	}
	method := "REGISTER"
	if m.methodLine != "" {
		method = m.methodLine
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s SIP/2.0\r\n", method, m.ruri)
	fmt.Fprintf(&b, "Via: SIP/2.0/UDP %s;branch=%s", m.viaSentBy, m.branch)
	if m.viaRport {
		b.WriteString(";rport")
	}
	b.WriteString("\r\n")
	if !m.noMaxFwd {
		b.WriteString("Max-Forwards: 70\r\n")
	}
	fmt.Fprintf(&b, "From: <%s>;tag=ft%d\r\nTo: <%s>\r\nCall-ID: %s\r\nCSeq: %d %s\r\n", m.to, g.seq, m.to, m.callID, m.cseq, method)
	for _, c := range m.contacts {
		b.WriteString("Contact: " + c + "\r\n")
	}
	if m.expires != "" {
		b.WriteString("Expires: " + m.expires + "\r\n")
	}
	if m.auth != "" {
		b.WriteString("Authorization: " + m.auth + "\r\n")
	}
	b.WriteString(m.extra)
	b.WriteString("User-Agent: rig\r\nContent-Length: 0\r\n\r\n")
	return b.String()
}

// send feeds raw as one datagram from g.src and returns the parsed answer
// (nil for none).
func (g *rig) send(raw string) *sip.Response {
	g.t.Helper()
	return g.sendFrom(raw, g.src)
}

func (g *rig) sendFrom(raw string, src netip.AddrPort) *sip.Response {
	g.t.Helper()
	out, _ := g.r.processDatagram(context.Background(), []byte(raw), src)
	if out == nil {
		return nil
	}
	msg, err := sip.ParseMessage(out)
	if err != nil {
		g.t.Fatalf("registrar sent unparsable bytes (%v):\n%s", err, out)
	}
	res, ok := msg.(*sip.Response)
	if !ok {
		g.t.Fatalf("registrar sent a request:\n%s", out)
	}
	return res
}

// authorize answers the challenge in res (the first WWW-Authenticate
// whose algorithm is alg, any if empty) with password and nonce count nc.
func authorize(t *testing.T, res *sip.Response, alg, user, password string, nc int) string {
	t.Helper()
	for _, h := range res.GetHeaders("WWW-Authenticate") {
		chal, err := digest.ParseChallenge(h.Value())
		if err != nil {
			t.Fatalf("bad challenge %q: %v", h.Value(), err)
		}
		if alg != "" && chal.Algorithm != alg {
			continue
		}
		cred, err := digest.Digest(chal, digest.Options{Method: "REGISTER", URI: "sip:mesh", Username: user, Password: password, Count: nc, Cnonce: "0a4f113b"})
		if err != nil {
			t.Fatal(err)
		}
		return cred.String()
	}
	t.Fatalf("no %s challenge in\n%s", alg, res)
	return ""
}

func wantCode(t *testing.T, res *sip.Response, code int) {
	t.Helper()
	if res == nil {
		t.Fatalf("no answer, want %d", code)
	}
	if res.StatusCode != code {
		t.Fatalf("got %d %s, want %d\n%s", res.StatusCode, res.Reason, code, res)
	}
}

// contactsOf returns the contacts of a 200 as "uri expires".
func contactsOf(res *sip.Response) []string {
	var out []string
	for _, h := range res.GetHeaders("Contact") {
		v := h.Value()
		uri := v[strings.Index(v, "<")+1 : strings.Index(v, ">")]
		exp := ""
		if i := strings.Index(v, "expires="); i >= 0 {
			exp = v[i+len("expires="):]
			if j := strings.IndexByte(exp, ';'); j >= 0 {
				exp = exp[:j]
			}
		}
		out = append(out, uri+" "+exp)
	}
	return out
}

// register does the challenge round trip and returns the final answer.
func (g *rig) register(m reg, password string) *sip.Response {
	g.t.Helper()
	res := g.send(g.build(m))
	wantCode(g.t, res, 401)
	user := strings.TrimSuffix(strings.TrimPrefix(m.to, "sip:"), "@mesh")
	if user == "" {
		user = "201"
	}
	m.auth = authorize(g.t, res, "", user, password, 1)
	m.cseq, m.branch = 0, ""
	return g.send(g.build(m))
}

func TestRegisterDigest(t *testing.T) {
	g := newRig(t)
	res := g.send(g.build(reg{contacts: []string{"<sip:201@192.168.1.50:5062>"}}))
	wantCode(t, res, 401)
	chals := res.GetHeaders("WWW-Authenticate")
	if len(chals) != 2 || !strings.Contains(chals[0].Value(), "algorithm=SHA-256") || !strings.Contains(chals[1].Value(), "algorithm=MD5") {
		t.Fatalf("want a SHA-256 then an MD5 challenge (RFC 8760), got %v", chals)
	}
	for _, c := range chals {
		if !strings.Contains(c.Value(), `qop="auth"`) || !strings.Contains(c.Value(), `realm="mesh"`) {
			t.Errorf("challenge %q lacks qop=auth or realm", c.Value())
		}
	}
	for i, alg := range []string{"SHA-256", "MD5"} {
		t.Run(alg, func(t *testing.T) {
			auth := authorize(t, res, alg, "201", "secret201", i+1)
			ok := g.send(g.build(reg{contacts: []string{"<sip:201@192.168.1.50:5062>"}, expires: "600", auth: auth}))
			wantCode(t, ok, 200)
			if got := contactsOf(ok); len(got) != 1 || got[0] != "sip:201@192.168.1.50:5062 600" {
				t.Errorf("contacts %q", got)
			}
		})
	}
	bs, _ := g.loc.Bindings(context.Background(), "sip:201@mesh")
	if len(bs) != 1 || bs[0].Node != 0x1111 || bs[0].Source != g.src || bs[0].UserAgent != "rig" || bs[0].Transport != "udp" {
		t.Errorf("stored %+v", bs)
	}
}

func TestRegisterAuthFailures(t *testing.T) {
	contact := []string{"<sip:201@192.168.1.50:5062>"}
	tests := []struct {
		name   string
		run    func(g *rig) *sip.Response
		code   int
		reason string
	}{
		{"wrong password", func(g *rig) *sip.Response {
			return g.register(reg{contacts: contact}, "wrong")
		}, 403, "wrong password"},
		{"unknown user", func(g *rig) *sip.Response {
			return g.register(reg{to: "sip:999@mesh", contacts: contact}, "whatever")
		}, 403, "unknown user or wrong password"},
		{"user of another AOR", func(g *rig) *sip.Response {
			res := g.send(g.build(reg{contacts: contact}))
			auth := authorize(g.t, res, "", "202", "secret202", 1)
			return g.send(g.build(reg{contacts: contact, auth: auth}))
		}, 403, "does not match"},
		{"stale nonce", func(g *rig) *sip.Response {
			res := g.send(g.build(reg{contacts: contact}))
			auth := authorize(g.t, res, "", "201", "secret201", 1)
			g.clock.Advance(DefaultNonceLifetime + time.Second)
			return g.send(g.build(reg{contacts: contact, auth: auth}))
		}, 401, "stale"},
		{"forged nonce", func(g *rig) *sip.Response {
			c := digest.Challenge{Realm: "mesh", Nonce: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", Algorithm: "MD5", QOP: []string{"auth"}}
			cred, _ := digest.Digest(&c, digest.Options{Method: "REGISTER", URI: "sip:mesh", Username: "201", Password: "secret201", Count: 1})
			return g.send(g.build(reg{contacts: contact, auth: cred.String()}))
		}, 401, "fresh"},
		{"replayed nonce count", func(g *rig) *sip.Response {
			res := g.send(g.build(reg{contacts: contact}))
			auth := authorize(g.t, res, "", "201", "secret201", 1)
			wantCode(g.t, g.send(g.build(reg{contacts: contact, auth: auth})), 200)
			// The same credentials in a new transaction: a replay, which
			// gets a fresh nonce, as a wrong password would.
			return g.send(g.build(reg{contacts: contact, auth: auth}))
		}, 401, "stale"},
		{"replayed nonce count, wrong password", func(g *rig) *sip.Response {
			res := g.send(g.build(reg{contacts: contact}))
			auth := authorize(g.t, res, "", "201", "secret201", 1)
			wantCode(g.t, g.send(g.build(reg{contacts: contact, auth: auth})), 200)
			// The stale-nonce oracle: with a used nonce, a wrong password
			// gets the same answer as the right one.
			return g.send(g.build(reg{contacts: contact, auth: authorize(g.t, res, "", "201", "wrong", 1)}))
		}, 401, "stale"},
		{"other scheme only (RFC 4475 regaut01)", func(g *rig) *sip.Response {
			return g.send(g.build(reg{contacts: contact, auth: "NoOneKnowsThisScheme opaque-data=here"}))
		}, 401, "fresh"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newRig(t)
			g.t = t
			res := tt.run(g)
			wantCode(t, res, tt.code)
			switch tt.reason {
			case "stale":
				if w := res.GetHeader("WWW-Authenticate"); w == nil || !strings.Contains(w.Value(), "stale=true") {
					t.Errorf("want stale=true: %v", w)
				}
			case "fresh":
				if w := res.GetHeader("WWW-Authenticate"); w == nil || strings.Contains(w.Value(), "stale") {
					t.Errorf("want a fresh challenge: %v", w)
				}
			default:
				if !strings.Contains(res.Reason, tt.reason) {
					t.Errorf("reason %q, want it to say %q", res.Reason, tt.reason)
				}
			}
			if bs, _ := g.loc.Bindings(context.Background(), "sip:201@mesh"); !strings.HasPrefix(tt.name, "replayed nonce count") && len(bs) != 0 {
				t.Errorf("a refused REGISTER stored %v", bs)
			}
		})
	}
}

func TestNonceCountIncreasing(t *testing.T) {
	g := newRig(t)
	contact := []string{"<sip:201@192.168.1.50:5062>"}
	res := g.send(g.build(reg{contacts: contact}))
	for nc := 1; nc <= 3; nc++ {
		auth := authorize(t, res, "MD5", "201", "secret201", nc)
		wantCode(t, g.send(g.build(reg{contacts: contact, auth: auth})), 200)
	}
	auth := authorize(t, res, "MD5", "201", "secret201", 2)
	wantCode(t, g.send(g.build(reg{contacts: contact, auth: auth})), 401)
}

// TestRegisterBindings covers RFC 3261 §10.3 (steps 6–8) with auth off:
// each step is one REGISTER and the contacts of its 200.
func TestRegisterBindings(t *testing.T) {
	type step struct {
		m       reg
		code    int
		want    []string // contacts of a 200, sorted
		minExp  string   // Min-Expires of a 423
		advance time.Duration
	}
	a, b, c := "<sip:201@192.168.1.50:5062>", "<sip:201@192.168.1.51:5060;transport=udp>", "<sip:201@[fd00::99]:5060>"
	tests := []struct {
		name  string
		steps []step
	}{
		{"fetch empty", []step{{m: reg{}, code: 200, want: []string{}}}},
		{"register then fetch", []step{
			{m: reg{contacts: []string{a}, expires: "300"}, code: 200, want: []string{"sip:201@192.168.1.50:5062 300"}},
			{advance: 100 * time.Second, m: reg{}, code: 200, want: []string{"sip:201@192.168.1.50:5062 200"}},
		}},
		{"several contacts, expires param over header", []step{
			{m: reg{contacts: []string{a, b + ";expires=120"}, expires: "300"}, code: 200,
				want: []string{"sip:201@192.168.1.50:5062 300", "sip:201@192.168.1.51:5060;transport=udp 120"}},
			{m: reg{contacts: []string{c}, callID: "other-call"}, code: 200,
				want: []string{"sip:201@192.168.1.50:5062 300", "sip:201@192.168.1.51:5060;transport=udp 120", "sip:201@[fd00::99]:5060 3600"}},
		}},
		{"comma-separated contacts", []step{
			{m: reg{contacts: []string{a + ", " + b}, expires: "300"}, code: 200,
				want: []string{"sip:201@192.168.1.50:5062 300", "sip:201@192.168.1.51:5060;transport=udp 300"}},
		}},
		{"expiry", []step{
			{m: reg{contacts: []string{a}, expires: "60"}, code: 200, want: []string{"sip:201@192.168.1.50:5062 60"}},
			{advance: 61 * time.Second, m: reg{}, code: 200, want: []string{}},
		}},
		{"Expires 0 removes", []step{
			{m: reg{contacts: []string{a, b}}, code: 200, want: []string{"sip:201@192.168.1.50:5062 3600", "sip:201@192.168.1.51:5060;transport=udp 3600"}},
			{m: reg{contacts: []string{a}, expires: "0"}, code: 200, want: []string{"sip:201@192.168.1.51:5060;transport=udp 3600"}},
			{m: reg{contacts: []string{b + ";expires=0"}}, code: 200, want: []string{}},
		}},
		{"Contact * with Expires 0", []step{
			{m: reg{contacts: []string{a, b}}, code: 200, want: []string{"sip:201@192.168.1.50:5062 3600", "sip:201@192.168.1.51:5060;transport=udp 3600"}},
			{m: reg{contacts: []string{"*"}, expires: "0", callID: "unreg"}, code: 200, want: []string{}},
		}},
		{"Contact * without Expires 0", []step{{m: reg{contacts: []string{"*"}}, code: 400}}},
		{"Contact * with Expires 60", []step{{m: reg{contacts: []string{"*"}, expires: "60"}, code: 400}}},
		{"Contact * beside another", []step{{m: reg{contacts: []string{"*", a}, expires: "0"}, code: 400}}},
		{"interval too brief", []step{{m: reg{contacts: []string{a}, expires: "10"}, code: 423, minExp: "60"}}},
		{"too brief in param", []step{{m: reg{contacts: []string{a + ";expires=5"}}, code: 423, minExp: "60"}}},
		{"clamped to max", []step{{m: reg{contacts: []string{a}, expires: "99999"}, code: 200, want: []string{"sip:201@192.168.1.50:5062 3600"}}}},
		{"overlarge Expires is the default (RFC 4475 scalar02)", []step{
			{m: reg{contacts: []string{a}, expires: "18446744073709551616"}, code: 200, want: []string{"sip:201@192.168.1.50:5062 3600"}}}},
		{"re-register same call, higher CSeq", []step{
			{m: reg{contacts: []string{a}, expires: "300", cseq: 5}, code: 200, want: []string{"sip:201@192.168.1.50:5062 300"}},
			{m: reg{contacts: []string{a}, expires: "600", cseq: 6}, code: 200, want: []string{"sip:201@192.168.1.50:5062 600"}},
		}},
		{"same call, lower CSeq refused (step 7)", []step{
			{m: reg{contacts: []string{a}, expires: "300", cseq: 5}, code: 200, want: []string{"sip:201@192.168.1.50:5062 300"}},
			{m: reg{contacts: []string{a}, expires: "600", cseq: 5}, code: 500},
			{m: reg{contacts: []string{a}, expires: "600", cseq: 4}, code: 500},
			{m: reg{}, code: 200, want: []string{"sip:201@192.168.1.50:5062 300"}},
		}},
		{"other call, any CSeq replaces", []step{
			{m: reg{contacts: []string{a}, expires: "300", cseq: 5}, code: 200},
			{m: reg{contacts: []string{a}, expires: "900", cseq: 1, callID: "reboot"}, code: 200, want: []string{"sip:201@192.168.1.50:5062 900"}},
		}},
		{"URI compares host case-insensitively", []step{
			{m: reg{contacts: []string{"<sip:Bob@Phone.LAN>"}}, code: 200, want: []string{"sip:Bob@Phone.LAN 3600"}},
			{m: reg{contacts: []string{"<sip:Bob@phone.lan>"}, expires: "0"}, code: 200, want: []string{}},
		}},
		{"q value kept", []step{
			{m: reg{contacts: []string{a + ";q=0.7"}}, code: 200, want: []string{"sip:201@192.168.1.50:5062 3600"}},
		}},
		{"bad q", []step{{m: reg{contacts: []string{a + ";q=7"}}, code: 400}}},
		{"too many contacts", []step{{m: reg{contacts: []string{
			"<sip:1@h>", "<sip:2@h>", "<sip:3@h>", "<sip:4@h>", "<sip:5@h>", "<sip:6@h>", "<sip:7@h>", "<sip:8@h>", "<sip:9@h>", "<sip:10@h>", "<sip:11@h>"}}, code: 403}}},
		{"non-SIP contact", []step{{m: reg{contacts: []string{"<mailto:a@b.c>"}}, code: 400}}},
		{"node address as domain", []step{{m: reg{ruri: "sip:10.120.0.1", to: "sip:201@10.120.0.1", contacts: []string{a}}, code: 200, want: []string{"sip:201@192.168.1.50:5062 3600"}}}},
		{"node IPv6 address as domain", []step{{m: reg{ruri: "sip:[fd00::1]:5060", to: "sip:201@[fd00:0::1]", contacts: []string{a}}, code: 200}}},
		{"sipserver.mesh", []step{{m: reg{ruri: "sip:sipserver.mesh", to: "sip:201@sipserver.mesh", contacts: []string{a}}, code: 200}}},
		{"foreign domain", []step{{m: reg{ruri: "sip:example.org", contacts: []string{a}}, code: 404}}},
		{"AOR in a foreign domain", []step{{m: reg{to: "sip:201@example.org", contacts: []string{a}}, code: 404}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newRig(t, func(c *RegistrarConfig) { c.noAuth = true })
			for i, s := range tt.steps {
				g.clock.Advance(s.advance)
				res := g.send(g.build(s.m))
				if res == nil || res.StatusCode != s.code {
					t.Fatalf("step %d: got %v, want %d", i, res, s.code)
				}
				if s.code == 423 {
					if h := res.GetHeader("Min-Expires"); h == nil || h.Value() != s.minExp {
						t.Errorf("step %d: Min-Expires %v, want %s", i, h, s.minExp)
					}
				}
				if s.code != 200 || s.want == nil {
					continue
				}
				if got := contactsOf(res); strings.Join(got, "|") != strings.Join(s.want, "|") {
					t.Errorf("step %d: contacts\n got %q\nwant %q", i, got, s.want)
				}
				if res.GetHeader("Date") == nil {
					t.Errorf("step %d: 200 without Date", i)
				}
			}
		})
	}
}

func TestRegisterOutbound(t *testing.T) {
	g := newRig(t, func(c *RegistrarConfig) { c.noAuth = true })
	inst := `;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1`
	res := g.send(g.build(reg{contacts: []string{"<sip:201@192.168.1.50:5062>" + inst}, extra: "Supported: outbound, path\r\n"}))
	wantCode(t, res, 200)
	if h := res.GetHeader("Require"); h == nil || h.Value() != "outbound" {
		t.Errorf("Require %v, want outbound (RFC 5626 §6)", h)
	}
	if v := res.GetHeader("Contact").Value(); !strings.Contains(v, `+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"`) || !strings.Contains(v, "reg-id=1") {
		t.Errorf("contact %q lost the instance or reg-id", v)
	}
	// Same instance and reg-id from a new address (the phone's NAT
	// binding changed): it replaces the binding, whose flow is the new source.
	g.src = netip.MustParseAddrPort("192.168.1.77:40000")
	res = g.send(g.build(reg{contacts: []string{"<sip:201@192.168.1.77:40000>" + inst}, callID: "after-reboot"}))
	wantCode(t, res, 200)
	if got := contactsOf(res); len(got) != 1 || got[0] != "sip:201@192.168.1.77:40000 3600" {
		t.Errorf("contacts %q", got)
	}
	bs, _ := g.loc.Bindings(context.Background(), "sip:201@mesh")
	if len(bs) != 1 || bs[0].Instance != "<urn:uuid:00000000-0000-1000-8000-000A95A0E128>" || bs[0].RegID != 1 || bs[0].Source != g.src {
		t.Errorf("stored %+v", bs)
	}
}

func TestRportAndReceived(t *testing.T) {
	g := newRig(t, func(c *RegistrarConfig) { c.noAuth = true })
	// Behind NAT: the phone says 10.0.0.9:5060, the packet comes from
	// 192.168.1.50:5062.
	res := g.send(g.build(reg{viaRport: true, viaSentBy: "10.0.0.9:5060"}))
	wantCode(t, res, 200)
	via := res.Via()
	if p, _ := via.Params.Get("rport"); p != "5062" {
		t.Errorf("rport %q, want 5062: %s", p, via)
	}
	if p, _ := via.Params.Get("received"); p != "192.168.1.50" {
		t.Errorf("received %q: %s", p, via)
	}
	if strings.Count(via.Value(), "rport") != 1 {
		t.Errorf("Via %s has rport twice", via)
	}
	// Without rport: received only, and the answer goes to the source
	// anyway (default) or to the Via port (ViaPortReplies).
	res = g.send(g.build(reg{viaSentBy: "10.0.0.9:5060"}))
	if p, _ := res.Via().Params.Get("received"); p != "192.168.1.50" || res.Via().Params.Has("rport") {
		t.Errorf("Via %s", res.Via())
	}
	raw := g.build(reg{viaSentBy: "10.0.0.9:5070"})
	if _, dst := g.r.processDatagram(context.Background(), []byte(raw), g.src); dst != g.src {
		t.Errorf("answer to %v, want the source %v", dst, g.src)
	}
	g2 := newRig(t, func(c *RegistrarConfig) { c.noAuth, c.ViaPortReplies = true, true })
	if _, dst := g2.r.processDatagram(context.Background(), []byte(raw), g.src); dst.String() != "192.168.1.50:5070" {
		t.Errorf("ViaPortReplies: answer to %v, want 192.168.1.50:5070", dst)
	}
}

func TestRetransmissionAbsorbed(t *testing.T) {
	g := newRig(t)
	raw := g.build(reg{contacts: []string{"<sip:201@192.168.1.50:5062>"}})
	first := g.send(raw)
	wantCode(t, first, 401)
	auth := authorize(t, first, "", "201", "secret201", 1)
	ok := g.build(reg{contacts: []string{"<sip:201@192.168.1.50:5062>"}, auth: auth})
	r1 := g.send(ok)
	wantCode(t, r1, 200)
	// The 200 was lost; the phone retransmits the same request. Processing
	// it again would fail the nc replay check (403) and the CSeq check.
	r2 := g.send(ok)
	wantCode(t, r2, 200)
	if r1.String() != r2.String() {
		t.Errorf("retransmission answered differently:\n%s\n%s", r1, r2)
	}
	if s := g.r.Stats(); s.Retransmitted != 1 {
		t.Errorf("stats %+v", s)
	}
	// After Timer J the entry is gone; the request is then processed anew.
	g.clock.Advance(txLifetime + time.Second)
	wantCode(t, g.send(ok), 401) // a used nonce count: a fresh challenge
}

func TestMalformedRequests(t *testing.T) {
	g := newRig(t, func(c *RegistrarConfig) { c.noAuth = true })
	good := g.build(reg{contacts: []string{"<sip:201@192.168.1.50:5062>"}})
	tests := []struct {
		name   string
		raw    string
		code   int // 0: no answer
		reason string
	}{
		{"garbage", "\x00\x01hello", 0, ""},
		{"response", "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bKx\r\n\r\n", 0, ""},
		{"no Via", "REGISTER sip:mesh SIP/2.0\r\nTo: <sip:201@mesh>\r\n\r\n", 0, ""},
		{"bad request line", strings.Replace(good, "REGISTER sip:mesh SIP/2.0", "REGISTER  sip:mesh  SIP/2.0", 1), 400, "malformed request line"},
		{"short body", strings.Replace(good, "Content-Length: 0", "Content-Length: 50", 1), 400, "Content-Length"},
		{"negative Content-Length", strings.Replace(good, "Content-Length: 0", "Content-Length: -5", 1), 400, "Bad Request"},
		{"missing Call-ID", strings.Replace(good, "Call-ID: call-1\r\n", "", 1), 400, "missing Call-ID"},
		{"missing CSeq", regexpRemoveLine(good, "CSeq:"), 400, "missing CSeq"},
		{"two Call-IDs", strings.Replace(good, "Call-ID: call-1\r\n", "Call-ID: call-1\r\nCall-ID: call-2\r\n", 1), 400, "more than one Call-ID"},
		{"CSeq method mismatch", strings.Replace(good, " REGISTER\r\n", " INVITE\r\n", 1), 400, "CSeq method"},
		{"version", strings.Replace(good, "sip:mesh SIP/2.0", "sip:mesh SIP/7.0", 1), 505, ""},
		{"To not SIP", strings.ReplaceAll(good, "<sip:201@mesh>", "<tel:201>"), 400, "To is not a SIP URI"},
		{"Contact headers outside <>", strings.Replace(good, "Contact: <sip:201@192.168.1.50:5062>", "Contact: sip:201@192.168.1.50?Route=%3Csip:x%3E", 1), 400, "enclosed in <>"},
		{"unknown Require", strings.Replace(good, "User-Agent", "Require: nothing-like-it\r\nUser-Agent", 1), 420, ""},
		{"INVITE", strings.ReplaceAll(good, "REGISTER", "INVITE"), 405, ""},
		{"unknown method", strings.ReplaceAll(good, "REGISTER", "FOO"), 501, ""},
		{"ACK", strings.ReplaceAll(good, "REGISTER", "ACK"), 0, ""},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A fresh branch each, or the answers come from the
			// retransmission cache.
			res := g.send(strings.Replace(tt.raw, "z9hG4bK-1", fmt.Sprintf("z9hG4bK-m%d", i), 1))
			if tt.code == 0 {
				if res != nil {
					t.Fatalf("want no answer, got %s", res.StartLine())
				}
				return
			}
			wantCode(t, res, tt.code)
			if !strings.Contains(res.Reason, tt.reason) {
				t.Errorf("reason %q, want %q in it", res.Reason, tt.reason)
			}
		})
	}
	if bs, _ := g.loc.Bindings(context.Background(), "sip:201@mesh"); len(bs) != 0 {
		t.Errorf("malformed requests stored %v", bs)
	}
}

func regexpRemoveLine(s, prefix string) string {
	var out []string
	for _, l := range strings.Split(s, "\r\n") {
		if !strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\r\n")
}

// TestTwoNodes: the registrars of two nodes share one location store
// (the DHT's role): a phone that moves from node 1 to node 2 keeps one
// binding; removing it at node 2 hides node 1's copy with a tombstone.
func TestTwoNodes(t *testing.T) {
	g1 := newRig(t, func(c *RegistrarConfig) { c.noAuth = true })
	g2 := newRig(t, func(c *RegistrarConfig) {
		c.noAuth, c.Node, c.Locations, c.Now = true, 0x2222, g1.loc, g1.clock.Now
	})
	g2.seq = 100
	ctx := context.Background()
	a := "<sip:201@192.168.1.50:5062>"
	wantCode(t, g1.send(g1.build(reg{contacts: []string{a}, expires: "600", cseq: 1})), 200)
	g1.clock.Advance(time.Second)
	res := g2.send(g2.build(reg{contacts: []string{a}, expires: "900", cseq: 2}))
	wantCode(t, res, 200)
	if got := contactsOf(res); len(got) != 1 || got[0] != "sip:201@192.168.1.50:5062 900" {
		t.Fatalf("contacts after the move %q", got)
	}
	merged := MergeBindings(mustBindings(t, g1.loc), g1.clock.Now())
	if len(merged) != 1 || merged[0].Node != 0x2222 {
		t.Fatalf("merged %+v", merged)
	}
	// A second contact at node 1; fetch at node 2 shows both.
	wantCode(t, g1.send(g1.build(reg{contacts: []string{"<sip:201@192.168.1.60>"}, callID: "desk"})), 200)
	if got := contactsOf(g2.send(g2.build(reg{callID: "fetch"}))); len(got) != 2 {
		t.Errorf("fetch at node 2: %q", got)
	}
	// Removal at node 2 of the contact node 1 also holds.
	g1.clock.Advance(time.Second)
	res = g2.send(g2.build(reg{contacts: []string{a}, expires: "0", cseq: 3}))
	wantCode(t, res, 200)
	if got := contactsOf(res); len(got) != 1 || got[0] != "sip:201@192.168.1.60 3599" {
		t.Errorf("after removal %q", got)
	}
	if got := contactsOf(g1.send(g1.build(reg{callID: "fetch2"}))); len(got) != 1 {
		t.Errorf("node 1 still sees %q", got)
	}
	// Once node 1's copy has expired, node 2 drops its tombstone.
	g1.clock.Advance(601 * time.Second)
	wantCode(t, g2.send(g2.build(reg{contacts: []string{"<sip:201@192.168.1.61>"}, callID: "x"})), 200)
	for _, b := range mustBindings(t, g1.loc) {
		if b.Node == 0x2222 && b.Removed {
			t.Errorf("tombstone kept past the copy it hides: %+v", b)
		}
	}
	_ = ctx
}

func mustBindings(t *testing.T, l *MemLocation) []Binding {
	t.Helper()
	bs, err := l.Bindings(context.Background(), "sip:201@mesh")
	if err != nil {
		t.Fatal(err)
	}
	return bs
}

// failingStore fails every call, as a DHT without quorum would.
type failingStore struct{}

func (failingStore) Bindings(context.Context, string) ([]Binding, error) {
	return nil, fmt.Errorf("dht: no route")
}
func (failingStore) SetBindings(context.Context, string, ssr.NodeID, []Binding) error {
	return fmt.Errorf("dht: no route")
}

func TestStoreFailure(t *testing.T) {
	g := newRig(t, func(c *RegistrarConfig) { c.noAuth, c.Locations = true, failingStore{} })
	res := g.send(g.build(reg{contacts: []string{"<sip:201@h>"}}))
	wantCode(t, res, 503)
	if h := res.GetHeader("Retry-After"); h == nil {
		t.Error("503 without Retry-After")
	}
}

func TestNewRegistrarErrors(t *testing.T) {
	if _, err := NewRegistrar(RegistrarConfig{}); err == nil {
		t.Error("no stores accepted")
	}
	_, err := NewRegistrar(RegistrarConfig{Locations: NewMemLocation(), Accounts: NewMemAccounts(nil), MinExpires: 100, MaxExpires: 50})
	if err == nil || !strings.Contains(err.Error(), "expires limits") {
		t.Errorf("bad limits: %v", err)
	}
}

func TestTxKey(t *testing.T) {
	g := newRig(t)
	parse := func(raw string) *sip.Request {
		m, err := sip.ParseMessage([]byte(raw))
		if err != nil {
			t.Fatal(err)
		}
		return m.(*sip.Request)
	}
	k1, _ := txKey(parse(g.build(reg{branch: "z9hG4bKabc", cseq: 1})))
	k2, _ := txKey(parse(g.build(reg{branch: "z9hG4bKabc", cseq: 1})))
	k3, _ := txKey(parse(g.build(reg{branch: "z9hG4bKabd", cseq: 1})))
	if k1 != k2 || k1 == k3 {
		t.Errorf("keys %q %q %q", k1, k2, k3)
	}
	old1, _ := txKey(parse(g.build(reg{branch: "1234", cseq: 7})))
	if !strings.HasPrefix(old1, "2543|") || !strings.Contains(old1, "|7|") {
		t.Errorf("RFC 2543 key %q", old1)
	}
	if itoa(-42) != "-42" || itoa(0) != "0" || itoa(65535) != strconv.Itoa(65535) {
		t.Error("itoa")
	}
}

// TestEchoSafe: a CR or LF left inside a header the response copies (RFC
// 3261 §8.2.6.2) makes the request unanswerable; one in a header that is
// not copied does not.
func TestEchoSafe(t *testing.T) {
	build := func(display, callID, other string) *sip.Request {
		req := sip.NewRequest(sip.REGISTER, sip.Uri{Scheme: "sip", Host: "mesh"})
		req.AppendHeader(&sip.ViaHeader{ProtocolName: "SIP", ProtocolVersion: "2.0", Transport: "UDP", Host: "192.168.1.50", Port: 5062, Params: sip.NewParams()})
		req.AppendHeader(&sip.FromHeader{DisplayName: display, Address: sip.Uri{Scheme: "sip", User: "201", Host: "mesh"}, Params: sip.NewParams()})
		req.AppendHeader(&sip.ToHeader{Address: sip.Uri{Scheme: "sip", User: "201", Host: "mesh"}, Params: sip.NewParams()})
		cid := sip.CallIDHeader(callID)
		req.AppendHeader(&cid)
		req.AppendHeader(&sip.CSeqHeader{SeqNo: 1, MethodName: sip.REGISTER})
		req.AppendHeader(sip.NewHeader("X-Other", other))
		return req
	}
	for _, c := range []struct {
		display, callID, other string
		want                   bool
	}{
		{"Phone", "c1", "x", true},
		{"Phone", "c1", "x\ny", true}, // not echoed
		{"Pho\nne", "c1", "x", false},
		{"Phone", "c\r1", "x", false},
	} {
		if got := echoSafe(build(c.display, c.callID, c.other)); got != c.want {
			t.Errorf("echoSafe(display %q, Call-ID %q, X-Other %q) = %v, want %v", c.display, c.callID, c.other, got, c.want)
		}
	}
}
