package phones

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/pion/rtp"

	"github.com/sipmesh/sipmesh/sipalg"
	"github.com/sipmesh/sipmesh/sipnet"
)

// The party line. Dialing 426 (or a room of the configured range, by
// default 4260–4269) joins a conference room: a UAS (RFC 3261 §8.2,
// §13.3, like the echo test's) answers with an SDP answer (RFC 3264 §6)
// pointing at a media socket of the room's own for the member, and the
// room's mixer (mixer.go) sends each member the sum of the others.
//
// Where a room runs. Each room runs on one node, the one responsible for
// the room's key on the ring (ConfConfig.Owner; the SIP service decides,
// see package proxy). A phone on the owning node is answered directly on
// the LAN; a phone on any other node has its INVITE routed by its own node
// to the owner over the mesh, through its node's media relay (the SIP
// ALG), so the owner's media socket for that member is on the mesh side.
// An INVITE for a room that arrives over the mesh is always taken, whatever
// this node thinks of the ring: two nodes with different views of the
// ring must not bounce a call between them.
//
// Cost. A room with no member has no goroutine and no timer: the mixer
// starts with the first member and stops with the last. Each member has
// one receiving goroutine and one socket. Members per room and rooms are
// bounded (ConfConfig.MaxMembers; beyond, 486).
//
// Entering and leaving are announced to the members with a short tone
// (confJoinHz rising, confLeaveHz falling; 100 ms at −26 dBFS).
//
// Moving a room when its node dies is in roommove.go: the members who
// came over the mesh are re-INVITEd by the room's next node.

// PartyLine is the party line's extension (HAM on a keypad).
const PartyLine = "426"

// Conference defaults.
const (
	DefaultConfMembers = 32
	confJoinHz         = 1400.0
	confLeaveHz        = 700.0
	confToneFrames     = 5 // 100 ms
	confToneAmplitude  = 0.05
)

// DefaultRooms are 426 and 4260–4269.
func DefaultRooms() []string {
	r := []string{PartyLine}
	for i := range 10 {
		r = append(r, "426"+strconv.Itoa(i))
	}
	return r
}

// ConfHost is what the party line needs of the SIP service: the echo
// test's needs, plus the mesh socket, from which it answers and calls the
// members on other nodes.
type ConfHost interface {
	EchoHost
	MeshAddr() netip.AddrPort
	// RequestOn sends req on a client transaction from the mesh socket
	// (mesh) or the LAN socket.
	RequestOn(ctx context.Context, req *sip.Request, mesh bool) (sip.ClientTransaction, error)
	// SendOn sends req outside a transaction (the ACK of a 2xx) from
	// the mesh socket (mesh) or the LAN socket.
	SendOn(req *sip.Request, mesh bool) error
}

// ConfConfig configures the party line.
type ConfConfig struct {
	Host ConfHost // required
	// Listen opens a media socket on the mesh address (mesh) or the LAN
	// address (required).
	Listen func(ctx context.Context, mesh bool) (net.PacketConn, error)
	// Rooms are the room numbers (default DefaultRooms).
	Rooms []string
	// Owner reports whether this node runs room (required).
	Owner      func(room string) bool
	MaxMembers int // per room (default DefaultConfMembers)
	// Store keeps the dialogs of the members who came over the mesh, so
	// that the node that owns the room next can take them over when this
	// one dies (roommove.go); nil: a room dies with its node.
	Store  RoomStore
	Logger *slog.Logger
}

// ConfService runs a node's conference rooms.
type ConfService struct {
	cfg   ConfConfig
	h     ConfHost
	log   *slog.Logger
	rooms map[string]*confRoom

	mu      sync.Mutex
	members map[string]*confMember // by Call-ID
}

// confRoom is one room: its members and, while it has any, its mixer.
type confRoom struct {
	c      *ConfService
	number string

	mu       sync.Mutex
	members  []*confMember
	mixing   bool    // the mixer goroutine runs
	announce []int16 // tone samples still to mix into everyone's output
	joins    uint64
	slots    []bool // the members' record slots in the Store in use
	moving   bool   // a take-over of the room runs (roommove.go)
}

