package dns64

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"

	"github.com/miekg/dns"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/netx"
)

// TestReplay: a repeated .mesh query over UDP is answered from the packed
// reply of the first (the same bytes but the ID), counted like any query;
// another spelling of the name, upstream names and TCP take the full path;
// the cache stays bounded.
func TestReplay(t *testing.T) {
	leakcheck.Check(t)
	r := newRig(t, nil)
	packed := func(m *dns.Msg) []byte {
		m = m.Copy()
		m.Id = 0
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	first := r.ask(t, r.lan, "sipserver.mesh.", dns.TypeA)
	if got := r.srv.Stats().Replayed; got != 0 {
		t.Fatalf("replayed %d before any repeat", got)
	}
	q := question("sipserver.mesh.", dns.TypeA)
	again := exchange(t, r.client, "udp", r.lan, q)
	st := r.srv.Stats()
	if st.Replayed != 1 || st.Queries != 2 || st.Mesh != 2 {
		t.Fatalf("after a repeat: %+v, want 1 replayed of 2 .mesh queries", st)
	}
	if again.Id != q.Id {
		t.Fatalf("replayed reply has ID %d, the query %d", again.Id, q.Id)
	}
	if !bytes.Equal(packed(first), packed(again)) {
		t.Fatalf("replayed reply differs:\n%v\nfirst:\n%v", again, first)
	}

	// 0x20: another case is another query; its answer keeps its case.
	mixed := r.ask(t, r.lan, "SipServer.mesh.", dns.TypeA)
	if st := r.srv.Stats(); st.Replayed != 1 {
		t.Fatalf("a query in another case was replayed: %+v", st)
	}
	if mixed.Answer[0].Header().Name != "SipServer.mesh." {
		t.Fatalf("answer owner %q, want the query's case", mixed.Answer[0].Header().Name)
	}
	// Another socket has its own addresses: nothing replayed across.
	r.ask(t, r.msh, "sipserver.mesh.", dns.TypeA)
	if st := r.srv.Stats(); st.Replayed != 1 {
		t.Fatalf("a query on the other socket was replayed: %+v", st)
	}
	// Upstream answers count down their TTLs: never replayed.
	for range 2 {
		r.ask(t, r.lan, "v4only.example.", dns.TypeA)
	}
	// TCP has no replay cache.
	for range 2 {
		exchange(t, r.client, "tcp", r.lan, question("sipserver.mesh.", dns.TypeA))
	}
	if st := r.srv.Stats(); st.Replayed != 1 {
		t.Fatalf("upstream or TCP answers were replayed: %+v", st)
	}
	for i := range 3 * replayMax {
		r.ask(t, r.lan, fmt.Sprintf("h%d.sipserver.mesh.", i), dns.TypeA)
	}
	if n := r.srv.replays[0].len(); n > replayMax {
		t.Fatalf("%d replies kept, bound %d", n, replayMax)
	}
}

// TestReplayable: only complete authoritative .mesh answers are replayed.
func TestReplayable(t *testing.T) {
	req := question("sipserver.mesh.", dns.TypeA)
	for _, c := range []struct {
		name string
		mod  func(m *dns.Msg)
		want bool
	}{
		{"answer", func(m *dns.Msg) {}, true},
		{"nxdomain", func(m *dns.Msg) { m.Rcode = dns.RcodeNameError }, true},
		{"servfail", func(m *dns.Msg) { m.Rcode = dns.RcodeServerFailure }, false},
		{"refused", func(m *dns.Msg) { m.Rcode = dns.RcodeRefused }, false},
		{"truncated", func(m *dns.Msg) { m.Truncated = true }, false},
		{"not authoritative", func(m *dns.Msg) { m.Authoritative = false }, false},
	} {
		m := new(dns.Msg)
		m.SetReply(req)
		m.Authoritative = true
		c.mod(m)
		if got := replayable(req, m); got != c.want {
			t.Errorf("%s: replayable %v, want %v", c.name, got, c.want)
		}
	}
	up := question("v4only.example.", dns.TypeA)
	m := new(dns.Msg)
	m.SetReply(up)
	m.Authoritative = true
	if replayable(up, m) {
		t.Error("an answer outside .mesh is replayable")
	}
}

// TestReplayKernelSocket: on a kernel UDP socket (the node's own) the
// reader reads in batches (batch_linux.go) and replays the same way;
// shutdown still ends the read.
func TestReplayKernelSocket(t *testing.T) {
	leakcheck.Check(t)
	cfg := Config{
		Network: netx.Kernel{},
		Listen:  []Listen{{Addr: netip.MustParseAddr("127.0.0.1")}},
		Port:    -1, // any free port
		Zone:    testZone,
		Prefix:  netip.MustParsePrefix("2001:db8:64::/96"),
		Logger:  testLogger(t),
	}
	s := startServer(t, cfg, make(chan error, 1))
	addr := s.Addrs()[0]
	var replies [][]byte
	for range 3 {
		q := question("sipserver.mesh.", dns.TypeA)
		m := exchange(t, netx.Kernel{}, "udp", addr, q)
		if m.Id != q.Id || len(m.Answer) != 1 || m.Answer[0].(*dns.A).A.String() != "127.0.0.1" {
			t.Fatalf("reply %v to query %d", m, q.Id)
		}
		m.Id = 0
		b, _ := m.Pack()
		replies = append(replies, b)
	}
	if st := s.Stats(); st.Replayed != 2 || st.Queries != 3 {
		t.Fatalf("%+v, want 2 of 3 replayed", st)
	}
	if !bytes.Equal(replies[0], replies[2]) {
		t.Fatal("replayed reply differs from the first")
	}
}
