// Package sigcache remembers ed25519 signatures that verified, so that a
// record read again and again (an account on every REGISTER, a binding on
// every call, a .mesh name on every DNS query: each a DHT read of the same
// signed record) costs a SHA-256 instead of an ed25519 verification. The
// profiles of `make bench-peers` put ed25519.Verify at 55 % of a node's CPU
// under REGISTER load and 46 % under DNS load before it.
//
// Only successes are remembered (and the signatures this process makes
// itself, Sign), under SHA-256(public key ‖ message ‖
// signature): a different key, message or signature is a different entry,
// so a hit is exactly as strong as the verification it stands for. The
// cache is bounded (Size entries, about 100 bytes each) and forgets the
// oldest first.
package sigcache

import (
	"crypto/ed25519"
	"crypto/sha256"
	"sync"
	"sync/atomic"
)

// verifications counts the signatures verified, not found (tests).
var verifications atomic.Uint64

// Size bounds the remembered signatures.
const Size = 4096

// cache is allocated on first use: as a static array its 128 KiB would
// be in the binary on the router's flash.
var cache struct {
	sync.Mutex
	seen map[[32]byte]struct{}
	ring [][32]byte
	next int
	full bool
}

// Verify reports whether sig is pub's signature of msg, as
// ed25519.Verify does, from the cache when it verified before.
func Verify(pub ed25519.PublicKey, msg, sig []byte) bool {
	if len(pub) != ed25519.PublicKeySize || len(sig) != ed25519.SignatureSize {
		return false
	}
	k := key(pub, msg, sig)
	cache.Lock()
	_, ok := cache.seen[k]
	cache.Unlock()
	if ok {
		return true
	}
	verifications.Add(1)
	if !ed25519.Verify(pub, msg, sig) {
		return false
	}
	remember(k)
	return true
}

// Sign signs msg with priv, as ed25519.Sign does, and remembers the
// signature as verified under priv's own public key: a node stores the
// records it signs itself (it is their owner or a replica) and would
// otherwise verify each one it just made, a verification costing twice
// the signature (the REGISTER profile of `make bench-peers`: ed25519
// Verify 20 % of the node's CPU, Sign 10 %).
func Sign(priv ed25519.PrivateKey, msg []byte) []byte {
	sig := ed25519.Sign(priv, msg)
	remember(key(priv.Public().(ed25519.PublicKey), msg, sig))
	return sig
}

func key(pub ed25519.PublicKey, msg, sig []byte) [32]byte {
	h := sha256.New()
	h.Write(pub)
	h.Write(msg)
	h.Write(sig)
	var k [32]byte
	h.Sum(k[:0])
	return k
}

// remember adds k, forgetting the oldest entry when full.
func remember(k [32]byte) {
	cache.Lock()
	defer cache.Unlock()
	if cache.seen == nil {
		cache.seen, cache.ring = make(map[[32]byte]struct{}, Size), make([][32]byte, Size)
	}
	if _, ok := cache.seen[k]; ok {
		return
	}
	if cache.full {
		delete(cache.seen, cache.ring[cache.next])
	}
	cache.ring[cache.next] = k
	cache.seen[k] = struct{}{}
	cache.next++
	if cache.next == Size {
		cache.next, cache.full = 0, true
	}
}

// Len is how many signatures are remembered (tests).
func Len() int {
	cache.Lock()
	defer cache.Unlock()
	return len(cache.seen)
}
