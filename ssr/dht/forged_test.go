package dht

import (
	"time"

	"testing"

	"github.com/sipmesh/sipmesh/ssr"
)

// TestForgedClosestRequests: requests travel as closest datagrams, which
// ssr does not authenticate end to end (ssr/e2e.go), so a relay can send
// one in another node's name. What that must not buy it: a record not
// signed by its writer is refused; the owner's answer goes to the node
// named, which has no request with that ID and drops it; and the node's
// request IDs cannot be guessed from one seen earlier, so a forged
// request cannot make an owner answer one of its real requests (with the
// wrong key's records, or none, and the wrong owner).
func TestForgedClosestRequests(t *testing.T) {
	r := newFakeRing(t, 8, Params{})
	w, v := anyNode(r, 0), anyNode(r, 3)
	if err := w.put("aor:sip:1@mesh", "contact", time.Hour); err != nil {
		t.Fatal(err)
	}
	r.run(step * 10)
	want := r.copies("aor:sip:1@mesh")
	owner := func(key string) *fnode { return r.nodes[responsible(r.ring(v.id), KeyOf(key))] }
	forge := func(key string, payload []byte) {
		t.Helper()
		o := owner(key)
		before := len(r.queue)
		o.n.HandleDatagram(r.now, ssr.Datagram{Src: v.id, Target: KeyOf(key), Mode: ssr.Closest, SrcPort: Port, DstPort: Port, Payload: payload})
		answered := false
		for _, m := range r.queue[before:] {
			answered = answered || m.from == o.id && m.target == v.id && m.mode == ssr.Exact
		}
		if !answered {
			t.Fatalf("the owner of %q did not answer the request in %v's name", key, v.id)
		}
	}

	// A GET and a PUT with a record the relay could not sign, in v's name,
	// under a request ID v never used.
	forge("aor:sip:1@mesh", encodeGet(nil, 0xdead, 0, "aor:sip:1@mesh"))
	bad := signed("aor:sip:1@mesh", "evil", 99, 100)
	bad.Value = []byte("evil, re-signed by nobody")
	refused := owner("aor:sip:1@mesh").n.Metrics().RefusedSig
	forge("aor:sip:1@mesh", encodeStore(nil, 0xbeef, storeAck, &bad))
	if got := owner("aor:sip:1@mesh").n.Metrics().RefusedSig; got != refused+1 {
		t.Fatalf("the forged record was not refused for its signature: %d refusals, want %d", got, refused+1)
	}
	r.run(step * 10)
	if len(v.results) != 0 {
		t.Fatalf("v completed requests it never made: %+v", v.results)
	}
	if got := r.copies("aor:sip:1@mesh"); len(got) != len(want) {
		t.Fatalf("copies after the forgeries: %+v, want %+v", got, want)
	}
	for id, rec := range r.copies("aor:sip:1@mesh") {
		if string(rec.Value) != "contact" {
			t.Fatalf("%v holds %q", id, rec.Value)
		}
	}

	// A relay that saw one of v's requests (it carries them) cannot aim
	// forged ones at v's next: it guesses around the ID it saw, and v's Get
	// still gets its key's records from its key's owner.
	id, err := v.n.Get(r.now, "aor:sip:9@mesh")
	if err != nil {
		t.Fatal(err)
	}
	seen := uint64(0)
	for _, m := range r.queue {
		if p, err := decode(m.payload); err == nil && m.from == v.id && p.typ == msgGet {
			seen = p.req
		}
	}
	if seen == 0 {
		t.Fatal("v's GET not found")
	}
	v.wait(id)
	id, err = v.n.Get(r.now, "aor:sip:1@mesh")
	if err != nil {
		t.Fatal(err)
	}
	for d := uint64(1); d <= 64; d++ {
		for _, guess := range []uint64{seen + d, seen - d, seen ^ d} {
			forge("aor:sip:9@mesh", encodeGet(nil, guess, 0, "aor:sip:9@mesh"))
		}
	}
	res := v.wait(id)
	if res.Err != nil || len(res.Records) != 1 || string(res.Records[0].Value) != "contact" || res.Owner != owner("aor:sip:1@mesh").id {
		t.Fatalf("v's Get after forged requests aimed at it: %+v (owner %v)", res, owner("aor:sip:1@mesh").id)
	}
}
