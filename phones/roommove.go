package phones

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/pion/rtp"

	"github.com/sipmesh/sipmesh/sipalg"
	"github.com/sipmesh/sipmesh/sipnet"
)

// Moving a room when its node dies. A room runs on the node that owns the
// room's key on the ring; when that node dies, the key belongs to the next
// node in the ring's order (the one before it, whose interval the dead
// node's joins), and the room has to continue there without anybody
// dialling again.
//
// What lets it: the node running a room keeps, for each member whose call
// came over the mesh, the UAS side of the member's dialog (RFC 3261
// §12.1.1: Call-ID, both tags, both URIs, the member's Contact and the
// route set the INVITE recorded) in a RoomStore: on the mesh, the DHT,
// which keeps a record on the key's successors too, so the record
// outlives the node. Members on the dead node's own LAN are lost with it.
//
// When the ring changes (ConfService.Takeover, called by the host), a node
// looks at the rooms it now owns; it asks each node that recorded members
// it does not have whether it still lives (an OPTIONS answered within
// probeTimeout): a ring that changed because a node came leaves the room
// where it runs. For each member of a node that did not answer, it opens
// a media socket, takes the dialog over as its own UAS side
// (same tags, a CSeq above the record's) and sends the member a re-INVITE
// through the recorded route set (§14.1): a new Contact, which the phone
// takes as its remote target (target refresh, §12.2.2), and an SDP offer
// with the new node's media address (RFC 3264 §8), which the member's own
// node's ALG anchors as it did the first one. The phone answers 200 with
// its unchanged description; the ACK follows (§13.2.2.4), and the room's
// mixer sends the member the others again. A member who has since hung up
// answers 481 and is dropped.
//
// Two nodes may both believe they own the room while the ring repairs:
// each writes a claim (a record after the members' slots, where the newest
// wins) before it probes, and only the one whose claim stands after
// claimSettle takes the members over. A node that finds a member's media
// stopped and its record written by another node leaves it without a BYE
// (movedAway): that node serves the call now.
//
// The records are written when a member joins (a taken-over member once
// its re-INVITE succeeded), removed when it leaves, and left in place when
// the service stops (its node going down is what they are for); they
// expire with the longest call a member can have.

// RoomStore keeps the records of a room's members, one per slot.
type RoomStore interface {
	// SetMember stores rec as room's slot for ttl; a nil rec removes it.
	SetMember(ctx context.Context, room string, slot int, rec []byte, ttl time.Duration) error
	// Members returns the records of room's slots 0 to slots-1, nil for
	// an empty slot.
	Members(ctx context.Context, room string, slots int) ([][]byte, error)
}

// roomRecordTTL outlives any member's call (echoMaxDuration hangs it up).
const roomRecordTTL = echoMaxDuration + time.Minute

// storeTimeout bounds one store operation.
const storeTimeout = 5 * time.Second

// memberRecord is a member's dialog as the room's node answered it; short
// names keep it under the DHT's value size (768 bytes) with a route set of
// two entries.
type memberRecord struct {
	Slot    int      `json:"s"`
	CallID  string   `json:"c"`
	Local   string   `json:"lt"` // our (the room's) tag
	Remote  string   `json:"rt"` // the member's tag
	From    string   `json:"f"`  // the member's URI
	To      string   `json:"t"`  // the room's URI as dialled
	Contact string   `json:"ct"` // the member's remote target
	Routes  []string `json:"rr,omitempty"`
	Src     string   `json:"src"` // where the INVITE came from
	TCP     bool     `json:"tcp,omitempty"`
	PT      uint8    `json:"pt"`
	CSeq    uint32   `json:"cs"` // the last CSeq the room's side used
	Node    string   `json:"n"`  // the mesh SIP address of the room's node
}

// recordOf builds m's record.
func recordOf(m *confMember, slot int, node netip.AddrPort) memberRecord {
	inv := m.invite
	r := memberRecord{Slot: slot, CallID: m.callID, Local: m.localTag, Remote: m.remoteTag,
		From: inv.From().Address.String(), To: inv.To().Address.String(),
		Contact: inv.Contact().Address.String(), Src: m.src.String(),
		TCP: strings.EqualFold(inv.Transport(), "TCP"), PT: m.PT, CSeq: m.cseq.Load(), Node: node.String()}
	for _, h := range inv.GetHeaders("Record-Route") {
		if rr, ok := h.(*sip.RecordRouteHeader); ok {
			r.Routes = append(r.Routes, rr.Address.String())
		}
	}
	return r
}

