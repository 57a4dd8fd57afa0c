package registrar

import (
	"bufio"
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
)

// rfc4475Dir holds the RFC 4475 torture messages: the repository's
// testdata/rfc4475 (see its README and manifest.tsv).
func rfc4475Dir(t testing.TB) string {
	t.Helper()
	const d = "../testdata/rfc4475"
	if _, err := os.Stat(filepath.Join(d, "manifest.tsv")); err != nil {
		t.Fatalf("RFC 4475 corpus: %v", err)
	}
	return d
}

type tortureCase struct {
	file, verdict, parser string
}

func readManifest(t *testing.T, dir string) []tortureCase {
	f, err := os.Open(filepath.Join(dir, "manifest.tsv"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []tortureCase
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		cols := strings.Split(sc.Text(), "\t")
		if len(cols) < 6 || cols[0] == "file" {
			continue
		}
		out = append(out, tortureCase{file: cols[0], verdict: cols[3], parser: cols[5]})
	}
	if len(out) < 50 {
		t.Fatalf("manifest lists %d files, want 50", len(out))
	}
	return out
}

// TestRFC4475 feeds every torture message to a registrar serving
// example.com without authentication (so the valid REGISTERs are
// processed, as the RFC's expectations assume) and checks the answer
// against the manifest and, where the RFC is specific, the exact code.
// A second pass with authentication on must not crash either.
func TestRFC4475(t *testing.T) {
	dir := rfc4475Dir(t)
	exact := map[string]int{
		"dblreq.dat":     200, // the REGISTER, trailing INVITE ignored (RFC 3261 §18.3)
		"escnull.dat":    200,
		"cparam01.dat":   200,
		"cparam02.dat":   200,
		"regescrt.dat":   200,
		"regaut01.dat":   200, // unknown scheme ignored when not authenticating
		"unksm2.dat":     400,
		"unkscm.dat":     416,
		"novelsc.dat":    416,
		"bext01.dat":     420,
		"badvers.dat":    505,
		"mismatch01.dat": 400,
		"mismatch02.dat": 400,
		"insuf.dat":      400,
		"multi01.dat":    400,
		"mcl01.dat":      400,
		"regbadct.dat":   400,
		"scalar02.dat":   400,
		"clerr.dat":      400,
		"ncl.dat":        400,
		"intmeth.dat":    501,
		"esc02.dat":      501,
		"zeromf.dat":     200,
		"lwsdisp.dat":    200,
		"semiuri.dat":    200,
		"transports.dat": 200,
		"wsinv.dat":      405,
		"longreq.dat":    405,
		"esc01.dat":      405,
		"invut.dat":      405,
		"sdp01.dat":      405,
		"inv2543.dat":    405,
		"mpart01.dat":    405,
	}
	for _, auth := range []bool{false, true} {
		g := newRig(t, func(c *RegistrarConfig) {
			c.noAuth = !auth
			c.Domains = []string{"example.com"}
		})
		for _, tc := range readManifest(t, dir) {
			data, err := os.ReadFile(filepath.Join(dir, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			out, _ := g.r.processDatagram(context.Background(), data, g.src)
			var res *sip.Response
			if out != nil {
				msg, err := sip.ParseMessage(out)
				if err != nil && rawStatus(out) != 0 {
					// A 400 built from raw header lines echoes the
					// client's own malformed headers, which sipgo
					// cannot parse back.
					res = &sip.Response{StatusCode: rawStatus(out), Reason: "(raw) " + strings.SplitN(string(out), "\r\n", 2)[0]}
					goto check
				}
				if err != nil {
					t.Errorf("%s: unparsable answer %q: %v", tc.file, out, err)
					continue
				}
				var ok bool
				if res, ok = msg.(*sip.Response); !ok {
					t.Errorf("%s: answered with a request", tc.file)
					continue
				}
			}
		check:
			code := 0
			if res != nil {
				code = res.StatusCode
			}
			if !auth {
				t.Logf("%-15s %-8s %-20s -> %d %s", tc.file, tc.verdict, tc.parser, code, reasonOf(res))
			}
			switch {
			case tc.parser == "drop" && code != 0:
				t.Errorf("%s: a response must be dropped, answered %d", tc.file, code)
			case tc.parser == "should-reject" && code != 0 && code < 400:
				t.Errorf("%s: invalid message accepted with %d", tc.file, code)
			case tc.parser == "must-accept" && code == 400 && exact[tc.file] != 400:
				t.Errorf("%s: valid message refused: %d %s", tc.file, code, reasonOf(res))
			}
			if want, ok := exact[tc.file]; ok && (!auth || want >= 400 && want != 405) {
				if code != want && !(auth && want == 200) {
					t.Errorf("auth=%v %s: answered %d %s, want %d", auth, tc.file, code, reasonOf(res), want)
				}
			}
			if auth && strings.HasPrefix(tc.file, "reg") && code == 200 {
				t.Errorf("%s: registered without credentials", tc.file)
			}
		}
		if auth {
			continue
		}
		// What the valid REGISTERs stored (RFC 4475 §3.3.9–3.3.11, §3.1.1.4).
		bs := func(user string) []string {
			l, _ := g.loc.Bindings(context.Background(), AOR(user))
			var out []string
			for _, b := range MergeBindings(l, g.clock.Now()) {
				out = append(out, b.Contact)
			}
			return out
		}
		// cparam01 and cparam02 register two different contacts for watson:
		// unknownparam outside <> is a header parameter, inside a URI one.
		if got := bs("watson"); len(got) != 2 || got[0] != "sip:+19725552222@gw1.example.net" || got[1] != "sip:+19725552222@gw1.example.net;unknownparam" {
			t.Errorf("cparam01/02 bindings %q", got)
		}
		t.Logf("AORs %q", g.loc.AORs())
		if got := bs("user"); len(got) != 1 || !strings.Contains(got[0], "?Route=%3Csip:sip.example.com%3E") {
			t.Errorf("regescrt binding %q: keeps the escaped header", got)
		}
		if got := bs("null-%00-null"); len(got) != 2 {
			t.Errorf("escnull bindings %q, want two", got)
		}
	}
}

// rawStatus is the code of an answer built by badRequest from raw header
// lines (400 or 416), 0 for anything else. Its lines must be intact: no
// bare CR or LF inside a line, headers ending in an empty line.
func rawStatus(out []byte) int {
	s := string(out)
	if !strings.HasSuffix(s, "\r\n\r\n") || strings.Contains(strings.ReplaceAll(s, "\r\n", ""), "\n") || strings.Contains(strings.ReplaceAll(s, "\r\n", ""), "\r") {
		return 0
	}
	switch {
	case strings.HasPrefix(s, "SIP/2.0 400 Bad Request ("):
		return 400
	case strings.HasPrefix(s, "SIP/2.0 416 Unsupported URI Scheme\r\n"):
		return 416
	}
	return 0
}

// wellFramed checks the framing of an answer: a SIP/2.0 status line,
// header lines with no bare CR or LF, a Via, and the empty line.
func wellFramed(out []byte) bool {
	s := string(out)
	head, rest, ok := strings.Cut(s, "\r\n\r\n")
	if !ok || rest != "" || !strings.HasPrefix(s, "SIP/2.0 ") || len(s) < 12 {
		return false
	}
	if _, err := strconv.Atoi(s[8:11]); err != nil {
		return false
	}
	via := false
	for _, l := range strings.Split(head, "\r\n") {
		if strings.ContainsAny(l, "\r\n") {
			return false
		}
		via = via || strings.HasPrefix(l, "Via: ")
	}
	return via
}

func reasonOf(res *sip.Response) string {
	if res == nil {
		return "(no answer)"
	}
	return res.Reason
}

// FuzzProcessDatagram throws arbitrary bytes at the registrar's datagram
// path: it must never panic, and anything it sends must parse as a
// response. Seeds: the RFC 4475 messages.
func FuzzProcessDatagram(f *testing.F) {
	dir := rfc4475Dir(f)
	files, _ := filepath.Glob(filepath.Join(dir, "*.dat"))
	for _, p := range files {
		b, _ := os.ReadFile(p)
		f.Add(b)
	}
	r, err := NewRegistrar(RegistrarConfig{Locations: NewMemLocation(), Accounts: NewMemAccounts(nil), Rate: -1, Domains: []string{"example.com"}})
	if err != nil {
		f.Fatal(err)
	}
	r2, _ := NewRegistrar(RegistrarConfig{Locations: NewMemLocation(), Accounts: NewMemAccounts(nil), Rate: -1, Domains: []string{"example.com"}, noAuth: true})
	src := mustAddrPort("192.0.2.1:5060")
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, reg := range []*Registrar{r, r2} {
			out, _ := reg.processDatagram(context.Background(), data, src)
			if out == nil {
				continue
			}
			msg, err := sip.ParseMessage(out)
			if err != nil {
				// sipgo may not read back headers it echoed from the
				// request; the answer must still be framed right.
				if !wellFramed(out) {
					t.Fatalf("badly framed answer %q to %q: %v", out, data, err)
				}
				continue
			}
			if _, ok := msg.(*sip.Response); !ok {
				t.Fatalf("answered %q with a request", data)
			}
		}
	})
}

// TestFloodMemoryBounded sends 30 000 distinct unauthenticated REGISTERs
// (each would be a new sipgo server transaction kept 32 s) and garbage,
// with the rate limit off, and checks that every table stays within its
// bound, the heap stays small, and the stored binding is untouched.
// BenchmarkFloodMemory does the same with 100 000.
func TestFloodMemoryBounded(t *testing.T) {
	const n = 30000
	g := newRig(t, func(c *RegistrarConfig) { c.MaxTxCache = 2000 })
	ok := g.register(reg{contacts: []string{"<sip:201@192.168.1.50:5062>"}, callID: "real"}, "secret201")
	wantCode(t, ok, 200)
	stored := func() []Binding {
		bs, _ := g.loc.Bindings(context.Background(), "sip:201@mesh")
		return bs
	}
	before := stored()

	heap0 := heapInUse()
	flood(g.r, n)
	heap1 := heapInUse()
	s := g.r.Stats()
	if s.TxCached > 2000 {
		t.Errorf("response cache holds %d, bound 2000", s.TxCached)
	}
	if s.NoncesTracked > maxTrackedNonces {
		t.Errorf("nonce table %d", s.NoncesTracked)
	}
	grow := int64(heap1) - int64(heap0)
	t.Logf("heap in use %0.1f MiB -> %0.1f MiB after %d requests; stats %+v", float64(heap0)/(1<<20), float64(heap1)/(1<<20), n, s)
	if grow > 16<<20 {
		t.Errorf("heap grew by %d MiB", grow>>20)
	}
	if after := stored(); len(after) != 1 || !reflect.DeepEqual(before, after) {
		t.Errorf("binding disturbed by the flood:\n%+v\n%+v", before, after)
	}
}

// flood feeds n requests: mostly unauthenticated REGISTERs with fresh
// branches and Call-IDs, some with forged credentials, some garbage.
func flood(r *Registrar, n int) {
	src := mustAddrPort("192.168.1.66:5060")
	var b strings.Builder
	for i := range n {
		b.Reset()
		switch i % 10 {
		case 9:
			b.WriteString("REGISTER sip:mesh SIP/2.0\r\nVia: SIP/2.0/UDP x;branch=z9hG4bK" + itoa(i) + "\r\nCSeq: nonsense\r\n\r\n")
		default:
			b.WriteString("REGISTER sip:mesh SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.66:5060;branch=z9hG4bKf" + itoa(i) +
				"\r\nFrom: <sip:201@mesh>;tag=" + itoa(i) + "\r\nTo: <sip:201@mesh>\r\nCall-ID: flood-" + itoa(i) +
				"\r\nCSeq: 1 REGISTER\r\nContact: <sip:evil@192.0.2.1>\r\nExpires: 3600\r\n")
			if i%10 == 8 {
				b.WriteString(`Authorization: Digest username="201", realm="mesh", nonce="AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", uri="sip:mesh", response="00000000000000000000000000000000", qop=auth, nc=00000001, cnonce="x"` + "\r\n")
			}
			b.WriteString("Content-Length: 0\r\n\r\n")
		}
		r.processDatagram(context.Background(), []byte(b.String()), src)
	}
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

func BenchmarkFloodMemory(b *testing.B) {
	const n = 100000
	for b.Loop() {
		r, _ := NewRegistrar(RegistrarConfig{Locations: NewMemLocation(), Accounts: NewMemAccounts(nil), Rate: -1})
		h0 := heapInUse()
		flood(r, n)
		h1 := heapInUse()
		b.ReportMetric(float64(int64(h1)-int64(h0))/(1<<20), "heap-MiB-after-100k")
		b.ReportMetric(float64(r.Stats().TxCached), "tx-cached")
	}
}

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
