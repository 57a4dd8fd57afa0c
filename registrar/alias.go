package registrar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/sipmesh/sipmesh/ssr/dht"
)

// Aliases (the dial plan): a name or number that stands for an extension
// or for any SIP URI, "doctor" → 205 say, as Milkfish had. The proxy
// resolves a Request-URI user that is no extension through them (package
// proxy, lookupForward). Stored in the DHT like the forwards: each node
// writes the aliases set through it under the name's key, signed with its
// node key, and a lookup takes the newest (Updated) of every node's
// record, so the last change wins wherever it was made; a deleted alias
// is a record without target.

// MaxAliasTarget bounds an alias's target (a SIP URI).
const MaxAliasTarget = 200

// Alias is one name of the dial plan. An empty Target is no alias.
type Alias struct {
	Name    string    `json:"name"`
	Target  string    `json:"target,omitempty"` // an extension or a sip:/sips: URI
	Updated time.Time `json:"updated"`
}

// Check validates the name and the target.
func (a Alias) Check() error {
	if err := ValidExt(a.Name); err != nil {
		return fmt.Errorf("alias name: %w", err)
	}
	if a.Target == "" {
		return nil
	}
	if len(a.Target) > MaxAliasTarget {
		return fmt.Errorf("alias target: longer than %d characters", MaxAliasTarget)
	}
	if a.Target == a.Name {
		return fmt.Errorf("alias %s names itself", a.Name)
	}
	if !strings.Contains(a.Target, ":") {
		return ValidExt(a.Target)
	}
	var u sip.Uri
	if err := sip.ParseUri(a.Target, &u); err != nil || (u.Scheme != "sip" && u.Scheme != "sips") || u.Host == "" {
		return fmt.Errorf("alias target %q: want an extension or a sip: URI", a.Target)
	}
	return nil
}

// AliasStore keeps the aliases.
type AliasStore interface {
	// Alias returns name's alias; none is the zero Alias with Name set,
	// not an error.
	Alias(ctx context.Context, name string) (Alias, error)
	SetAlias(ctx context.Context, a Alias) error
}

// MemAliases is an AliasStore in memory (tests, a single node).
type MemAliases struct {
	mu sync.Mutex
	m  map[string]Alias
}

// Alias implements AliasStore.
func (s *MemAliases) Alias(_ context.Context, name string) (Alias, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a, ok := s.m[name]; ok {
		return a, nil
	}
	return Alias{Name: name}, nil
}

// SetAlias implements AliasStore.
func (s *MemAliases) SetAlias(_ context.Context, a Alias) error {
	if err := a.Check(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[string]Alias)
	}
	s.m[a.Name] = a
	return nil
}

// aliasKeyPrefix + name: every node's Alias record for it.
const aliasKeyPrefix = "alias:"

// aliasLifetime is how long an alias record lives in the DHT.
const aliasLifetime = 365 * 24 * time.Hour

// DHTAliases is the AliasStore on the DHT.
type DHTAliases struct{ DHT DHT }

var _ AliasStore = (*DHTAliases)(nil)

// Alias implements AliasStore: the newest record of any node.
func (s *DHTAliases) Alias(ctx context.Context, name string) (Alias, error) {
	recs, err := s.DHT.Get(ctx, aliasKeyPrefix+name)
	if err != nil {
		return Alias{}, fmt.Errorf("alias %s: %w", name, err)
	}
	best := Alias{Name: name}
	for _, r := range recs {
		var a Alias
		if r.Tombstone || json.Unmarshal(r.Value, &a) != nil || a.Name != name || a.Check() != nil {
			continue // one writer's bad record does not hide the others
		}
		if a.Updated.After(best.Updated) {
			best = a
		}
	}
	return best, nil
}

// SetAlias implements AliasStore. Deleting writes a record without a
// target, so it outranks older records other nodes wrote.
func (s *DHTAliases) SetAlias(ctx context.Context, a Alias) error {
	if err := a.Check(); err != nil {
		return err
	}
	b, err := json.Marshal(a)
	if err != nil {
		return err
	}
	if len(b) > dht.MaxValue {
		return errors.New("alias record too large")
	}
	return s.DHT.Put(ctx, aliasKeyPrefix+a.Name, b, aliasLifetime)
}
