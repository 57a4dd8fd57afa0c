//go:build !router

package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"sync"
	"time"

	"github.com/sipmesh/sipmesh/phones"
)

// The demo's ring group: group 600 rings four desk phones on four nodes
// at once (proxy/groups.go, the nodes' ring-group setting); one of them
// answers, and the others stop ringing when the proxy's CANCEL reaches
// them (RFC 3261 §16.7 step 10).

// demoGroup is the ring group every demo node is configured with; its
// members are phones of their own (extensions outside the 201… range of
// the demo's phones), added for the group call.
const demoGroup = "600"

var demoGroupMembers = []string{"g601", "g602", "g603", "g604"}

// groupResult is one ring-group call of the demo.
type groupResult struct {
	Number     string   `json:"number"`
	Members    []string `json:"members"`
	Nodes      []string `json:"nodes"`
	Caller     string   `json:"caller"`
	AnsweredBy string   `json:"answered_by"`
	// OthersStoppedMs is the time from the answer until the last other
	// member stopped ringing.
	OthersStoppedMs float64 `json:"others_stopped_ms"`
	Error           string  `json:"error,omitempty"`
}

// addGroupPhones stores the group members' accounts and plugs their
// phones (answering only when told) into different nodes.
func (m *telMesh) addGroupPhones(ctx context.Context, perm []int) ([]*meshPhone, error) {
	if err := m.addAccounts(ctx, demoGroupMembers, nil); err != nil {
		return nil, err
	}
	var ps []*meshPhone
	for i, ext := range demoGroupMembers {
		p, err := m.addPhone(perm[i%len(perm)], ext, toneFor(40+i), phones.Policy{Mode: phones.Manual})
		if err != nil {
			return nil, err
		}
		if err := m.register(ctx, p); err != nil {
			return nil, fmt.Errorf("group phone %s: %w", ext, err)
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// ringGroup has caller dial the group; every member rings, member answer
// takes the call and the time until the others stop ringing is measured.
func (m *telMesh) ringGroup(ctx context.Context, caller *meshPhone, members []*meshPhone, answer int) groupResult {
	r := groupResult{Number: demoGroup, Caller: caller.Ext}
	for _, p := range members {
		r.Members = append(r.Members, p.Ext)
		r.Nodes = append(r.Nodes, nodeName(p.Node))
	}
	c, err := caller.Dial(ctx, demoGroup, phones.CallOptions{})
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer c.Hangup(context.WithoutCancel(ctx))
	ringing := make([]*phones.Call, len(members))
	timeout := time.After(10 * time.Second)
	for i, p := range members {
		select {
		case ringing[i] = <-p.Incoming():
		case <-timeout:
			r.Error = fmt.Sprintf("%s does not ring", p.Ext)
			return r
		case <-ctx.Done():
			r.Error = "interrupted"
			return r
		}
	}
	ringing[answer].Answer()
	<-ringing[answer].RingingDone()
	answered := time.Now()
	var worst time.Duration
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i, in := range ringing {
		if i == answer {
			continue
		}
		wg.Go(func() {
			select {
			case <-in.RingingDone():
				mu.Lock()
				worst = max(worst, time.Since(answered))
				mu.Unlock()
			case <-time.After(10 * time.Second):
				mu.Lock()
				r.Error = fmt.Sprintf("%s still rings 10 s after the answer", members[i].Ext)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	select {
	case <-c.Answered():
		r.AnsweredBy = members[answer].Ext
	case <-c.Done():
		r.Error = fmt.Sprintf("the call ended unanswered: %v", c.Err())
	case <-time.After(10 * time.Second):
		r.Error = "the caller got no answer"
	}
	r.OthersStoppedMs = math.Round(float64(worst)/float64(time.Millisecond)*10) / 10
	return r
}

func printGroups(w io.Writer, groups []groupResult) {
	for _, g := range groups {
		res := fmt.Sprintf("%s answered, the others stopped ringing within %.0f ms", g.AnsweredBy, g.OthersStoppedMs)
		if g.Error != "" {
			res = g.Error
		}
		fmt.Fprintf(w, "ring group %s: %s called members %v on nodes %v: %s\n", g.Number, g.Caller, g.Members, g.Nodes, res)
	}
}
