package proxy

import (
	"encoding/hex"
	"hash/fnv"
	"strconv"
	"testing"

	"github.com/emiago/sipgo/sip"
)

// TestLoopHashStable: the loop hash in our branches (RFC 5393 §4.2) is
// the FNV-1a of the fields as hash/fnv computes it, so that nodes of
// different versions on one mesh still recognise each other's branches.
func TestLoopHashStable(t *testing.T) {
	for _, raw := range []string{
		"INVITE sip:202@mesh SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.0.10:5060;branch=z9hG4bK1\r\nFrom: <sip:201@mesh>;tag=a\r\n" +
			"To: <sip:202@mesh>\r\nCall-ID: c1@x\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
		"BYE sip:202@10.1.0.20:5062;transport=udp SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.0.10:5060;branch=z9hG4bK2\r\n" +
			"Route: <sip:10.1.0.1;lr;sm=abc>\r\nFrom: \"A\" <sip:201@mesh>;tag=a\r\nTo: <sip:202@mesh>;tag=b\r\n" +
			"Call-ID: c2\r\nCSeq: 2147483647 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
	} {
		msg, err := sip.ParseMessage([]byte(raw))
		if err != nil {
			t.Fatal(err)
		}
		req := msg.(*sip.Request)
		h := fnv.New64a()
		h.Write([]byte(req.Recipient.String()))
		if rt := req.Route(); rt != nil {
			h.Write([]byte(rt.Value()))
		}
		h.Write([]byte(*req.CallID()))
		ft, _ := req.From().Params.Get("tag")
		tt, _ := req.To().Params.Get("tag")
		h.Write([]byte("|" + ft + "|" + tt + "|" + strconv.FormatUint(uint64(req.CSeq().SeqNo), 10)))
		if got, want := loopHash(req), hex.EncodeToString(h.Sum(nil)); got != want {
			t.Errorf("loopHash = %s, want %s for\n%s", got, want, raw)
		}
	}
}
