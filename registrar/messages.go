package registrar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/sipmesh/sipmesh/ssr"
	"github.com/sipmesh/sipmesh/ssr/dht"
)

// Store-and-forward of instant messages (RFC 3428 pager mode): a MESSAGE
// for an extension with no binding is kept, bounded per extension and
// for MessageLifetime, and delivered when the extension registers.
//
// On the DHT (DHTMessages) each node writes, under "msg:"+extension, one
// record signed with its node key: the messages it stored for the
// extension and the IDs of the messages it delivered (of any node). A
// node that delivers reads every node's record, skips what some node
// already delivered, and adds what it delivers to its own record, which
// also drops its own stored copies of them; a writer prunes its messages
// that another node delivered when it next writes. So a message is
// delivered once per registration lifetime even though no node can change
// another's record.

// Store-and-forward bounds.
const (
	// A node's mailbox for an extension is one DHT value (dht.MaxValue,
	// 768 bytes): a few short messages, and at most MaxStoredMessages.
	MaxStoredMessages = 8   // per extension and storing node
	MaxMessageBody    = 200 // bytes of one stored message
	MessageLifetime   = 7 * 24 * time.Hour
	maxDeliveredIDs   = 64
)

// ErrMailboxFull is returned when an extension has MaxStoredMessages
// waiting.
var ErrMailboxFull = errors.New("mailbox full")

// StoredMessage is a MESSAGE kept for an offline extension.
type StoredMessage struct {
	ID          string    `json:"id"`
	To          string    `json:"to"`             // the extension
	From        string    `json:"from"`           // the sender's URI
	ContentType string    `json:"type,omitempty"` // empty: text/plain
	Body        string    `json:"body"`
	Stored      time.Time `json:"stored"`
}

// MessageStore keeps messages for offline extensions.
type MessageStore interface {
	Store(ctx context.Context, m StoredMessage) error
	// Take returns the messages waiting for ext, oldest first, and marks
	// them delivered.
	Take(ctx context.Context, ext string) ([]StoredMessage, error)
}

func checkMessage(m StoredMessage) error {
	if err := ValidExt(m.To); err != nil {
		return err
	}
	if len(m.Body) > MaxMessageBody {
		return fmt.Errorf("message of %d bytes: at most %d are stored", len(m.Body), MaxMessageBody)
	}
	if m.ID == "" {
		return errors.New("message without ID")
	}
	return nil
}

func live(ms []StoredMessage, now time.Time) []StoredMessage {
	return slices.DeleteFunc(ms, func(m StoredMessage) bool { return now.Sub(m.Stored) > MessageLifetime })
}

// MemMessages is a MessageStore in memory.
type MemMessages struct {
	mu sync.Mutex
	m  map[string][]StoredMessage
}

// Store implements MessageStore.
func (s *MemMessages) Store(_ context.Context, m StoredMessage) error {
	if err := checkMessage(m); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[string][]StoredMessage)
	}
	q := live(s.m[m.To], time.Now())
	if len(q) >= MaxStoredMessages {
		return ErrMailboxFull
	}
	s.m[m.To] = append(q, m)
	return nil
}

// Take implements MessageStore.
func (s *MemMessages) Take(_ context.Context, ext string) ([]StoredMessage, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := live(s.m[ext], time.Now())
	delete(s.m, ext)
	return q, nil
}

// msgKeyPrefix + extension: every node's mailbox record for it.
const msgKeyPrefix = "msg:"

// mailbox is one node's record for an extension.
type mailbox struct {
	Messages  []StoredMessage `json:"messages,omitempty"`
	Delivered []string        `json:"delivered,omitempty"`
}

// DHTMessages is the MessageStore on the DHT.
type DHTMessages struct {
	DHT  DHT
	Node ssr.NodeID // this node: its records are those it wrote
	Now  func() time.Time
	// sems serialise this node's read-modify-write of its mailbox record
	// for one extension (striped by extension: mailboxes of different
	// extensions are different records). Channels, not mutexes: the holder
	// waits on the DHT, and a waiter must give up with its context (and,
	// under testing/synctest, block durably) rather than sit on a lock.
	once sync.Once
	sems [mailboxStripes]chan struct{}
}