// invite rebuilds what the dialog keeps of the member's INVITE: enough
// for the requests of our side (uasDialog.request).
func (r memberRecord) invite() (*sip.Request, error) {
	var from, to, contact sip.Uri
	for _, u := range []struct {
		s   string
		dst *sip.Uri
	}{{r.From, &from}, {r.To, &to}, {r.Contact, &contact}} {
		if err := sip.ParseUri(u.s, u.dst); err != nil {
			return nil, fmt.Errorf("record URI %q: %w", u.s, err)
		}
	}
	if r.CallID == "" || r.Local == "" || r.Remote == "" || r.PT != PayloadPCMU && r.PT != PayloadPCMA {
		return nil, errors.New("incomplete record")
	}
	inv := sip.NewRequest(sip.INVITE, to)
	tr := "UDP"
	if r.TCP {
		tr = "TCP"
	}
	v := &sip.ViaHeader{ProtocolName: "SIP", ProtocolVersion: "2.0", Transport: tr, Host: "invalid"}
	inv.AppendHeader(v)
	inv.AppendHeader(&sip.FromHeader{Address: from, Params: sipnet.TagParams(r.Remote)})
	inv.AppendHeader(&sip.ToHeader{Address: to, Params: sip.NewParams()})
	cid := sip.CallIDHeader(r.CallID)
	inv.AppendHeader(&cid)
	inv.AppendHeader(&sip.ContactHeader{Address: contact})
	for _, s := range r.Routes {
		var u sip.Uri
		if err := sip.ParseUri(s, &u); err != nil {
			return nil, fmt.Errorf("record route %q: %w", s, err)
		}
		inv.AppendHeader(&sip.RecordRouteHeader{Address: u})
	}
	inv.SetTransport(tr)
	return inv, nil
}

// putMember records m (a member that came over the mesh) in the store.
func (c *ConfService) putMember(ctx context.Context, m *confMember) {
	m.room.mu.Lock()
	slot := m.slot
	m.room.mu.Unlock()
	if slot < 0 {
		return
	}
	b, err := json.Marshal(recordOf(m, slot, c.h.MeshAddr()))
	if err == nil {
		ctx, cancel := context.WithTimeout(ctx, storeTimeout)
		err = c.cfg.Store.SetMember(ctx, m.room.number, slot, b, roomRecordTTL)
		cancel()
	}
	if err != nil {
		c.log.Warn("party line: member not recorded; the room cannot move with it", "room", m.room.number, "call_id", m.callID, "err", err)
	}
}

// dropMember removes a member's record once it left.
func (c *ConfService) dropMember(m *confMember) {
	m.room.mu.Lock()
	slot := m.slot
	m.room.mu.Unlock()
	if slot < 0 {
		return
	}
	ctx, cancel := context.WithTimeout(c.h.Context(), storeTimeout)
	defer cancel()
	if err := c.cfg.Store.SetMember(ctx, m.room.number, slot, nil, roomRecordTTL); err != nil {
		c.log.Info("party line: member record not removed", "room", m.room.number, "call_id", m.callID, "err", err)
	}
}

// movedAway reports whether another node recorded m's dialog as its own
// since: then m has moved there (its media stopped because the member's
// node now sends it elsewhere). It marks m so that leaving keeps that
// node's record.
func (c *ConfService) movedAway(ctx context.Context, m *confMember) bool {
	if c.cfg.Store == nil || !m.mesh {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, storeTimeout)
	recs, err := c.cfg.Store.Members(ctx, m.room.number, c.cfg.MaxMembers)
	cancel()
	if err != nil {
		return false
	}
	self := c.h.MeshAddr().String()
	for _, b := range recs {
		var r memberRecord
		if b != nil && json.Unmarshal(b, &r) == nil && r.CallID == m.callID && r.Node != self {
			m.moved.Store(true)
			return true
		}
	}
	return false
}

// Takeover makes this node take over the members of every room it owns
// now and whose records name members it does not have: the host calls it
// when the ring changed (a ring neighbour died or came). It returns at
// once; the take-over runs on the service's goroutines.
func (c *ConfService) Takeover() {
	if c.cfg.Store == nil {
		return
	}
	c.h.Go(func() { c.takeover(c.h.Context()) })
}

func (c *ConfService) takeover(ctx context.Context) {
	var wg sync.WaitGroup
	for _, num := range c.cfg.Rooms {
		room := c.rooms[num]
		wg.Go(func() {
			if !c.cfg.Owner(num) {
				return
			}
			room.mu.Lock()
			busy := room.moving
			room.moving = true
			room.mu.Unlock()
			if busy {
				return
			}
			defer func() {
				room.mu.Lock()
				room.moving = false
				room.mu.Unlock()
			}()
			c.moveRoom(ctx, room)
		})
	}
	wg.Wait()
}

