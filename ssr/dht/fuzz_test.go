package dht

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/ssr"
)

// The seed corpus is both added with f.Add and committed under
// testdata/fuzz/<FuzzName>/; regenerate the files with
//
//	DHT_WRITE_FUZZ_CORPUS=1 go test -run TestWriteFuzzCorpus ./ssr/dht/

func fuzzSeeds() map[string][]byte {
	rec := signed("aor:sip:201@mesh", `{"contact":"<sip:201@10.0.0.2>"}`, 7, 1)
	tomb := Record{Key: "user:201", Writer: rec.Writer, Seq: 8, Lifetime: time.Hour, Remaining: time.Minute, Tombstone: true}
	tomb.Sign(testKey(1))
	return map[string][]byte{
		"store":       encodeStore(nil, 1, storeAck, &rec),
		"store-tomb":  encodeStore(nil, 2, storeReplica, &tomb),
		"store-ack":   encodeStoreAck(nil, 3, codeStale),
		"get":         encodeGet(nil, 4, 0, "aor:sip:201@mesh"),
		"get-local":   encodeGet(nil, 5, getLocal, "name:node1"),
		"get-reply":   encodeGetReply(nil, 6, codeOK, 9, 0, 1, []*Record{&rec, &tomb}),
		"get-reply-0": encodeGetReply(nil, 7, codeOK, 1, 0, 0, nil),
		"summary":     encodeSummary(nil, 10, 5, 3, 0xfeedface),
		"digest": encodeDigest(nil, 1, 1<<63, []digest{
			{id: recID{2, 3}, seq: 4}, {id: recID{5, 6}, seq: 7, tomb: true},
		}),
		"want": encodeWant(nil, []recID{{1, 2}, {3, 4}}),
	}
}

func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("DHT_WRITE_FUZZ_CORPUS") == "" {
		t.Skip("set DHT_WRITE_FUZZ_CORPUS=1 to rewrite testdata/fuzz")
	}
	for fz, seeds := range map[string]map[string][]byte{
		"FuzzDecode": fuzzSeeds(), "FuzzNodeHandleDatagram": fuzzSeeds(), "FuzzDecodeDisk": diskFuzzSeeds(),
	} {
		dir := filepath.Join("testdata", "fuzz", fz)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, b := range seeds {
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
			if err := os.WriteFile(filepath.Join(dir, "seed-"+name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// FuzzDecode: any bytes decode or fail cleanly, and what decodes
// re-encodes to a prefix-equal form for the fixed-layout types.
func FuzzDecode(f *testing.F) {
	for _, b := range fuzzSeeds() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decode(b)
		if err != nil {
			return
		}
		var again []byte
		switch m.typ {
		case msgStore:
			again = encodeStore(nil, m.req, m.flags, &m.recs[0])
		case msgGet:
			again = encodeGet(nil, m.req, m.flags, m.key)
		case msgDigest:
			again = encodeDigest(nil, m.lo, m.hi, m.dig)
		case msgWant:
			again = encodeWant(nil, m.want)
		default:
			return
		}
		if m.typ == msgStore {
			// Remaining is clamped to the lifetime on decode.
			m2, err := decode(again)
			if err != nil || m2.recs[0].Remaining != m.recs[0].Remaining || m2.recs[0].Key != m.recs[0].Key {
				t.Fatalf("store does not round-trip: %v", err)
			}
			return
		}
		// DIGEST and WANT carry no request ID: compare after the header.
		if !bytes.HasPrefix(b[hdrLen:], again[hdrLen:]) || !bytes.Equal(b[:2], again[:2]) {
			t.Fatalf("re-encoding differs:\n in %x\nout %x", b, again)
		}
	})
}

// FuzzNodeHandleDatagram: a node survives any payload from any source, and
// its store keeps its bounds.
func FuzzNodeHandleDatagram(f *testing.F) {
	for _, b := range fuzzSeeds() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r := newFakeRing(t, 3, Params{MaxRecords: 4})
		n := anyNode(r, 0)
		n.n.HandleDatagram(r.now, ssr.Datagram{Src: 42, DstPort: Port, Payload: b, Hops: 3})
		n.n.Tick(r.now.Add(time.Minute))
		r.run(100 * time.Millisecond)
		if n.n.Len() > 4 {
			t.Fatalf("store holds %d records, bound 4", n.n.Len())
		}
	})
}

func TestDecodeErrors(t *testing.T) {
	rec := signed("k", "v", 1, 1)
	good := encodeStore(nil, 1, storeAck, &rec)
	for name, b := range map[string][]byte{
		"empty":         nil,
		"short header":  {Version, msgGet},
		"version":       append([]byte{2}, good[1:]...),
		"type":          {Version, 99, 0, 0, 0, 0, 0, 0, 0, 0},
		"truncated":     good[:len(good)-1],
		"store flags":   append(append(append([]byte{}, good[:10]...), 0x80), good[11:]...),
		"zero key":      encodeGet(nil, 1, 0, "")[:12],
		"digest count":  {Version, msgDigest, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff},
		"part > last":   encodeGetReply(nil, 1, 0, 0, 2, 1, nil),
		"record count":  encodeGetReply(nil, 1, 0, 0, 0, 0, nil)[:14],
		"want overflow": {Version, msgWant, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5},
	} {
		if _, err := decode(b); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}
