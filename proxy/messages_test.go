package proxy

import (
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