// confMember is one member's call: its dialog (UAS side) and media.
type confMember struct {
	uasDialog
	MixMember // guarded by room.mu
	room      *confRoom
	mesh      bool // the call came over the mesh: media and requests there
	answer    []byte
	conn      net.PacketConn
	remote    netip.AddrPort // guarded by room.mu
	out       rtp.Header     // guarded by room.mu
	buf       [12 + FrameSamples]byte
	rx        uint64      // frames received, guarded by room.mu
	slot      int         // its record's slot in the Store; -1: none, guarded by room.mu
	keep      bool        // taken over (roommove.go): its slot is the record's
	moved     atomic.Bool // another node took it over: its record is that node's
}

// NewConfService prepares the party line; the host hands it requests
// (Handle).
func NewConfService(cfg ConfConfig) (*ConfService, error) {
	if cfg.Host == nil || cfg.Listen == nil || cfg.Owner == nil {
		return nil, errors.New("party line: Host, Listen and Owner are required")
	}
	if len(cfg.Rooms) == 0 {
		cfg.Rooms = DefaultRooms()
	}
	if cfg.MaxMembers <= 0 {
		cfg.MaxMembers = DefaultConfMembers
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &ConfService{cfg: cfg, h: cfg.Host, log: log, rooms: make(map[string]*confRoom), members: make(map[string]*confMember)}
	for _, r := range cfg.Rooms {
		c.rooms[r] = &confRoom{c: c, number: r}
	}
	return c, nil
}

// IsRoom reports whether ext is a room number.
func (c *ConfService) IsRoom(ext string) bool { return c.rooms[ext] != nil }

// RoomStats describes a room that has members.
type RoomStats struct {
	Number  string `json:"number"`
	Members int    `json:"members"`
	Mixing  bool   `json:"mixing"` // its mixer runs
}

// Rooms lists the rooms with members, and any whose mixer still runs.
func (c *ConfService) Rooms() []RoomStats {
	var out []RoomStats
	for _, r := range c.rooms {
		r.mu.Lock()
		if len(r.members) > 0 || r.mixing {
			out = append(out, RoomStats{Number: r.number, Members: len(r.members), Mixing: r.mixing})
		}
		r.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b RoomStats) int { return strings.Compare(a.Number, b.Number) })
	return out
}

// Handle takes a new INVITE to a room this node runs (or any that came
// over the mesh, fromMesh) and the in-dialog requests of its members. It
// reports whether it took req.
func (c *ConfService) Handle(req *sip.Request, tx sip.ServerTransaction, fromMesh bool, src netip.AddrPort) bool {
	cid, to := req.CallID(), req.To()
	if cid == nil || to == nil {
		return false
	}
	if toTag, _ := to.Params.Get("tag"); toTag != "" {
		c.mu.Lock()
		m := c.members[cid.Value()]
		c.mu.Unlock()
		if m == nil || m.localTag != toTag {
			return false
		}
		c.inDialog(m, req, tx, src)
		return true
	}
	room := c.rooms[req.Recipient.User]
	if req.Method != sip.INVITE || room == nil || !c.h.OurHost(req.Recipient.Host) {
		return false
	}
	for _, h := range req.GetHeaders("Route") {
		if rt, ok := h.(*sip.RouteHeader); !ok || !c.h.OurRoute(&rt.Address) {
			return false
		}
	}
	if !fromMesh && !c.cfg.Owner(room.number) {
		return false // the host routes it to the room's node
	}
	c.join(room, req, tx, fromMesh, src)
	return true
}

func (c *ConfService) reply(req *sip.Request, tx sip.ServerTransaction, src netip.AddrPort, res *sip.Response) {
	featureReply(c.log, req, tx, src, res)
}

func (c *ConfService) replyCode(req *sip.Request, tx sip.ServerTransaction, src netip.AddrPort, code int, reason string) {
	c.reply(req, tx, src, c.h.Respond(req, code, reason))
}