// moveRoom re-INVITEs the recorded members of room this node lacks.
//
// Two nodes may both believe they own the room while the ring repairs;
// were both to re-INVITE the members, each member's media would flap
// between them. So a node first writes a claim to the room (the slot
// after the members', where the newest record wins), probes the nodes
// that recorded the members, and after at least claimSettle reads the
// claim back: only the node whose claim is the newest goes on.
func (c *ConfService) moveRoom(ctx context.Context, room *confRoom) {
	recs, err := c.readRoom(ctx, room)
	if err != nil {
		c.log.Info("party line: room records not read", "room", room.number, "err", err)
		return
	}
	self := c.h.MeshAddr().String()
	var todo []memberRecord
	seen := map[string]bool{}
	for slot, b := range recs[:c.cfg.MaxMembers] {
		var r memberRecord
		if b == nil || json.Unmarshal(b, &r) != nil || r.Slot != slot || seen[r.CallID] || r.Node == self {
			continue
		}
		seen[r.CallID] = true
		c.mu.Lock()
		_, have := c.members[r.CallID]
		c.mu.Unlock()
		if !have {
			todo = append(todo, r)
		}
	}
	if len(todo) == 0 {
		return
	}
	claimed := time.Now()
	b, _ := json.Marshal(memberRecord{Slot: c.claimSlot(), Node: self})
	sctx, cancel := context.WithTimeout(ctx, storeTimeout)
	err = c.cfg.Store.SetMember(sctx, room.number, c.claimSlot(), b, roomRecordTTL)
	cancel()
	if err != nil {
		c.log.Info("party line: room not claimed", "room", room.number, "err", err)
		return
	}
	alive := map[string]bool{} // by the recording node: it still answers
	for _, r := range todo {
		if _, probed := alive[r.Node]; !probed {
			alive[r.Node] = c.answers(ctx, r.Node)
		}
	}
	select {
	case <-time.After(claimSettle - time.Since(claimed)):
	case <-ctx.Done():
		return
	}
	if recs, err = c.readRoom(ctx, room); err != nil {
		return
	}
	var claim memberRecord
	if json.Unmarshal(recs[c.claimSlot()], &claim) != nil || claim.Node != self {
		c.log.Info("party line: another node claimed the room", "room", room.number, "node", claim.Node)
		return
	}
	var wg sync.WaitGroup
	for _, r := range todo {
		if alive[r.Node] {
			// The room's node lives: the ring changed because another node
			// came, not because it died. Its members stay with it.
			continue
		}
		wg.Go(func() { c.rejoin(ctx, room, r) })
	}
	wg.Wait()
}

// claimSettle is how long a claim to a room must stand before its node
// takes the members over: longer than a store write takes to be seen.
const claimSettle = time.Second

// claimSlot is the slot of the claims to a room: after the members'.
func (c *ConfService) claimSlot() int { return c.cfg.MaxMembers }

// readRoom reads the room's member slots and its claim slot.
func (c *ConfService) readRoom(ctx context.Context, room *confRoom) ([][]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	recs, err := c.cfg.Store.Members(ctx, room.number, c.cfg.MaxMembers+1)
	if err == nil && len(recs) != c.cfg.MaxMembers+1 {
		err = errors.New("store returned a short room")
	}
	return recs, err
}

