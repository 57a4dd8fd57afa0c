package sipstress

import (
	"bytes"
	"testing"

	"github.com/emiago/sipgo/sip"
)

func TestCorpus(t *testing.T) {
	c, err := LoadCorpus("../../testdata/rfc4475")
	if err != nil {
		t.Fatal(err)
	}
	if len(c) != 50 {
		t.Fatalf("%d torture messages, want RFC 4475's 50", len(c))
	}
	if _, err := LoadCorpus(t.TempDir()); err == nil {
		t.Fatal("an empty directory gave no error")
	}
}

// TestValidParses: the valid requests really are valid (sipgo parses them
// with their method and Call-ID), or the test's "every valid request is
// answered" would prove nothing.
func TestValidParses(t *testing.T) {
	p := sip.NewParser()
	for i, m := range []string{"OPTIONS", "REGISTER", "INVITE", "MESSAGE", "SUBSCRIBE"} {
		raw := Valid(m, "202", "10.0.0.1", "10.0.0.66:5062", "cid-x", i+1)
		msg, err := p.ParseSIP(raw)
		if err != nil {
			t.Fatalf("%s: %v\n%s", m, err, raw)
		}
		req, ok := msg.(*sip.Request)
		if !ok || string(req.Method) != m || req.CallID().Value() != "cid-x" {
			t.Fatalf("%s parsed as %v", m, msg)
		}
	}
}

// TestMutate: deterministic under a seed, bounded, every kind reached, and
// a mutation changes the message (a mutator that returned its input would
// make the stress test a load test).
func TestMutate(t *testing.T) {
	base := Valid("INVITE", "202", "10.0.0.1", "10.0.0.66:5062", "cid-y", 1)
	a, b := NewMutator(7), NewMutator(7)
	seen := map[string]int{}
	unchanged := 0
	for range 5000 {
		x, kx := a.Mutate(base)
		y, ky := b.Mutate(base)
		if kx != ky || !bytes.Equal(x, y) {
			t.Fatal("same seed, different mutations")
		}
		if len(x) > MaxDatagram {
			t.Fatalf("%s: %d bytes, over one datagram", kx, len(x))
		}
		if bytes.Equal(x, base) {
			unchanged++
		}
		seen[kx]++
	}
	for _, k := range Kinds {
		if seen[k] == 0 {
			t.Errorf("kind %s never chosen", k)
		}
	}
	// Only truncate at length 0 of a non-empty message, or a random flip
	// to the same byte, can leave it as it was: rare.
	if unchanged > 50 {
		t.Errorf("%d of 5000 mutations left the message unchanged", unchanged)
	}
	if !bytes.Contains(Valid("INVITE", "202", "s", "10.0.0.66:5062", "c", 1), []byte("Call-ID: c\r\n")) {
		t.Fatal("Valid lost its Call-ID")
	}
}
