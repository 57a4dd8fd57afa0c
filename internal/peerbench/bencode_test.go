//go:build linux && peerbench

package peerbench

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"testing"
)

// rtpengine's control protocol ("ng") is a cookie, a space and a bencoded
// dictionary (BitTorrent's BEP 3 encoding), over UDP. The rtp row sends
// offer/answer/delete and reads the "result" and "sdp" of the replies:
// strings, integers, lists and dictionaries are all it needs.

// bencode encodes strings, ints, lists and string-keyed maps (keys sorted,
// as BEP 3 requires).
func bencode(b *bytes.Buffer, v any) {
	switch v := v.(type) {
	case string:
		fmt.Fprintf(b, "%d:%s", len(v), v)
	case int:
		fmt.Fprintf(b, "i%de", v)
	case []any:
		b.WriteByte('l')
		for _, e := range v {
			bencode(b, e)
		}
		b.WriteByte('e')
	case map[string]any:
		b.WriteByte('d')
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			bencode(b, k)
			bencode(b, v[k])
		}
		b.WriteByte('e')
	default:
		panic(fmt.Sprintf("bencode: %T", v))
	}
}

// maxBdepth bounds nesting: the decoder recurses, and the bytes are the
// peer's.
const maxBdepth = 32

var errBencode = errors.New("bencode: malformed")

// bdecode decodes one value from the front of b and returns the rest.
// Strings decode to string, integers to int64, lists to []any and
// dictionaries to map[string]any.
func bdecode(b []byte, depth int) (any, []byte, error) {
	if len(b) == 0 || depth > maxBdepth {
		return nil, nil, errBencode
	}
	switch c := b[0]; {
	case c == 'i':
		end := bytes.IndexByte(b, 'e')
		if end < 0 {
			return nil, nil, errBencode
		}
		n, err := strconv.ParseInt(string(b[1:end]), 10, 64)
		if err != nil {
			return nil, nil, errBencode
		}
		return n, b[end+1:], nil
	case c == 'l':
		var l []any
		b = b[1:]
		for len(b) > 0 && b[0] != 'e' {
			v, rest, err := bdecode(b, depth+1)
			if err != nil {
				return nil, nil, err
			}
			l, b = append(l, v), rest
		}
		if len(b) == 0 {
			return nil, nil, errBencode
		}
		return l, b[1:], nil
	case c == 'd':
		m := map[string]any{}
		b = b[1:]
		for len(b) > 0 && b[0] != 'e' {
			k, rest, err := bdecode(b, depth+1)
			if err != nil {
				return nil, nil, err
			}
			ks, ok := k.(string)
			if !ok {
				return nil, nil, errBencode
			}
			v, rest, err := bdecode(rest, depth+1)
			if err != nil {
				return nil, nil, err
			}
			m[ks], b = v, rest
		}
		if len(b) == 0 {
			return nil, nil, errBencode
		}
		return m, b[1:], nil
	case c >= '0' && c <= '9':
		colon := bytes.IndexByte(b, ':')
		if colon < 0 {
			return nil, nil, errBencode
		}
		n, err := strconv.Atoi(string(b[:colon]))
		if err != nil || n < 0 || n > len(b)-colon-1 {
			return nil, nil, errBencode
		}
		return string(b[colon+1 : colon+1+n]), b[colon+1+n:], nil
	}
	return nil, nil, errBencode
}

// ngReply splits an ng reply into cookie and dictionary.
func ngReply(b []byte) (cookie string, dict map[string]any, err error) {
	sp := bytes.IndexByte(b, ' ')
	if sp < 0 {
		return "", nil, errBencode
	}
	v, rest, err := bdecode(b[sp+1:], 0)
	if err != nil {
		return "", nil, err
	}
	d, ok := v.(map[string]any)
	if !ok || len(rest) != 0 {
		return "", nil, errBencode
	}
	return string(b[:sp]), d, nil
}

func TestBencodeRoundTrip(t *testing.T) {
	in := map[string]any{"command": "offer", "call-id": "c1", "flags": []any{"trust-address", "x"}, "n": 7,
		"sdp": "v=0\r\nc=IN IP4 10.0.0.1\r\n"}
	var b bytes.Buffer
	b.WriteString("ck1 ")
	bencode(&b, in)
	cookie, d, err := ngReply(b.Bytes())
	if err != nil || cookie != "ck1" {
		t.Fatalf("ngReply(%q) = %q, %v", b.Bytes(), cookie, err)
	}
	if d["command"] != "offer" || d["sdp"] != in["sdp"] || d["n"] != int64(7) ||
		len(d["flags"].([]any)) != 2 || d["flags"].([]any)[1] != "x" {
		t.Fatalf("decoded %v", d)
	}
	for _, bad := range []string{"ck d3:abc", "ck d", "ck i1e", "ck d1:ai1ex", "ck d5:abce", "ck di1ei2ee", "noSpace"} {
		if _, _, err := ngReply([]byte(bad)); err == nil {
			t.Errorf("ngReply(%q) accepted", bad)
		}
	}
}

// FuzzNgReply: rtpengine's replies are peer bytes; the decoder must not
// panic or recurse without bound on any input, and what it accepts must
// re-encode to the same bytes (the encoding is canonical for what
// rtpengine sends: sorted keys, no leading zeros).
func FuzzNgReply(f *testing.F) {
	f.Add([]byte("5_1 d6:result2:oke"))
	f.Add([]byte("x d3:sdp10:v=0\r\nc=IN e6:result2:oke"))
	f.Add([]byte("c d1:ali1ei2el1:xeee"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, d, err := ngReply(b)
		if err != nil {
			return
		}
		var out bytes.Buffer
		bencodeAny(&out, d)
		again, _, err := bdecode(out.Bytes(), 0)
		if err != nil {
			t.Fatalf("re-encoded %q does not decode: %v", out.Bytes(), err)
		}
		var out2 bytes.Buffer
		bencodeAny(&out2, again)
		if !bytes.Equal(out.Bytes(), out2.Bytes()) {
			t.Fatalf("not stable: %q then %q", out.Bytes(), out2.Bytes())
		}
	})
}

// bencodeAny is bencode for decoded values (int64 instead of int).
func bencodeAny(b *bytes.Buffer, v any) {
	switch v := v.(type) {
	case int64:
		fmt.Fprintf(b, "i%de", v)
	case []any:
		b.WriteByte('l')
		for _, e := range v {
			bencodeAny(b, e)
		}
		b.WriteByte('e')
	case map[string]any:
		b.WriteByte('d')
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			bencode(b, k)
			bencodeAny(b, v[k])
		}
		b.WriteByte('e')
	default:
		bencode(b, v)
	}
}
