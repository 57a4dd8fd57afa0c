package ssr

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"testing"
)

// decodeHello and decodeRouted validate a frame exactly as HandleFrame does:
// the common header, then the type's own decoder.
func decodeHello(b []byte) (*hello, error) {
	t, err := frameType(b)
	if err != nil {
		return nil, err
	}
	if t != typeHello {
		return nil, ErrType
	}
	h := new(hello)
	return h, h.decode(b)
}

func decodeRouted(b []byte) (*routed, error) {
	t, err := frameType(b)
	if err != nil {
		return nil, err
	}
	if t != typeRouted {
		return nil, ErrType
	}
	r := new(routed)
	return r, r.decode(b)
}

func encodeRouted(r *routed) []byte { return append(r.appendHeader(nil), r.payload...) }

func ids(n int, base NodeID) []NodeID {
	out := make([]NodeID, n)
	for i := range out {
		out[i] = base + NodeID(i)*0x0101010101010101
	}
	return out
}

// normHello clears what decode leaves undefined so that hellos compare.
func normHello(h hello) hello {
	if len(h.neigh) == 0 {
		h.neigh = nil
	}
	if !h.hasMax {
		h.maxID, h.maxSeq, h.path = 0, 0, nil
	}
	if len(h.path) == 0 {
		h.path = nil
	}
	return h
}

func TestHelloRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		h    hello
		size int
	}{
		{"bare", hello{src: 1, seq: 7}, 16},
		{"neighbours", hello{src: 0xfedcba9876543210, seq: 0xffffffff, neigh: ids(3, 5)}, 16 + 24},
		{"max-self", hello{src: 9, seq: 2, neigh: ids(1, 3), hasMax: true, maxID: 9, maxSeq: 2}, 29 + 8},
		{"max-path", hello{src: 9, seq: 2, neigh: ids(2, 3), hasMax: true, maxID: ^NodeID(0), maxSeq: 1 << 31, path: ids(4, 100)}, 29 + 16 + 32},
		{"64-neighbours", hello{src: 2, seq: 3, neigh: ids(maxHelloNbr, 1)}, 16 + 8*64},
		{"255-path", hello{src: 2, seq: 3, hasMax: true, maxID: 1, path: ids(255, 1)}, 29 + 8*255},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.h.appendTo(nil)
			if len(b) != tt.size {
				t.Fatalf("encoded %d bytes, want %d", len(b), tt.size)
			}
			if b[0] != Version || b[1] != typeHello {
				t.Fatalf("header % x", b[:2])
			}
			got, err := decodeHello(b)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if g, w := normHello(*got), normHello(tt.h); !reflect.DeepEqual(g, w) {
				t.Fatalf("decoded %+v\nwant    %+v", g, w)
			}
			if again := got.appendTo(nil); !bytes.Equal(again, b) {
				t.Fatalf("re-encoded % x\nwant       % x", again, b)
			}
		})
	}
}

// TestHelloLayout pins the byte offsets FORMAT.md documents.
func TestHelloLayout(t *testing.T) {
	h := hello{src: 0x0102030405060708, seq: 0x0a0b0c0d, neigh: []NodeID{0x11}, hasMax: true, maxID: 0x22, maxSeq: 0x33, path: []NodeID{0x44, 0x55}}
	b := h.appendTo(nil)
	want := []byte{3, 1, 1, 2, 3, 4, 5, 6, 7, 8, 0x0a, 0x0b, 0x0c, 0x0d, 1}
	want = binary.BigEndian.AppendUint64(want, 0x11)
	want = append(want, 1)
	want = binary.BigEndian.AppendUint64(want, 0x22)
	want = append(want, 0, 0, 0, 0x33, 2)
	want = binary.BigEndian.AppendUint64(want, 0x44)
	want = binary.BigEndian.AppendUint64(want, 0x55)
	if !bytes.Equal(b, want) {
		t.Fatalf("got  % x\nwant % x", b, want)
	}
}

func TestRoutedLayout(t *testing.T) {
	r := routed{proto: protoData, flags: flagClosest, target: 0x0102030405060708, vhops: 3, hops: 4, pos: 1, route: []NodeID{0xaa, 0xbb}, payload: []byte{0, 5, 0, 6, 'x'}}
	b := encodeRouted(&r)
	want := []byte{3, 2, 1, 1, 1, 2, 3, 4, 5, 6, 7, 8, 3, 4, 1, 2}
	want = binary.BigEndian.AppendUint64(want, 0xaa)
	want = binary.BigEndian.AppendUint64(want, 0xbb)
	want = append(want, 0, 5, 0, 6, 'x')
	if !bytes.Equal(b, want) {
		t.Fatalf("got  % x\nwant % x", b, want)
	}
}

