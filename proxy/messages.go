package proxy

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/sipmesh/sipmesh/internal/ttlmap"
	"github.com/sipmesh/sipmesh/registrar"
	"github.com/sipmesh/sipmesh/sipnet"
)

// Instant messages (RFC 3428, pager mode). A MESSAGE is proxied like any
// request; one for an extension without a live binding is kept instead
// (registrar.MessageStore, in the DHT: bounded, expiring) and answered
// 202 Accepted (RFC 3428 §7: accepted, not yet delivered). When the
// extension next registers through any node, that node takes its
// messages and sends each to the phone as a MESSAGE of its own, with the
// original sender in From.

// storeMessage keeps an undeliverable MESSAGE; it returns the status to
// answer.
func (p *proxyTx) storeMessage(base *sip.Request, ext string) (int, string) {
	s := p.s
	ct := ""
	if h := base.ContentType(); h != nil && !strings.HasPrefix(strings.ToLower(h.Value()), "text/plain") {
		ct = h.Value()
	}
	m := registrar.StoredMessage{ID: randomHex(8), To: ext, From: base.From().Address.String(), ContentType: ct,
		Body: string(base.Body()), Stored: time.Now()}
	ctx, cancel := context.WithTimeout(s.ctx, lookupTimeout)
	defer cancel()
	switch err := s.cfg.Messages.Store(ctx, m); {
	case errors.Is(err, registrar.ErrMailboxFull):
		return 480, "Temporarily Unavailable (mailbox full)"
	case err != nil:
		s.log.Info("message not stored", "to", ext, "err", err)
		return 480, "Temporarily Unavailable"
	}
	s.mail.forget(ext) // its next registration here must look
	s.log.Info("message stored for an offline phone", "to", ext)
	return 202, "Accepted (stored until the phone registers)"
}

// afterRegister queues a look into the mailbox of an extension that just
// registered through this node; a worker delivers what it holds.
func (s *SIPService) afterRegister(req *sip.Request, res *sip.Response, src netip.AddrPort) {
	if s.cfg.Messages == nil || res == nil || res.StatusCode != 200 || req.To() == nil || req.Contact() == nil {
		return
	}
	ext := req.To().Address.User
	if exp := req.GetHeader("Expires"); exp != nil && strings.TrimSpace(exp.Value()) == "0" {
		// Unregistered: the next registration must look again at once.
		s.mail.forget(ext)
		return
	}
	mc := mailCheck{ext: ext, contact: *req.Contact().Address.Clone(), src: src, tr: strings.ToUpper(req.Transport())}
	if s.mail.add(mc, time.Now()) {
		s.goTracked(s.mailWorker)
	}
}

// Mailbox checks after REGISTER. Every successful REGISTER (refreshes
// included) may find messages kept while the phone was unreachable, but
// nearly all find none, and under a registration load a read per REGISTER
// would queue goroutines without bound and take the DHT's capacity from
// the registrations themselves. So the checks are bounded: one pending
// check per extension (a newer REGISTER replaces its contact), at most
// maxMailPending extensions waiting, mailWorkers reading, and an
// extension whose mailbox was found empty less than mailRecheck ago is not
// read again — unless it unregistered or this node stored a message for
// it since. A check dropped because the queue is full is made at the
// phone's next refresh.
const (
	maxMailPending = 1024
	mailWorkers    = 4
	mailRecheck    = 10 * time.Second
	maxMailChecked = 4096 // extensions remembered as recently empty
)

// mailCheck is one pending mailbox check: where to deliver.
type mailCheck struct {
	ext     string
	contact sip.Uri
	src     netip.AddrPort
	tr      string
}

// mailChecks is the bounded queue of mailbox checks (zero value ready).
type mailChecks struct {
	mu      sync.Mutex
	pending map[string]mailCheck
	order   []string // pending extensions, oldest first
	workers int
	empty   *ttlmap.Map[string, struct{}] // extensions whose mailbox was found empty lately
	dropped uint64
}

