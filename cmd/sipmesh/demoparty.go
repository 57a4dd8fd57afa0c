//go:build !router

package main

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/sipmesh/sipmesh/phones"
)

// The demo's party line: a few phones on different nodes dial 426 and
// listen; every member should hear every other member's tone and not its
// own (proxy/features.go runs the room on the node owning its key).

// roomResult is one room of the demo.
type roomResult struct {
	Number   string   `json:"number"`
	Members  []string `json:"members"` // extensions
	Nodes    []string `json:"nodes"`   // their nodes
	HeardAll bool     `json:"heard_all"`
	Error    string   `json:"error,omitempty"`
}

// demoToneAmplitude keeps the demo phones' tones quiet enough that a
// party line's mix of them does not clip (a clipped mix has
// intermodulation products that can fall on a member's own tone).
const demoToneAmplitude = 0.15

// partyLine puts up to n phones of different nodes in room 426 for hold
// and judges what each hears.
func (m *telMesh) partyLine(ctx context.Context, live []*meshPhone, n int, hold time.Duration) roomResult {
	r := roomResult{Number: phones.PartyLine}
	var members []*meshPhone
	seen := map[int]bool{}
	for _, p := range live {
		if len(members) < n && !seen[p.Node] {
			seen[p.Node] = true
			members = append(members, p)
			r.Members = append(r.Members, p.Ext)
			r.Nodes = append(r.Nodes, nodeName(p.Node))
		}
	}
	if len(members) < 2 {
		r.Error = "fewer than two phones on different nodes"
		return r
	}
	calls := make([]*phones.Call, len(members))
	errs := make([]error, len(members))
	var wg sync.WaitGroup
	for i, p := range members {
		wg.Go(func() { calls[i], errs[i] = p.Call(ctx, phones.PartyLine, phones.CallOptions{}) })
	}
	wg.Wait()
	defer func() {
		for _, c := range calls {
			if c != nil {
				c.Hangup(context.WithoutCancel(ctx))
			}
		}
	}()
	for i, err := range errs {
		if err != nil {
			r.Error = fmt.Sprintf("%s: %v", members[i].Ext, err)
			return r
		}
	}
	select {
	case <-time.After(hold + time.Second): // the detectors hold a second
	case <-ctx.Done():
		r.Error = "interrupted"
		return r
	}
	want := demoToneAmplitude * demoToneAmplitude / 2
	r.HeardAll = true
	for i, c := range calls {
		for j, o := range members {
			l := c.FrameLevel(o.Hz) // robust to loss; the demo's tones are 130 Hz apart
			if (i == j && l > want/20) || (i != j && l < want/4) {
				r.HeardAll = false
			}
		}
	}
	return r
}

func printRooms(w io.Writer, rooms []roomResult) {
	for _, r := range rooms {
		res := "every member heard every other and not itself"
		switch {
		case r.Error != "":
			res = r.Error
		case !r.HeardAll:
			res = "NOT every member heard every other"
		}
		fmt.Fprintf(w, "party line %s: %d members %v on nodes %v: %s\n", r.Number, len(r.Members), r.Members, r.Nodes, res)
	}
}