// join answers a new member and, once it ACKs, leaves its call running.
func (c *ConfService) join(room *confRoom, req *sip.Request, tx sip.ServerTransaction, mesh bool, src netip.AddrPort) {
	if code, reason := c.h.Check(req); code != 0 {
		c.replyCode(req, tx, src, code, reason)
		return
	}
	if req.Contact() == nil {
		c.replyCode(req, tx, src, 400, "Bad Request (INVITE without Contact)") // §8.1.1.8
		return
	}
	idx, pt, err := echoStream(req.Body())
	if err != nil {
		c.replyCode(req, tx, src, 488, "Not Acceptable Here ("+sipnet.SanitizeReason(err.Error())+")")
		return
	}
	cid := req.CallID().Value()
	room.mu.Lock()
	full := len(room.members) >= c.cfg.MaxMembers
	room.mu.Unlock()
	c.mu.Lock()
	_, dup := c.members[cid]
	if !dup && !full {
		c.members[cid] = nil // reserved while the socket opens
	}
	c.mu.Unlock()
	switch {
	case dup:
		c.replyCode(req, tx, src, 482, "Loop Detected") // §8.2.2.2
		return
	case full:
		c.replyCode(req, tx, src, 486, "Busy Here (room full)")
		return
	}
	m, res, err := c.newMember(room, req, src, mesh, idx, pt)
	if err != nil {
		c.forget(cid, nil)
		c.log.Warn("party line: cannot answer", "call_id", cid, "err", err)
		c.replyCode(req, tx, src, 503, "Service Unavailable (party line)")
		return
	}
	ctx, cancel := context.WithCancel(c.h.Context())
	c.mu.Lock()
	c.members[cid] = m
	c.mu.Unlock()
	if !c.h.Go(func() { c.run(ctx, cancel, m) }) {
		cancel()
		m.conn.Close()
		c.forget(cid, m)
		c.replyCode(req, tx, src, 503, "Service Unavailable (shutting down)")
		return
	}
	c.log.Info("party line: joined", "room", room.number, "call_id", cid, "caller", req.From().Address.String(), "mesh", mesh)
	c.answerInvite(ctx, req, tx, src, res, m)
}

// newMember opens the member's media socket and builds the 2xx.
func (c *ConfService) newMember(room *confRoom, req *sip.Request, src netip.AddrPort, mesh bool, idx int, pt uint8) (*confMember, *sip.Response, error) {
	d, _ := sipalg.Parse(req.Body())
	st := d.Streams[idx]
	conn, err := c.cfg.Listen(c.h.Context(), mesh)
	if err != nil {
		return nil, nil, fmt.Errorf("media socket: %w", err)
	}
	local, _ := sipnet.AddrPortOf(conn.LocalAddr())
	res := c.h.Respond(req, 200, "OK")
	m := &confMember{uasDialog: newUASDialog(req, res, src), room: room, mesh: mesh, conn: conn,
		out: rtp.Header{Version: 2, Marker: true, PayloadType: pt, SSRC: rand.Uint32() | 1,
			SequenceNumber: uint16(rand.Uint32()), Timestamp: rand.Uint32()}}
	m.MixMember = MixMember{In: new(MixInput), PT: pt}
	if !st.Hold() && st.RTP().Addr().IsValid() {
		m.remote = st.RTP()
	}
	addr := c.h.LANAddr().Addr()
	if mesh {
		addr = c.h.MeshAddr().Addr()
	}
	m.answer = echoAnswer(d, idx, pt, addr, local.Port(), "sipmesh party line "+room.number)
	for _, h := range req.GetHeaders("Record-Route") {
		res.AppendHeader(h)
	}
	c.dialogHeaders(req, res, m)
	return m, res, nil
}

// dialogHeaders adds our Contact, on the socket the call came in on, and
// the SDP answer.
func (c *ConfService) dialogHeaders(req *sip.Request, res sip.Message, m *confMember) {
	a := c.h.LANAddr()
	if m.mesh {
		a = c.h.MeshAddr()
	}
	u := sip.Uri{Scheme: "sip", User: m.room.number, Host: sipnet.URIHost(a.Addr()), Port: int(a.Port())}
	if strings.EqualFold(req.Transport(), "TCP") {
		u.UriParams = sip.HeaderParams{{K: "transport", V: "tcp"}}
	}
	res.AppendHeader(&sip.ContactHeader{Address: u})
	res.AppendHeader(sip.NewHeader("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO"))
	ct := sip.ContentTypeHeader("application/sdp")
	res.AppendHeader(&ct)
	res.SetBody(m.answer)
}

