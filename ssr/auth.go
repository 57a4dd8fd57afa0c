package ssr

import (
	"bytes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"log/slog"
	"net/netip"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// Link security (since wire format v2, FORMAT.md "Link security"). Every frame
// between link neighbours is authenticated under a session key the two
// agreed in a handshake that proves each side holds the ed25519 key its
// node ID is the hash of (a signed ephemeral X25519 exchange, in the
// manner of SIGMA / the signed Diffie-Hellman of TLS 1.3 §4.4.3: both
// sides sign the transcript that holds both ephemerals and the mesh
// settings). Frames that fail are dropped silently and counted, like
// WireGuard; a neighbour without a session reaches the Node with nothing
// but handshake messages, so it gets no routing state at all.

// Frame types of v2 beside the Node's HELLO (1) and ROUTED (2), which only
// travel inside BEACON and SEALED envelopes.
const (
	typeHSInit    = 3
	typeHSResp    = 4
	typeHSConfirm = 5
	typeBeacon    = 6
	typeSealed    = 7
)

const (
	tagSize      = chacha20poly1305.Overhead
	sigSize      = ed25519.SignatureSize
	hsInitLen    = 2 + 4 + 8 + 32 + 32 + 1 + sigSize // … mode, admission
	hsRespBody   = 2 + 4 + 4 + 8 + 32 + 32 + 1 + sigSize
	hsRespLen    = hsRespBody + sigSize
	hsConfirmLen = 2 + 4 + sigSize
	sealedHdr    = 2 + 4 + 8
	beaconHdr    = 2 + 8 + 8
	beaconEntry  = 4 + tagSize
	// AuthOverhead is what link security adds to a unicast frame.
	AuthOverhead = sealedHdr + tagSize
	// maxWireFrame is the longest frame on a link: a sealed MaxFrame.
	maxWireFrame = MaxFrame + AuthOverhead
	// beaconDomain is or-ed into a beacon counter to form its nonce, so a
	// beacon tag and a unicast frame never share a nonce under one key.
	beaconDomain = 1 << 63
)

// Session lifetimes, after WireGuard (Donenfeld, "WireGuard", §6.1, §6.4).
const (
	// RekeyAfter: the side that initiated a session starts a new
	// handshake when it is this old (the other side 15 s later, should
	// the initiator be gone quiet).
	RekeyAfter = 2 * time.Minute
	// RejectAfter: a session this old is no longer used either way.
	RejectAfter = 3 * time.Minute
	// rekeyMessages / rejectMessages bound the frames under one key.
	rekeyMessages  = 1 << 32
	rejectMessages = 1 << 60
	// handshakeEvery is the least time between two handshakes this node
	// starts with one neighbour address, and respondEvery between two it
	// answers.
	handshakeEvery = time.Second
	respondEvery   = 200 * time.Millisecond
	// hsRate/hsBurst bound the handshake answers (an ed25519 signature
	// each, a few ms on a router's MIPS core) from all addresses.
	hsRate  = 20
	hsBurst = 40
	// pendingTimeout drops a handshake that got no answer.
	pendingTimeout = 5 * time.Second
	// maxPeers bounds the link addresses tracked (sessions and rate
	// limits); maxPending the half-done handshakes.
	maxPeers   = 1024
	maxPending = 128
	sweepEvery = 10 * time.Second
)

// Labels that bind signatures and keys to their use.
const (
	hsLabel      = "sipmesh link v2 handshake\x00"
	admitLabel   = "sipmesh node admission v1\x00"
	confirmLabel = "sipmesh link v2 confirm\x00"
	keyLabel     = "sipmesh link v2 keys"
)

// AuthStats count link security's work and what it refused; they show in
// `sipmesh status --json` under the router.
type AuthStats struct {
	Sessions        int    `json:"sessions"`         // live link sessions
	Handshakes      uint64 `json:"handshakes"`       // completed
	HandshakesSent  uint64 `json:"handshakes_sent"`  // started by this node
	BadHandshake    uint64 `json:"bad_handshake"`    // bad signature, key, or for no handshake of ours
	BadIdentity     uint64 `json:"bad_identity"`     // handshake key whose hash is not the claimed ID
	ModeMismatch    uint64 `json:"mode_mismatch"`    // neighbour with the other mesh-encryption setting
	NotAdmitted     uint64 `json:"not_admitted"`     // closed mesh: neighbour without a valid admission
	RateLimited     uint64 `json:"rate_limited"`     // handshake messages not answered (rate or table bound)
	Unauthenticated uint64 `json:"unauthenticated"`  // frames from no session (unknown, expired, other address)
	BadMAC          uint64 `json:"bad_mac"`          // frames whose tag did not verify
	Replayed        uint64 `json:"replayed"`         // frames with a counter already seen or too old
	WrongSender     uint64 `json:"wrong_sender"`     // authenticated frames naming another node as their sender
	OldVersion      uint64 `json:"old_version"`      // v1 frames (unauthenticated format) refused
	Malformed       uint64 `json:"malformed"`        // v2 envelopes that did not decode, unknown versions
	SendNoSession   uint64 `json:"send_no_session"`  // unicast frames not sent: no session with the neighbour yet
	Encrypted       bool   `json:"encrypted_links"`  // mesh-encryption on
	Discovery       uint64 `json:"discovery_beacon"` // beacons from neighbours without a session (start a handshake)

	// End to end (e2e.go): between the source and the target of datagrams.
	E2ESessions        int    `json:"e2e_sessions"`        // live end-to-end sessions
	E2EHandshakes      uint64 `json:"e2e_handshakes"`      // completed
	E2EHandshakesSent  uint64 `json:"e2e_handshakes_sent"` // started by this node
	E2EBadHandshake    uint64 `json:"e2e_bad_handshake"`   // bad signature, key, mode, or for no handshake of ours
	E2ERateLimited     uint64 `json:"e2e_rate_limited"`    // handshakes not answered or not started (budget)
	E2EUnauthenticated uint64 `json:"e2e_unauthenticated"` // exact datagrams under no known session or not sealed, datagrams of the other mode's kind
	E2EBadMAC          uint64 `json:"e2e_bad_mac"`         // sealed datagrams whose tag did not verify
	E2EReplayed        uint64 `json:"e2e_replayed"`        // datagrams already delivered or too old
	E2EWrongSender     uint64 `json:"e2e_wrong_sender"`    // datagrams under a session of another node than their source
	E2EQueued          int    `json:"e2e_queued"`          // datagrams waiting for a handshake now
	E2EQueueDropped    uint64 `json:"e2e_queue_dropped"`   // datagrams dropped waiting (queue full, handshake unanswered)
}

// AuthConfig configures link security.
type AuthConfig struct {
	// Key is the node's identity.
	Key ed25519.PrivateKey
	// Encrypt: mesh-encryption on. Payloads are ChaCha20-Poly1305
	// encrypted per link; off, they are authenticated only (carried as
	// associated data), as amateur-radio rules require.
	Encrypt bool
	// Logger takes the lines peers cause; wrap it with ratelog.
	Logger *slog.Logger
	// Rand is the source of ephemeral keys and indices (nil: crypto/rand).
	Rand io.Reader
	// Admission is this node's admission: the mesh administrator's
	// signature of its public key (Admit), sent in every handshake; nil
	// when it has none.
	Admission []byte
	// Closed is mesh-admission closed: a neighbour must present an
	// admission by Admin, or it gets no session.
	Closed bool
	// Admin is the mesh administrator's public key (required when Closed).
	Admin ed25519.PublicKey
}

// Admit signs pub's admission to a closed mesh with the administrator's
// key: what a node presents in its handshakes (FORMAT.md, admission).
func Admit(admin ed25519.PrivateKey, pub ed25519.PublicKey) []byte {
	return ed25519.Sign(admin, admissionMessage(pub))
}

// Admitted reports whether sig is admin's admission of pub.
func Admitted(admin, pub ed25519.PublicKey, sig []byte) bool {
	return len(admin) == ed25519.PublicKeySize && len(sig) == sigSize && ed25519.Verify(admin, admissionMessage(pub), sig)
}

func admissionMessage(pub ed25519.PublicKey) []byte {
	h := sha256.New()
	h.Write([]byte(admitLabel))
	h.Write(pub)
	return h.Sum(nil)
}

// LinkAuth sits between a Node and its driver: the driver hands it the
// frames read from the links (HandleFrame) and the Node's timer (Tick); it
// passes authenticated frames to the Node and seals the Node's frames (it
// is the Node's Env) before the driver's Env transmits them. Like the
// Node it is not safe for concurrent use: one owner (the Router's core
// mutex) holds both.
type LinkAuth struct {
	key     ed25519.PrivateKey
	pub     ed25519.PublicKey
	id      NodeID
	encrypt bool
	admit   [sigSize]byte // our admission (zero: none)
	closed  bool
	admin   ed25519.PublicKey
	log     *slog.Logger
	rand    io.Reader
	node    *Node
	out     Env
	now     time.Time

	sessions  map[uint32]*session   // by our index
	peers     map[peerKey]*peerAuth // by link and neighbour address
	pending   map[uint32]*handshake // by our index
	tokens    float64               // handshake answer budget
	tokensAt  time.Time
	bctr      uint64 // beacon counter (all links)
	lastSweep time.Time
	stats     AuthStats

	buf   []byte // outgoing frame
	hdr   [sealedHdr]byte
	tag   [tagSize]byte
	nonce [chacha20poly1305.NonceSize]byte
	open  []byte // Open's empty plaintext

	e2e endToEnd // end-to-end sessions with source and target nodes (e2e.go)
}

type peerKey struct {
	link LinkID
	addr netip.AddrPort
}

// peerAuth is what is known of one neighbour address.
type peerAuth struct {
	cur      *session    // newest session: sends, receives
	older    [2]*session // the ones before, newest first: receive frames still in flight
	lastInit time.Time
	lastResp time.Time
	lastSeen time.Time
}

// session is one agreed pair of keys with one neighbour.
type session struct {
	local, remote uint32 // our index, theirs (in the frames we send)
	peer          NodeID
	key           peerKey
	send, recv    cipher.AEAD
	ctr           uint64 // next unicast counter
	win, bwin     replayWindow
	born          time.Time
	initiator     bool
}

// handshake is one half-done handshake.
type handshake struct {
	local, remote uint32
	key           peerKey
	initiator     bool
	eph           *ecdh.PrivateKey
	msg1          [hsInitLen]byte // initiator: our init, for the transcript
	peer          NodeID          // responder: the initiator
	peerPub       ed25519.PublicKey
	transcript    [sha256.Size]byte
	send, recv    cipher.AEAD // responder: keys installed on confirm
	born          time.Time
}

// NewLinkAuth returns link security for node (created with the result as
// its Env, then attached with Attach) sending through out.
func NewLinkAuth(cfg AuthConfig, out Env) *LinkAuth {
	r := cfg.Rand
	if r == nil {
		r = rand.Reader
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pub := cfg.Key.Public().(ed25519.PublicKey)
	a := &LinkAuth{
		key: cfg.Key, pub: pub, id: IDFromPublicKey(pub), encrypt: cfg.Encrypt,
		log: log, rand: r, out: out,
		sessions: make(map[uint32]*session),
		peers:    make(map[peerKey]*peerAuth),
		pending:  make(map[uint32]*handshake),
		tokens:   hsBurst,
		buf:      make([]byte, 0, maxWireFrame+beaconHdr+1+maxHelloNbr*beaconEntry),
		open:     make([]byte, 0, 1),
	}
	a.stats.Encrypted = cfg.Encrypt
	a.e2e.init()
	copy(a.admit[:], cfg.Admission)
	a.closed, a.admin = cfg.Closed, cfg.Admin
	return a
}

// Attach sets the Node whose frames this LinkAuth carries. From then on
// the Node's Send seals datagrams end to end through it (e2e.go).
func (a *LinkAuth) Attach(n *Node) {
	a.node = n
	n.sealer = a
}

// ID is the node ID of the key.
func (a *LinkAuth) ID() NodeID { return a.id }

// Stats returns the counters.
func (a *LinkAuth) Stats() AuthStats {
	s := a.stats
	s.Sessions = len(a.sessions)
	s.E2ESessions = len(a.e2e.sessions)
	s.E2EQueued = a.e2e.queued
	return s
}

// SetNow tells LinkAuth the time of the Node call the driver is about to
// make (Send, Ping); HandleFrame and Tick take it themselves.
func (a *LinkAuth) SetNow(now time.Time) { a.now = now }

// Tick runs the Node's timers.
func (a *LinkAuth) Tick(now time.Time) time.Time {
	a.now = now
	a.sweep()
	a.tickE2E()
	next := a.node.Tick(now)
	a.flushE2E()
	return next
}

// Deliver implements Env: datagrams are opened end to end (e2e.go), the
// end-to-end handshake stays here, other events pass through.
func (a *LinkAuth) Deliver(ev Event) {
	switch ev := ev.(type) {
	case Datagram:
		a.openData(ev)
	case e2eFrame:
		a.onE2E(ev)
	default:
		a.out.Deliver(ev)
	}
}

// HandleFrame checks a frame read from link l and hands what is
// authenticated to the Node.
func (a *LinkAuth) HandleFrame(now time.Time, l LinkID, from netip.AddrPort, b []byte) {
	a.now = now
	a.sweep()
	if len(b) < 2 {
		a.stats.Malformed++
		return
	}
	if b[0] != Version {
		if b[0] == 1 || b[0] == 2 {
			a.stats.OldVersion++
			a.log.Warn(oldVersionLine[b[0]], "from", from, "version", b[0])
		} else {
			a.stats.Malformed++
			a.log.Warn("frame of an unknown SSR wire format version dropped", "from", from, "version", b[0])
		}
		return
	}
	switch b[1] {
	case typeSealed:
		a.openSealed(l, from, b)
	case typeBeacon:
		a.openBeacon(l, from, b)
	case typeHSInit:
		a.onInit(l, from, b)
	case typeHSResp:
		a.onResp(l, from, b)
	case typeHSConfirm:
		a.onConfirm(l, from, b)
	case typeHello, typeRouted:
		// A bare frame: only a node bypassing authentication sends these.
		a.stats.Unauthenticated++
	default:
		a.stats.Malformed++
	}
}

// SendFrame implements Env: it seals the Node's frame for the neighbour
// at to, or for every authenticated neighbour on the link (a beacon).
func (a *LinkAuth) SendFrame(l LinkID, to netip.AddrPort, frame []byte) {
	if !to.IsValid() {
		a.sealBeacon(l, frame)
		return
	}
	p := a.peers[peerKey{l, to}]
	var s *session
	if p != nil {
		s = p.cur
	}
	if s == nil || !a.usable(s) {
		a.stats.SendNoSession++
		a.initiate(l, to)
		return
	}
	a.maybeRekey(s)
	h := a.hdr[:0]
	h = append(h, Version, typeSealed)
	h = binary.BigEndian.AppendUint32(h, s.remote)
	h = binary.BigEndian.AppendUint64(h, s.ctr)
	a.setNonce(s.ctr)
	s.ctr++
	b := append(a.buf[:0], h...)
	if a.encrypt {
		b = s.send.Seal(b, a.nonce[:], frame, h)
	} else {
		b = append(b, frame...)
		b = append(b, s.send.Seal(a.tag[:0], a.nonce[:], nil, b)...)
	}
	a.buf = b
	a.out.SendFrame(l, to, b)
}

func (a *LinkAuth) setNonce(ctr uint64) {
	binary.LittleEndian.PutUint64(a.nonce[4:], ctr)
}

func (a *LinkAuth) usable(s *session) bool {
	return a.now.Sub(s.born) < RejectAfter && s.ctr < rejectMessages
}

// maybeRekey starts a new handshake when s is old: the initiator of s
// first, the other side later should the initiator not.
func (a *LinkAuth) maybeRekey(s *session) {
	after := RekeyAfter
	if !s.initiator {
		after += 15 * time.Second
	}
	if a.now.Sub(s.born) >= after || s.ctr >= rekeyMessages {
		if p := a.peers[s.key]; p != nil && p.cur == s {
			a.initiate(s.key.link, s.key.addr)
		}
	}
}

func (a *LinkAuth) openSealed(l LinkID, from netip.AddrPort, b []byte) {
	if len(b) < sealedHdr+tagSize {
		a.stats.Malformed++
		return
	}
	s := a.sessions[binary.BigEndian.Uint32(b[2:])]
	if s == nil || s.key != (peerKey{l, from}) || !a.usable(s) {
		a.stats.Unauthenticated++
		a.initiate(l, from) // it may have lost our session (a restart)
		return
	}
	ctr := binary.BigEndian.Uint64(b[6:])
	if ctr >= beaconDomain || !s.win.fresh(ctr) {
		a.stats.Replayed++
		return
	}
	a.setNonce(ctr)
	var inner []byte
	if a.encrypt {
		var err error
		body := b[sealedHdr:]
		if inner, err = s.recv.Open(body[:0], a.nonce[:], body, b[:sealedHdr]); err != nil {
			a.stats.BadMAC++
			return
		}
	} else {
		end := len(b) - tagSize
		if _, err := s.recv.Open(a.open[:0], a.nonce[:], b[end:], b[:end]); err != nil {
			a.stats.BadMAC++
			return
		}
		inner = b[sealedHdr:end]
	}
	s.win.accept(ctr)
	a.peers[s.key].lastSeen = a.now
	if !a.fromPeer(s, inner) {
		return
	}
	a.node.HandleFrame(a.now, l, from, inner)
	a.flushE2E()
}

// fromPeer checks that an authenticated frame names the session's peer as
// the node that sent it: a beacon its source, a routed frame its previous
// hop. Frames too short to say are left to the Node, which counts them
// malformed.
func (a *LinkAuth) fromPeer(s *session, inner []byte) bool {
	var sender NodeID
	switch {
	case len(inner) >= helloHdr && inner[0] == Version && inner[1] == typeHello:
		sender = NodeID(binary.BigEndian.Uint64(inner[2:]))
	case len(inner) >= routedHdr && inner[0] == Version && inner[1] == typeRouted:
		pos, n := int(inner[14]), int(inner[15])
		if pos == 0 || pos >= n || len(inner) < routedHdr+8*n {
			return true
		}
		sender = NodeID(binary.BigEndian.Uint64(inner[routedHdr+8*(pos-1):]))
	default:
		return true
	}
	if sender != s.peer {
		a.stats.WrongSender++
		a.refuse("authenticated neighbour sent a frame in another node's name: dropped", s.key.addr, sender)
		return false
	}
	return true
}

// sealBeacon sends a beacon to every neighbour on link l: one copy on the
// air, with a tag for each neighbour holding a session (so a radio channel
// still carries one beacon per node), and its source ID in the clear for
// neighbours that have none yet: they start a handshake.
func (a *LinkAuth) sealBeacon(l LinkID, frame []byte) {
	a.bctr++
	b := append(a.buf[:0], Version, typeBeacon)
	b = binary.BigEndian.AppendUint64(b, uint64(a.id))
	b = binary.BigEndian.AppendUint64(b, a.bctr)
	// The tag count is covered by the tags, so count first.
	n := 0
	for k, p := range a.peers {
		if k.link == l && p.cur != nil && a.usable(p.cur) && n < maxHelloNbr {
			n++
		}
	}
	b = append(b, byte(n))
	// Tags go after the frame, so the associated data is one slice:
	// header ‖ count ‖ frame.
	b = append(b, frame...)
	aad := b[:len(b):len(b)]
	binary.LittleEndian.PutUint64(a.nonce[4:], a.bctr|beaconDomain)
	for k, p := range a.peers {
		s := p.cur
		if n == 0 || k.link != l || s == nil || !a.usable(s) {
			continue
		}
		a.maybeRekey(s)
		b = binary.BigEndian.AppendUint32(b, s.remote)
		b = s.send.Seal(b, a.nonce[:], nil, aad)
		n--
	}
	a.buf = b
	a.out.SendFrame(l, netip.AddrPort{}, b)
}

func (a *LinkAuth) openBeacon(l LinkID, from netip.AddrPort, b []byte) {
	if len(b) < beaconHdr+1 {
		a.stats.Malformed++
		return
	}
	src := NodeID(binary.BigEndian.Uint64(b[2:]))
	if src == a.id {
		return
	}
	ctr := binary.BigEndian.Uint64(b[10:])
	n := int(b[beaconHdr])
	if len(b) < beaconHdr+1+n*beaconEntry {
		a.stats.Malformed++
		return
	}
	end := len(b) - n*beaconEntry
	inner := b[beaconHdr+1 : end]
	var s *session
	var tag []byte
	for i := range n {
		e := b[end+i*beaconEntry:]
		if c := a.sessions[binary.BigEndian.Uint32(e)]; c != nil && c.key == (peerKey{l, from}) && a.usable(c) {
			s, tag = c, e[4:beaconEntry]
			break
		}
	}
	if s == nil {
		a.stats.Discovery++
		a.initiate(l, from)
		return
	}
	if !s.bwin.fresh(ctr) {
		a.stats.Replayed++
		return
	}
	binary.LittleEndian.PutUint64(a.nonce[4:], ctr|beaconDomain)
	if _, err := s.recv.Open(a.open[:0], a.nonce[:], tag, b[:end]); err != nil {
		a.stats.BadMAC++
		return
	}
	s.bwin.accept(ctr)
	a.peers[s.key].lastSeen = a.now
	if src != s.peer {
		a.stats.WrongSender++
		return
	}
	if !a.fromPeer(s, inner) {
		return
	}
	a.node.HandleFrame(a.now, l, from, inner)
	a.flushE2E()
}

// peer returns the state of a neighbour address, creating it if the table
// has room.
func (a *LinkAuth) peer(k peerKey) *peerAuth {
	if p := a.peers[k]; p != nil {
		return p
	}
	if len(a.peers) >= maxPeers {
		a.sweepPeers(true)
		if len(a.peers) >= maxPeers {
			return nil
		}
	}
	p := &peerAuth{}
	a.peers[k] = p
	return p
}

// ephemeral makes a handshake's X25519 key and index.
func (a *LinkAuth) ephemeral() (*ecdh.PrivateKey, uint32, bool) {
	eph, err := ecdh.X25519().GenerateKey(a.rand)
	if err != nil {
		return nil, 0, false
	}
	idx, ok := a.index()
	return eph, idx, ok
}

// index picks an unused random index for a new handshake.
func (a *LinkAuth) index() (uint32, bool) {
	var b [4]byte
	for range 8 {
		if _, err := io.ReadFull(a.rand, b[:]); err != nil {
			return 0, false
		}
		i := binary.BigEndian.Uint32(b[:])
		if i != 0 && a.sessions[i] == nil && a.pending[i] == nil {
			return i, true
		}
	}
	return 0, false
}

func (a *LinkAuth) addPending(h *handshake) bool {
	if len(a.pending) >= maxPending {
		var oldest *handshake
		for _, p := range a.pending {
			if oldest == nil || p.born.Before(oldest.born) {
				oldest = p
			}
		}
		delete(a.pending, oldest.local)
	}
	a.pending[h.local] = h
	return true
}

func (a *LinkAuth) mode() byte {
	if a.encrypt {
		return 1
	}
	return 0
}

// initiate starts a handshake with the neighbour at to, at most once per
// handshakeEvery per address.
func (a *LinkAuth) initiate(l LinkID, to netip.AddrPort) {
	p := a.peer(peerKey{l, to})
	if p == nil || (!p.lastInit.IsZero() && a.now.Sub(p.lastInit) < handshakeEvery) {
		return
	}
	for _, h := range a.pending {
		if !h.initiator && h.key == (peerKey{l, to}) && a.now.Sub(h.born) < handshakeEvery {
			return // the neighbour is handshaking with us: its confirmation is due
		}
	}
	p.lastInit = a.now
	eph, idx, ok := a.ephemeral()
	if !ok {
		return
	}
	h := &handshake{local: idx, key: peerKey{l, to}, initiator: true, eph: eph, born: a.now}
	m := h.msg1[:0]
	m = append(m, Version, typeHSInit)
	m = binary.BigEndian.AppendUint32(m, idx)
	m = binary.BigEndian.AppendUint64(m, uint64(a.id))
	m = append(m, a.pub...)
	m = append(m, eph.PublicKey().Bytes()...)
	m = append(m, a.mode())
	m = append(m, a.admit[:]...)
	a.addPending(h)
	a.stats.HandshakesSent++
	a.out.SendFrame(l, to, h.msg1[:])
}

// allowAnswer spends one token of the handshake answer budget.
func (a *LinkAuth) allowAnswer() bool {
	a.tokens = min(hsBurst, a.tokens+a.now.Sub(a.tokensAt).Seconds()*hsRate)
	a.tokensAt = a.now
	if a.tokens < 1 {
		return false
	}
	a.tokens--
	return true
}

// claimed checks that a handshake's public key hashes to the node ID it
// claims (the ID is the hash of the key: FORMAT.md "IDs").
func (a *LinkAuth) claimed(from netip.AddrPort, id []byte, pub []byte) (NodeID, bool) {
	claim := NodeID(binary.BigEndian.Uint64(id))
	if IDFromPublicKey(ed25519.PublicKey(pub)) != claim {
		a.stats.BadIdentity++
		a.refuse("neighbour's handshake key does not hash to the node ID it claims: refused", from, claim)
		return 0, false
	}
	return claim, true
}

// admitted checks a neighbour's admission in a closed mesh.
func (a *LinkAuth) admitted(from netip.AddrPort, peer NodeID, pub, sig []byte) bool {
	if !a.closed || Admitted(a.admin, ed25519.PublicKey(pub), sig) {
		return true
	}
	a.stats.NotAdmitted++
	a.refuse("closed mesh: neighbour has no admission signed by the mesh administrator key; refused", from, peer)
	return false
}

// refuse logs what a neighbour at from, claiming to be node id, was
// refused (the logger rate-limits per address: ratelog).
func (a *LinkAuth) refuse(msg string, from netip.AddrPort, id NodeID) {
	a.log.Warn(msg, "from", from, "claimed", id)
}

func (a *LinkAuth) mismatch(from netip.AddrPort, peer NodeID, theirs byte) {
	a.stats.ModeMismatch++
	a.log.Error("mixed mesh: neighbour has another mesh-encryption setting; no link with it until both agree",
		"from", from, "peer", peer, "ours", onOff(a.encrypt), "theirs", onOff(theirs == 1))
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// transcript hashes the handshake's messages (the response without its
// signature): what both sides sign, and the key derivation's salt.
func transcript(msg1, msg2 []byte) [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte(hsLabel))
	h.Write(msg1)
	h.Write(msg2)
	var t [sha256.Size]byte
	h.Sum(t[:0])
	return t
}

func confirmHash(t [sha256.Size]byte) []byte {
	h := sha256.New()
	h.Write([]byte(confirmLabel))
	h.Write(t[:])
	return h.Sum(nil)
}

// keys derives the two directions' AEADs: RFC 5869 HKDF-SHA-256 over the
// X25519 secret, salted with the transcript, two blocks of output. HMAC
// is spelled out: crypto/hkdf would add a package to the router binary for
// these lines.
func keys(secret []byte, t [sha256.Size]byte, label string) (i2r, r2i cipher.AEAD, ok bool) {
	ext := hmac.New(sha256.New, t[:])
	ext.Write(secret)
	prk := ext.Sum(nil) // §2.2 extract
	var k []byte
	var prev []byte
	for i := byte(1); i <= 2; i++ { // §2.3 expand: T(i) = HMAC(PRK, T(i−1) ‖ info ‖ i)
		exp := hmac.New(sha256.New, prk)
		exp.Write(prev)
		exp.Write([]byte(label))
		exp.Write([]byte{i})
		prev = exp.Sum(nil)
		k = append(k, prev...)
	}
	i2r, err1 := chacha20poly1305.New(k[:32])
	r2i, err2 := chacha20poly1305.New(k[32:])
	return i2r, r2i, err1 == nil && err2 == nil
}

func (a *LinkAuth) onInit(l LinkID, from netip.AddrPort, b []byte) {
	if len(b) < hsInitLen {
		a.stats.Malformed++
		return
	}
	b = b[:hsInitLen]
	peer, ok := a.claimed(from, b[6:14], b[14:46])
	if !ok {
		return
	}
	if peer == a.id || !a.admitted(from, peer, b[14:46], b[79:79+sigSize]) {
		return
	}
	p := a.peer(peerKey{l, from})
	if p == nil || (!p.lastResp.IsZero() && a.now.Sub(p.lastResp) < respondEvery) || !a.allowAnswer() {
		a.stats.RateLimited++
		return
	}
	p.lastResp = a.now
	theirEph, err := ecdh.X25519().NewPublicKey(b[46:78])
	if err != nil {
		a.stats.BadHandshake++
		return
	}
	eph, idx, ok := a.ephemeral()
	if !ok {
		return
	}
	remote := binary.BigEndian.Uint32(b[2:])
	m := append(a.buf[:0], Version, typeHSResp)
	m = binary.BigEndian.AppendUint32(m, idx)
	m = binary.BigEndian.AppendUint32(m, remote)
	m = binary.BigEndian.AppendUint64(m, uint64(a.id))
	m = append(m, a.pub...)
	m = append(m, eph.PublicKey().Bytes()...)
	m = append(m, a.mode())
	m = append(m, a.admit[:]...)
	t := transcript(b, m)
	m = append(m, ed25519.Sign(a.key, t[:])...)
	a.buf = m
	if b[78] != a.mode() {
		// Answer anyway, signed: the initiator logs the mismatch too.
		a.mismatch(from, peer, b[78])
		a.out.SendFrame(l, from, m)
		return
	}
	secret, err := eph.ECDH(theirEph)
	if err != nil {
		a.stats.BadHandshake++ // a low-order point
		return
	}
	i2r, r2i, ok := keys(secret, t, keyLabel)
	if !ok {
		return
	}
	a.addPending(&handshake{
		local: idx, remote: remote, key: peerKey{l, from}, peer: peer,
		peerPub: bytes.Clone(b[14:46]), transcript: t, send: r2i, recv: i2r, born: a.now,
	})
	a.out.SendFrame(l, from, m)
}

func (a *LinkAuth) onResp(l LinkID, from netip.AddrPort, b []byte) {
	if len(b) < hsRespLen {
		a.stats.Malformed++
		return
	}
	b = b[:hsRespLen]
	h := a.pending[binary.BigEndian.Uint32(b[6:])]
	if h == nil || !h.initiator || h.key != (peerKey{l, from}) {
		a.stats.BadHandshake++
		return
	}
	peer, ok := a.claimed(from, b[10:18], b[18:50])
	if !ok {
		return
	}
	t := transcript(h.msg1[:], b[:hsRespBody])
	if !ed25519.Verify(ed25519.PublicKey(b[18:50]), t[:], b[hsRespBody:]) {
		a.stats.BadHandshake++
		a.refuse("neighbour's handshake signature does not verify: refused", from, peer)
		return
	}
	delete(a.pending, h.local)
	if !a.admitted(from, peer, b[18:50], b[83:83+sigSize]) {
		return
	}
	if b[82] != a.mode() {
		a.mismatch(from, peer, b[82])
		return
	}
	theirEph, err := ecdh.X25519().NewPublicKey(b[50:82])
	if err != nil {
		a.stats.BadHandshake++
		return
	}
	secret, err := h.eph.ECDH(theirEph)
	if err != nil {
		a.stats.BadHandshake++
		return
	}
	i2r, r2i, ok := keys(secret, t, keyLabel)
	if !ok {
		return
	}
	remote := binary.BigEndian.Uint32(b[2:])
	m := append(a.buf[:0], Version, typeHSConfirm)
	m = binary.BigEndian.AppendUint32(m, remote)
	m = append(m, ed25519.Sign(a.key, confirmHash(t))...)
	a.buf = m
	a.install(&session{local: h.local, remote: remote, peer: peer, key: h.key, send: i2r, recv: r2i, born: a.now, initiator: true})
	a.out.SendFrame(l, from, m)
}

func (a *LinkAuth) onConfirm(l LinkID, from netip.AddrPort, b []byte) {
	if len(b) < hsConfirmLen {
		a.stats.Malformed++
		return
	}
	h := a.pending[binary.BigEndian.Uint32(b[2:])]
	if h == nil || h.initiator || h.key != (peerKey{l, from}) {
		a.stats.BadHandshake++
		return
	}
	if !ed25519.Verify(h.peerPub, confirmHash(h.transcript), b[6:hsConfirmLen]) {
		a.stats.BadHandshake++
		a.refuse("neighbour's handshake confirmation does not verify: refused", from, h.peer)
		return
	}
	delete(a.pending, h.local)
	a.install(&session{local: h.local, remote: h.remote, peer: h.peer, key: h.key, send: h.send, recv: h.recv, born: a.now})
}

// install makes s the session for its neighbour address; the two before
// stay for frames still in flight under them. Two, not one: when both
// sides start a handshake at once and then a third follows, the other
// side may still send under either of the first two until the third's
// confirmation reaches it.
func (a *LinkAuth) install(s *session) {
	p := a.peer(s.key)
	if p == nil {
		return
	}
	a.stats.Handshakes++
	if last := p.older[len(p.older)-1]; last != nil {
		delete(a.sessions, last.local)
	}
	copy(p.older[1:], p.older[:])
	p.older[0], p.cur = p.cur, s
	for i, o := range p.older {
		if o != nil && o.peer != s.peer {
			// Another node proved itself at this address: the old one is gone.
			delete(a.sessions, o.local)
			p.older[i] = nil
		}
	}
	p.lastSeen = a.now
	a.sessions[s.local] = s
}

// sweep forgets expired sessions, handshakes and idle addresses, every
// sweepEvery.
func (a *LinkAuth) sweep() {
	if a.now.Sub(a.lastSweep) < sweepEvery {
		return
	}
	a.lastSweep = a.now
	for i, h := range a.pending {
		if a.now.Sub(h.born) >= pendingTimeout {
			delete(a.pending, i)
		}
	}
	a.sweepPeers(false)
	a.sweepE2E()
}

// sweepPeers drops expired sessions and addresses without a session idle
// for a minute (all of them, when the table is full).
func (a *LinkAuth) sweepPeers(full bool) {
	for k, p := range a.peers {
		if p.cur != nil && !a.usable(p.cur) {
			delete(a.sessions, p.cur.local)
			p.cur = nil
		}
		for i, o := range p.older {
			if o != nil && !a.usable(o) {
				delete(a.sessions, o.local)
				p.older[i] = nil
			}
		}
		if p.cur == nil && p.older == [len(p.older)]*session{} {
			last := p.lastSeen
			if p.lastInit.After(last) {
				last = p.lastInit
			}
			if p.lastResp.After(last) {
				last = p.lastResp
			}
			if full || a.now.Sub(last) >= time.Minute {
				delete(a.peers, k)
			}
		}
	}
}
