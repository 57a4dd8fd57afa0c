package registrar

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sipmesh/sipmesh/internal/ttlmap"
	"github.com/sipmesh/sipmesh/ssr"
	"github.com/sipmesh/sipmesh/ssr/dht"
)

// DHT is what the node's stores need from the distributed hash table
// (*dht.Driver on a real node).
type DHT interface {
	Put(ctx context.Context, key string, value []byte, ttl time.Duration) error
	PutRecord(ctx context.Context, r dht.Record) error
	Get(ctx context.Context, key string) ([]dht.Record, error)
	Delete(ctx context.Context, key string) error
}

// Key namespaces in the DHT. Every key is hashed (dht.KeyOf), so the
// prefixes only keep the namespaces apart.
const (
	aorKeyPrefix   = "aor:"   // + AOR: one BindingList per registering node
	userKeyPrefix  = "user:"  // + extension: the admin-signed account
	usersKeyPrefix = "users:" // + shard: admin-signed list of extensions
	// The daemon's name and subnet claims (gateway.Claims) use "name:",
	// "host:" and "subnet:".
)

// bindingGrace keeps a location record a little longer than its longest
// binding, so a refresh that arrives late does not find a gap.
const bindingGrace = time.Minute

// DHTLocation is the registrar's LocationStore on the DHT: each node
// writes, under the AOR's key, one record with the bindings it registered
// (signed with its node key, so no node can place bindings in another's
// name), and a lookup merges every node's record.
//
// The node's own record is also kept here, as last written (own): only
// this node writes it, so that copy is authoritative, and a lookup answers
// with it in place of whatever version the DHT returned. A phone registered
// with this node is then found by this node whatever the DHT says at that
// moment: an owner that has just joined, lost its replicas' answers under
// load, or a ring that is being repaired can return no record (measured:
// bursts of 480s for a phone registered with the node itself while a
// neighbour was starved of CPU), and a REGISTER's read-modify-write would
// then drop this node's other bindings of the AOR from its record.
type DHTLocation struct {
	DHT DHT
	Now func() time.Time // time.Now when nil
	// Self is this node's ID, the writer of its DHT records: its own
	// record is kept (zero: none kept, every lookup reads the DHT).
	Self ssr.NodeID

	mu  sync.Mutex
	own map[string]ownRecord // AOR → this node's record as last written

	refreshes atomic.Uint64 // writes not stored: the DHT's copy said the same
}

// ownRecord is the node's own record of one AOR: its bindings (tombstones
// included) and when the last of them expires, and what the DHT holds of
// it (pub) for the refresh shortcut (SetBindings).
type ownRecord struct {
	bs    []Binding
	until time.Time
	// pub is the list last stored in the DHT (nil: unknown, the next
	// write stores). It may lag bs by refreshes that changed only
	// expiries (republishable).
	pub []Binding
	// seen is the newest Updated of any other node's binding of the AOR
	// in the reads since pub was stored (only ever raised: a slow read
	// that started earlier does not lower it), and fresh says a read
	// succeeded since the last write: without one, the other nodes'
	// records are unknown and the write stores.
	seen  time.Time
	fresh bool
}

// refreshSlack bounds how much earlier than this node other nodes may
// see a binding lapse because a refresh was not republished: a quarter of
// the binding's interval, at most a minute (republishable).
const refreshSlack = time.Minute

// maxOwnRecords bounds the own records kept: beyond it (a node with more
// registered AORs than any real LAN has) lookups fall back to the DHT's
// copy alone.
const maxOwnRecords = 1 << 16

var _ LocationStore = (*DHTLocation)(nil)

func (l *DHTLocation) now() time.Time {
	if l.Now != nil {
		return l.Now()
	}
	return time.Now()
}

// Bindings implements LocationStore.
func (l *DHTLocation) Bindings(ctx context.Context, aor string) ([]Binding, error) {
	own, haveOwn := l.ownRecord(aor)
	recs, err := l.DHT.Get(ctx, aorKeyPrefix+aor)
	if err != nil {
		// The caller decides what a lookup without the other nodes'
		// records is worth: own bindings come with the error.
		return slices.Clone(own.bs), fmt.Errorf("location of %s: %w", aor, err)
	}
	all := slices.Clone(own.bs)
	var seen time.Time
	for _, r := range recs {
		if r.Tombstone {
			continue
		}
		writer := dht.WriterID(r.Writer)
		if haveOwn && writer == l.Self {
			continue // the authoritative copy is own
		}
		var bl BindingList
		if err := bl.UnmarshalBinary(r.Value); err != nil {
			continue // one writer's bad record does not hide the others
		}
		for _, b := range bl {
			// A node speaks only for the phones registered with it.
			if b.Node == writer && b.AOR == aor {
				all = append(all, b)
				if writer != l.Self && b.Updated.After(seen) {
					seen = b.Updated
				}
			}
		}
	}
	if haveOwn {
		l.sawOthers(aor, seen)
	}
	return all, nil
}

