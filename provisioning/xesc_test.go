package provisioning

import (
	"bytes"
	"encoding/xml"
	"math/rand/v2"
	"testing"
)

// xmlReference is what xesc replaces: encoding/xml's escaper, after the
// same control-character stripping.
func xmlReference(s string) string {
	var b bytes.Buffer
	xml.EscapeText(&b, []byte(stripControl(s)))
	return b.String()
}

// TestXescMatchesEncodingXML checks xesc against encoding/xml on chosen
// strings and on random bytes biased towards the interesting characters.
func TestXescMatchesEncodingXML(t *testing.T) {
	for _, s := range []string{"", "plain", `<a href="x">&'</a>`, "Zoë \xff\xfe bad", "\ufffe\uffff\U0001F600", "\ud7ff\ue000",
		"tab\tnl\ncr\r", "\x00\x7f"} {
		if got, want := xesc(s), xmlReference(s); got != want {
			t.Errorf("xesc(%q) = %q, encoding/xml %q", s, got, want)
		}
	}
	rng := rand.New(rand.NewPCG(17, 1))
	alphabet := []byte("a<>&\"' \t\n\xc3\xa9\xef\xbf\xbe\xed\xa0\x80\xf0\x9f\x98\x80\xff")
	for range 20000 {
		b := make([]byte, rng.IntN(12))
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
		}
		if got, want := xesc(string(b)), xmlReference(string(b)); got != want {
			t.Fatalf("xesc(%q) = %q, encoding/xml %q", b, got, want)
		}
	}
}

func FuzzXesc(f *testing.F) {
	f.Add("Zoë \"Z\" <Ops> & Co")
	f.Add("\xff\ufffe")
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := xesc(s), xmlReference(s); got != want {
			t.Fatalf("xesc(%q) = %q, encoding/xml %q", s, got, want)
		}
	})
}
