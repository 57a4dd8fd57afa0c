package dns64

import (
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Replaying packed answers.
//
// A phone LAN asks the same few questions over and over (sipserver.mesh A
// before every REGISTER of some phones, the SRV and NAPTR names of RFC
// 3263), and the answer to a .mesh question depends only on the question's
// bytes and the socket it came in on. So the UDP reader keeps the packed
// replies of recent .mesh answers keyed by the query's bytes after its ID
// (flags, question, EDNS record: everything the answer depends on) and
// answers a repeated query itself: the ID copied in, one write, no
// goroutine, no parsing, no packing. A query that differs in any byte
// (another case of the name from a 0x20 resolver, another EDNS size)
// takes the full path and is replayed from then on.
//
// Answers from the DHT-backed part of the zone are already cached for
// zoneCacheTTL; a replayed reply adds at most replayTTL to that, well
// within the records' own TTL. Answers from upstream are never replayed:
// their TTLs count down (RFC 1035 §4.1.3, RFC 2181 §8).

const (
	// replayTTL is how long a packed reply is replayed.
	replayTTL = time.Second
	// replayMax bounds the replies kept per socket; a query for a new
	// name when full drops them all (they are rebuilt on the next miss).
	replayMax = 512
	// replayMaxQuery is the longest query replayed: a question with a
	// long name and an EDNS record fits; anything longer takes the full
	// path.
	replayMaxQuery = 300
)

// replayCache holds the packed replies of one socket.
type replayCache struct {
	mu sync.Mutex
	m  map[string]replayEntry
}

type replayEntry struct {
	reply []byte // the packed reply, its ID to be replaced
	until time.Time
}

func newReplayCache() *replayCache { return &replayCache{m: make(map[string]replayEntry)} }

// get returns the packed reply to query (a raw UDP query) with the ID of
// the query it was built for, or nil (always on a nil cache). The reply
// is shared and never changed: the caller sends it with the query's ID
// in front (RFC 1035 §4.1.1; the batch writer sends the two parts from
// where they are, batch_linux.go) or copies it first (copyReply).
func (c *replayCache) get(query []byte, now time.Time) []byte {
	if c == nil || len(query) < dnsHeaderLen || len(query) > replayMaxQuery {
		return nil
	}
	c.mu.Lock()
	e, ok := c.m[string(query[2:])] // no allocation: a map index with a converted key
	c.mu.Unlock()
	if !ok || !now.Before(e.until) {
		return nil
	}
	return e.reply
}

// copyReply copies reply into buf with the ID of query and returns it, or
// nil when it does not fit.
func copyReply(query, reply, buf []byte) []byte {
	if reply == nil || len(reply) > len(buf) {
		return nil
	}
	out := buf[:len(reply)]
	copy(out, reply)
	out[0], out[1] = query[0], query[1]
	return out
}

// store keeps reply (packed) as the answer to query (packed, any ID).
// reply must not be changed afterwards: replays send it as it is.
func (c *replayCache) store(query, reply []byte, now time.Time) {
	if len(query) < dnsHeaderLen || len(query) > replayMaxQuery {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	k := string(query[2:])
	if _, ok := c.m[k]; !ok && len(c.m) >= replayMax {
		for key, e := range c.m {
			if !now.Before(e.until) {
				delete(c.m, key)
			}
		}
		if len(c.m) >= replayMax {
			clear(c.m)
		}
	}
	c.m[k] = replayEntry{reply: reply, until: now.Add(replayTTL)}
}

func (c *replayCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// dnsHeaderLen is the fixed DNS header (RFC 1035 §4.1.1).
const dnsHeaderLen = 12

// replayable reports whether m, the complete UDP reply to req, may be
// replayed to the same query bytes: an authoritative .mesh answer (data,
// NODATA or NXDOMAIN), not truncated. SERVFAIL (a DHT look-up that failed
// or was refused as busy) and REFUSED are not.
func replayable(req, m *dns.Msg) bool {
	if len(req.Question) != 1 || m.Truncated || !m.Authoritative {
		return false
	}
	if m.Rcode != dns.RcodeSuccess && m.Rcode != dns.RcodeNameError {
		return false
	}
	return inMesh(strings.ToLower(req.Question[0].Name))
}

// remember stores the reply to req, when replayable, in the socket's
// cache, and returns the packed reply (nil: pack it the usual way).
func (h *handler) remember(req, m *dns.Msg) []byte {
	if h.replay == nil || h.tcp || !replayable(req, m) {
		return nil
	}
	q, err := req.Pack()
	if err != nil {
		return nil
	}
	b, err := m.Pack()
	if err != nil {
		return nil
	}
	h.replay.store(q, b, h.s.cfg.Now())
	return b
}

// countReplayed adds the queries replayed since the last call to the
// counters.
func (r *limitedReader) countReplayed() {
	if n := uint64(r.replayed); n > 0 {
		r.replayed = 0
		r.s.stats.queries.Add(n)
		r.s.stats.mesh.Add(n)
		r.s.stats.replayed.Add(n)
	}
}

// handOn copies a query that takes the full path out of the reader's
// buffer into one the miekg server can own: it returns the slices its
// readers give to its buffer pool, which wants a capacity of UDPSize.
func (r *limitedReader) handOn(q []byte) []byte {
	m := make([]byte, len(q), max(len(q), int(r.s.cfg.UDPSize)))
	copy(m, q)
	return m
}
