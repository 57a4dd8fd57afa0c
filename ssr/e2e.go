package ssr

import (
	"bytes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"net/netip"
	"slices"
	"time"
)

// End-to-end authentication of datagrams (wire format v3, FORMAT.md
// "End-to-end authentication"). Link security proves each neighbour and
// tags each frame per link, but a relay holding a valid link session could
// still rewrite the payload of a routed frame it carries, or originate one
// with another node's ID as its source. So every datagram is authenticated
// by its source for its target, and the target delivers only what
// verifies, with the verified source:
//
//   - Exact datagrams (to a node: SIP, RTP, DHT replies) are sealed under
//     a session between the two nodes, agreed in a handshake carried in
//     routed frames (protocol 8) with the same building blocks as the link
//     one (auth.go): a signed X25519 exchange proving the key behind each
//     node ID, HKDF, ChaCha20-Poly1305, the RFC 6479 replay window. A tag
//     costs about what a link tag costs; datagrams sent before the session
//     exists wait (bounded) for one round trip.
//   - Closest datagrams (to a key: DHT requests GET, PUT, hand-off) are
//     not authenticated end to end: they carry the ports and a kind byte,
//     and are delivered with the source routing says (route[0], proven
//     only per link). What they carry is either a read (GET) or signed
//     records (PUT, tombstones, hand-off: every record carries its
//     writer's ed25519 signature, checked by every holder: dht/store.go),
//     so a relay forging one in another node's name cannot write or change
//     data; the only effect is an answer sent, sealed and exact, to the
//     named node, which has no request outstanding with that ID and drops
//     it (nor can the relay open it). Signing every request instead cost an
//     ed25519 signature and verification per DHT request (milliseconds on
//     a router's MIPS core), and capping the verifications dropped most
//     DHT requests under a call load. Exact datagrams (SIP, RTP, DHT
//     replies and replica traffic) are where the source matters: sealed.
//
// Everything a peer can make this node keep is bounded: the session table
// (maxE2EPeers nodes, least recently used evicted), half-done handshakes,
// the waiting datagrams (per node and in all). The handshake answers a
// node gives are rate-limited.

// Data payload kinds after the ports (FORMAT.md).
const (
	kindSealed  = 1 // exact: under an end-to-end session
	kindClosest = 2 // closest: the application bytes follow, unauthenticated
)

// Messages of the end-to-end handshake (protocol 8), the payload's byte 0.
const (
	e2eInit    = 1
	e2eResp    = 2
	e2eConfirm = 3
)

const (
	// e2eSealedHdr: ports, kind, receiver's index, counter.
	e2eSealedHdr = 4 + 1 + 4 + 8
	// E2EOverhead is what end-to-end authentication adds to a datagram at
	// most: a sealed exact one's kind, index, counter and tag (29 bytes; a
	// closest one adds its kind byte only).
	E2EOverhead = e2eSealedHdr - 4 + tagSize
	// e2eAADLen: source, target, mode, then the sealed header.
	e2eAADLen = 8 + 8 + 1 + e2eSealedHdr

	e2eInitLen    = 1 + 4 + 32 + 32 + 1
	e2eRespBody   = 1 + 4 + 4 + 32 + 32 + 1
	e2eRespLen    = e2eRespBody + sigSize
	e2eConfirmLen = 1 + 4 + sigSize

	// maxE2EPeers bounds the nodes this node keeps end-to-end state for
	// (sessions, waiting datagrams, rate limits); maxE2EPending the
	// half-done handshakes.
	maxE2EPeers   = 1024
	maxE2EPending = 256
	// e2eQueuePeer and e2eQueueTotal bound the datagrams waiting for a
	// handshake, per target and in all; e2eQueueBytes their bytes.
	e2eQueuePeer  = 16
	e2eQueueTotal = 256
	e2eQueueBytes = 256 << 10
	// e2eQueueTimeout: datagrams whose handshake got no answer by then are
	// dropped (and reported Unreachable). The INIT is re-sent every
	// handshakeEvery meanwhile.
	e2eQueueTimeout = 3 * time.Second
	// e2eIdle: a node without a session, a waiting datagram or a
	// handshake for this long is forgotten.
	e2eIdle = time.Minute
)

