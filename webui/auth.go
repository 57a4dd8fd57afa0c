package webui

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/scrypt"
)

// Password hashing: scrypt (RFC 7914) with N=2^14, r=8, p=1, the
// interactive-login parameters of the scrypt paper: 16 MiB and about 0.1 s
// on a router CPU per guess. Argon2id would need as much memory for the
// same cost; scrypt's code is smaller. One hash runs at a time (hashSem),
// so log-in attempts cannot add up to more than 16 MiB.
const (
	scryptN, scryptR, scryptP = 1 << 14, 8, 1
	saltLen, keyLen           = 16, 32
	// MinPassword is the shortest administrator password accepted.
	MinPassword = 8
	// MaxPassword bounds what is hashed.
	MaxPassword = 256
)

var b64 = base64.RawStdEncoding

// scryptCost is N of new hashes; tests lower it (the race detector makes
// scrypt slow), the stored hash carries its own.
var scryptCost = scryptN

// HashPassword returns the stored form of password:
// "scrypt$N$r$p$salt$key", salt and key in unpadded base64.
func HashPassword(password string) (string, error) {
	if len(password) < MinPassword || len(password) > MaxPassword {
		return "", fmt.Errorf("password: %d to %d characters", MinPassword, MaxPassword)
	}
	salt := make([]byte, saltLen)
	rand.Read(salt)
	hashSem <- struct{}{}
	defer func() { <-hashSem }()
	key, err := scrypt.Key([]byte(password), salt, scryptCost, scryptR, scryptP, keyLen)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("scrypt$%d$%d$%d$%s$%s", scryptCost, scryptR, scryptP, b64.EncodeToString(salt), b64.EncodeToString(key)), nil
}

// hashSem lets one scrypt run at a time.
var hashSem = make(chan struct{}, 1)

// errBadHash is a stored hash that does not parse.
var errBadHash = errors.New("stored password hash is malformed")

// checkPassword reports whether password matches stored (HashPassword's
// form), in time independent of where they differ.
func checkPassword(stored, password string) (bool, error) {
	f := strings.Split(strings.TrimSpace(stored), "$")
	if len(f) != 6 || f[0] != "scrypt" {
		return false, errBadHash
	}
	var nrp [3]int
	for i := range nrp {
		v, err := strconv.Atoi(f[1+i])
		if err != nil || v <= 0 {
			return false, errBadHash
		}
		nrp[i] = v
	}
	// Bound the cost a tampered file could ask for.
	if nrp[0] > 1<<17 || nrp[1] > 16 || nrp[2] > 4 {
		return false, errBadHash
	}
	salt, err1 := b64.DecodeString(f[4])
	want, err2 := b64.DecodeString(f[5])
	if err1 != nil || err2 != nil || len(want) == 0 || len(want) > 64 {
		return false, errBadHash
	}
	if len(password) > MaxPassword {
		return false, nil
	}
	hashSem <- struct{}{}
	defer func() { <-hashSem }()
	got, err := scrypt.Key([]byte(password), salt, nrp[0], nrp[1], nrp[2], len(want))
	if err != nil {
		return false, errBadHash
	}
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}

// SetPassword hashes password and stores it in file (mode 0600), replacing
// the old one atomically; every session of the old password ends when the
// server next reads the file.
func SetPassword(file, password string) error {
	h, err := HashPassword(password)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return err
	}
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, []byte(h+"\n"), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}

// Sessions: a random 32-byte ID in an HttpOnly, SameSite=Strict cookie, and
// per session a random CSRF token that every form carries (the
// synchronizer token pattern). Bounded: the oldest session is dropped when
// maxSessions are open.
const (
	maxSessions  = 16
	sessionLife  = 12 * time.Hour
	sessionIdle  = time.Hour
	cookieName   = "sipmesh_session"
	csrfField    = "csrf"
	loginRate    = time.Minute // one log-in attempt refilled per this
	loginBurst   = 5
	maxLimiterIP = 256
)

type session struct {
	csrf          string
	created, seen time.Time
	hash          string // the password hash it logged in with
	flash         string // the result of the last change, shown once
}

type sessions struct {
	mu sync.Mutex
	m  map[string]*session
}

func randToken() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (s *sessions) create(now time.Time, hash string) (id string, sess *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[string]*session)
	}
	for len(s.m) >= maxSessions {
		var oldest string
		for k, v := range s.m {
			if oldest == "" || v.seen.Before(s.m[oldest].seen) {
				oldest = k
			}
		}
		delete(s.m, oldest)
	}
	id = randToken()
	sess = &session{csrf: randToken(), created: now, seen: now, hash: hash}
	s.m[id] = sess
	return id, sess
}

// get returns the live session of id, nil if none; a session of another
// password hash (changed since) is dropped.
func (s *sessions) get(id string, now time.Time, hash string) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.m[id]
	if sess == nil {
		return nil
	}
	if now.Sub(sess.created) > sessionLife || now.Sub(sess.seen) > sessionIdle || sess.hash != hash {
		delete(s.m, id)
		return nil
	}
	sess.seen = now
	return sess
}

// setFlash keeps msg for the next page of session id; takeFlash returns
// and clears it. Results travel in the session rather than the URL, so a
// link cannot put words on the administrator's page.
func (s *sessions) setFlash(id, msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sess := s.m[id]; sess != nil {
		sess.flash = msg
	}
}

func (s *sessions) takeFlash(id string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.m[id]
	if sess == nil {
		return ""
	}
	m := sess.flash
	sess.flash = ""
	return m
}

func (s *sessions) drop(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, id)
}

// limiter is a token bucket per source address for log-in attempts,
// bounded to maxLimiterIP sources: when full, the fullest bucket (a source
// that has not failed lately) is forgotten.
type limiter struct {
	mu sync.Mutex
	m  map[netip.Addr]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func (l *limiter) allow(src netip.Addr, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = make(map[netip.Addr]*bucket)
	}
	b := l.m[src]
	if b == nil {
		if len(l.m) >= maxLimiterIP {
			var best netip.Addr
			bestT := -1.0
			for k, v := range l.m {
				if t := v.level(now); t > bestT {
					best, bestT = k, t
				}
			}
			delete(l.m, best)
		}
		b = &bucket{tokens: loginBurst, last: now}
		l.m[src] = b
	}
	b.tokens = b.level(now)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

func (b *bucket) level(now time.Time) float64 {
	return min(loginBurst, b.tokens+float64(now.Sub(b.last))/float64(loginRate))
}
