// Package dhttest provides an in-memory stand-in for the DHT driver
// (ssr/dht) for tests of the stores built on it: the registrar's location
// and accounts, the daemon's name and subnet claims.
package dhttest

import (
	"context"
	"crypto/ed25519"
	"sync"
	"time"

	"github.com/sipmesh/sipmesh/ssr"
	"github.com/sipmesh/sipmesh/ssr/dht"
)

// DHT is an in-memory DHT shared by several writers, one DHT view per
// node key. It keeps the newest record per (key, writer) and verifies
// signatures as the real one does, with no ring, replication or expiry.
type DHT struct {
	mu    *sync.Mutex
	store map[string]map[string]dht.Record
	key   ed25519.PrivateKey
	seq   *uint64
}

// NewShared returns views of one store for nodes writers, each with a
// fresh node key.
func NewShared(nodes int) []*DHT {
	var mu sync.Mutex
	var seq uint64
	store := map[string]map[string]dht.Record{}
	out := make([]*DHT, nodes)
	for i := range out {
		_, k, err := ed25519.GenerateKey(nil)
		if err != nil {
			panic("dhttest: " + err.Error()) // crypto/rand does not fail
		}
		out[i] = &DHT{mu: &mu, store: store, key: k, seq: &seq}
	}
	return out
}

// ID is the writer (node) ID of this view's key.
func (m *DHT) ID() ssr.NodeID { return dht.WriterID(m.key.Public().(ed25519.PublicKey)) }

// Key is this view's node key, for a test that writes records of its own.
func (m *DHT) Key() ed25519.PrivateKey { return m.key }

// Put stores value under key as a record signed by this view's key.
func (m *DHT) Put(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	m.mu.Lock()
	*m.seq++
	seq := *m.seq
	m.mu.Unlock()
	r, err := dht.NewRecord(m.key, key, value, ttl, seq, false)
	if err != nil {
		return err
	}
	return m.PutRecord(ctx, r)
}

// PutRecord stores a signed record; an older one than held is dht.ErrStale.
func (m *DHT) PutRecord(_ context.Context, r dht.Record) error {
	if err := r.Verify(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	w := string(r.Writer)
	if m.store[r.Key] == nil {
		m.store[r.Key] = map[string]dht.Record{}
	}
	if old, ok := m.store[r.Key][w]; ok && old.Seq >= r.Seq {
		return dht.ErrStale
	}
	m.store[r.Key][w] = r
	return nil
}

// Get returns every writer's record under key.
func (m *DHT) Get(_ context.Context, key string) ([]dht.Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []dht.Record
	for _, r := range m.store[key] {
		out = append(out, r)
	}
	return out, nil
}

// Delete stores a tombstone of this view's key under key.
func (m *DHT) Delete(ctx context.Context, key string) error {
	m.mu.Lock()
	*m.seq++
	seq := *m.seq
	m.mu.Unlock()
	r, err := dht.NewRecord(m.key, key, nil, time.Hour, seq, true)
	if err != nil {
		return err
	}
	return m.PutRecord(ctx, r)
}