// rejoin takes over one member's dialog and re-INVITEs it here.
func (c *ConfService) rejoin(ctx context.Context, room *confRoom, r memberRecord) {
	inv, err := r.invite()
	src, perr := netip.ParseAddrPort(r.Src)
	if err != nil || perr != nil {
		c.log.Info("party line: bad member record", "room", room.number, "call_id", r.CallID, "err", errors.Join(err, perr))
		return
	}
	c.mu.Lock()
	_, dup := c.members[r.CallID]
	if !dup {
		c.members[r.CallID] = nil // reserved while the socket opens
	}
	c.mu.Unlock()
	if dup {
		return
	}
	conn, err := c.cfg.Listen(ctx, true)
	if err != nil {
		c.forget(r.CallID, nil)
		c.log.Warn("party line: cannot take a member over", "room", room.number, "call_id", r.CallID, "err", err)
		return
	}
	local, _ := sipnet.AddrPortOf(conn.LocalAddr())
	acked := make(chan struct{})
	close(acked) // we are the one to ACK here
	m := &confMember{uasDialog: uasDialog{callID: r.CallID, localTag: r.Local, remoteTag: r.Remote, invite: inv, src: src,
		acked: acked, bye: make(chan struct{})},
		room: room, mesh: true, conn: conn, slot: r.Slot, keep: true,
		out: rtp.Header{Version: 2, Marker: true, PayloadType: r.PT, SSRC: rand.Uint32() | 1,
			SequenceNumber: uint16(rand.Uint32()), Timestamp: rand.Uint32()}}
	m.MixMember = MixMember{In: new(MixInput), PT: r.PT}
	m.cseq.Store(r.CSeq)
	seq := m.cseq.Add(1) // before run records the member: the next node goes above it
	m.answer = roomOffer(r.PT, c.h.MeshAddr().Addr(), local.Port(), room.number)
	runCtx, cancel := context.WithCancel(c.h.Context())
	c.mu.Lock()
	c.members[r.CallID] = m
	c.mu.Unlock()
	if !c.h.Go(func() { c.run(runCtx, cancel, m) }) {
		cancel()
		conn.Close()
		c.forget(r.CallID, m)
		return
	}
	req := m.request(sip.INVITE, c.h.MeshAddr(), seq)
	c.dialogHeaders(inv, req, m)
	res := c.final(ctx, req)
	if res == nil || res.StatusCode >= 300 {
		code := 0
		if res != nil {
			code = res.StatusCode
		}
		c.log.Info("party line: member not taken over", "room", room.number, "call_id", r.CallID, "status", code)
		// 481: its call is gone, and its record goes with it; any other
		// failure (491: another node's re-INVITE was first) leaves the
		// record to whoever serves the member.
		m.moved.Store(code != 481)
		m.gotBye()
		return
	}
	if idx, _, err := echoStream(res.Body()); err == nil {
		d, _ := sipalg.Parse(res.Body())
		if ap := d.Streams[idx].RTP(); ap.Addr().IsValid() {
			room.mu.Lock()
			m.remote = ap
			room.mu.Unlock()
		}
	}
	ack := m.request(sip.ACK, c.h.MeshAddr(), seq)
	if err := c.h.SendOn(ack, true); err != nil {
		c.log.Info("party line: ACK of a take-over not sent", "call_id", r.CallID, "err", err)
	}
	c.putMember(ctx, m) // the record names this node now
	c.log.Info("party line: member taken over", "room", room.number, "call_id", r.CallID, "member", r.From)
}

// probeTimeout bounds the wait for a room node's answer to OPTIONS: a node
// that does not answer within it is taken for dead.
const probeTimeout = time.Second

// answers reports whether the node at addr (a mesh SIP address) answers
// an OPTIONS (RFC 3261 §11) within probeTimeout, whatever the status.
func (c *ConfService) answers(ctx context.Context, addr string) bool {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	u := sip.Uri{Scheme: "sip", Host: sipnet.URIHost(ap.Addr()), Port: int(ap.Port())}
	req := sip.NewRequest(sip.OPTIONS, u)
	via := c.h.MeshAddr()
	v := &sip.ViaHeader{ProtocolName: "SIP", ProtocolVersion: "2.0", Transport: "UDP", Host: via.Addr().String(), Port: int(via.Port())}
	v.Params.Add("branch", sip.GenerateBranchN(16))
	req.AppendHeader(v)
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(&mf)
	self := sip.Uri{Scheme: "sip", Host: sipnet.URIHost(via.Addr()), Port: int(via.Port())}
	req.AppendHeader(&sip.FromHeader{Address: self, Params: sipnet.TagParams(sip.GenerateTagN(16))})
	req.AppendHeader(&sip.ToHeader{Address: u, Params: sip.NewParams()})
	cid := sip.CallIDHeader(sip.GenerateTagN(24))
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: 1, MethodName: sip.OPTIONS})
	req.SetTransport("UDP")
	req.SetDestination(ap.String())
	return c.final(ctx, req) != nil
}

// final sends req and returns its final response, nil on failure.
func (c *ConfService) final(ctx context.Context, req *sip.Request) *sip.Response {
	tx, err := c.h.RequestOn(ctx, req, true)
	if err != nil {
		c.log.Info("party line: re-INVITE not sent", "call_id", req.CallID().Value(), "err", err)
		return nil
	}
	defer tx.Terminate()
	for {
		select {
		case res := <-tx.Responses():
			if res.StatusCode >= 200 {
				return res
			}
		case <-tx.Done():
			return nil
		case <-ctx.Done():
			return nil
		}
	}
}

// roomOffer is the room's SDP offer of a re-INVITE (RFC 3264 §5): one
// G.711 audio stream at our address.
func roomOffer(pt uint8, addr netip.Addr, port uint16, room string) []byte {
	d, _ := sipalg.Parse(fmt.Appendf(nil, "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 0 RTP/AVP %d\r\n", pt))
	return echoAnswer(d, 0, pt, addr, port, "sipmesh party line "+room)
}
