package sipalg

import (
	"bytes"
	"fmt"
	"hash/fnv"
	"net/netip"
	"strconv"
)

// Plan says what one side of the ALG must see in a rewritten description:
// the relay's address on that side and, per m= line, the relay ports.
type Plan struct {
	// Addr is the relay's address on the receiving side (the node's LAN
	// IPv4 address, or its mesh IPv6 address). It goes into o=, the
	// session-level c= and every stream whose StreamPlan.Addr is zero.
	Addr netip.Addr
	// Streams has one entry per m= line, in order.
	Streams []StreamPlan
	// Origin, if not nil, keeps o= versions monotonic on this side across
	// the offers and answers of one dialog (RFC 3264 §8); nil leaves the
	// version as the sender wrote it.
	Origin *OriginState
}

// StreamPlan is the relay endpoint of one media stream.
type StreamPlan struct {
	// Addr overrides Plan.Addr for this stream; a stream that inherits the
	// session c= then gets a media-level c= line of its own.
	Addr netip.Addr
	// Port is the relay's RTP port. A rejected stream (m= port 0) keeps
	// port 0 whatever Port says (RFC 3264 §6, §8.2).
	Port uint16
	// RTCPPort is the relay's RTCP port written into a=rtcp (RFC 3605);
	// 0 means Port+1. An a=rtcp that named the RTP port itself (rtcp-mux,
	// RFC 5761 §5.1.3) names the new RTP port.
	RTCPPort uint16
}

// OriginState is what the ALG remembers of the descriptions it sent to one
// side of a dialog. RFC 3264 §8: a changed description carries the previous
// version plus one, an unchanged one the same version. The ALG's output
// changes when the sender's description changes and also when the plan does
// (new relay ports), and a retransmitted or refreshed description may come
// back unchanged with its version bumped or not; so the version sent is
// derived from the output, not copied from the input. The first description
// keeps the sender's version. Not safe for concurrent use; one per dialog
// side, used by the goroutine handling that dialog.
type OriginState struct {
	set     bool
	version string
	sum     uint64
}

// Version returns the last version sent, "" before the first.
func (o *OriginState) Version() string { return o.version }

// Rewrite parses b and rewrites it with plan; see (*SDP).Rewrite.
func Rewrite(b []byte, plan Plan) ([]byte, error) {
	d, err := Parse(b)
	if err != nil {
		return nil, err
	}
	return d.Rewrite(plan)
}