// add queues c unless its mailbox was found empty recently or the queue is
// full; it reports whether a worker should be started.
func (m *mailChecks) add(c mailCheck, now time.Time) (startWorker bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.empty != nil {
		if _, ok := m.empty.Get(c.ext, now); ok {
			return false
		}
	}
	if m.pending == nil {
		m.pending = make(map[string]mailCheck)
	}
	if _, ok := m.pending[c.ext]; ok {
		m.pending[c.ext] = c // deliver to the newest contact
		return false
	}
	if len(m.pending) >= maxMailPending {
		m.dropped++
		return false
	}
	m.pending[c.ext] = c
	m.order = append(m.order, c.ext)
	if m.workers < mailWorkers {
		m.workers++
		return true
	}
	return false
}

// next hands a worker the oldest pending check, or ends the worker.
func (m *mailChecks) next() (mailCheck, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for len(m.order) > 0 {
		ext := m.order[0]
		m.order = m.order[1:]
		if c, ok := m.pending[ext]; ok {
			delete(m.pending, ext)
			return c, true
		}
	}
	m.order = nil
	m.workers--
	return mailCheck{}, false
}

// done records the outcome of a check: an empty mailbox is not read again
// for mailRecheck.
func (m *mailChecks) done(ext string, empty bool, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.empty == nil {
		m.empty = ttlmap.New[string, struct{}](maxMailChecked)
	}
	if !empty {
		m.empty.Delete(ext)
		return
	}
	m.empty.Put(ext, struct{}{}, now.Add(mailRecheck), now)
}

// forget makes the next registration of ext look into its mailbox.
func (m *mailChecks) forget(ext string) {
	m.mu.Lock()
	if m.empty != nil {
		m.empty.Delete(ext)
	}
	m.mu.Unlock()
}

// mailWorker runs pending mailbox checks until none is left.
func (s *SIPService) mailWorker() {
	for {
		c, ok := s.mail.next()
		if !ok {
			return
		}
		ctx, cancel := context.WithTimeout(s.ctx, lookupTimeout)
		ms, err := s.cfg.Messages.Take(ctx, c.ext)
		cancel()
		if err != nil {
			s.log.Info("stored messages not read", "ext", c.ext, "err", err)
			continue
		}
		s.mail.done(c.ext, len(ms) == 0, time.Now())
		for _, m := range ms {
			s.deliverMessage(m, c.contact, c.src, c.tr)
		}
	}
}

// deliverMessage sends one stored message to a phone on our LAN.
func (s *SIPService) deliverMessage(m registrar.StoredMessage, contact sip.Uri, dst netip.AddrPort, tr string) {
	var from sip.Uri
	if sip.ParseUri(m.From, &from) != nil {
		return
	}
	req := sip.NewRequest(sip.MESSAGE, contact)
	via := &sip.ViaHeader{ProtocolName: "SIP", ProtocolVersion: "2.0", Transport: tr,
		Host: s.lan.addr.Addr().String(), Port: int(s.lan.addr.Port())}
	via.Params.Add("branch", sip.GenerateBranchN(16))
	req.AppendHeader(via)
	req.AppendHeader(&sip.FromHeader{Address: from, Params: sipnet.TagParams(sip.GenerateTagN(10))})
	req.AppendHeader(&sip.ToHeader{Address: sip.Uri{Scheme: "sip", User: m.To, Host: "mesh"}, Params: sip.NewParams()})
	cid := sip.CallIDHeader(m.ID + "@" + s.lan.addr.Addr().String())
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: 1, MethodName: sip.MESSAGE})
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(&mf)
	ctv := m.ContentType
	if ctv == "" {
		ctv = "text/plain;charset=UTF-8"
	}
	ct := sip.ContentTypeHeader(ctv)
	req.AppendHeader(&ct)
	req.AppendHeader(sip.NewHeader("Date", m.Stored.UTC().Format(time.RFC1123)))
	req.SetBody([]byte(m.Body))
	req.SetTransport(tr)
	req.SetDestination(dst.String())
	tx, err := echoHost{s}.Request(s.ctx, req)
	if err != nil {
		s.log.Info("stored message not sent", "to", m.To, "err", err)
		return
	}
	defer tx.Terminate()
	for {
		select {
		case res := <-tx.Responses():
			if res.StatusCode >= 200 {
				s.log.Info("stored message delivered", "to", m.To, "status", res.StatusCode)
				return
			}
		case <-tx.Done():
			return
		case <-s.ctx.Done():
			return
		}
	}
}
