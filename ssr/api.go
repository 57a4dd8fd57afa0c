package ssr

import (
	"net/netip"
	"time"
)

// LinkID names one mesh interface of a node, as its driver numbers them.
type LinkID int

// Mode selects how a datagram is delivered.
type Mode uint8

const (
	// Exact delivers to the node whose ID equals the target; if that node
	// does not exist the sender is told (Unreachable).
	Exact Mode = iota
	// Closest delivers to the node responsible for the target key: the node
	// n with target in [n, successor(n)) — the DHT's primitive.
	Closest
)

func (m Mode) String() string {
	if m == Closest {
		return "closest"
	}
	return "exact"
}

// Env is what a Node needs from the world. A Node calls it synchronously
// from inside HandleFrame, Tick, Send and Ping; an implementation must not
// call back into the Node from these methods.
type Env interface {
	// SendFrame transmits frame on link to the neighbour at to, or to every
	// neighbour on the link when to is the zero AddrPort. The frame is only
	// valid during the call.
	SendFrame(link LinkID, to netip.AddrPort, frame []byte)
	// Deliver hands an event for the application to the driver: a Datagram,
	// a PingReply or an Unreachable. Slices in it are owned by the receiver.
	Deliver(ev Event)
}

// Event is something the routing layer reports to the application.
type Event interface{ isEvent() }

// Datagram is application data that arrived at this node.
type Datagram struct {
	Src              NodeID
	Target           NodeID // the ID or key it was sent to
	Mode             Mode
	SrcPort, DstPort uint16
	Payload          []byte
	Hops             int // physical hops taken
}

// PingReply answers Ping: the round trip and the source route the request
// took (first element this node, last the target).
type PingReply struct {
	ID    uint32
	From  NodeID
	Sent  time.Time
	Route []NodeID
	Hops  int // physical hops of the request
}

// Unreachable reports that a datagram or ping sent by this node could not be
// delivered: the exact target does not exist, or the route broke and could
// not be repaired within the hop budget.
type Unreachable struct {
	Target  NodeID
	Mode    Mode
	DstPort uint16
	PingID  uint32 // non-zero for a ping
	At      NodeID // the node that gave up
	Reason  string
}

func (Datagram) isEvent()    {}
func (PingReply) isEvent()   {}
func (Unreachable) isEvent() {}

// Params are the protocol's timers and bounds. The zero value of a field
// means its default (DefaultParams).
type Params struct {
	HelloInterval    time.Duration // neighbour beacons
	NeighbourTimeout time.Duration // a neighbour silent this long is gone
	// FastInterval and FastTimeout watch a neighbour this node is sending
	// application data to (BFD-like, RFC 5880 §6.8.4): unanswered for
	// FastInterval it is probed every FastInterval/2; silent for
	// FastTimeout it is no longer routed through until heard again.
	FastInterval    time.Duration
	FastTimeout     time.Duration
	RingInterval    time.Duration // fastest ring maintenance round
	RingIntervalMax time.Duration // slowest, once the ring is stable
	FingerInterval  time.Duration // finger refresh cycle (backs off up to 4× while fingers stay put)
	MaxTimeout      time.Duration // global-max announcement lifetime
	SuccessorList   int           // successors and predecessors kept
	Fingers         int           // long-distance fingers (ring/2, ring/4, ...); negative: none
	CacheSize       int           // route cache entries (soft bound; pinned routes excepted)
	MaxHops         int           // route length bound and physical hop budget of a frame (≤ 255)
	// RingProbes is how many notifications a silent ring neighbour is
	// sent, spaced by its round-trip time, before silence alone declares
	// it gone (evidence — a broken-link or unreachable report, a
	// neighbour timeout — removes it at once).
	RingProbes int
}

// DefaultParams are tuned for radio meshes of up to some ten thousand nodes.
var DefaultParams = Params{
	HelloInterval:    time.Second,
	NeighbourTimeout: 3500 * time.Millisecond,
	FastInterval:     100 * time.Millisecond,
	FastTimeout:      350 * time.Millisecond,
	RingInterval:     time.Second,
	RingIntervalMax:  8 * time.Second,
	FingerInterval:   30 * time.Second,
	MaxTimeout:       20 * time.Second,
	SuccessorList:    4,
	Fingers:          24,
	CacheSize:        512,
	MaxHops:          255,
	RingProbes:       8,
}

// Stats are a node's counters.
type Stats struct {
	FramesIn    uint64 `json:"frames_in"`   // every frame received on a link
	FramesOut   uint64 `json:"frames_out"`  // every frame sent on a link
	ControlOut  uint64 `json:"control_out"` // frames sent that were not application data
	Malformed   uint64 `json:"malformed"`   // frames dropped because they did not decode
	Forwarded   uint64 `json:"forwarded"`   // frames relayed for others
	Delivered   uint64 `json:"delivered"`   // datagrams delivered locally
	Dropped     uint64 `json:"dropped"`     // frames dropped (hop budget, no route, loops)
	LinkBroken  uint64 `json:"link_broken"` // broken-link reports sent
	Unreachable uint64 `json:"unreachable"` // unreachable reports sent
	Redirected  uint64 `json:"redirected"`  // relayed frames sent to a node closer to their target than planned
	Shortened   uint64 `json:"shortened"`   // relayed frames given a shorter cached route to their planned end
	Detoured    uint64 `json:"detoured"`    // frames sent past a target this node has no route to, to its ring successor side
	HopLimit    uint64 `json:"hop_limit"`   // frames dropped after MaxHops physical hops (a loop guard; never in a sound mesh)
	Probes      uint64 `json:"probes"`      // keepalive probes sent to neighbours carrying traffic
	Suspected   uint64 `json:"suspected"`   // neighbours taken out of routing by the fast timeout
}

// Neighbour is a node heard directly on a link.
type Neighbour struct {
	ID       NodeID
	Link     LinkID
	Addr     netip.AddrPort
	Quality  float64 // fraction of recent beacons heard, 0..1
	LastSeen time.Time
}
