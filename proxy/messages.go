package proxy

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"

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
	s.log.Info("message stored for an offline phone", "to", ext)
	return 202, "Accepted (stored until the phone registers)"
}

// afterRegister delivers the stored messages of an extension that just
// registered through this node.
func (s *SIPService) afterRegister(req *sip.Request, res *sip.Response, src netip.AddrPort) {
	if s.cfg.Messages == nil || res == nil || res.StatusCode != 200 || req.To() == nil || req.Contact() == nil {
		return
	}
	if exp := req.GetHeader("Expires"); exp != nil && strings.TrimSpace(exp.Value()) == "0" {
		return
	}
	ext := req.To().Address.User
	contact := *req.Contact().Address.Clone()
	tr := strings.ToUpper(req.Transport())
	s.goTracked(func() {
		ctx, cancel := context.WithTimeout(s.ctx, lookupTimeout)
		defer cancel()
		ms, err := s.cfg.Messages.Take(ctx, ext)
		if err != nil {
			s.log.Info("stored messages not read", "ext", ext, "err", err)
			return
		}
		for _, m := range ms {
			s.deliverMessage(m, contact, src, tr)
		}
	})
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
