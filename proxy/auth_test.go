package proxy

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"testing/synctest"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
	"github.com/sipmesh/sipmesh/internal/leakcheck"
)

// shape is what a response tells a prober: its status, reason and
// headers, without what differs per request anyway (nonces, tags,
// branches, Call-ID, CSeq).
func shape(res *sip.Response) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d %s\n", res.StatusCode, res.Reason)
	vary := regexp.MustCompile(`nonce="[^"]*"|tag=[^;>]*|branch=[^;]*|rport=\d+`)
	for _, h := range res.Headers() {
		switch strings.ToLower(h.Name()) {
		case "call-id", "cseq":
			continue
		case "from", "to":
			fmt.Fprintf(&b, "%s\n", h.Name())
			continue
		}
		fmt.Fprintf(&b, "%s: %s\n", h.Name(), vary.ReplaceAllString(h.Value(), ""))
	}
	return b.String()
}

// TestProxyAuthNoEnumeration: a LAN phone's requests outside a dialog are
// challenged (407) before any lookup, with one answer whatever extension
// they name (registered, unregistered, nonexistent, the echo test); a
// wrong user and a wrong password get the same 403; an OPTIONS to the
// node itself is answered without credentials.
func TestProxyAuthNoEnumeration(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		var m *meshRig
		m = newMeshRig(t, 2, withEcho(&m, 1))
		m.phone(1, "201", 10).register()
		m.phone(2, "202", 10).register()
		prober := m.phone(1, "svwar", 66)
		send := func(method, ext, auth string) *sip.Response {
			prober.seq++
			ruri := "sip:" + ext + "@mesh"
			raw := fmt.Sprintf("%s %s SIP/2.0\r\n%sMax-Forwards: 70\r\nFrom: <sip:100@mesh>;tag=p%d\r\nTo: <%s>\r\nCall-ID: probe-%d\r\nCSeq: 1 %s\r\n%sContent-Length: 0\r\n\r\n",
				method, ruri, prober.via(), prober.seq, ruri, prober.seq, method, auth)
			prober.sendTo(prober.server(), raw)
			return prober.response()
		}
		for _, method := range []string{"INVITE", "OPTIONS", "MESSAGE", "SUBSCRIBE"} {
			var want string
			for _, ext := range []string{"201", "202", "203", "999", "3246", "x"} {
				res := send(method, ext, "")
				if res.StatusCode != 407 || res.GetHeader("Proxy-Authenticate") == nil {
					t.Errorf("%s to %s: %d %s, want 407 with a challenge", method, ext, res.StatusCode, res.Reason)
				}
				if s := shape(res); want == "" {
					want = s
				} else if s != want {
					t.Errorf("%s to %s answered\n%s\nbut another extension\n%s", method, ext, s, want)
				}
				if method == "INVITE" {
					prober.ackNon2xx(&call{callID: fmt.Sprintf("probe-%d", prober.seq), ruri: "sip:" + ext + "@mesh",
						fromTag: fmt.Sprintf("p%d", prober.seq), branch: fmt.Sprintf("z9hG4bKsvwar-%d", prober.seq)}, res)
				}
			}
		}

		// Wrong user and wrong password: one answer (alwaysauthreject).
		cred := func(user, password string) string {
			res := send("MESSAGE", "202", "") // a fresh nonce each: nc 1
			chal, err := digest.ParseChallenge(res.GetHeader("Proxy-Authenticate").Value())
			if err != nil {
				t.Fatal(err)
			}
			c, err := digest.Digest(chal, digest.Options{Method: "MESSAGE", URI: "sip:202@mesh", Username: user, Password: password, Count: 1, Cnonce: "c"})
			if err != nil {
				t.Fatal(err)
			}
			return "Proxy-Authorization: " + c.String() + "\r\n"
		}
		wrongPw, wrongUser := send("MESSAGE", "202", cred("201", "guess")), send("MESSAGE", "202", cred("999", "guess"))
		if wrongPw.StatusCode != 403 || shape(wrongPw) != shape(wrongUser) {
			t.Errorf("wrong password\n%s\nwrong user\n%s", shape(wrongPw), shape(wrongUser))
		}
		// The right password, but the caller claims another From: refused.
		if res := send("MESSAGE", "202", cred("201", "secret201")); res.StatusCode != 403 {
			t.Errorf("credentials of 201 with From 100: %d %s", res.StatusCode, res.Reason)
		}

		// An OPTIONS keep-alive to the node needs no credentials.
		prober.sendTo(prober.server(), fmt.Sprintf("OPTIONS sip:10.1.0.1 SIP/2.0\r\n%sMax-Forwards: 70\r\nFrom: <sip:100@mesh>;tag=o\r\nTo: <sip:10.1.0.1>\r\nCall-ID: ka\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n", prober.via()))
		wantStatus(t, prober.response(), 200)
	})
}
