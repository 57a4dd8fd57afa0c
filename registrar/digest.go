package registrar

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Digest authentication of REGISTER (RFC 3261 §22, with RFC 7616's
// algorithms as SIP uses them per RFC 8760).
//
// Nonces are stateless: base64url(timestamp ‖ random ‖ HMAC-SHA-256 tag),
// so any restart or any number of challenges costs no memory, and a nonce
// this node did not mint (or that was tampered with) fails the tag check.
// A nonce lives NonceLifetime; an older one gets a new challenge with
// stale=true (RFC 7616 §3.3), so the phone retries without asking its
// user for the password again.
//
// Replay: with qop=auth the client counts its uses of a nonce in nc; we
// remember the highest nc seen per nonce and refuse any nc not above it.
// The table is bounded (maxTrackedNonces); a nonce that fell out of it is
// treated as stale rather than trusted, so a flood that evicts entries
// costs honest clients one extra round trip, never a replay. A response
// without qop (RFC 2069 style) has no counter: its nonce is single-use.

// Digest parameters.
const (
	DefaultNonceLifetime = 5 * time.Minute
	maxTrackedNonces     = 1 << 16
	nonceRandLen         = 8
	nonceTagLen          = 16
)

type nonceMinter struct {
	key      [32]byte
	lifetime time.Duration
	// seq makes nonces unique without a crypto/rand read each: the HMAC
	// tag, not this part, makes them unforgeable.
	seq  atomic.Uint64
	macs sync.Pool // of keyed HMAC-SHA-256 states

	mu   sync.Mutex
	seen map[uint64]nonceUse // nonce's sequence number → highest nc
	// order is a FIFO of tracked nonces for eviction and expiry: entries
	// are appended in first-use order, which is close to mint order.
	order []uint64
	head  int
	// peak is the most nonces seen held since the map was last made: Go
	// maps keep their size after deletes, so a table a burst of load grew
	// is made anew once it holds a quarter of that (issue 12: a node's
	// memory returns to idle after load).
	peak int
}

// A tracked nonce is keyed by its sequence number, not its text: the
// number is unique among this minter's nonces and covered by the tag
// check verified, and 8 bytes instead of a 43-byte string and its
// header keep the full table (maxTrackedNonces) near 2 MB instead of 10.
type nonceUse struct {
	nc     uint32
	minted int64 // Unix milliseconds, as in the nonce
}

// nonceID is what check verified of a nonce: its sequence number and
// when it was minted.
type nonceID struct {
	seq    uint64
	minted int64 // Unix milliseconds
}

func newNonceMinter(lifetime time.Duration) *nonceMinter {
	m := &nonceMinter{lifetime: lifetime, seen: make(map[uint64]nonceUse)}
	if _, err := rand.Read(m.key[:]); err != nil {
		panic("gateway: no randomness for nonce key: " + err.Error())
	}
	var seed [8]byte
	if _, err := rand.Read(seed[:]); err != nil {
		panic("gateway: no randomness for nonce key: " + err.Error())
	}
	m.seq.Store(binary.BigEndian.Uint64(seed[:]))
	return m
}

func (m *nonceMinter) tag(ts []byte, rnd []byte) []byte {
	mac, _ := m.macs.Get().(hash.Hash)
	if mac == nil {
		mac = hmac.New(sha256.New, m.key[:])
	}
	mac.Reset()
	mac.Write(ts)
	mac.Write(rnd)
	t := mac.Sum(nil)[:nonceTagLen]
	m.macs.Put(mac)
	return t
}

// mint returns a fresh nonce stamped with now.
func (m *nonceMinter) mint(now time.Time) string {
	var b [8 + nonceRandLen + nonceTagLen]byte
	binary.BigEndian.PutUint64(b[:8], uint64(now.UnixMilli()))
	binary.BigEndian.PutUint64(b[8:8+nonceRandLen], m.seq.Add(1))
	copy(b[8+nonceRandLen:], m.tag(b[:8], b[8:8+nonceRandLen]))
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// Nonce check results.
var (
	errNonceForged = errors.New("nonce not minted here")
	errNonceStale  = errors.New("nonce expired")
	errNonceReused = errors.New("nonce count replayed")
)

// check verifies that nonce is ours and fresh. It does not count its use:
// that happens only after the response proved the password (use), so a
// forged response cannot burn an honest client's counter.
func (m *nonceMinter) check(nonce string, now time.Time) (id nonceID, err error) {
	var b [8 + nonceRandLen + nonceTagLen]byte
	if base64.RawURLEncoding.DecodedLen(len(nonce)) != len(b) {
		return id, errNonceForged
	}
	if n, err := base64.RawURLEncoding.Decode(b[:], []byte(nonce)); err != nil || n != len(b) {
		return id, errNonceForged
	}
	if !hmac.Equal(b[8+nonceRandLen:], m.tag(b[:8], b[8:8+nonceRandLen])) {
		return id, errNonceForged
	}
	id = nonceID{seq: binary.BigEndian.Uint64(b[8 : 8+nonceRandLen]), minted: int64(binary.BigEndian.Uint64(b[:8]))}
	if age := now.Sub(time.UnixMilli(id.minted)); age > m.lifetime || age < -time.Minute {
		return id, errNonceStale
	}
	return id, nil
}

// use records nc for the nonce and fails if it is not above the last one
// seen. qop-less responses pass nc 0: the first use is allowed, any
// second one is a replay.
func (m *nonceMinter) use(id nonceID, nc uint32, now time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.expireLocked(now)
	u, ok := m.seen[id.seq]
	if ok {
		if nc <= u.nc || nc == 0 {
			return errNonceReused
		}
		u.nc = nc
		m.seen[id.seq] = u
		return nil
	}
	// Unknown nonce: either first use, or evicted from a full table. A
	// count above 1 for an untracked nonce cannot be told from a replay
	// of an evicted one, so it is stale: the client takes a fresh nonce.
	if nc > 1 {
		return errNonceStale
	}
	if len(m.seen) >= maxTrackedNonces {
		m.evictOldestLocked()
	}
	m.seen[id.seq] = nonceUse{nc: nc, minted: id.minted}
	m.order = append(m.order, id.seq)
	m.peak = max(m.peak, len(m.seen))
	return nil
}

// spent reports, without recording anything, whether use would refuse
// nc for the nonce: a count not above the last one seen, or a count above
// 1 for a nonce not tracked (first use, or evicted: use's rules).
func (m *nonceMinter) spent(id nonceID, nc uint32) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	u, ok := m.seen[id.seq]
	if ok {
		return nc <= u.nc || nc == 0
	}
	return nc > 1
}

// sweep drops the nonces expired at now, also when no new ones come.
func (m *nonceMinter) sweep(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.expireLocked(now)
}

func (m *nonceMinter) expireLocked(now time.Time) {
	oldest := now.Add(-m.lifetime).UnixMilli()
	for m.head < len(m.order) {
		n := m.order[m.head]
		u, ok := m.seen[n]
		if ok && u.minted >= oldest {
			break
		}
		delete(m.seen, n)
		m.head++
	}
	m.compactLocked()
}

func (m *nonceMinter) evictOldestLocked() {
	for m.head < len(m.order) {
		n := m.order[m.head]
		m.head++
		if _, ok := m.seen[n]; ok {
			delete(m.seen, n)
			break
		}
	}
	m.compactLocked()
}

// compactLocked drops the consumed head of order once it is half of the
// slice, so order stays O(tracked nonces), and makes the map and the
// slice anew when a burst left them four times larger than what they
// hold.
func (m *nonceMinter) compactLocked() {
	if m.peak > 1024 && len(m.seen) <= m.peak/4 {
		m.seen = maps.Clone(m.seen)
		m.order = slices.Clone(m.order[m.head:])
		m.head, m.peak = 0, len(m.seen)
		return
	}
	if m.head > 1024 && m.head*2 > len(m.order) {
		m.order = append(m.order[:0], m.order[m.head:]...)
		m.head = 0
	}
}

func (m *nonceMinter) tracked() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.seen)
}