// sawOthers notes a successful read of aor whose other nodes' bindings
// were updated at the latest at seen.
func (l *DHTLocation) sawOthers(aor string, seen time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	o, ok := l.own[aor]
	if !ok {
		return
	}
	o.fresh = true
	if seen.After(o.seen) {
		o.seen = seen
	}
	l.own[aor] = o
}

// republishable says whether bs, this node's new record of an AOR, may
// stay unpublished because the DHT's copy (o.pub) already tells other
// nodes the same: a phone refreshing long before its binding lapses (NAT
// keep-alive refreshes, or a load generator) then costs no signed DHT
// write (an ed25519 signature, the STORE to the key's owner and its
// replicas, their checks). Only the expiries (and the Call-ID, CSeq and
// Updated of the refreshing REGISTER) may differ, and each published
// expiry must be no later than the new one and at most
// min(interval/4, refreshSlack) earlier: a phone that keeps refreshing is
// republished at least that often, so the DHT's copy never lapses while it
// lives, and others may see the binding end that much early only if it
// stops. The node itself answers from bs (Bindings), so the phone's 200
// lists its real expiry (RFC 3261 §10.3 step 8).
//
// A roaming phone must never be shadowed by the stale copy: the last read
// must have succeeded (fresh) and no other node's binding of the AOR may
// be as new as the oldest published one (seen); else the write stores, and
// its Updated, newer than every other copy, wins every reader's merge
// again (MergeBindings).
func republishable(o ownRecord, bs []Binding, now time.Time) bool {
	if o.pub == nil || !o.fresh || len(o.pub) != len(bs) {
		return false
	}
	for i := range bs {
		b := &bs[i]
		var p *Binding
		for j := range o.pub {
			if o.pub[j].key() == b.key() {
				p = &o.pub[j]
				break
			}
		}
		if p == nil || !o.seen.Before(p.Updated) {
			return false
		}
		if b.Removed || p.Removed {
			// A tombstone's expiry is another node's copy's: stored
			// exactly as computed.
			if !p.Removed || !b.Removed || !p.Expires.Equal(b.Expires) || p.Contact != b.Contact || p.Instance != b.Instance || p.RegID != b.RegID {
				return false
			}
			continue
		}
		if p.AOR != b.AOR || p.Node != b.Node || p.Contact != b.Contact || p.Q != b.Q ||
			p.Instance != b.Instance || p.RegID != b.RegID || p.Source != b.Source ||
			p.Transport != b.Transport || p.UserAgent != b.UserAgent {
			return false
		}
		left, pubLeft := b.Expires.Sub(now), p.Expires.Sub(now)
		if pubLeft > left || pubLeft < left-min(left/4, refreshSlack) {
			return false
		}
	}
	return true
}

// ownRecord returns this node's record of aor as last written, if kept
// and not yet expired.
func (l *DHTLocation) ownRecord(aor string) (ownRecord, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	o, ok := l.own[aor]
	if ok && !o.until.After(l.now()) {
		delete(l.own, aor)
		return ownRecord{}, false
	}
	return o, ok
}

