package proxy

import (
	"fmt"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/phones"
	"github.com/sipmesh/sipmesh/registrar"
)

// TestMessages: a MESSAGE between phones on two nodes is delivered (200);
// one to a phone that is not registered is stored (202) and delivered,
// with its sender, when the phone registers on a third node.
func TestMessages(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		store := &registrar.MemMessages{} // one for all nodes, as they share the DHT
		m := newMeshRig(t, 3, func(c *SIPServiceConfig) { c.Messages = store })
		p201 := m.simPhone(1, "201", 20, 700)
		p202 := m.simPhone(2, "202", 20, 800)
		p203 := m.simPhone(3, "203", 20, 900)
		for _, p := range []*phones.Phone{p201, p202} {
			if err := p.Register(m.ctx); err != nil {
				t.Fatal(err)
			}
		}
		recv := func(p *phones.Phone) phones.Message {
			select {
			case msg := <-p.Messages():
				return msg
			case <-time.After(10 * time.Second):
				t.Fatal("no message arrived")
				return phones.Message{}
			}
		}
		if code, err := p201.SendMessage(m.ctx, "202", "hello 202"); err != nil || code != 200 {
			t.Fatalf("MESSAGE to 202: %d, %v", code, err)
		}
		if msg := recv(p202); msg.Body != "hello 202" || !strings.Contains(msg.From, "201") {
			t.Errorf("202 got %+v", msg)
		}
		if code, err := p201.SendMessage(m.ctx, "203", "call me"); err != nil || code != 202 {
			t.Fatalf("MESSAGE to offline 203: %d, %v, want 202", code, err)
		}
		time.Sleep(time.Minute)
		if err := p203.Register(m.ctx); err != nil {
			t.Fatal(err)
		}
		if msg := recv(p203); msg.Body != "call me" || !strings.Contains(msg.From, "201") {
			t.Errorf("203 got %+v after registering", msg)
		}
		if ms, _ := store.Take(m.ctx, "203"); len(ms) != 0 {
			t.Errorf("%d messages still stored after delivery", len(ms))
		}
	})
}

// TestMailChecksBounded: the mailbox checks after REGISTER are bounded —
// one pending per extension, at most maxMailPending extensions, at most
// mailWorkers workers — and an extension found empty is not read again
// within mailRecheck unless it unregistered or a message was stored.
func TestMailChecksBounded(t *testing.T) {
	var m mailChecks
	now := time.Unix(1e9, 0)
	starts := 0
	for i := range maxMailPending + 100 {
		ext := fmt.Sprintf("%d", 1000+i)
		for range 3 { // refreshes of the same extension coalesce
			if m.add(mailCheck{ext: ext}, now) {
				starts++
			}
		}
	}
	if starts != mailWorkers {
		t.Fatalf("%d workers started, want %d", starts, mailWorkers)
	}
	if len(m.pending) != maxMailPending || m.dropped != 300 { // 100 extensions × 3 REGISTERs
		t.Fatalf("pending %d dropped %d, want %d and 300", len(m.pending), m.dropped, maxMailPending)
	}
	// Workers drain the queue in order, then end.
	n := 0
	for w := 0; w < mailWorkers; w++ {
		for {
			c, ok := m.next()
			if !ok {
				break
			}
			if want := fmt.Sprintf("%d", 1000+n); c.ext != want {
				t.Fatalf("check %d is for %s, want %s", n, c.ext, want)
			}
			n++
			m.done(c.ext, true, now)
		}
	}
	if n != maxMailPending || m.workers != 0 {
		t.Fatalf("%d checks run, %d workers left", n, m.workers)
	}
	// Recently empty: not queued; after mailRecheck, or after forget, it is.
	if m.add(mailCheck{ext: "1000"}, now.Add(mailRecheck/2)) || len(m.pending) != 0 {
		t.Fatal("an extension found empty just now was queued again")
	}
	m.forget("1001")
	if !m.add(mailCheck{ext: "1001"}, now.Add(mailRecheck/2)) {
		t.Fatal("an extension that unregistered (or got a message) was not queued")
	}
	if m.add(mailCheck{ext: "1000"}, now.Add(mailRecheck)); len(m.pending) != 2 {
		t.Fatalf("pending %v: the empty mark did not expire", m.pending)
	}
	// The memory of empty mailboxes is bounded too.
	for i := range 3 * maxMailChecked {
		m.done(fmt.Sprintf("x%d", i), true, now.Add(time.Duration(i)))
	}
	if m.empty.Len() > maxMailChecked {
		t.Fatalf("%d extensions remembered, bound %d", m.empty.Len(), maxMailChecked)
	}
}
