package phones

import (
	"context"
	"fmt"

	"github.com/emiago/sipgo/sip"

	"github.com/sipmesh/sipmesh/sipnet"
)

// Instant messages in pager mode (RFC 3428): a MESSAGE request outside any
// dialog carries one text/plain body; the recipient answers 200.

// maxMessages bounds the phone's inbox; more are answered 486 until read
// (RFC 3428 §7: a UA may refuse with any status).
const maxMessages = 32

// Message is a received instant message.
type Message struct {
	From string // the sender's URI
	Body string
}

// Messages returns the phone's inbox.
func (p *Phone) Messages() <-chan Message { return p.inbox }

// SendMessage sends text to target (an extension or a sip: URI) through
// the phone's server, answering a digest challenge, and returns the final
// status: 200 delivered, 202 accepted for later delivery (RFC 3428 §7).
func (p *Phone) SendMessage(ctx context.Context, target, text string) (int, error) {
	uri, _, err := p.target(target)
	if err != nil {
		return 0, err
	}
	req := sip.NewRequest(sip.MESSAGE, uri)
	req.AppendHeader(p.via())
	req.AppendHeader(&sip.FromHeader{DisplayName: p.cfg.DisplayName, Address: p.aor,
		Params: sipnet.TagParams(sip.GenerateTagN(10))})
	req.AppendHeader(&sip.ToHeader{Address: uri, Params: sip.NewParams()})
	cid := sip.CallIDHeader(sip.GenerateTagN(16) + "@" + p.cfg.LocalAddr.String())
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: 1, MethodName: sip.MESSAGE})
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(&mf)
	ct := sip.ContentTypeHeader("text/plain;charset=UTF-8")
	req.AppendHeader(&ct)
	req.SetBody([]byte(text))
	res, err := p.authedRequest(ctx, req)
	if err != nil {
		return 0, fmt.Errorf("phones: MESSAGE: %w", err)
	}
	return res.StatusCode, nil
}

// onMessage takes a MESSAGE into the inbox.
func (p *Phone) onMessage(req *sip.Request, tx sip.ServerTransaction) {
	from := req.From()
	if from == nil {
		p.respond(tx, req, 400, "Bad Request", nil, "")
		return
	}
	select {
	case p.inbox <- Message{From: from.Address.String(), Body: string(req.Body())}:
		p.respond(tx, req, 200, "OK", nil, "")
	default:
		p.respond(tx, req, 486, "Busy Here (inbox full)", nil, "")
	}
}