// keepOwn records bs as this node's record of aor (none: forgotten).
func (l *DHTLocation) keepOwn(aor string, node ssr.NodeID, bs []Binding) {
	if node != l.Self || l.Self == 0 {
		return // a record of another node's is not ours to vouch for
	}
	now := l.now()
	var until time.Time
	for _, b := range bs {
		if b.Expires.After(until) {
			until = b.Expires
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if !until.After(now) {
		delete(l.own, aor)
		return
	}
	if l.own == nil {
		l.own = make(map[string]ownRecord)
	}
	if _, ok := l.own[aor]; !ok && len(l.own) >= maxOwnRecords {
		for k, o := range l.own {
			if !o.until.After(now) {
				delete(l.own, k)
			}
		}
		if len(l.own) >= maxOwnRecords {
			return // lookups of this AOR read the DHT's copy
		}
	}
	l.own[aor] = ownRecord{bs: slices.Clone(bs), until: until}
}

// published notes what the DHT holds of this node's record of aor after a
// write of bs: bs when it was stored, unknown (nil) when the write failed.
// A read is needed again before the next write may be skipped.
func (l *DHTLocation) published(aor string, bs []Binding, stored bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	o, ok := l.own[aor]
	if !ok {
		return
	}
	o.pub, o.fresh, o.seen = nil, false, time.Time{}
	if stored {
		o.pub = slices.Clone(bs)
	}
	l.own[aor] = o
}

// SetBindings implements LocationStore.
func (l *DHTLocation) SetBindings(ctx context.Context, aor string, node ssr.NodeID, bs []Binding) error {
	if len(bs) == 0 {
		l.keepOwn(aor, node, nil)
		return l.DHT.Delete(ctx, aorKeyPrefix+aor)
	}
	now := l.now()
	if l.refresh(aor, node, bs, now) {
		return nil
	}
	val, err := BindingList(bs).MarshalBinary()
	if err != nil {
		return err
	}
	// Kept whether or not the DHT takes it: the phone that sent the
	// REGISTER is reachable through this node either way, and a failed
	// write is retried by the phone (503 with Retry-After).
	l.keepOwn(aor, node, bs)
	ttl := bindingGrace
	for _, b := range bs {
		ttl = max(ttl, b.Expires.Sub(now)+bindingGrace)
	}
	err = l.DHT.Put(ctx, aorKeyPrefix+aor, val, ttl)
	if node == l.Self && l.Self != 0 {
		l.published(aor, bs, err == nil)
	}
	if err != nil {
		return fmt.Errorf("storing %d bindings of %s: %w", len(bs), aor, err)
	}
	return nil
}

// Refreshes counts the writes of this node's records that were not
// stored because the DHT's copy already said the same (republishable).
func (l *DHTLocation) Refreshes() uint64 { return l.refreshes.Load() }

// refresh takes bs as this node's record of aor without a DHT write when
// the DHT's copy already says the same (republishable), and says so.
func (l *DHTLocation) refresh(aor string, node ssr.NodeID, bs []Binding, now time.Time) bool {
	if node != l.Self || l.Self == 0 {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	o, ok := l.own[aor]
	if !ok || !o.until.After(now) || !republishable(o, bs, now) {
		return false
	}
	o.bs, o.fresh = slices.Clone(bs), false
	for _, b := range bs {
		if b.Expires.After(o.until) {
			o.until = b.Expires
		}
	}
	l.refreshes.Add(1)
	l.own[aor] = o
	return true
}

// accountLifetime is how long an account record lives in the DHT; nodes
// holding the administrator key republish the accounts they list
// (republishAccounts) long before.
const accountLifetime = 365 * 24 * time.Hour

// userShards spread the list of extensions over several records, each
// within the DHT's value limit.
const userShards = 16

// DHTAccounts is the subscriber store on the DHT. Records are written with
// the mesh administrator key, so a node without it can read and check
// accounts but not change them; a record signed by anyone else is ignored.
type DHTAccounts struct {
	DHT   DHT
	Admin ed25519.PublicKey
	// Key is the administrator's private key, on the nodes accounts are
	// managed from; nil elsewhere.
	Key ed25519.PrivateKey

	Now       func() time.Time // time.Now when nil
	cacheOnce sync.Once
	cache     *ttlmap.Map[string, cachedAccount] // Account's recent answers
}

// Accounts are read on every authenticated REGISTER and call, and change
// rarely (an administrator's command), so Account keeps what it read for
// a short while instead of asking the key's owner each time: a REGISTER
// then costs one DHT round trip (its bindings) instead of two. The price
// is a delay: a password change or a deleted account takes effect on other
// nodes within accountCacheTTL (accountMissTTL for a new account that was
// asked for while it did not exist yet); on the node the change is made
// on, at once.
const (
	accountCacheTTL  = 30 * time.Second
	accountMissTTL   = 5 * time.Second
	maxCachedAccount = 4096
)

// answers is Account's cache, made on first use.
func (s *DHTAccounts) answers() *ttlmap.Map[string, cachedAccount] {
	s.cacheOnce.Do(func() { s.cache = ttlmap.New[string, cachedAccount](maxCachedAccount) })
	return s.cache
}

// cachedAccount is one of Account's answers.
type cachedAccount struct {
	a       Account
	missing bool // no account (or deleted): answered ErrNoAccount
}

var _ Accounts = (*DHTAccounts)(nil)

// AccountValidator is the DHT's check of account records (dht.Params
// Validate): only the mesh administrator key writes them, so no node can
// add or change a subscriber.
func AccountValidator(admin ed25519.PublicKey) dht.Validator {
	return dht.Validators(dht.RequireWriter(userKeyPrefix, admin), dht.RequireWriter(usersKeyPrefix, admin))
}

// ErrNoAdminKey reports a change attempted on a node without the mesh
// administrator key.
var ErrNoAdminKey = errors.New("this node has no administrator key (config admin-key)")

// Account implements Accounts.
// Answers are cached (accountCacheTTL); errors are not.
func (s *DHTAccounts) Account(ctx context.Context, ext string) (Account, error) {
	now := time.Now()
	if s.Now != nil {
		now = s.Now()
	}
	if e, ok := s.answers().Get(ext, now); ok {
		if e.missing {
			return Account{}, fmt.Errorf("%w: %s", ErrNoAccount, ext)
		}
		return e.a, nil
	}
	a, deleted, found, err := s.newest(ctx, ext)
	switch {
	case err != nil:
		return Account{}, err
	case !found || deleted:
		s.cache.Put(ext, cachedAccount{missing: true}, now.Add(accountMissTTL), now)
		return Account{}, fmt.Errorf("%w: %s", ErrNoAccount, ext)
	}
	s.cache.Put(ext, cachedAccount{a: a}, now.Add(accountCacheTTL), now)
	return a, nil
}

// newest returns the newest version of ext's account signed by the
// administrator.
func (s *DHTAccounts) newest(ctx context.Context, ext string) (a Account, deleted, found bool, err error) {
	recs, err := s.DHT.Get(ctx, userKeyPrefix+ext)
	if err != nil {
		return Account{}, false, false, fmt.Errorf("account %s: %w", ext, err)
	}
	for _, r := range recs {
		if r.Tombstone || !r.Writer.Equal(s.Admin) {
			continue
		}
		b, del, err := OpenAccount(s.Admin, r.Value)
		if err != nil || b.Ext != ext {
			continue
		}
		if !found || b.Updated.After(a.Updated) {
			a, deleted, found = b, del, true
		}
	}
	return a, deleted, found, nil
}

// PutRecord implements Accounts: it checks the record, stores it under the
// extension and adds the extension to (or, for a tombstone, keeps it in)
// the directory shard, which ListAccounts reads.
func (s *DHTAccounts) PutRecord(ctx context.Context, rec []byte) error {
	if s.Key == nil {
		return ErrNoAdminKey
	}
	a, _, err := OpenAccount(s.Admin, rec)
	if err != nil {
		return err
	}
	cur, _, found, err := s.newest(ctx, a.Ext)
	if err != nil {
		return err
	}
	if found && !a.Updated.After(cur.Updated) {
		return fmt.Errorf("%w: %s", ErrStaleRecord, a.Ext)
	}
	r, err := dht.NewRecord(s.Key, userKeyPrefix+a.Ext, rec, accountLifetime, uint64(a.Updated.UnixMicro()), false)
	if err != nil {
		return err
	}
	if err := s.DHT.PutRecord(ctx, r); err != nil {
		return fmt.Errorf("storing account %s: %w", a.Ext, err)
	}
	s.answers().Delete(a.Ext)
	return s.listExt(ctx, a.Ext)
}

func userShard(ext string) string {
	return usersKeyPrefix + strconv.Itoa(int(uint64(dht.KeyOf(ext))%userShards))
}

// listExt adds ext to its directory shard. Deleted accounts stay listed
// (as tombstones they answer "no account"), so the shard only grows with
// the number of extensions ever created.
func (s *DHTAccounts) listExt(ctx context.Context, ext string) error {
	key := userShard(ext)
	exts, seq, err := s.shard(ctx, key)
	if err != nil {
		return err
	}
	if slices.Contains(exts, ext) {
		return nil
	}
	exts = append(exts, ext)
	slices.Sort(exts)
	val := []byte(strings.Join(exts, ","))
	// A time-based version orders writes from several machines; +1 keeps
	// it above the stored one if this machine's clock is behind.
	r, err := dht.NewRecord(s.Key, key, val, accountLifetime, max(uint64(time.Now().UnixMicro()), seq+1), false)
	if err != nil {
		return fmt.Errorf("directory shard %s: %w", key, err)
	}
	return s.DHT.PutRecord(ctx, r)
}

// shard reads one directory shard: the extensions and the record's version.
func (s *DHTAccounts) shard(ctx context.Context, key string) ([]string, uint64, error) {
	recs, err := s.DHT.Get(ctx, key)
	if err != nil {
		return nil, 0, fmt.Errorf("directory %s: %w", key, err)
	}
	var best *dht.Record
	for i := range recs {
		r := &recs[i]
		if r.Tombstone || !r.Writer.Equal(s.Admin) {
			continue
		}
		if best == nil || r.Seq > best.Seq {
			best = r
		}
	}
	if best == nil || len(best.Value) == 0 {
		return nil, 0, nil
	}
	return strings.Split(string(best.Value), ","), best.Seq, nil
}

// ListAccounts implements Accounts.
func (s *DHTAccounts) ListAccounts(ctx context.Context) ([]Account, error) {
	var out []Account
	for i := range userShards {
		exts, _, err := s.shard(ctx, usersKeyPrefix+strconv.Itoa(i))
		if err != nil {
			return nil, err
		}
		for _, ext := range exts {
			a, err := s.Account(ctx, ext)
			if errors.Is(err, ErrNoAccount) {
				continue
			}
			if err != nil {
				return nil, err
			}
			out = append(out, a)
		}
	}
	slices.SortFunc(out, func(a, b Account) int { return strings.Compare(a.Ext, b.Ext) })
	return out, nil
}