// Labels that bind signatures and keys to their use.
const (
	e2eHSLabel      = "sipmesh e2e v3 handshake\x00"
	e2eConfirmLabel = "sipmesh e2e v3 confirm\x00"
	e2eKeyLabel     = "sipmesh e2e v3 keys"
)

var oldVersionLine = [...]string{
	1: "neighbour speaks SSR wire format v1 (unauthenticated links): refused; upgrade it to a sipmesh with wire format v3",
	2: "neighbour speaks SSR wire format v2 (no end-to-end authentication of datagrams): refused; upgrade it to a sipmesh with wire format v3",
}

// e2eFrame is a protocol-8 frame delivered by the Node to LinkAuth.
type e2eFrame struct {
	src     NodeID
	payload []byte
}

func (e2eFrame) isEvent() {}

// endToEnd is LinkAuth's end-to-end state.
type endToEnd struct {
	sessions map[uint32]*e2eSession // by our index
	peers    map[NodeID]*e2ePeer
	pending  map[uint32]*e2eHS // by our index
	waiting  map[NodeID]*e2ePeer
	queued   int // datagrams waiting, in all
	qbytes   int
	tokens   float64 // handshake answer budget
	tokensAt time.Time
	// outbox holds handshake messages and datagrams to originate once the
	// Node's current call has returned (the Node must not be re-entered
	// from its Env).
	outbox   []e2eOut
	flushing bool
	aad      []byte // a sealed datagram's associated data
}

type e2eOut struct {
	to      NodeID
	mode    Mode
	proto   byte
	payload []byte
}

// e2ePeer is what this node keeps of one other node.
type e2ePeer struct {
	id       NodeID
	cur      *e2eSession
	older    [2]*e2eSession
	queue    []queuedData
	since    time.Time // the oldest waiting datagram
	lastInit time.Time
	lastResp time.Time
	lastUsed time.Time
}

type queuedData struct {
	mode             Mode
	srcPort, dstPort uint16
	payload          []byte
}

type e2eSession struct {
	local, remote uint32
	peer          NodeID
	send, recv    cipher.AEAD
	ctr           uint64
	win           replayWindow
	born          time.Time
	initiator     bool
}

type e2eHS struct {
	local, remote uint32
	peer          NodeID
	initiator     bool
	eph           *ecdh.PrivateKey
	msg1          [e2eInitLen]byte
	peerPub       ed25519.PublicKey
	transcript    [sha256.Size]byte
	send, recv    cipher.AEAD
	born          time.Time
	done          bool // responder: installed on a first datagram
}

func (e *endToEnd) init() {
	e.sessions = make(map[uint32]*e2eSession)
	e.peers = make(map[NodeID]*e2ePeer)
	e.pending = make(map[uint32]*e2eHS)
	e.waiting = make(map[NodeID]*e2ePeer)
	e.tokens = hsBurst
	e.aad = make([]byte, 0, e2eAADLen+MaxFrame)
}

// ---- sending ----

// sendData seals a datagram the Node's Send was given (Node.sealer).
func (a *LinkAuth) sendData(now time.Time, target NodeID, mode Mode, srcPort, dstPort uint16, payload []byte) {
	a.now = now
	switch {
	case mode == Closest:
		a.e2e.outbox = append(a.e2e.outbox, e2eOut{to: target, mode: Closest, proto: protoData,
			payload: closestData(srcPort, dstPort, payload)})
	case target == a.id:
		// To itself: nothing crosses a link, nothing to prove.
		a.out.Deliver(Datagram{Src: a.id, Target: a.id, Mode: Exact, SrcPort: srcPort, DstPort: dstPort, Payload: slices.Clone(payload)})
	default:
		p := a.e2ePeer(target, true)
		if p == nil {
			a.stats.E2EQueueDropped++
			return
		}
		p.lastUsed = a.now
		if s := p.cur; s != nil && a.e2eUsable(s) {
			a.e2eMaybeRekey(p, s)
			a.e2e.outbox = append(a.e2e.outbox, e2eOut{to: target, proto: protoData,
				payload: a.seal(s, target, srcPort, dstPort, payload)})
		} else {
			a.enqueue(p, queuedData{Exact, srcPort, dstPort, slices.Clone(payload)})
			a.e2eInitiate(p)
		}
	}
	a.flushE2E()
}

