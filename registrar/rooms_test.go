package registrar

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sipmesh/sipmesh/ssr/dht/dhttest"
)

// TestDHTRooms: a room's slots as two nodes write them, the room's node
// and the one that takes the room over: per slot the newer record of
// either wins, an emptied slot hides the other node's older record, and a
// record larger than a DHT value is refused.
func TestDHTRooms(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		d := dhttest.NewShared(2)
		old, next := &DHTRooms{DHT: d[0]}, &DHTRooms{DHT: d[1]}
		for slot, v := range []string{"a", "b", "c"} {
			if err := old.SetMember(ctx, "426", slot, []byte(v), time.Hour); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(time.Millisecond)
		if err := next.SetMember(ctx, "426", 0, []byte("A"), time.Hour); err != nil {
			t.Fatal(err)
		}
		if err := next.SetMember(ctx, "426", 1, nil, time.Hour); err != nil {
			t.Fatal(err)
		}
		got, err := old.Members(ctx, "426", 4)
		if err != nil {
			t.Fatal(err)
		}
		want := [][]byte{[]byte("A"), nil, []byte("c"), nil}
		for i := range want {
			if !bytes.Equal(got[i], want[i]) || (got[i] == nil) != (want[i] == nil) {
				t.Errorf("slot %d: %q, want %q", i, got[i], want[i])
			}
		}
		if other, _ := old.Members(ctx, "4260", 2); other[0] != nil || other[1] != nil {
			t.Errorf("room 4260 sees 426's records: %q", other)
		}
		if err := old.SetMember(ctx, "426", 3, []byte(strings.Repeat("x", 800)), time.Hour); err == nil {
			t.Error("a record larger than a DHT value was accepted")
		}
	})
}