// mailboxStripes is the number of read-modify-write turns that may run at
// once (one per stripe of extensions).
const mailboxStripes = 32

// lock takes ext's read-modify-write turn, or gives up when ctx ends.
func (s *DHTMessages) lock(ctx context.Context, ext string) (unlock func(), err error) {
	s.once.Do(func() {
		for i := range s.sems {
			s.sems[i] = make(chan struct{}, 1)
		}
	})
	sem := s.sems[stripe(ext)%mailboxStripes]
	select {
	case sem <- struct{}{}:
		return func() { <-sem }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (s *DHTMessages) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// read returns this node's mailbox for ext, the others', and every
// delivered ID.
func (s *DHTMessages) read(ctx context.Context, ext string) (own mailbox, others []StoredMessage, done map[string]bool, err error) {
	recs, err := s.DHT.Get(ctx, msgKeyPrefix+ext)
	if err != nil {
		return own, nil, nil, fmt.Errorf("messages for %s: %w", ext, err)
	}
	done = make(map[string]bool)
	for _, r := range recs {
		var mb mailbox
		if r.Tombstone || json.Unmarshal(r.Value, &mb) != nil {
			continue
		}
		for _, id := range mb.Delivered {
			done[id] = true
		}
		if dht.WriterID(r.Writer) == s.Node {
			own = mb
		} else {
			others = append(others, mb.Messages...)
		}
	}
	return own, others, done, nil
}

func (s *DHTMessages) write(ctx context.Context, ext string, mb mailbox) error {
	if len(mb.Delivered) > maxDeliveredIDs {
		mb.Delivered = mb.Delivered[len(mb.Delivered)-maxDeliveredIDs:]
	}
	b, err := json.Marshal(mb)
	if err != nil {
		return err
	}
	if len(b) > dht.MaxValue {
		return ErrMailboxFull
	}
	return s.DHT.Put(ctx, msgKeyPrefix+ext, b, MessageLifetime)
}

// Store implements MessageStore.
func (s *DHTMessages) Store(ctx context.Context, m StoredMessage) error {
	if err := checkMessage(m); err != nil {
		return err
	}
	unlock, err := s.lock(ctx, m.To)
	if err != nil {
		return err
	}
	defer unlock()
	own, _, done, err := s.read(ctx, m.To)
	if err != nil {
		return err
	}
	own.Messages = live(slices.DeleteFunc(own.Messages, func(x StoredMessage) bool { return done[x.ID] }), s.now())
	if len(own.Messages) >= MaxStoredMessages {
		return ErrMailboxFull
	}
	own.Messages = append(own.Messages, m)
	return s.write(ctx, m.To, own)
}

// Take implements MessageStore. It runs after every successful REGISTER,
// and nearly always finds nothing: that case is one read, without taking
// the extension's turn, so registrations do not queue behind each other.
func (s *DHTMessages) Take(ctx context.Context, ext string) ([]StoredMessage, error) {
	if out, own, err := s.pending(ctx, ext); err != nil || (len(out) == 0 && len(own.Messages) == 0) {
		return nil, err
	}
	unlock, err := s.lock(ctx, ext)
	if err != nil {
		return nil, err
	}
	defer unlock()
	// Read again under the turn: a Store or Take of this node may have
	// changed the mailbox since.
	out, own, err := s.pending(ctx, ext)
	if err != nil || (len(out) == 0 && len(own.Messages) == 0) {
		return nil, err
	}
	for _, m := range out {
		own.Delivered = append(own.Delivered, m.ID)
	}
	own.Messages = nil
	slices.SortFunc(out, func(a, b StoredMessage) int { return a.Stored.Compare(b.Stored) })
	return out, s.write(ctx, ext, own)
}

// pending reads ext's mailboxes: the live messages for ext not yet
// delivered, and this node's own mailbox record.
func (s *DHTMessages) pending(ctx context.Context, ext string) (out []StoredMessage, own mailbox, err error) {
	own, others, done, err := s.read(ctx, ext)
	if err != nil {
		return nil, own, err
	}
	for _, m := range live(append(slices.Clone(own.Messages), others...), s.now()) {
		if !done[m.ID] && m.To == ext {
			out = append(out, m)
			done[m.ID] = true
		}
	}
	return out, own, nil
}