// seal makes a sealed data payload for s's peer.
func (a *LinkAuth) seal(s *e2eSession, target NodeID, srcPort, dstPort uint16, payload []byte) []byte {
	b := make([]byte, 0, e2eSealedHdr+len(payload)+tagSize)
	b = binary.BigEndian.AppendUint16(b, srcPort)
	b = binary.BigEndian.AppendUint16(b, dstPort)
	b = append(b, kindSealed)
	b = binary.BigEndian.AppendUint32(b, s.remote)
	b = binary.BigEndian.AppendUint64(b, s.ctr)
	a.setNonce(s.ctr)
	s.ctr++
	aad := a.e2eAAD(a.id, target, Exact, b)
	if a.encrypt {
		return s.send.Seal(b, a.nonce[:], payload, aad)
	}
	b = append(b, payload...)
	aad = append(aad, b[e2eSealedHdr:]...)
	a.e2e.aad = aad
	return s.send.Seal(b, a.nonce[:], nil, aad)
}

// e2eAAD is a sealed datagram's associated data: what routing carries
// outside the payload (source, target, mode) and the sealed header.
func (a *LinkAuth) e2eAAD(src, target NodeID, mode Mode, hdr []byte) []byte {
	b := a.e2e.aad[:0]
	b = binary.BigEndian.AppendUint64(b, uint64(src))
	b = binary.BigEndian.AppendUint64(b, uint64(target))
	b = append(b, byte(mode))
	return append(b, hdr[:e2eSealedHdr]...)
}

// closestData makes a closest data payload: ports, kind, application
// bytes (not authenticated end to end: the package doc says why).
func closestData(srcPort, dstPort uint16, payload []byte) []byte {
	b := make([]byte, 0, 5+len(payload))
	b = binary.BigEndian.AppendUint16(b, srcPort)
	b = binary.BigEndian.AppendUint16(b, dstPort)
	b = append(b, kindClosest)
	return append(b, payload...)
}

func (a *LinkAuth) enqueue(p *e2ePeer, d queuedData) {
	e := &a.e2e
	if len(p.queue) >= e2eQueuePeer || e.queued >= e2eQueueTotal || e.qbytes+len(d.payload) > e2eQueueBytes {
		a.stats.E2EQueueDropped++
		return
	}
	if len(p.queue) == 0 {
		p.since = a.now
		e.waiting[p.id] = p
	}
	p.queue = append(p.queue, d)
	e.queued++
	e.qbytes += len(d.payload)
}

// dropQueue drops p's waiting datagrams; unanswered, it reports them
// Unreachable like a route that could not be found.
func (a *LinkAuth) dropQueue(p *e2ePeer, report bool) {
	for _, d := range p.queue {
		a.stats.E2EQueueDropped++
		a.e2e.queued--
		a.e2e.qbytes -= len(d.payload)
		if report {
			a.out.Deliver(Unreachable{Target: p.id, Mode: d.mode, DstPort: d.dstPort, At: a.id,
				Reason: "no end-to-end session: the target did not answer the handshake"})
		}
	}
	p.queue = nil
	delete(a.e2e.waiting, p.id)
}

// flushE2E originates what waits in the outbox: handshake messages, then
// datagrams. It runs after every Node call has returned.
func (a *LinkAuth) flushE2E() {
	e := &a.e2e
	if e.flushing || a.node == nil {
		return
	}
	e.flushing = true
	for i := 0; i < len(e.outbox); i++ {
		o := e.outbox[i]
		e.outbox[i] = e2eOut{}
		if o.payload != nil {
			a.node.originate(a.now, o.proto, o.mode, o.to, o.payload)
		}
	}
	e.outbox = e.outbox[:0]
	e.flushing = false
}

// readyPeer sends p's waiting datagrams under its new session.
func (a *LinkAuth) readyPeer(p *e2ePeer) {
	s := p.cur
	for _, d := range p.queue {
		a.e2e.queued--
		a.e2e.qbytes -= len(d.payload)
		a.e2e.outbox = append(a.e2e.outbox, e2eOut{to: p.id, proto: protoData,
			payload: a.seal(s, p.id, d.srcPort, d.dstPort, d.payload)})
	}
	p.queue = nil
	delete(a.e2e.waiting, p.id)
}

// ---- receiving ----