// answerInvite sends the 2xx and waits for its ACK; with none in 64*T1
// the member is hung up.
func (c *ConfService) answerInvite(ctx context.Context, req *sip.Request, tx sip.ServerTransaction, src netip.AddrPort, res *sip.Response, m *confMember) {
	c.reply(req, tx, src, res)
	if !m.await2xxAck(ctx, nil, func() { c.reply(req, tx, src, res) }) {
		c.log.Info("party line: no ACK for our 2xx", "call_id", m.callID)
		c.sendBye(ctx, m)
		m.gotBye()
	}
}

// inDialog answers a request inside a member's dialog.
func (c *ConfService) inDialog(m *confMember, req *sip.Request, tx sip.ServerTransaction, src netip.AddrPort) {
	m.uasDialog.inDialog(req, func(code int, reason string) { c.replyCode(req, tx, src, code, reason) },
		func(ap netip.AddrPort) {
			m.room.mu.Lock()
			m.remote = ap
			m.room.mu.Unlock()
		}, func() {
			res := c.h.Respond(req, 200, "OK")
			c.dialogHeaders(req, res, m)
			c.reply(req, tx, src, res)
		})
}

// run is a member's life in the room: from the answer until its BYE, the
// service stopping, or EchoIdle without RTP (then with our BYE).
func (c *ConfService) run(ctx context.Context, cancel context.CancelFunc, m *confMember) {
	defer c.forget(m.callID, m)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { m.receive() })
	defer wg.Wait()
	defer m.conn.Close()
	m.room.enter(m)
	defer m.room.leave(m)
	if c.cfg.Store != nil && m.mesh {
		if !m.keep {
			c.putMember(ctx, m) // a taken-over member: once its re-INVITE succeeded
		}
		defer func() {
			// A service that stops (its node going down) leaves the
			// record for the room's next node; a member who left does not.
			if c.h.Context().Err() == nil && !m.moved.Load() {
				c.dropMember(m)
			}
		}()
	}
	check := time.NewTicker(EchoIdle / 3)
	defer check.Stop()
	maxT := time.NewTimer(echoMaxDuration)
	defer maxT.Stop()
	var lastRx uint64
	lastAt := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.bye:
			return
		case <-maxT.C:
			c.sendBye(ctx, m)
			return
		case now := <-check.C:
			m.room.mu.Lock()
			rx := m.rx
			m.room.mu.Unlock()
			if rx != lastRx {
				lastRx, lastAt = rx, now
			} else if now.Sub(lastAt) >= EchoIdle {
				if c.movedAway(ctx, m) {
					// Another node took the member over and recorded it
					// (this node lost the room during a ring repair): our
					// BYE would end the call that node now serves.
					c.log.Info("party line: member served elsewhere, leaving quietly", "call_id", m.callID)
					return
				}
				c.log.Info("party line: no audio, hanging up", "call_id", m.callID)
				c.sendBye(ctx, m)
				return
			}
		}
	}
}

// receive queues the member's frames until its socket closes.
func (m *confMember) receive() {
	buf := make([]byte, 1500)
	var pkt rtp.Packet
	errs := 0
	for {
		n, from, err := m.conn.ReadFrom(buf)
		if err != nil {
			if errs++; errors.Is(err, net.ErrClosed) || errs > 100 {
				return
			}
			continue
		}
		errs = 0
		if pkt.Unmarshal(buf[:n]) != nil || (pkt.PayloadType != PayloadPCMU && pkt.PayloadType != PayloadPCMA) ||
			len(pkt.Payload) == 0 {
			continue
		}
		m.room.mu.Lock()
		m.In.Push(pkt.Payload, pkt.PayloadType)
		m.rx++
		if !m.remote.IsValid() {
			// No address in the offer: send where the frames come from
			// (symmetric RTP, RFC 4961).
			if ap, ok := sipnet.AddrPortOf(from); ok {
				m.remote = ap
			}
		}
		m.room.mu.Unlock()
	}
}

