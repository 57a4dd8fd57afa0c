package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/sipmesh/sipmesh/sipalg"
)

// The SIP ALG of a node (docs/DESIGN.md, package sipalg): when a request or
// response with SDP crosses between the LAN socket (IPv4, relay side A)
// and the mesh socket (IPv6, relay side B), the node anchors the call's
// media on its relay and rewrites the SDP so that each side sees an
// address of its own family: one relay Session per m= line of the call,
// allocated on first sight, and one sipalg.OriginState per receiving side
// so o= versions stay monotonic across offers and answers (RFC 3264 §8).
// A call between two phones of the same node crosses no family boundary:
// its SDP passes untouched and the phones send media to each other
// directly on the LAN, as they would behind any proxy.
//
// The state is kept per dialog at each node, keyed by Call-ID and the
// caller's tag (a request from the callee carries that tag in To). It ends
// with the BYE, with an initial INVITE that gets no 2xx (failure, CANCEL,
// timeout), or when the relay reclaimed all its sessions as idle.

var (
	errCallsFull = errors.New("too many calls with media state")
	errRelayFull = errors.New("media relay full")
	errBadSDP    = errors.New("malformed SDP")
)

// callLeg is the ALG state of one dialog at this node.
type callLeg struct {
	key     string
	callID  string
	from    string // caller's and callee's URIs, for status
	to      string
	relay   *sipalg.Relay
	created time.Time

	mu       sync.Mutex
	sess     []*sipalg.Session // one per m= line; nil for one never offered
	origin   [2]sipalg.OriginState
	answered bool
	closed   bool
}

func legKey(callID, tag string) string { return callID + "\x00" + tag }

// legFor returns the dialog's state, creating it.
func (s *SIPService) legFor(callID, callerTag, from, to string, relay *sipalg.Relay) (*callLeg, error) {
	key := legKey(callID, callerTag)
	s.mu.Lock()
	defer s.mu.Unlock()
	if l := s.calls[key]; l != nil {
		return l, nil
	}
	if len(s.calls) >= s.cfg.MaxCalls {
		return nil, errCallsFull
	}
	l := &callLeg{key: key, callID: callID, from: from, to: to, relay: relay, created: time.Now()}
	s.calls[key] = l
	return l, nil
}

// findLeg returns the state of the dialog a request belongs to, whichever
// party sent it, or nil.
func (s *SIPService) findLeg(callID string, tags ...string) *callLeg {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range tags {
		if l := s.calls[legKey(callID, t)]; l != nil {
			return l
		}
	}
	return nil
}

// endLeg drops a dialog's state and closes its relay sessions.
func (s *SIPService) endLeg(l *callLeg) {
	s.mu.Lock()
	if s.calls[l.key] == l {
		delete(s.calls, l.key)
	}
	s.mu.Unlock()
	l.close()
}

// reapCalls drops the state of calls whose sessions the relay reclaimed,
// and of calls that never got media state and are older than any INVITE
// transaction can live.
func (s *SIPService) reapCalls(now time.Time) {
	var dead []*callLeg
	s.mu.Lock()
	for k, l := range s.calls {
		if l.ended() || (l.empty() && now.Sub(l.created) > s.cfg.TimerC+time.Minute) {
			delete(s.calls, k)
			dead = append(dead, l)
		}
	}
	s.mu.Unlock()
	for _, l := range dead {
		l.close()
		s.blf.EndCall(l.callID) // a call that ended without a BYE we saw
	}
}

func (l *callLeg) setAnswered() {
	l.mu.Lock()
	l.answered = true
	l.mu.Unlock()
}

func (l *callLeg) isAnswered() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.answered
}

func (l *callLeg) empty() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.sess {
		if s != nil {
			return false
		}
	}
	return true
}

// ended reports whether the leg had sessions and all of them ended.
func (l *callLeg) ended() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.sess {
		if s == nil {
			continue
		}
		n++
		select {
		case <-s.Done():
		default:
			return false
		}
	}
	return n > 0
}

func (l *callLeg) close() {
	l.mu.Lock()
	l.closed = true
	ss := l.sess
	l.sess = nil
	l.mu.Unlock()
	for _, s := range ss {
		if s != nil {
			s.Close()
		}
	}
}

// sessions returns the leg's live sessions (for stats and tests).
func (l *callLeg) sessions() []*sipalg.Session {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*sipalg.Session
	for _, s := range l.sess {
		if s != nil {
			out = append(out, s)
		}
	}
	return out
}

// rewrite takes an SDP body sent from side from to side to: it records
// the sender's media addresses as that side's peers and returns the body
// with the relay's address on side to (toAddr) and ports.
func (l *callLeg) rewrite(ctx context.Context, body []byte, from, to sipalg.Side, toAddr, srcIP netip.Addr) ([]byte, error) {
	d, err := sipalg.Parse(body)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errBadSDP, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, errors.New("call ended")
	}
	plan := sipalg.Plan{Addr: toAddr, Origin: &l.origin[to]}
	for i, st := range d.Streams {
		for len(l.sess) <= i {
			l.sess = append(l.sess, nil)
		}
		if st.Rejected() && l.sess[i] == nil {
			plan.Streams = append(plan.Streams, sipalg.StreamPlan{}) // stays port 0 (RFC 3264 §6)
			continue
		}
		if l.sess[i] == nil {
			sess, err := l.relay.Allocate(ctx)
			if err != nil {
				if errors.Is(err, sipalg.ErrRelayFull) || errors.Is(err, sipalg.ErrNoPorts) {
					return nil, fmt.Errorf("%w: %v", errRelayFull, err)
				}
				return nil, err
			}
			l.sess[i] = sess
		}
		sess := l.sess[i]
		if !st.Rejected() {
			sess.SetPeerStream(from, st)
			if srcIP.IsValid() {
				// A phone behind NAT names a private address in its SDP;
				// its RTP then comes from its signalling address.
				sess.AllowSource(from, srcIP)
			}
		}
		sp := sess.StreamPlan(to)
		if sp.Addr.IsValid() && sp.Addr != toAddr && sp.Addr.Is4() && toAddr.Is4() {
			// A gateway behind NAT: the relay's uplink port as the
			// Internet reaches it, at the public address
			// (SIPServiceConfig.LANPublic); the router keeps the port.
			sp.Addr = toAddr
		}
		plan.Streams = append(plan.Streams, sp)
	}
	return d.Rewrite(plan)
}

// CallStats is the media state of one call at this node.
type CallStats struct {
	CallID   string                `json:"call_id"`
	From     string                `json:"from"` // the caller's URI
	To       string                `json:"to"`   // the callee's URI
	Created  time.Time             `json:"created"`
	Answered bool                  `json:"answered"`
	Streams  []sipalg.SessionStats `json:"streams"` // per relayed m= line: packets, loss, jitter, MOS per side
}

// Calls returns the calls whose media this node relays, with the relay's
// per-stream statistics (sipalg.SessionStats: side A is the LAN, B the
// mesh).
func (s *SIPService) Calls() []CallStats {
	s.mu.Lock()
	legs := make([]*callLeg, 0, len(s.calls))
	for _, l := range s.calls {
		legs = append(legs, l)
	}
	s.mu.Unlock()
	out := make([]CallStats, 0, len(legs))
	for _, l := range legs {
		cs := CallStats{CallID: l.callID, From: l.from, To: l.to, Created: l.created, Answered: l.isAnswered()}
		for _, sess := range l.sessions() {
			cs.Streams = append(cs.Streams, sess.Stats())
		}
		out = append(out, cs)
	}
	return out
}
