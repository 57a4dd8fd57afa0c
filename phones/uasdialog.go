package phones

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/sipmesh/sipmesh/sipalg"
	"github.com/sipmesh/sipmesh/sipnet"
)

// uasDialog is the UAS side of a dialog a node's own feature answers (the
// echo test, the party line): what RFC 3261 §12.1.1 keeps of the INVITE,
// and the ACK and BYE that move it on.
type uasDialog struct {
	callID    string
	localTag  string
	remoteTag string
	invite    *sip.Request   // the initial INVITE, for our BYE
	src       netip.AddrPort // where it came from: the caller's flow or node

	ackSeq  uint32
	cseq    atomic.Uint32 // our last CSeq in the dialog (§12.2.1.1)
	acked   chan struct{}
	ackOnce sync.Once
	bye     chan struct{} // the caller hung up
	byeOnce sync.Once
}

// newUASDialog starts the dialog of req answered by res (its To tag).
func newUASDialog(req *sip.Request, res *sip.Response, src netip.AddrPort) uasDialog {
	localTag, _ := res.To().Params.Get("tag")
	remoteTag, _ := req.From().Params.Get("tag")
	return uasDialog{callID: req.CallID().Value(), localTag: localTag, remoteTag: remoteTag, invite: req, src: src,
		ackSeq: req.CSeq().SeqNo, acked: make(chan struct{}), bye: make(chan struct{})}
}

// fromPeer reports whether req carries the caller's tag.
func (d *uasDialog) fromPeer(req *sip.Request) bool {
	ft, _ := req.From().Params.Get("tag")
	return ft == d.remoteTag
}

// gotAck notes an ACK; only that of our 2xx counts (§13.3.1.4).
func (d *uasDialog) gotAck(req *sip.Request) {
	if cs := req.CSeq(); cs != nil && cs.SeqNo == d.ackSeq {
		d.ackOnce.Do(func() { close(d.acked) })
	}
}

// gotBye notes the caller's BYE.
func (d *uasDialog) gotBye() { d.byeOnce.Do(func() { close(d.bye) }) }

// await2xxAck waits for the ACK of our 2xx and, as a UAS core must
// (§13.3.1.4), calls resend from T1 doubling up to T2 meanwhile, for at
// most 64*T1; sipgo ends the server transaction when the handler returns
// (libraries.md §1 pitfall 5), so the handler waits here. It reports
// false when no ACK came; a BYE, ctx or stop end the wait as an ACK would.
func (d *uasDialog) await2xxAck(ctx context.Context, stop <-chan struct{}, resend func()) bool {
	interval := sip.T1
	deadline := time.NewTimer(64 * sip.T1)
	defer deadline.Stop()
	for {
		t := time.NewTimer(interval)
		select {
		case <-d.acked:
		case <-d.bye: // the ACK was lost, the BYE was not
		case <-ctx.Done():
		case <-stop:
		case <-deadline.C:
			t.Stop()
			return false
		case <-t.C:
			resend()
			interval = min(2*interval, sip.T2)
			continue
		}
		t.Stop()
		return true
	}
}

// byeRequest builds our BYE (§15.1.1) from our socket at via: to the
// caller's Contact, through the route set of its INVITE (its
// Record-Route in order, §12.1.1), sent to the first Route or, without
// one, to where the INVITE came from.
func (d *uasDialog) byeRequest(via netip.AddrPort) *sip.Request {
	return d.request(sip.BYE, via, d.cseq.Add(1))
}

// request builds a request of ours in the dialog (§12.2.1.1), as
// byeRequest says, with CSeq seq.
func (d *uasDialog) request(method sip.RequestMethod, via netip.AddrPort, seq uint32) *sip.Request {
	inv := d.invite
	bye := sip.NewRequest(method, *inv.Contact().Address.Clone())
	tr := strings.ToUpper(inv.Transport())
	v := &sip.ViaHeader{ProtocolName: "SIP", ProtocolVersion: "2.0", Transport: tr, Host: via.Addr().String(), Port: int(via.Port())}
	v.Params.Add("branch", sip.GenerateBranchN(16))
	bye.AppendHeader(v)
	mf := sip.MaxForwardsHeader(70)
	bye.AppendHeader(&mf)
	dest := d.src
	for i, h := range inv.GetHeaders("Record-Route") {
		rr, ok := h.(*sip.RecordRouteHeader)
		if !ok {
			continue
		}
		if i == 0 {
			if ap, err := sipnet.URIAddr(&rr.Address); err == nil {
				dest = ap
			}
		}
		bye.AppendHeader(&sip.RouteHeader{Address: rr.Address})
	}
	to := inv.To()
	bye.AppendHeader(&sip.FromHeader{DisplayName: to.DisplayName, Address: to.Address, Params: sipnet.TagParams(d.localTag)})
	from := inv.From()
	bye.AppendHeader(&sip.ToHeader{DisplayName: from.DisplayName, Address: from.Address, Params: from.Params.Clone()})
	bye.AppendHeader(inv.CallID())
	bye.AppendHeader(&sip.CSeqHeader{SeqNo: seq, MethodName: method})
	bye.SetBody(nil)
	bye.SetTransport(tr)
	bye.SetDestination(dest.String())
	return bye
}

// awaitFinal waits for a client transaction's final response.
func awaitFinal(ctx context.Context, tx sip.ClientTransaction) {
	defer tx.Terminate()
	for {
		select {
		case res := <-tx.Responses():
			if res.StatusCode >= 200 {
				return
			}
		case <-tx.Done():
			return
		case <-ctx.Done():
			return
		}
	}
}

// featureReply sends a response of a feature's UAS back where the request
// came from (as the proxy does: RFC 3581 behaviour for every UDP client).
func featureReply(log interface{ Debug(string, ...any) }, req *sip.Request, tx sip.ServerTransaction, src netip.AddrPort, res *sip.Response) {
	if strings.EqualFold(req.Transport(), "UDP") && src.IsValid() {
		res.SetDestination(src.String())
	}
	if err := tx.Respond(res); err != nil {
		log.Debug("feature: response not sent", "status", res.StatusCode, "err", err)
	}
}

// inDialog answers a request inside the dialog: ACK and BYE move it on;
// a re-INVITE or UPDATE (a refresh or new offer, RFC 3261 §14, RFC 3311)
// has its new RTP address passed to setRemote and is answered by reanswer
// with the same description (RFC 3264 §8: unchanged, same version);
// anything else (OPTIONS, INFO, MESSAGE, NOTIFY) gets 200.
func (d *uasDialog) inDialog(req *sip.Request, replyCode func(int, string), setRemote func(netip.AddrPort), reanswer func()) {
	if !d.fromPeer(req) {
		if !req.IsAck() {
			replyCode(481, "Call/Transaction Does Not Exist")
		}
		return
	}
	switch req.Method {
	case sip.ACK:
		d.gotAck(req)
	case sip.BYE:
		replyCode(200, "OK")
		d.gotBye()
	case sip.INVITE, sip.UPDATE:
		if len(req.Body()) > 0 {
			idx, _, err := echoStream(req.Body())
			if err != nil {
				replyCode(488, "Not Acceptable Here")
				return
			}
			sd, _ := sipalg.Parse(req.Body())
			if st := sd.Streams[idx]; !st.Hold() && st.RTP().Addr().IsValid() {
				setRemote(st.RTP())
			}
		}
		reanswer()
	default:
		replyCode(200, "OK")
	}
}