// challenges returns the WWW-Authenticate values for a 401: SHA-256 first,
// then MD5, as RFC 8760 §2.4 asks (the client takes the first it
// supports), all with the same nonce and qop=auth; algs overrides the
// list for legacy clients.
func (m *nonceMinter) challenges(now time.Time, stale bool, algs []string) []string {
	nonce := m.mint(now)
	out := make([]string, 0, len(algs))
	for _, alg := range algs {
		v := `Digest realm="` + Realm + `", nonce="` + nonce + `", algorithm=` + alg + `, qop="auth"`
		if stale {
			v += ", stale=true"
		}
		out = append(out, v)
	}
	return out
}

// digestParams are the parameters of a Digest challenge or credentials
// (RFC 7616 §3.3, §3.4).
type digestParams struct {
	username, realm, nonce, uri, response, algorithm, cnonce, qop string
	nc                                                            uint32
	stale                                                         bool
}

// parseDigest parses a WWW-Authenticate or Authorization value of the
// Digest scheme: comma-separated auth-params, values tokens or quoted
// strings (RFC 7235 §2.1). It allocates only the strings it keeps (the
// registrar parses one per REGISTER). ok is false for another scheme or
// malformed parameters.
func parseDigest(h string) (p digestParams, ok bool) {
	h = strings.TrimLeft(h, " \t")
	if len(h) < 7 || !strings.EqualFold(h[:6], "Digest") || (h[6] != ' ' && h[6] != '\t') {
		return p, false
	}
	s := h[7:]
	for {
		s = strings.TrimLeft(s, " \t,")
		if s == "" {
			return p, true
		}
		eq := strings.IndexByte(s, '=')
		if eq <= 0 {
			return p, false
		}
		key := strings.ToLower(strings.TrimRight(s[:eq], " \t"))
		s = strings.TrimLeft(s[eq+1:], " \t")
		var val string
		if strings.HasPrefix(s, `"`) {
			var b []byte
			i, esc, closed := 1, false, false
			for ; i < len(s); i++ {
				c := s[i]
				switch {
				case esc:
					b = append(b, c)
					esc = false
				case c == '\\':
					esc = true
					if b == nil {
						b = append(b, s[1:i]...)
					}
				case c == '"':
					closed = true
				default:
					if b != nil {
						b = append(b, c)
					}
				}
				if closed {
					break
				}
			}
			if !closed {
				return p, false
			}
			if b != nil {
				val = string(b)
			} else {
				val = s[1:i]
			}
			s = s[i+1:]
		} else {
			end := strings.IndexAny(s, ", \t")
			if end < 0 {
				end = len(s)
			}
			val, s = s[:end], s[end:]
		}
		switch key {
		case "username":
			p.username = val
		case "realm":
			p.realm = val
		case "nonce":
			p.nonce = val
		case "uri":
			p.uri = val
		case "response":
			p.response = val
		case "algorithm":
			p.algorithm = val
		case "cnonce":
			p.cnonce = val
		case "qop":
			p.qop = val
		case "nc":
			n, err := strconv.ParseUint(val, 16, 32)
			if err != nil {
				return p, false
			}
			p.nc = uint32(n)
		case "stale":
			p.stale = strings.EqualFold(val, "true")
		}
	}
}

