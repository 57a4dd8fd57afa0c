package phones

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// TestBLFDialogStates: the dialogs a node keeps for its extensions' BLF
// documents. States only move forward (a late 180 does not undo the
// answer); an unknown call's end is ignored; a call ended by EndCall (a
// BYE, or a call the proxy reaped) shows terminated for blfLinger and is
// then gone; at most blfMaxDialogs are kept per extension.
func TestBLFDialogStates(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, err := NewBLFService(BLFConfig{Host: meshHost{}, Local: func(context.Context, string) bool { return true }})
		if err != nil {
			t.Fatal(err)
		}
		doc := func() string {
			b.mu.Lock()
			defer b.mu.Unlock()
			return string(b.documentLocked("202", 1))
		}
		b.SetState("202", `x<y&"z`, false, DialogEarly) // a Call-ID is the peer's text
		if d := doc(); !strings.Contains(d, `id="x&lt;y&amp;&quot;z"`) {
			t.Errorf("Call-ID not escaped:\n%s", d)
		}
		b.EndCall(`x<y&"z`)
		time.Sleep(blfLinger + time.Second)
		b.SetState("202", "c1", false, DialogEarly)
		b.SetState("202", "c1", false, DialogConfirmed)
		b.SetState("202", "c1", false, DialogEarly)
		b.SetState("202", "nobody", false, DialogTerminated)
		if d := doc(); !strings.Contains(d, `call-id="c1" direction="recipient"><state>confirmed</state>`) || strings.Count(d, "<dialog ") != 1 {
			t.Errorf("after 180, 200, a late 180 and an unknown end:\n%s", d)
		}
		b.EndCall("c1")
		if d := doc(); !strings.Contains(d, "<state>terminated</state>") {
			t.Errorf("after the BYE:\n%s", d)
		}
		time.Sleep(blfLinger + time.Second)
		if d := doc(); strings.Contains(d, "<dialog ") {
			t.Errorf("%v after the end:\n%s", blfLinger+time.Second, d)
		}
		for i := range blfMaxDialogs + 3 {
			b.SetState("202", fmt.Sprint("k", i), true, DialogConfirmed)
		}
		if n := strings.Count(doc(), "<dialog "); n != blfMaxDialogs {
			t.Errorf("%d dialogs kept, want at most %d", n, blfMaxDialogs)
		}
		if d := doc(); !strings.Contains(d, `direction="initiator"`) || !strings.Contains(d, `entity="sip:202@mesh"`) {
			t.Errorf("document:\n%s", d)
		}
	})
}