// routedSamples are valid frames of every protocol, as node.go builds them.
func routedSamples() map[string]routed {
	errPayload := func(code byte, a, b NodeID, proto byte, tail uint32) []byte {
		p := []byte{code}
		p = binary.BigEndian.AppendUint64(p, uint64(a))
		p = binary.BigEndian.AppendUint64(p, uint64(b))
		p = append(p, proto)
		return binary.BigEndian.AppendUint32(p, tail)
	}
	notify := []byte{0, 2}
	notify = binary.BigEndian.AppendUint64(notify, 0x30)
	notify = append(notify, 2)
	notify = appendIDs(notify, []NodeID{0x20, 0x30})
	notify = binary.BigEndian.AppendUint64(notify, 0x40)
	notify = append(notify, 1)
	notify = appendIDs(notify, []NodeID{0x40})
	echo := binary.BigEndian.AppendUint32(nil, 77)
	echo = binary.BigEndian.AppendUint64(echo, 1_700_000_000_000_000_000)
	reply := append(append([]byte(nil), echo...), 3)
	reply = appendIDs(reply, []NodeID{1, 2, 3})
	return map[string]routed{
		"data":         {proto: protoData, target: 3, pos: 1, route: []NodeID{1, 2, 3}, payload: []byte{0x13, 0xc4, 0x13, 0xc5, 'h', 'i'}},
		"data-closest": {proto: protoData, flags: flagClosest, target: 0x8000, vhops: 2, hops: 5, pos: 2, route: []NodeID{1, 2, 3}, payload: []byte{0, 1, 0, 2}},
		"data-empty":   {proto: protoData, target: 1, route: []NodeID{1}, payload: []byte{}},
		"notify":       {proto: protoNotify, target: 2, pos: 1, route: []NodeID{1, 2}, payload: notify},
		"notify-reply": {proto: protoNotify, target: 1, pos: 1, route: []NodeID{2, 1}, payload: []byte{1, 0}},
		"find":         {proto: protoFind, flags: flagClosest, target: 1 + 1<<63, pos: 1, route: []NodeID{1, 2}, payload: []byte{0}},
		"find-reply":   {proto: protoFindReply, target: 1, pos: 1, route: []NodeID{2, 1}, payload: []byte{0}},
		"echo":         {proto: protoEcho, target: 3, pos: 1, route: []NodeID{1, 2, 3}, payload: echo},
		"echo-reply":   {proto: protoEchoReply, target: 1, pos: 1, route: []NodeID{3, 2, 1}, payload: reply},
		"error-link":   {proto: protoError, flags: flagHopByHop, target: 1, pos: 1, route: []NodeID{2, 1}, payload: errPayload(errLinkBroken, 2, 3, protoData, 0x13c50000)},
		"error-unr":    {proto: protoError, flags: flagHopByHop, target: 1, pos: 1, route: []NodeID{2, 1}, payload: errPayload(errUnreachable, 2, 9, protoEcho, 77)},
		"max-route":    {proto: protoData, target: 5, hops: 255, vhops: 64, pos: 254, route: ids(255, 1), payload: []byte{0, 0, 0, 0}},
		"e2e-init":     {proto: protoE2E, target: 3, pos: 1, route: []NodeID{1, 2, 3}, payload: append([]byte{e2eInit}, make([]byte, e2eInitLen-1)...)},
		"all-flags":    {proto: protoData, flags: 0xff, target: 5, pos: 0, route: []NodeID{5}, payload: []byte{0, 0, 0, 0}},
	}
}

func TestRoutedRoundTrip(t *testing.T) {
	for name, r := range routedSamples() {
		t.Run(name, func(t *testing.T) {
			b := encodeRouted(&r)
			if len(b) != routedHdr+8*len(r.route)+len(r.payload) {
				t.Fatalf("encoded %d bytes", len(b))
			}
			got, err := decodeRouted(b)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			want := r
			if len(want.payload) == 0 {
				want.payload, got.payload = nil, nil
			}
			if !reflect.DeepEqual(*got, want) {
				t.Fatalf("decoded %+v\nwant    %+v", *got, want)
			}
			if again := encodeRouted(got); !bytes.Equal(again, b) {
				t.Fatalf("re-encoded % x\nwant       % x", again, b)
			}
		})
	}
}

// TestDecodeReuse checks that decoding into a used struct (as Node does with
// its scratch) leaves nothing of the previous frame behind.
func TestDecodeReuse(t *testing.T) {
	var h hello
	big := hello{src: 1, seq: 1, neigh: ids(10, 1), hasMax: true, maxID: 50, path: ids(10, 60)}
	small := hello{src: 2, seq: 2, neigh: ids(1, 7)}
	if err := h.decode(big.appendTo(nil)); err != nil {
		t.Fatal(err)
	}
	if err := h.decode(small.appendTo(nil)); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(normHello(h), normHello(small)) {
		t.Fatalf("got %+v, want %+v", h, small)
	}
	var r routed
	s := routedSamples()
	a, b := s["max-route"], s["find"]
	if err := r.decode(encodeRouted(&a)); err != nil {
		t.Fatal(err)
	}
	if err := r.decode(encodeRouted(&b)); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(r, b) {
		t.Fatalf("got %+v, want %+v", r, b)
	}
}

