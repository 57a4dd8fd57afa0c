package sipnet

import (
	"bytes"
	"hash/maphash"
	"net/netip"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
)

// The small record of an answered non-INVITE request (RFC 3261 §17.2.2).
//
// A non-INVITE server transaction over UDP that has sent its final
// response stays in the Completed state for Timer J (64·T1 = 32 s) only
// to answer retransmissions of the request with that response. sipgo keeps
// the whole transaction for it: the parsed request, the parsed response,
// its timers and its state machine, about 3.5 KB each, so a table of a
// few thousand transactions was full at 128 new requests/s. The guard
// keeps what Timer J needs instead: the hash of the transaction's key
// (§17.2.3: top Via branch and sent-by, CSeq method, here also the source
// address) and the bytes of the final response, about 0.6 KB, and sipgo's
// transaction ends when the response is sent. A retransmission matching a
// record gets those bytes again before sipgo parses it; one whose record
// was evicted (the table is bounded) is a new request to sipgo, as after
// Timer J. An INVITE answered 2xx is kept the same way for RFC 6026's
// Accepted state (Timer L, also 64·T1), without the response: a proxy
// absorbs retransmitted INVITEs there and the UAS, not the proxy,
// retransmits the 2xx.

// DefaultAnswerLife is how long an answer is kept: Timer J over UDP.
const DefaultAnswerLife = 64 * 500 * time.Millisecond // 64·T1, T1 = 500 ms

type answer struct {
	data  []byte         // the final response as sent; nil: absorb retransmissions
	to    netip.AddrPort // where it was sent
	until int64          // Unix nanoseconds: expires
}

// answers is the Guard's table of records; its zero value is unusable
// until init.
type answers struct {
	once sync.Once
	seed maphash.Seed

	mu   sync.Mutex
	recs *LRU[uint64, answer]
	n    int // len(recs), readable without the table's lock via Len
}

func (a *answers) init(max int) {
	a.once.Do(func() {
		a.seed = maphash.MakeSeed()
		a.recs = NewLRU[uint64, answer](max)
	})
}

// key hashes what identifies req's server transaction (RFC 3261 §17.2.3)
// and the address it came from; ok is false without a top Via or CSeq.
func (a *answers) key(req *sip.Request, src netip.AddrPort) (uint64, bool) {
	via, cseq := req.Via(), req.CSeq()
	if via == nil || cseq == nil {
		return 0, false
	}
	branch, _ := via.Params.Get("branch")
	var h maphash.Hash
	h.SetSeed(a.seed)
	h.WriteString(branch)
	h.WriteByte(0)
	h.WriteString(via.Host)
	h.WriteByte(byte(via.Port >> 8))
	h.WriteByte(byte(via.Port))
	h.WriteString(string(cseq.MethodName))
	ip := src.Addr().Unmap().As16()
	h.Write(ip[:])
	h.WriteByte(byte(src.Port() >> 8))
	h.WriteByte(byte(src.Port()))
	return h.Sum64(), true
}

// put records res (the final response to req from src, sent to to) until
// now+life.
func (a *answers) put(req *sip.Request, src netip.AddrPort, res *sip.Response, to netip.AddrPort, now time.Time, life time.Duration) {
	k, ok := a.key(req, src)
	if !ok {
		return
	}
	var data []byte // nil: absorb (an INVITE answered 2xx)
	if !req.IsInvite() {
		data = encode(res)
	}
	a.putKey(k, data, to, now, life)
}

// encode is res as sent, in a slice of its exact size (a buffer's spare
// capacity would stay with the record).
func encode(res *sip.Response) []byte {
	var buf bytes.Buffer
	buf.Grow(512)
	res.StringWrite(&buf)
	return bytes.Clone(buf.Bytes())
}

func (a *answers) putKey(k uint64, data []byte, to netip.AddrPort, now time.Time, life time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sweepLocked(now, 4) // keep expired records from piling up under load
	v, _ := a.recs.Get(k, true)
	*v = answer{data: data, to: to, until: now.Add(life).UnixNano()}
	a.n = a.recs.Len()
}

// get returns the answer recorded for req from src, if it is still live.
func (a *answers) get(req *sip.Request, src netip.AddrPort, now time.Time) (answer, bool) {
	k, ok := a.key(req, src)
	if !ok {
		return answer{}, false
	}
	return a.getKey(k, now)
}

func (a *answers) getKey(k uint64, now time.Time) (answer, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	v, _ := a.recs.Get(k, false)
	if v == nil {
		return answer{}, false
	}
	if v.until <= now.UnixNano() {
		a.recs.Delete(k)
		a.n = a.recs.Len()
		return answer{}, false
	}
	return *v, true
}

// relayKey hashes the branch of a client transaction; its prefix keeps
// these keys apart from those of requests.
func (a *answers) relayKey(branch string) uint64 {
	var h maphash.Hash
	h.SetSeed(a.seed)
	h.WriteString("relayed\x00")
	h.WriteString(branch)
	return h.Sum64()
}

// sweepLocked drops up to limit expired records (limit < 0: all), oldest
// first.
func (a *answers) sweepLocked(now time.Time, limit int) {
	t := now.UnixNano()
	for i := 0; limit < 0 || i < limit; i++ {
		k, v, ok := a.recs.Oldest()
		if !ok || v.until > t {
			break
		}
		a.recs.Delete(k)
	}
	a.n = a.recs.Len()
}
