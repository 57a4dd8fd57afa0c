package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"

	"github.com/emiago/sipgo/sip"

	"github.com/sipmesh/sipmesh/phones"
	"github.com/sipmesh/sipmesh/registrar"
	"github.com/sipmesh/sipmesh/ssr"
)

// The telephone features hosted on the mesh rather than on the caller's
// node: today the party line (426 and its rooms, phones.ConfService).
//
// A room runs on the node responsible for the room's key on the ring
// (RoomKey; the node n with the key in [n, successor(n)), the owner rule
// of the DHT and of SSR closest delivery). The daemon asks the DHT: a
// lookup of RoomKeyName(room) is routed by the ring to that owner, which
// answers it (dht.Result.Owner), so every node names the same one once
// the ring is consistent; a node's own view of the ring would not. A room INVITE from a phone on
// this node's LAN for a room another node runs is sent straight to that
// node's mesh SIP address with its Request-URI naming the mesh domain
// (sip:426@mesh, whatever host the phone used),
// through the ALG like any call that leaves for the mesh, so the member's
// media goes through this node's relay. A room request that came over the
// mesh and was not taken by the room service is never sent on: two views
// of the ring must not bounce it.

// RoomsConfig configures the party line of a SIP service.
type RoomsConfig struct {
	// Listen opens a media socket for a member on the mesh address
	// (mesh) or the LAN address. Required.
	Listen func(ctx context.Context, mesh bool) (net.PacketConn, error)
	// Numbers are the room numbers (default phones.DefaultRooms: 426,
	// 4260–4269).
	Numbers []string
	// Owner returns the node that runs room: the owner of RoomKey(room)
	// on the ring (production: the node that answers a DHT lookup of
	// RoomKeyName(room); tests: RingOwner of the node IDs); zero when
	// unknown. Required.
	Owner      func(room string) ssr.NodeID
	MaxMembers int // per room (default phones.DefaultConfMembers)
	// Store keeps the dialogs of the room's members who came over the
	// mesh (registrar.DHTRooms), so that the room's next node takes them
	// over when the room's node dies (phones/roommove.go); nil: a room
	// dies with its node.
	Store phones.RoomStore
}

// RoomKeyName is a room's DHT key: its owner is the room's node.
func RoomKeyName(room string) string { return "sipmesh room " + room }

// RoomKey is a room's key on the ring (dht.KeyOf(RoomKeyName(room))).
func RoomKey(room string) ssr.NodeID { return ssr.KeyID([]byte(RoomKeyName(room))) }

// RingOwner returns the node of ids responsible for key: the one at or
// before key clockwise (the node n with key in [n, successor(n))), or
// the last one round the ring when every ID is after key. ids must not be
// empty.
func RingOwner(ids []ssr.NodeID, key ssr.NodeID) ssr.NodeID {
	best, top := ids[0], ids[0]
	found := false
	for _, id := range ids {
		top = max(top, id)
		if id <= key && (!found || id > best) {
			best, found = id, true
		}
	}
	if !found {
		return top
	}
	return best
}

// initFeatures prepares the features the configuration asks for.
func (s *SIPService) initFeatures() error {
	rc := s.cfg.Rooms
	if rc == nil {
		return nil
	}
	if rc.Listen == nil || rc.Owner == nil {
		return errors.New("sip service: Rooms needs Listen and Owner")
	}
	var err error
	s.conf, err = phones.NewConfService(phones.ConfConfig{Host: confHost{echoHost{s}}, Listen: rc.Listen,
		Rooms: rc.Numbers, MaxMembers: rc.MaxMembers, Store: rc.Store, Logger: s.log,
		Owner: func(room string) bool { return rc.Owner(room) == s.cfg.Node }})
	return err
}

// feature hands a request to a feature this node answers itself; it
// reports whether one took it.
// A malformed request (a header missing or doubled, RFC 3261 §8.1.1) is
// left to the proxy's 400: features read From, To and Call-ID as given.
func (s *SIPService) feature(req *sip.Request, tx sip.ServerTransaction, in *sock, src netip.AddrPort) bool {
	if code, _ := registrar.CheckRequest(req); code != 0 {
		return false
	}
	return (s.conf != nil && s.conf.Handle(req, tx, in == s.mesh, src)) || s.blf.Handle(req, tx, in == s.mesh, src) ||
		s.featureCode(req, tx, in, src)
}

// featureTargets routes a request for a ring group (groups.go) or a
// feature hosted on another node (a room); ok is false for any other
// extension.
func (p *proxyTx) featureTargets(ext string) (ts []target, code int, reason string, ok bool) {
	s := p.s
	if ts, code, reason, ok := p.groupTargets(ext); ok {
		return ts, code, reason, true
	}
	if ts, code, reason, ok := p.blfTargets(ext); ok {
		return ts, code, reason, true
	}
	if s.conf == nil || !s.conf.IsRoom(ext) {
		return nil, 0, "", false
	}
	owner := s.cfg.Rooms.Owner(ext)
	if p.in == s.mesh || owner == s.cfg.Node || !p.req.IsInvite() {
		return nil, 404, "Not Found (no such room here)", true
	}
	na := s.cfg.NodeSIPAddr(owner)
	if owner == 0 || !na.IsValid() || na == s.cfg.MeshAddr {
		return nil, 480, "Temporarily Unavailable (room's node unknown)", true
	}
	return []target{{uri: meshURI(p.req.Recipient), dst: na, transport: "UDP"}}, 0, "", true
}

// meshURI is u (a Request-URI naming this node or the mesh domain) with
// the host "mesh", the name every node answers to: a phone configured
// with its node's address as its domain sends sip:426@10.97.1.1, which
// another node must not take for a domain it does not serve.
func meshURI(u sip.Uri) sip.Uri {
	u = *u.Clone()
	u.Host, u.Port = "mesh", 0
	return u
}

// RingChanged tells the service that the ring around this node changed
// (a ring neighbour died or came): it takes over the members of the rooms
// it owns now whose node died (phones.ConfService.Takeover). It returns at
// once.
func (s *SIPService) RingChanged() {
	if s.conf != nil {
		s.conf.Takeover()
	}
}

// Rooms lists the rooms this node runs that have members.
func (s *SIPService) Rooms() []phones.RoomStats {
	if s.conf == nil {
		return nil
	}
	return s.conf.Rooms()
}

// confHost lends the party line the mesh socket besides the echo test's.
type confHost struct{ echoHost }

func (h confHost) MeshAddr() netip.AddrPort { return h.s.mesh.addr }

func (h confHost) RequestOn(ctx context.Context, req *sip.Request, mesh bool) (sip.ClientTransaction, error) {
	if !mesh {
		return h.Request(ctx, req)
	}
	if strings.EqualFold(req.Transport(), "UDP") {
		h.s.mesh.laddr.Copy(&req.Laddr)
	}
	if err := h.s.connReady(req); err != nil {
		return nil, err
	}
	return h.s.client.TransactionRequest(ctx, req, noBuild)
}

func (h confHost) SendOn(req *sip.Request, mesh bool) error {
	if strings.EqualFold(req.Transport(), "UDP") {
		if mesh {
			h.s.mesh.laddr.Copy(&req.Laddr)
		} else {
			h.s.lan.laddr.Copy(&req.Laddr)
		}
	}
	if err := h.s.connReady(req); err != nil {
		return err
	}
	return h.s.client.WriteRequest(req, noBuild)
}