// openData checks a datagram the Node delivered and passes on what
// verifies, with its payload opened.
func (a *LinkAuth) openData(d Datagram) {
	p := d.Payload
	if len(p) < 1 {
		a.stats.E2EUnauthenticated++
		return
	}
	switch {
	case p[0] == kindSealed && d.Mode == Exact:
		a.openSealedData(d)
	case p[0] == kindClosest && d.Mode == Closest:
		// Delivered with routing's source: what a closest datagram can
		// make its target do needs no more (the package doc says why).
		d.Payload = p[1:]
		a.deliverData(d)
	default:
		a.stats.E2EUnauthenticated++
	}
}

func (a *LinkAuth) openSealedData(d Datagram) {
	p := d.Payload // the Node's copy: opened in place
	if len(p) < e2eSealedHdr-4+tagSize {
		a.stats.E2EUnauthenticated++
		return
	}
	idx := binary.BigEndian.Uint32(p[1:])
	ctr := binary.BigEndian.Uint64(p[5:])
	var hdr [e2eSealedHdr]byte
	binary.BigEndian.PutUint16(hdr[:], d.SrcPort)
	binary.BigEndian.PutUint16(hdr[2:], d.DstPort)
	copy(hdr[4:], p[:e2eSealedHdr-4])
	s := a.e2e.sessions[idx]
	var h *e2eHS
	if s == nil || !a.e2eUsable(s) {
		// The first datagram under a session may overtake its CONFIRM
		// (WireGuard §5.4.7: data confirms the handshake too).
		if h = a.e2e.pending[idx]; h == nil || h.initiator || h.done || h.peer != d.Src {
			a.stats.E2EUnauthenticated++
			a.e2eLost(d.Src)
			return
		}
		s = &e2eSession{local: h.local, remote: h.remote, peer: h.peer, send: h.send, recv: h.recv, born: a.now}
	}
	if s.peer != d.Src {
		a.stats.E2EWrongSender++
		a.refuse("datagram sealed under another node's end-to-end session: dropped", netip.AddrPort{}, d.Src)
		return
	}
	if ctr >= rejectMessages || !s.win.fresh(ctr) {
		a.stats.E2EReplayed++
		return
	}
	a.setNonce(ctr)
	aad := a.e2eAAD(d.Src, d.Target, Exact, hdr[:])
	body := p[e2eSealedHdr-4:]
	var out []byte
	if a.encrypt {
		var err error
		if out, err = s.recv.Open(body[:0], a.nonce[:], body, aad); err != nil {
			a.stats.E2EBadMAC++
			return
		}
	} else {
		end := len(body) - tagSize
		aad = append(aad, body[:end]...)
		a.e2e.aad = aad
		if _, err := s.recv.Open(a.open[:0], a.nonce[:], body[end:], aad); err != nil {
			a.stats.E2EBadMAC++
			return
		}
		out = body[:end]
	}
	s.win.accept(ctr)
	if h != nil {
		h.done = true // its CONFIRM, when it comes, changes nothing
		a.e2eInstall(s)
	}
	if pe := a.e2e.peers[s.peer]; pe != nil {
		pe.lastUsed = a.now
	}
	d.Payload = out
	a.deliverData(d)
}

// datagramSink is an Env that takes datagrams by value: the Router's,
// which spares the allocation of wrapping each one in an Event.
type datagramSink interface{ deliverDatagram(Datagram) }

// deliverData hands a verified datagram to the driver.
func (a *LinkAuth) deliverData(d Datagram) {
	if ds, ok := a.out.(datagramSink); ok {
		ds.deliverDatagram(d)
		return
	}
	a.out.Deliver(d)
}

// e2eLost: a datagram from src under a session this node does not know
// (it restarted, or forgot src): a new handshake, so src's next datagrams
// get through. Rate-limited per node and by the handshake budget, as a
// relay can send such datagrams in any node's name.
func (a *LinkAuth) e2eLost(src NodeID) {
	if src == a.id {
		return
	}
	p := a.e2e.peers[src]
	if p != nil && !p.lastInit.IsZero() && a.now.Sub(p.lastInit) < handshakeEvery {
		return // one is under way
	}
	// Whether src is known or not, the budget bounds the handshakes such
	// datagrams cost (a relay could name every node this node knows).
	if !a.e2eAllow() {
		a.stats.E2ERateLimited++
		return
	}
	if p == nil {
		if p = a.e2ePeer(src, true); p == nil {
			return
		}
	}
	a.e2eInitiate(p)
}