func TestFrameTypeErrors(t *testing.T) {
	tests := []struct {
		b    []byte
		want error
	}{
		{nil, ErrShort},
		{[]byte{2}, ErrShort},
		{[]byte{0, 1}, ErrVersion},
		{[]byte{1, 1}, ErrVersion}, // v1: unauthenticated links
		{[]byte{2, 1}, ErrVersion}, // v2: no end-to-end authentication
		{[]byte{4, 1}, ErrVersion},
		{[]byte{255, 2}, ErrVersion},
		{[]byte{3, 0}, ErrType},
		{[]byte{3, 3}, ErrType}, // a handshake: LinkAuth's, not the Node's
		{[]byte{3, 255}, ErrType},
	}
	for _, tt := range tests {
		if _, err := frameType(tt.b); !errors.Is(err, tt.want) {
			t.Errorf("frameType(% x) = %v, want %v", tt.b, err, tt.want)
		}
	}
	// A valid body does not rescue a bad header.
	h := hello{src: 1}
	b := h.appendTo(nil)
	b[0] = 1
	if _, err := decodeHello(b); !errors.Is(err, ErrVersion) {
		t.Errorf("hello version 1: %v", err)
	}
}

func TestHelloTruncated(t *testing.T) {
	for _, h := range []hello{
		{src: 1, seq: 2, neigh: ids(3, 9)},
		{src: 1, seq: 2, neigh: ids(2, 9), hasMax: true, maxID: 99, maxSeq: 4, path: ids(3, 40)},
	} {
		b := h.appendTo(nil)
		for i := 0; i < len(b); i++ {
			if _, err := decodeHello(b[:i]); !errors.Is(err, ErrShort) {
				t.Errorf("%d of %d bytes: err %v, want ErrShort", i, len(b), err)
			}
		}
	}
}

func TestRoutedTruncated(t *testing.T) {
	for name, r := range routedSamples() {
		b := encodeRouted(&r)
		end := routedHdr + 8*len(r.route)
		for i := 0; i < end; i++ {
			if _, err := decodeRouted(b[:i]); !errors.Is(err, ErrShort) {
				t.Errorf("%s: %d of %d bytes: err %v, want ErrShort", name, i, end, err)
			}
		}
		// The payload runs to the end of the frame: a cut there is a
		// shorter payload, not an error (deliver checks payload sizes).
		for i := end; i <= len(b); i++ {
			got, err := decodeRouted(b[:i])
			if err != nil || len(got.payload) != i-end {
				t.Errorf("%s: %d bytes: err %v", name, i, err)
			}
		}
	}
}

func TestHelloFieldErrors(t *testing.T) {
	tooMany := hello{src: 1, neigh: ids(maxHelloNbr+1, 1)}
	badFlag := hello{src: 1, neigh: ids(2, 1)}
	bf := badFlag.appendTo(nil)
	bf[len(bf)-1] = 2
	maxNbr := hello{src: 1, neigh: ids(255, 1)}
	for name, b := range map[string][]byte{
		"65 neighbours":  tooMany.appendTo(nil),
		"255 neighbours": maxNbr.appendTo(nil),
		"max flag 2":     bf,
		"max flag 255":   append(bf[:len(bf)-1:len(bf)-1], 255),
	} {
		if _, err := decodeHello(b); !errors.Is(err, ErrField) {
			t.Errorf("%s: err %v, want ErrField", name, err)
		}
	}
}

func TestRoutedFieldErrors(t *testing.T) {
	base := routedSamples()["data"]
	mod := func(f func(b []byte) []byte) []byte { return f(encodeRouted(&base)) }
	tests := map[string][]byte{
		"pos == len":    mod(func(b []byte) []byte { b[14] = 3; return b }),
		"pos 255":       mod(func(b []byte) []byte { b[14] = 255; return b }),
		"zero route":    mod(func(b []byte) []byte { b[14], b[15] = 0, 0; return b }),
		"zero route/p1": mod(func(b []byte) []byte { b[14], b[15] = 1, 0; return b }),
		"proto 0":       mod(func(b []byte) []byte { b[2] = 0; return b }),
		"proto 9":       mod(func(b []byte) []byte { b[2] = protoE2E + 1; return b }),
		"proto 255":     mod(func(b []byte) []byte { b[2] = 255; return b }),
	}
	for name, b := range tests {
		if _, err := decodeRouted(b); !errors.Is(err, ErrField) {
			t.Errorf("%s: err %v, want ErrField", name, err)
		}
	}
	// A route longer than the frame is truncated, not a field error.
	b := mod(func(b []byte) []byte { b[15] = 200; return b })
	if _, err := decodeRouted(b); !errors.Is(err, ErrShort) {
		t.Errorf("route of 200 in a short frame: %v", err)
	}
}
