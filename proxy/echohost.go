package proxy

import (
	"context"
	"net/netip"
	"strings"

	"github.com/emiago/sipgo/sip"

	"github.com/sipmesh/sipmesh/registrar"
)

// echoHost lends the echo test (phones.EchoService) what it needs of the
// SIP service: its context and goroutine tracking, its responses and
// request checks, and its LAN socket for the BYE the echo test sends.
type echoHost struct{ s *SIPService }

func (h echoHost) Context() context.Context { return h.s.ctx }
func (h echoHost) Go(f func()) bool         { return h.s.goTracked(f) }
func (h echoHost) OurHost(host string) bool { return h.s.ourHost(host) }
func (h echoHost) OurRoute(u *sip.Uri) bool { return h.s.ourRoute(u) }
func (h echoHost) LANAddr() netip.AddrPort  { return h.s.lan.addr }

func (h echoHost) Respond(req *sip.Request, code int, reason string) *sip.Response {
	return h.s.respond(req, code, reason)
}

func (h echoHost) Check(req *sip.Request) (int, string) {
	code, reason := registrar.CheckRequest(req)
	if code != 0 {
		h.s.malformed.Add(1)
	}
	return code, reason
}

func (h echoHost) Request(ctx context.Context, req *sip.Request) (sip.ClientTransaction, error) {
	if strings.EqualFold(req.Transport(), "UDP") {
		h.s.lan.laddr.Copy(&req.Laddr)
	}
	if err := h.s.connReady(req); err != nil {
		return nil, err
	}
	return h.s.client.TransactionRequest(ctx, req, noBuild)
}