// ---- handshake ----

func (a *LinkAuth) onE2E(f e2eFrame) {
	if len(f.payload) < 1 || f.src == a.id {
		a.stats.E2EBadHandshake++
		return
	}
	switch f.payload[0] {
	case e2eInit:
		a.onE2EInit(f.src, f.payload)
	case e2eResp:
		a.onE2EResp(f.src, f.payload)
	case e2eConfirm:
		a.onE2EConfirm(f.src, f.payload)
	default:
		a.stats.E2EBadHandshake++
	}
}

// e2eInitiate starts a handshake with p, at most once per handshakeEvery.
func (a *LinkAuth) e2eInitiate(p *e2ePeer) {
	if !p.lastInit.IsZero() && a.now.Sub(p.lastInit) < handshakeEvery {
		return
	}
	for _, h := range a.e2e.pending {
		if !h.initiator && h.peer == p.id && a.now.Sub(h.born) < handshakeEvery {
			return // p is handshaking with us: its confirmation is due
		}
	}
	p.lastInit = a.now
	eph, idx, ok := a.e2eEphemeral()
	if !ok {
		return
	}
	h := &e2eHS{local: idx, peer: p.id, initiator: true, eph: eph, born: a.now}
	m := h.msg1[:0]
	m = append(m, e2eInit)
	m = binary.BigEndian.AppendUint32(m, idx)
	m = append(m, a.pub...)
	m = append(m, eph.PublicKey().Bytes()...)
	m = append(m, a.mode())
	a.e2eAddPending(h)
	a.stats.E2EHandshakesSent++
	a.e2e.outbox = append(a.e2e.outbox, e2eOut{to: p.id, proto: protoE2E, payload: bytes.Clone(h.msg1[:])})
}

func (a *LinkAuth) e2eEphemeral() (*ecdh.PrivateKey, uint32, bool) {
	eph, err := ecdh.X25519().GenerateKey(a.rand)
	if err != nil {
		return nil, 0, false
	}
	var b [4]byte
	for range 8 {
		if _, err := io.ReadFull(a.rand, b[:]); err != nil {
			return nil, 0, false
		}
		i := binary.BigEndian.Uint32(b[:])
		if i != 0 && a.e2e.sessions[i] == nil && a.e2e.pending[i] == nil {
			return eph, i, true
		}
	}
	return nil, 0, false
}

func (a *LinkAuth) e2eAddPending(h *e2eHS) {
	if len(a.e2e.pending) >= maxE2EPending {
		var oldest *e2eHS
		for _, p := range a.e2e.pending {
			if oldest == nil || p.born.Before(oldest.born) {
				oldest = p
			}
		}
		delete(a.e2e.pending, oldest.local)
	}
	a.e2e.pending[h.local] = h
}

// e2eAllow spends one token of the end-to-end handshake budget.
func (a *LinkAuth) e2eAllow() bool {
	e := &a.e2e
	e.tokens = min(hsBurst, e.tokens+a.now.Sub(e.tokensAt).Seconds()*hsRate)
	e.tokensAt = a.now
	if e.tokens < 1 {
		return false
	}
	e.tokens--
	return true
}

// e2eTranscript hashes a handshake (the response without its signature)
// with both node IDs.
func e2eTranscript(initiator, responder NodeID, msg1, msg2 []byte) [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte(e2eHSLabel))
	var ids [16]byte
	binary.BigEndian.PutUint64(ids[:], uint64(initiator))
	binary.BigEndian.PutUint64(ids[8:], uint64(responder))
	h.Write(ids[:])
	h.Write(msg1)
	h.Write(msg2)
	var t [sha256.Size]byte
	h.Sum(t[:0])
	return t
}

func e2eConfirmHash(t [sha256.Size]byte) []byte {
	h := sha256.New()
	h.Write([]byte(e2eConfirmLabel))
	h.Write(t[:])
	return h.Sum(nil)
}