// enter adds a member, announces it, and starts the mixer if the room was
// empty.
func (r *confRoom) enter(m *confMember) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.members = append(r.members, m)
	r.joins++
	want := -1
	if m.keep {
		want = m.slot // a taken-over member keeps its record's slot
	}
	m.slot = -1
	for i := range r.c.cfg.MaxMembers {
		if i >= len(r.slots) || !r.slots[i] {
			if m.slot < 0 || i == want {
				m.slot = i
			}
		}
	}
	if m.slot >= 0 {
		for len(r.slots) <= m.slot {
			r.slots = append(r.slots, false)
		}
		r.slots[m.slot] = true
	}
	r.announce = appendTone(r.announce[:0], confJoinHz)
	if !r.mixing && r.c.h.Go(r.mix) {
		r.mixing = true
	}
}

// leave removes a member and announces it; the mixer stops by itself when
// the room is empty.
func (r *confRoom) leave(m *confMember) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if i := slices.Index(r.members, m); i >= 0 {
		r.members = slices.Delete(r.members, i, i+1)
		if m.slot >= 0 && m.slot < len(r.slots) {
			r.slots[m.slot] = false
		}
	}
	if len(r.members) > 0 {
		r.announce = appendTone(r.announce[:0], confLeaveHz)
	}
}

// appendTone appends the announcement tone at hz.
func appendTone(b []int16, hz float64) []int16 {
	t := Tone{Freq: hz, Amplitude: confToneAmplitude}
	n := len(b)
	b = append(b, make([]int16, confToneFrames*FrameSamples)...)
	t.Fill(b[n:])
	return b
}

// mix is the room's mixer: every 20 ms one frame for every member, until
// the room is empty or the service stops.
func (r *confRoom) mix() {
	ctx := r.c.h.Context()
	var (
		mx      Mixer
		ms      []*MixMember
		outs    []*confMember
		dst     []netip.AddrPort
		lengths []int
	)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			r.mu.Lock()
			r.mixing = false
			r.mu.Unlock()
			return
		case <-tick.C:
		}
		r.mu.Lock()
		if len(r.members) == 0 {
			r.mixing = false
			r.announce = r.announce[:0]
			r.mu.Unlock()
			return
		}
		ms, outs, dst, lengths = ms[:0], outs[:0], dst[:0], lengths[:0]
		for _, m := range r.members {
			ms = append(ms, &m.MixMember)
		}
		k := min(FrameSamples, len(r.announce))
		mx.Mix(ms, r.announce[:k])
		r.announce = r.announce[k:]
		for _, m := range r.members {
			pkt := rtp.Packet{Header: m.out, Payload: m.Out[:]}
			n, err := pkt.MarshalTo(m.buf[:])
			m.out.Marker = false
			m.out.SequenceNumber++
			m.out.Timestamp += FrameSamples
			if err != nil || !m.remote.IsValid() {
				continue
			}
			outs, dst, lengths = append(outs, m), append(dst, m.remote), append(lengths, n)
		}
		r.mu.Unlock()
		// Sent outside the lock: a member's buffer is only rewritten by
		// the next tick of this goroutine.
		for i, m := range outs {
			m.conn.WriteTo(m.buf[:lengths[i]], net.UDPAddrFromAddrPort(dst[i]))
		}
	}
}

// sendBye ends a member's dialog from our side (RFC 3261 §15.1.1),
// from the socket its call came in on.
func (c *ConfService) sendBye(ctx context.Context, m *confMember) {
	a := c.h.LANAddr()
	if m.mesh {
		a = c.h.MeshAddr()
	}
	tx, err := c.h.RequestOn(ctx, m.byeRequest(a), m.mesh)
	if err != nil {
		c.log.Info("party line: BYE not sent", "call_id", m.callID, "err", err)
		return
	}
	awaitFinal(ctx, tx)
}

// forget removes a member (or its reservation, m nil) from the table.
func (c *ConfService) forget(cid string, m *confMember) {
	c.mu.Lock()
	if c.members[cid] == m {
		delete(c.members, cid)
	}
	c.mu.Unlock()
}