// Rewrite returns the description with the relay's addresses and ports:
// o= address (and version, if plan.Origin is set), session and media c=,
// m= ports and a=rtcp. Every other byte, line endings included, is copied.
//
// Hold: a c= with the unspecified address is the RFC 2543 hold marker,
// which RFC 3264 §8.4 says agents must still understand. It is kept as a
// marker: it becomes the unspecified address of the receiving side's family
// (0.0.0.0 or ::), never the relay's address, since that would turn the
// hold into "send media to the relay". a=sendonly/recvonly/inactive pass
// unchanged, so the RFC 3264 §8.4 hold semantics cross the relay.
//
// ICE (a=candidate, a=ice-ufrag, ...) passes unchanged as well, as the
// issue demands. The consequence is deliberate: the default destination in
// c=/m= (the relay) then matches no candidate, so an ICE agent answering it
// must fall back to plain c=/m= media, i.e. through the relay, and flag
// a=ice-mismatch (RFC 5245 §5.1, RFC 8839 §5.4), instead of trying LAN
// candidates that cannot be reached across the mesh.
func (d *SDP) Rewrite(plan Plan) ([]byte, error) {
	if len(plan.Streams) != len(d.Streams) {
		return nil, fmt.Errorf("sdp rewrite: plan has %d streams, description %d", len(plan.Streams), len(d.Streams))
	}
	if !plan.Addr.IsValid() {
		return nil, fmt.Errorf("sdp rewrite: plan has no address")
	}
	base := plan.Addr.WithZone("").Unmap()
	sessOut := base
	if d.SessionAddr.IsUnspecified() {
		sessOut = unspecified(base)
	}
	type edit struct {
		sp   span
		text string
	}
	edits := make(map[int][]edit, 2+2*len(d.Streams)) // by line index
	inserts := make(map[int]string)                   // c= lines after a line index
	edits[d.origin] = []edit{{d.oAddr, addrText(base)}}
	if d.sessC >= 0 {
		edits[d.sessC] = append(edits[d.sessC], edit{d.sessCA, addrText(sessOut)})
	}
	for i, s := range d.Streams {
		p, m := plan.Streams[i], d.media[i]
		a := base
		if p.Addr.IsValid() {
			a = p.Addr.WithZone("").Unmap()
		}
		out := a
		if s.Addr.IsUnspecified() {
			out = unspecified(a)
		}
		switch {
		case m.c >= 0:
			edits[m.c] = append(edits[m.c], edit{m.cAddr, addrText(out)})
		case d.sessC >= 0 && out != sessOut && !s.Rejected():
			inserts[m.insertC] = "c=IN " + addrText(out)
		}
		if s.Rejected() {
			continue
		}
		if p.Port == 0 {
			return nil, fmt.Errorf("sdp rewrite: stream %d (%s) is not rejected but the plan gives port 0", i, s.Media)
		}
		edits[m.m] = append(edits[m.m], edit{m.port, strconv.Itoa(int(p.Port))})
		if m.rtcp >= 0 {
			rp := p.RTCPPort
			switch {
			case m.rtcpSame:
				rp = p.Port
			case rp == 0:
				rp = p.Port + 1
			}
			v := strconv.Itoa(int(rp))
			if m.rtcpA {
				ra := a
				if s.RTCP.Addr().IsUnspecified() {
					ra = unspecified(a)
				}
				v += " IN " + addrText(ra)
			}
			edits[m.rtcp] = append(edits[m.rtcp], edit{m.rtcpV, v})
		}
	}

	out := make([]byte, 0, len(d.src)+64*len(edits))
	var vStart, vEnd int // the o= version in out
	for idx, ln := range d.lines {
		pos := ln.start
		// Edits of one line are in ascending position: o= has one, c=
		// one, m= one, a=rtcp one.
		for _, e := range edits[idx] {
			out = append(out, d.src[pos:e.sp.start]...)
			out = append(out, e.text...)
			pos = e.sp.end
		}
		if idx == d.origin {
			// The version lies before the address edit; find it in out.
			vStart = len(out) - len(edits[idx][0].text) - (d.oAddr.start - d.version.start)
			vEnd = vStart + (d.version.end - d.version.start)
		}
		out = append(out, d.src[pos:ln.next]...)
		if c, ok := inserts[idx]; ok {
			eol := d.src[ln.end:ln.next]
			if len(eol) == 0 {
				// The m= (or i=) line was the unterminated last line.
				eol = d.eol()
				out = append(out, eol...)
			}
			out = append(out, c...)
			out = append(out, eol...)
		}
	}
	if o := plan.Origin; o != nil {
		h := fnv.New64a()
		h.Write(out[:vStart])
		h.Write(out[vEnd:])
		sum := h.Sum64()
		v := string(out[vStart:vEnd])
		switch {
		case !o.set:
		case sum == o.sum:
			v = o.version
		default:
			v = incDecimal(o.version)
		}
		if v != string(out[vStart:vEnd]) {
			out = append(out[:vStart:vStart], append([]byte(v), out[vEnd:]...)...)
		}
		o.set, o.version, o.sum = true, v, sum
	}
	return out, nil
}

// eol returns the line ending the description mostly uses.
func (d *SDP) eol() []byte {
	if bytes.Contains(d.src, []byte("\r\n")) {
		return []byte("\r\n")
	}
	return []byte("\n")
}

// addrText is "IP4 a" or "IP6 a", the addrtype and address of c=, o= and
// a=rtcp (RFC 4566 §5.7). IPv6 uses the RFC 5952 text form.
func addrText(a netip.Addr) string {
	if a.Is4() {
		return "IP4 " + a.String()
	}
	return "IP6 " + a.String()
}

func unspecified(a netip.Addr) netip.Addr {
	if a.Is4() {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}

// incDecimal adds one to a string of decimal digits of any length (o=
// versions are often NTP timestamps and need not fit 64 bits).
func incDecimal(s string) string {
	b := []byte(s)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < '9' {
			b[i]++
			return string(b)
		}
		b[i] = '0'
	}
	return "1" + string(b)
}