func (a *LinkAuth) onE2EInit(src NodeID, b []byte) {
	if len(b) < e2eInitLen {
		a.stats.E2EBadHandshake++
		return
	}
	b = b[:e2eInitLen]
	pub := b[5:37]
	if IDFromPublicKey(ed25519.PublicKey(pub)) != src {
		a.stats.E2EBadHandshake++
		a.refuse("end-to-end handshake with a key that is not its source's: refused", netip.AddrPort{}, src)
		return
	}
	if b[69] != a.mode() {
		a.stats.E2EBadHandshake++
		return
	}
	p := a.e2e.peers[src]
	if p != nil && !p.lastResp.IsZero() && a.now.Sub(p.lastResp) < respondEvery || !a.e2eAllow() {
		a.stats.E2ERateLimited++
		return
	}
	if p == nil {
		if p = a.e2ePeer(src, true); p == nil {
			a.stats.E2ERateLimited++
			return
		}
	}
	p.lastResp = a.now
	theirEph, err := ecdh.X25519().NewPublicKey(b[37:69])
	if err != nil {
		a.stats.E2EBadHandshake++
		return
	}
	eph, idx, ok := a.e2eEphemeral()
	if !ok {
		return
	}
	secret, err := eph.ECDH(theirEph)
	if err != nil {
		a.stats.E2EBadHandshake++ // a low-order point
		return
	}
	remote := binary.BigEndian.Uint32(b[1:])
	m := make([]byte, 0, e2eRespLen)
	m = append(m, e2eResp)
	m = binary.BigEndian.AppendUint32(m, idx)
	m = binary.BigEndian.AppendUint32(m, remote)
	m = append(m, a.pub...)
	m = append(m, eph.PublicKey().Bytes()...)
	m = append(m, a.mode())
	t := e2eTranscript(src, a.id, b, m)
	m = append(m, ed25519.Sign(a.key, t[:])...)
	i2r, r2i, ok := keys(secret, t, e2eKeyLabel)
	if !ok {
		return
	}
	a.e2eAddPending(&e2eHS{local: idx, remote: remote, peer: src, peerPub: bytes.Clone(pub),
		transcript: t, send: r2i, recv: i2r, born: a.now})
	a.e2e.outbox = append(a.e2e.outbox, e2eOut{to: src, proto: protoE2E, payload: m})
}

func (a *LinkAuth) onE2EResp(src NodeID, b []byte) {
	if len(b) < e2eRespLen {
		a.stats.E2EBadHandshake++
		return
	}
	b = b[:e2eRespLen]
	h := a.e2e.pending[binary.BigEndian.Uint32(b[5:])]
	if h == nil || !h.initiator || h.peer != src || IDFromPublicKey(ed25519.PublicKey(b[9:41])) != src {
		a.stats.E2EBadHandshake++
		return
	}
	t := e2eTranscript(a.id, src, h.msg1[:], b[:e2eRespBody])
	if !ed25519.Verify(ed25519.PublicKey(b[9:41]), t[:], b[e2eRespBody:]) {
		a.stats.E2EBadHandshake++
		a.refuse("end-to-end handshake signature does not verify: refused", netip.AddrPort{}, src)
		return
	}
	delete(a.e2e.pending, h.local)
	if b[73] != a.mode() {
		a.stats.E2EBadHandshake++
		return
	}
	theirEph, err := ecdh.X25519().NewPublicKey(b[41:73])
	if err != nil {
		a.stats.E2EBadHandshake++
		return
	}
	secret, err := h.eph.ECDH(theirEph)
	if err != nil {
		a.stats.E2EBadHandshake++
		return
	}
	i2r, r2i, ok := keys(secret, t, e2eKeyLabel)
	if !ok {
		return
	}
	remote := binary.BigEndian.Uint32(b[1:])
	m := make([]byte, 0, e2eConfirmLen)
	m = append(m, e2eConfirm)
	m = binary.BigEndian.AppendUint32(m, remote)
	m = append(m, ed25519.Sign(a.key, e2eConfirmHash(t))...)
	// The confirmation goes out before the datagrams that waited.
	a.e2e.outbox = append(a.e2e.outbox, e2eOut{to: src, proto: protoE2E, payload: m})
	a.e2eInstall(&e2eSession{local: h.local, remote: remote, peer: src, send: i2r, recv: r2i, born: a.now, initiator: true})
}

