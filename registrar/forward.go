package registrar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/sipmesh/sipmesh/ssr/dht"
)

// Call forwarding per subscriber. A Forward says where calls to an
// extension go instead: always (unconditional), on busy, on no answer
// after NoAnswerAfter, and when the extension has no binding
// (unreachable); the proxy acts on them (package proxy, forward.go). A
// subscriber sets the unconditional one from the phone with the feature
// codes *72<number> and *73.
//
// On the DHT (DHTForwards) each node writes the forwards it set under
// the extension's key, signed with its node key like the location
// records; a lookup takes the newest (Updated) of every node's record,
// so the last change wins wherever it was made. A node sets a forward
// only for the phone registered through it that dialled the code.

// Forward is the forwarding of one extension. An empty target is off.
type Forward struct {
	Ext           string        `json:"ext"`
	Always        string        `json:"always,omitempty"`
	Busy          string        `json:"busy,omitempty"`
	NoAnswer      string        `json:"no_answer,omitempty"`
	NoAnswerAfter time.Duration `json:"no_answer_after,omitempty"`
	Unreachable   string        `json:"unreachable,omitempty"`
	Updated       time.Time     `json:"updated"`
}

// Check validates the extension and every target.
func (f Forward) Check() error {
	if err := ValidExt(f.Ext); err != nil {
		return err
	}
	for _, t := range []string{f.Always, f.Busy, f.NoAnswer, f.Unreachable} {
		if t == "" {
			continue
		}
		if err := ValidExt(t); err != nil {
			return fmt.Errorf("forward target: %w", err)
		}
		if t == f.Ext {
			return fmt.Errorf("forward target %s is the extension itself", t)
		}
	}
	return nil
}

// ForwardStore keeps the forwards.
type ForwardStore interface {
	// Forward returns ext's forwarding; none is the zero Forward with Ext
	// set, not an error.
	Forward(ctx context.Context, ext string) (Forward, error)
	SetForward(ctx context.Context, f Forward) error
}

// MemForwards is a ForwardStore in memory (tests, a single node).
type MemForwards struct {
	mu sync.Mutex
	m  map[string]Forward
}

// Forward implements ForwardStore.
func (s *MemForwards) Forward(_ context.Context, ext string) (Forward, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f, ok := s.m[ext]; ok {
		return f, nil
	}
	return Forward{Ext: ext}, nil
}

// SetForward implements ForwardStore.
func (s *MemForwards) SetForward(_ context.Context, f Forward) error {
	if err := f.Check(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[string]Forward)
	}
	s.m[f.Ext] = f
	return nil
}

// fwdKeyPrefix + extension: every node's Forward record for it.
const fwdKeyPrefix = "fwd:"

// forwardLifetime is how long a forward record lives in the DHT.
const forwardLifetime = 365 * 24 * time.Hour

// DHTForwards is the ForwardStore on the DHT.
type DHTForwards struct{ DHT DHT }

var _ ForwardStore = (*DHTForwards)(nil)

// Forward implements ForwardStore: the newest record of any node.
func (s *DHTForwards) Forward(ctx context.Context, ext string) (Forward, error) {
	recs, err := s.DHT.Get(ctx, fwdKeyPrefix+ext)
	if err != nil {
		return Forward{}, fmt.Errorf("forwarding of %s: %w", ext, err)
	}
	best := Forward{Ext: ext}
	for _, r := range recs {
		if r.Tombstone {
			continue
		}
		var f Forward
		if json.Unmarshal(r.Value, &f) != nil || f.Ext != ext || f.Check() != nil {
			continue // one writer's bad record does not hide the others
		}
		if f.Updated.After(best.Updated) {
			best = f
		}
	}
	return best, nil
}

// SetForward implements ForwardStore. Clearing writes a record with no
// target, so it outranks older records other nodes wrote.
func (s *DHTForwards) SetForward(ctx context.Context, f Forward) error {
	if err := f.Check(); err != nil {
		return err
	}
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	if len(b) > dht.MaxValue {
		return errors.New("forward record too large")
	}
	return s.DHT.Put(ctx, fwdKeyPrefix+f.Ext, b, forwardLifetime)
}
