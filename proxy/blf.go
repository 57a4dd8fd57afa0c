package proxy

import (
	"context"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/sipmesh/sipmesh/phones"
	"github.com/sipmesh/sipmesh/registrar"
)

// The busy lamp field (phones/blf.go, RFC 4235 over RFC 6665). This node
// notifies for the extensions registered through it, whose calls all pass
// its proxy: the proxy tells the BLF service what becomes of them (early
// on a provisional answer of an initial INVITE, confirmed on its 2xx,
// terminated on a failure or the BYE) for the party on its LAN, the
// caller of an INVITE that came from the LAN and the callee of one that
// goes out to it. A SUBSCRIBE for the dialog package from a LAN phone
// (authenticated like any request outside a dialog) is answered here when
// the extension is registered here, and otherwise sent to the mesh SIP
// address of the node it is registered through, its Request-URI naming
// the mesh domain (sip:202@mesh) and
// record-routed, where that node's service answers it; one that came over
// the mesh and is not taken is not sent on.

// initBLF starts the busy lamp field.
func (s *SIPService) initBLF() error {
	var err error
	s.blf, err = phones.NewBLFService(phones.BLFConfig{Host: confHost{echoHost{s}}, Logger: s.log,
		Local: func(ctx context.Context, ext string) bool { return s.localExt(ctx, ext) }})
	return err
}

// localExt reports whether ext has a live binding made through this node.
func (s *SIPService) localExt(ctx context.Context, ext string) bool {
	return len(s.localBindings(ctx, ext)) > 0
}

// localBindings returns ext's live bindings made through this node.
func (s *SIPService) localBindings(ctx context.Context, ext string) []registrar.Binding {
	if registrar.ValidExt(ext) != nil {
		return nil
	}
	all, err := s.cfg.Locations.Bindings(ctx, registrar.AOR(ext))
	if err != nil {
		return nil
	}
	var out []registrar.Binding
	for _, b := range registrar.MergeBindings(all, time.Now()) {
		if b.Node == s.cfg.Node {
			out = append(out, b)
		}
	}
	return out
}

// blfTargets routes a SUBSCRIBE for the dialog package that this node's
// BLF service did not take: to the node the extension is registered
// through (the first live binding of another node).
func (p *proxyTx) blfTargets(ext string) (ts []target, code int, reason string, ok bool) {
	s := p.s
	if p.req.Method != sip.SUBSCRIBE || !phones.IsDialogEvent(p.req) {
		return nil, 0, "", false
	}
	if p.in == s.mesh {
		return nil, 404, "Not Found (not registered here)", true
	}
	if registrar.ValidExt(ext) != nil {
		return nil, 404, "Not Found", true
	}
	ctx, cancel := context.WithTimeout(s.ctx, lookupTimeout)
	defer cancel()
	all, err := s.cfg.Locations.Bindings(ctx, registrar.AOR(ext))
	if err != nil {
		return nil, 503, "Service Unavailable (location store unavailable)", true
	}
	for _, b := range registrar.MergeBindings(all, time.Now()) {
		if na := s.cfg.NodeSIPAddr(b.Node); b.Node != s.cfg.Node && na.IsValid() && na != s.cfg.MeshAddr {
			return []target{{uri: meshURI(p.req.Recipient), dst: na, transport: "UDP"}}, 0, "", true
		}
	}
	return nil, 480, "Temporarily Unavailable", true
}

// blfParties returns the extensions of this node's LAN in the initial
// INVITE of p, for the branch that goes out on b: the caller if it came
// from the LAN, the callee if b goes to the LAN.
func (p *proxyTx) blfParties(b *branch) (caller, callee string) {
	if !p.req.IsInvite() {
		return "", ""
	}
	if tag, _ := p.req.To().Params.Get("tag"); tag != "" {
		return "", "" // a re-INVITE changes no dialog's state
	}
	if p.in == p.s.lan {
		caller = p.req.From().Address.User
	}
	if b != nil && b.out == p.s.lan {
		// The phone's Contact names its extension (the To of a ring
		// group's or a forwarded call names the number dialled).
		callee = b.req.Recipient.User
		if registrar.ValidExt(callee) != nil {
			callee = p.req.To().Address.User
		}
	}
	return caller, callee
}

// blfResponse reports a response relayed upstream for branch b.
func (p *proxyTx) blfResponse(b *branch, res *sip.Response) {
	state := phones.DialogEarly
	switch {
	case res.IsSuccess():
		state = phones.DialogConfirmed
	case res.StatusCode <= 100 || res.StatusCode >= 300:
		return
	}
	caller, callee := p.blfParties(b)
	cid := p.req.CallID().Value()
	if caller != "" {
		p.s.blf.SetState(caller, cid, true, state)
	}
	if callee != "" {
		p.s.blf.SetState(callee, cid, false, state)
	}
}

// blfDone reports the end of the transaction: a BYE ends the call's
// dialogs, an initial INVITE without 2xx ends the early ones.
func (p *proxyTx) blfDone() {
	cid := p.req.CallID().Value()
	switch {
	case p.req.Method == sip.BYE:
		p.s.blf.EndCall(cid)
	case p.req.IsInvite():
		if tag, _ := p.req.To().Params.Get("tag"); tag != "" {
			return // a re-INVITE that failed leaves the call as it was (§14.1)
		}
		for _, b := range p.branches {
			if b.final != nil && b.final.IsSuccess() {
				return
			}
		}
		p.s.blf.EndCall(cid) // failed or cancelled: its early dialogs end
	}
}