func (a *LinkAuth) onE2EConfirm(src NodeID, b []byte) {
	if len(b) < e2eConfirmLen {
		a.stats.E2EBadHandshake++
		return
	}
	h := a.e2e.pending[binary.BigEndian.Uint32(b[1:])]
	if h == nil || h.initiator || h.peer != src {
		a.stats.E2EBadHandshake++
		return
	}
	if h.done {
		delete(a.e2e.pending, h.local)
		return
	}
	if !ed25519.Verify(h.peerPub, e2eConfirmHash(h.transcript), b[5:e2eConfirmLen]) {
		a.stats.E2EBadHandshake++
		a.refuse("end-to-end handshake confirmation does not verify: refused", netip.AddrPort{}, src)
		return
	}
	delete(a.e2e.pending, h.local)
	a.e2eInstall(&e2eSession{local: h.local, remote: h.remote, peer: src, send: h.send, recv: h.recv, born: a.now})
}

// e2eInstall makes s the session with its peer; the two before stay for
// datagrams still in flight under them (as link sessions, auth.go).
func (a *LinkAuth) e2eInstall(s *e2eSession) {
	p := a.e2ePeer(s.peer, true)
	if p == nil {
		return
	}
	a.stats.E2EHandshakes++
	if last := p.older[len(p.older)-1]; last != nil {
		delete(a.e2e.sessions, last.local)
	}
	copy(p.older[1:], p.older[:])
	p.older[0], p.cur = p.cur, s
	p.lastUsed = a.now
	a.e2e.sessions[s.local] = s
	if len(p.queue) > 0 {
		a.readyPeer(p)
	}
}

func (a *LinkAuth) e2eUsable(s *e2eSession) bool {
	return a.now.Sub(s.born) < RejectAfter && s.ctr < rejectMessages
}

// e2eMaybeRekey starts a new handshake when s is old: its initiator
// first, the other side 15 s later should the initiator have gone quiet.
func (a *LinkAuth) e2eMaybeRekey(p *e2ePeer, s *e2eSession) {
	after := RekeyAfter
	if !s.initiator {
		after += 15 * time.Second
	}
	if a.now.Sub(s.born) >= after || s.ctr >= rekeyMessages {
		a.e2eInitiate(p)
	}
}

// e2ePeer returns the state kept of node id, creating it if asked; when
// the table is full the least recently used node without waiting
// datagrams is forgotten.
func (a *LinkAuth) e2ePeer(id NodeID, create bool) *e2ePeer {
	e := &a.e2e
	if p := e.peers[id]; p != nil || !create {
		return p
	}
	if len(e.peers) >= maxE2EPeers {
		var lru *e2ePeer
		for _, p := range e.peers {
			if len(p.queue) == 0 && (lru == nil || p.lastUsed.Before(lru.lastUsed)) {
				lru = p
			}
		}
		if lru == nil {
			return nil
		}
		a.e2eForget(lru)
	}
	p := &e2ePeer{id: id, lastUsed: a.now}
	e.peers[id] = p
	return p
}

func (a *LinkAuth) e2eForget(p *e2ePeer) {
	e := &a.e2e
	a.dropQueue(p, false)
	for _, s := range append(p.older[:], p.cur) {
		if s != nil {
			delete(e.sessions, s.local)
		}
	}
	delete(e.peers, p.id)
}

// tickE2E re-sends handshakes for waiting datagrams and drops those
// waiting too long.
func (a *LinkAuth) tickE2E() {
	for _, p := range a.e2e.waiting {
		if a.now.Sub(p.since) >= e2eQueueTimeout {
			a.dropQueue(p, true)
		} else {
			a.e2eInitiate(p)
		}
	}
}

// sweepE2E (every sweepEvery, with link security's sweep) forgets
// expired sessions, half-done handshakes and idle nodes.
func (a *LinkAuth) sweepE2E() {
	e := &a.e2e
	for i, h := range e.pending {
		if a.now.Sub(h.born) >= pendingTimeout {
			delete(e.pending, i)
		}
	}
	for _, p := range e.peers {
		if p.cur != nil && !a.e2eUsable(p.cur) {
			delete(e.sessions, p.cur.local)
			p.cur = nil
		}
		for i, o := range p.older {
			if o != nil && !a.e2eUsable(o) {
				delete(e.sessions, o.local)
				p.older[i] = nil
			}
		}
		if p.cur == nil && len(p.queue) == 0 && a.now.Sub(p.lastUsed) >= e2eIdle &&
			a.now.Sub(p.lastInit) >= e2eIdle && a.now.Sub(p.lastResp) >= e2eIdle {
			a.e2eForget(p)
		}
	}
}