// digestResponse computes the expected response for credentials c of a
// request with method, given the account's HA1 for c's algorithm (RFC 7616
// §3.4.1; RFC 2069 form without qop).
func digestResponse(newHash func() hash.Hash, ha1 []byte, method string, c *digestParams) string {
	h := func(s string) string {
		x := newHash()
		x.Write([]byte(s))
		return hex.EncodeToString(x.Sum(nil))
	}
	ha2 := h(method + ":" + c.uri)
	ha1hex := hex.EncodeToString(ha1)
	if c.qop == "" {
		return h(ha1hex + ":" + c.nonce + ":" + ha2)
	}
	return h(ha1hex + ":" + c.nonce + ":" + nc8(c.nc) + ":" + c.cnonce + ":" + c.qop + ":" + ha2)
}

func nc8(n uint32) string {
	const digits = "0123456789abcdef"
	var b [8]byte
	for i := 7; i >= 0; i-- {
		b[i] = digits[n&0xf]
		n >>= 4
	}
	return string(b[:])
}

// authOutcome is what verifying an Authorization header decided.
type authOutcome int

const (
	authOK        authOutcome = iota
	authChallenge             // no usable credentials: 401 with a fresh nonce
	authStale                 // expired or untracked nonce: 401 stale=true
	authForbidden             // wrong password, replay, user mismatch: 403
)

// verifyDigest checks the Digest credentials in hdrs (the values of all
// Authorization headers) for a request with method by the owner of acct
// (nil: unknown user). reason explains a failure for logs and the 403.
func (m *nonceMinter) verifyDigest(hdrs []string, method, ext string, acct *Account, now time.Time) (authOutcome, string) {
	var cred *digestParams
	for _, v := range hdrs {
		c, ok := parseDigest(v)
		if !ok || !strings.EqualFold(c.realm, Realm) {
			continue // another scheme or realm (RFC 4475 regaut01): not ours
		}
		cred = &c
		break
	}
	if cred == nil {
		return authChallenge, "no digest credentials for realm mesh"
	}
	var newHash func() hash.Hash
	var ha1 []byte
	switch strings.ToUpper(cred.algorithm) {
	case "", "MD5":
		newHash = md5.New
		if acct != nil {
			ha1 = acct.HA1MD5
		}
	case "SHA-256":
		newHash = sha256.New
		if acct != nil {
			ha1 = acct.HA1SHA256
		}
	default:
		return authChallenge, "unsupported algorithm"
	}
	if cred.qop != "" && cred.qop != "auth" {
		return authChallenge, "unsupported qop"
	}
	id, err := m.check(cred.nonce, now)
	switch {
	case errors.Is(err, errNonceStale):
		return authStale, "stale nonce"
	case err != nil:
		return authChallenge, "unknown nonce"
	}
	nc := uint32(0)
	if cred.qop != "" {
		nc = cred.nc
	}
	if m.spent(id, nc) {
		// A reused nonce gets a fresh challenge whatever the response: were
		// the password checked first, the right one would get stale=true
		// and a wrong one 403, an oracle (RFC 7616 §3.3: stale=true only
		// says "retry with a new nonce", which any client may).
		return authStale, "nonce already used"
	}
	if cred.username != ext {
		return authForbidden, "username does not match the address of record"
	}
	if acct == nil {
		// Same answer as a wrong password: do not reveal which extensions exist.
		return authForbidden, "unknown user or wrong password"
	}
	want := digestResponse(newHash, ha1, method, cred)
	if subtle.ConstantTimeCompare([]byte(strings.ToLower(cred.response)), []byte(want)) != 1 {
		return authForbidden, "unknown user or wrong password"
	}
	if cred.qop != "" && cred.nc == 0 {
		return authForbidden, "bad nonce count"
	}
	if err := m.use(id, nc, now); err != nil {
		// Only a concurrent use of the same nonce gets here (spent saw it
		// unused): a fresh challenge, as for any reused nonce.
		return authStale, "nonce already used"
	}
	return authOK, ""
}
