package ssr

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Version is the wire format version; FORMAT.md documents it.
const Version = 3

const (
	typeHello  = 1
	typeRouted = 2
)

// Protocols carried in a routed frame.
const (
	protoData      = 1 // application datagram: src port, dst port, bytes
	protoNotify    = 2 // ring view exchange (successor/predecessor notification)
	protoFind      = 3 // closest-node lookup (fingers)
	protoFindReply = 4
	protoEcho      = 5 // ping
	protoEchoReply = 6
	protoError     = 7 // link broken / unreachable, processed at every hop
	protoE2E       = 8 // end-to-end handshake between source and target (e2e.go)
)

const (
	flagClosest  = 1 << 0 // closest delivery (else exact)
	flagHopByHop = 1 << 1 // every node on the route processes the payload
	// flagRepaired marks a frame re-routed around a broken link: relays
	// no longer redirect it (see Node.improve), they only shorten its route.
	flagRepaired = 1 << 2
	// flagDetour marks a frame sent past its exact target, to the target's
	// successor side, by a node with no route to it (Node.detour); it is
	// not detoured twice.
	flagDetour = 1 << 3
)

const (
	errLinkBroken  = 1
	errUnreachable = 2
	errClosest     = 0x80 // or-ed into the code: the target was a key
)

const (
	maxRoute    = 255 // route entries: the length is one byte
	maxHelloNbr = 64  // neighbour IDs in a beacon
	helloHdr    = 2 + 8 + 4 + 1
	routedHdr   = 2 + 1 + 1 + 8 + 1 + 1 + 1 + 1
)

// Decoding errors; every malformed frame is counted and dropped.
var (
	ErrShort   = errors.New("ssr: frame truncated")
	ErrVersion = errors.New("ssr: unsupported frame version")
	ErrType    = errors.New("ssr: unknown frame type")
	ErrField   = errors.New("ssr: bad field")
)

type hello struct {
	src    NodeID
	seq    uint32
	neigh  []NodeID
	hasMax bool
	maxID  NodeID
	maxSeq uint32
	path   []NodeID // from the sender's first hop to maxID
}

type routed struct {
	proto, flags uint8
	target       NodeID
	vhops        uint8 // virtual hops (routing decisions) so far
	hops         uint8 // physical transmissions so far (saturating)
	pos          uint8 // index in route of the node that receives the frame
	route        []NodeID
	payload      []byte
	// from is not on the wire: the hop a repaired or detoured frame
	// arrived from (Node.bounceFrom), zero otherwise.
	from NodeID
}

func appendIDs(b []byte, ids []NodeID) []byte {
	for _, id := range ids {
		b = binary.BigEndian.AppendUint64(b, uint64(id))
	}
	return b
}

// readIDs decodes n IDs from b into dst (reused), returning the rest of b.
func readIDs(dst []NodeID, b []byte, n int) ([]NodeID, []byte, error) {
	if len(b) < 8*n {
		return dst, b, ErrShort
	}
	dst = dst[:0]
	for i := 0; i < n; i++ {
		dst = append(dst, NodeID(binary.BigEndian.Uint64(b[8*i:])))
	}
	return dst, b[8*n:], nil
}

func (h *hello) appendTo(b []byte) []byte {
	b = append(b, Version, typeHello)
	b = binary.BigEndian.AppendUint64(b, uint64(h.src))
	b = binary.BigEndian.AppendUint32(b, h.seq)
	b = append(b, byte(len(h.neigh)))
	b = appendIDs(b, h.neigh)
	if !h.hasMax {
		return append(b, 0)
	}
	b = append(b, 1)
	b = binary.BigEndian.AppendUint64(b, uint64(h.maxID))
	b = binary.BigEndian.AppendUint32(b, h.maxSeq)
	b = append(b, byte(len(h.path)))
	return appendIDs(b, h.path)
}

func (h *hello) decode(b []byte) error {
	if len(b) < helloHdr+1 {
		return ErrShort
	}
	h.src = NodeID(binary.BigEndian.Uint64(b[2:]))
	h.seq = binary.BigEndian.Uint32(b[10:])
	n := int(b[14])
	if n > maxHelloNbr {
		return fmt.Errorf("%w: %d neighbours in a beacon", ErrField, n)
	}
	var err error
	if h.neigh, b, err = readIDs(h.neigh, b[helloHdr:], n); err != nil {
		return err
	}
	if len(b) < 1 {
		return ErrShort
	}
	switch b[0] {
	case 0:
		h.hasMax = false
		return nil
	case 1:
	default:
		return fmt.Errorf("%w: max flag %d", ErrField, b[0])
	}
	if len(b) < 1+8+4+1 {
		return ErrShort
	}
	h.hasMax = true
	h.maxID = NodeID(binary.BigEndian.Uint64(b[1:]))
	h.maxSeq = binary.BigEndian.Uint32(b[9:])
	h.path, _, err = readIDs(h.path, b[14:], int(b[13]))
	return err
}

// appendHeader writes a routed frame's header and route; the payload follows.
func (r *routed) appendHeader(b []byte) []byte {
	b = append(b, Version, typeRouted, r.proto, r.flags)
	b = binary.BigEndian.AppendUint64(b, uint64(r.target))
	b = append(b, r.vhops, r.hops, r.pos, byte(len(r.route)))
	return appendIDs(b, r.route)
}

func (r *routed) decode(b []byte) error {
	if len(b) < routedHdr {
		return ErrShort
	}
	r.proto, r.flags = b[2], b[3]
	if r.proto < protoData || r.proto > protoE2E {
		return fmt.Errorf("%w: protocol %d", ErrField, r.proto)
	}
	r.target = NodeID(binary.BigEndian.Uint64(b[4:]))
	r.vhops, r.hops, r.pos = b[12], b[13], b[14]
	n := int(b[15])
	if n == 0 || int(r.pos) >= n {
		return fmt.Errorf("%w: position %d in a route of %d", ErrField, r.pos, n)
	}
	var err error
	r.route, r.payload, err = readIDs(r.route, b[routedHdr:], n)
	return err
}

// frameType validates the common header.
func frameType(b []byte) (byte, error) {
	if len(b) < 2 {
		return 0, ErrShort
	}
	if b[0] != Version {
		return 0, fmt.Errorf("%w %d", ErrVersion, b[0])
	}
	if b[1] != typeHello && b[1] != typeRouted {
		return 0, fmt.Errorf("%w %d", ErrType, b[1])
	}
	return b[1], nil
}
