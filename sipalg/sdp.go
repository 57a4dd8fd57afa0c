package sipalg

import (
	"bytes"
	"fmt"
	"net/netip"
	"strconv"
)

// SDP limits: a session description arrives from a phone or a peer node and
// is parsed before anything is allocated for it, so its size is bounded.
const (
	// MaxSDPSize bounds a session description (a SIP body over UDP is far
	// smaller; RFC 3261 §18.1.1 keeps UDP requests under the path MTU).
	MaxSDPSize = 64 << 10
	// MaxStreams bounds the m= lines of one description; each costs a relay
	// session with four sockets.
	MaxStreams = 16
)

// Direction is a media direction attribute (RFC 3264 §5.1, §6.1).
type Direction uint8

// Directions; SendRecv is the default when no attribute is present.
const (
	SendRecv Direction = iota
	SendOnly
	RecvOnly
	Inactive
)

func (d Direction) String() string {
	switch d {
	case SendOnly:
		return "sendonly"
	case RecvOnly:
		return "recvonly"
	case Inactive:
		return "inactive"
	}
	return "sendrecv"
}

// RTPMap is one a=rtpmap attribute (RFC 4566 §6): the encoding and RTP clock
// rate of a payload type.
type RTPMap struct {
	PayloadType uint8
	Encoding    string
	ClockRate   uint32
}

// Origin is the parsed o= line (RFC 4566 §5.2).
type Origin struct {
	Username  string
	SessionID string
	Version   string // decimal digits, possibly longer than 64 bits
	Addr      netip.Addr
}

// Stream is one m= line as the sender described it: where it wants to
// receive media. The relay sends to RTP and RTCP and uses their addresses as
// the latching rule's allowed source (see Session.SetPeer).
type Stream struct {
	Media   string   // "audio", "video", ...
	Proto   string   // "RTP/AVP", "RTP/SAVP", ...
	Formats []string // the m= fmt list, verbatim
	RTPMaps []RTPMap
	// Port is the m= port; 0 means the stream is rejected or disabled
	// (RFC 3264 §6, §8.2).
	Port uint16
	// Addr is the effective connection address: the media-level c=, else
	// the session-level one. The unspecified address (c=0.0.0.0) is the
	// RFC 2543 hold marker (RFC 3264 §8.4).
	Addr netip.Addr
	// RTCP is where the sender wants RTCP: a=rtcp (RFC 3605) if present,
	// else Addr with the port after the RTP port (RFC 3550 §11).
	RTCP      netip.AddrPort
	Mux       bool // a=rtcp-mux (RFC 5761)
	Direction Direction
}

// RTP returns the address the stream wants RTP sent to.
func (s Stream) RTP() netip.AddrPort { return netip.AddrPortFrom(s.Addr, s.Port) }

// Rejected reports a stream with port 0.
func (s Stream) Rejected() bool { return s.Port == 0 }

// Hold reports whether the sender does not want to receive media on this
// stream: c=0.0.0.0 (RFC 2543 style, RFC 3264 §8.4) or a=sendonly/inactive.
func (s Stream) Hold() bool {
	return s.Addr.IsUnspecified() || s.Direction == SendOnly || s.Direction == Inactive
}

// ClockRate returns the RTP clock rate of payload type pt: the a=rtpmap
// value, else the static assignment of RFC 3551 §6, else 0.
func (s Stream) ClockRate(pt uint8) uint32 {
	for _, m := range s.RTPMaps {
		if m.PayloadType == pt {
			return m.ClockRate
		}
	}
	return StaticClockRate(pt)
}

// StaticClockRate returns the clock rate RFC 3551 §6 (Tables 4 and 5)
// assigns to a static payload type, or 0 for dynamic and unassigned ones.
func StaticClockRate(pt uint8) uint32 {
	switch {
	case pt <= 5, pt == 7, pt == 8, pt == 9, pt == 12, pt == 13, pt == 15, pt == 18:
		return 8000 // PCMU, GSM, G723, DVI4/8000, LPC, PCMA, G722 (RFC 3551 §4.5.2: 8000), QCELP, CN, G728, G729
	case pt == 6:
		return 16000 // DVI4/16000
	case pt == 10, pt == 11:
		return 44100 // L16
	case pt == 14:
		return 90000 // MPA
	case pt == 16:
		return 11025 // DVI4/11025
	case pt == 17:
		return 22050 // DVI4/22050
	case pt == 25, pt == 26, pt == 28, pt >= 31 && pt <= 34:
		return 90000 // video
	}
	return 0
}

// line is one SDP line: src[start:end] is its text without the line ending,
// src[end:next] the ending itself ("\r\n", "\n" or "" for an unterminated
// last line).
type line struct{ start, end, next int }

// span is a field inside a line, as offsets into the source.
type span struct{ start, end int }

// SDP is a parsed session description that remembers where every field it
// may rewrite sits, so that Rewrite changes those bytes and nothing else.
// pion/sdp is not used here on purpose: its Marshal turns LF into CRLF,
// drops trailing spaces, moves a media c= before a=, and it rejects SDP
// without a final CRLF or with unknown line types (measured on v3.0.20),
// while the ALG must pass everything it does not rewrite byte for byte
// (RFC 4566 §5: lines end in CRLF, but parsers should accept LF alone).
type SDP struct {
	src   []byte
	lines []line

	Origin Origin
	// SessionAddr is the session-level c= address; invalid if absent.
	SessionAddr netip.Addr
	Streams     []Stream

	origin  int  // o= line index
	version span // sess-version inside the o= line
	oAddr   span // o= addrtype through unicast-address
	sessC   int  // session c= line index, -1 if none
	sessCA  span // its addrtype through address
	media   []mediaPos
}

type mediaPos struct {
	m     int  // m= line index
	port  span // the m= port field
	c     int  // media-level c= line index, -1 if none
	cAddr span
	rtcp  int  // a=rtcp line index, -1 if none
	rtcpV span // a=rtcp value: port [nettype addrtype address]
	rtcpA bool // a=rtcp carries an address
	// rtcpSame marks a=rtcp naming the RTP port itself (RTCP multiplexed,
	// RFC 5761 §5.1.3); the rewrite keeps it equal to the new RTP port.
	rtcpSame bool
	insertC  int // after which line a media c= would go (m=, i=)
}

// Parse reads a session description. It checks what the ALG relies on
// (v=, o=, c= and m= syntax, IP literals, ports) and leaves every other line
// opaque; a description it accepts is one Rewrite can rewrite.
func Parse(b []byte) (*SDP, error) {
	if len(b) > MaxSDPSize {
		return nil, fmt.Errorf("sdp: %d bytes, more than %d", len(b), MaxSDPSize)
	}
	d := &SDP{src: b, origin: -1, sessC: -1}
	for i := 0; i < len(b); {
		j := bytes.IndexByte(b[i:], '\n')
		ln := line{start: i, end: len(b), next: len(b)}
		if j >= 0 {
			ln.end, ln.next = i+j, i+j+1
			if ln.end > i && b[ln.end-1] == '\r' {
				ln.end--
			}
		}
		d.lines = append(d.lines, ln)
		i = ln.next
	}
	if len(d.lines) == 0 {
		return nil, fmt.Errorf("sdp: empty")
	}
	var sessDir Direction
	inMedia := false
	for idx, ln := range d.lines {
		text := b[ln.start:ln.end]
		if len(text) == 0 && idx == len(d.lines)-1 {
			continue // a blank last line (trailing CRLF CRLF) is harmless
		}
		if len(text) < 2 || text[1] != '=' || text[0] < 'a' || text[0] > 'z' {
			return nil, fmt.Errorf("sdp: line %d: %q is not <type>=<value> (RFC 4566 §5)", idx+1, clip(text))
		}
		if idx == 0 {
			if string(text) != "v=0" {
				return nil, fmt.Errorf("sdp: line 1: %q, want v=0 (RFC 4566 §5.1)", clip(text))
			}
			continue
		}
		if bytes.IndexByte(text, '\r') >= 0 || bytes.IndexByte(text, 0) >= 0 {
			// RFC 4566 §9: no CR, LF or NUL inside a line. A bare CR is
			// a line break to some parsers and not to others; refuse it
			// rather than guess.
			return nil, fmt.Errorf("sdp: line %d: CR or NUL inside a line", idx+1)
		}
		val := ln.start + 2
		switch text[0] {
		case 'v':
			return nil, fmt.Errorf("sdp: line %d: second v= line", idx+1)
		case 'o':
			if d.origin >= 0 || inMedia {
				return nil, fmt.Errorf("sdp: line %d: misplaced o= line", idx+1)
			}
			if err := d.parseOrigin(idx, val, ln.end); err != nil {
				return nil, fmt.Errorf("sdp: line %d: %w", idx+1, err)
			}
		case 'c':
			a, sp, err := d.parseConn(val, ln.end)
			if err != nil {
				return nil, fmt.Errorf("sdp: line %d: %w", idx+1, err)
			}
			if inMedia {
				m := &d.media[len(d.media)-1]
				if m.c >= 0 {
					return nil, fmt.Errorf("sdp: line %d: second c= line in a media section", idx+1)
				}
				m.c, m.cAddr = idx, sp
				d.Streams[len(d.Streams)-1].Addr = a
			} else {
				if d.sessC >= 0 {
					return nil, fmt.Errorf("sdp: line %d: second session c= line", idx+1)
				}
				d.sessC, d.sessCA, d.SessionAddr = idx, sp, a
			}
		case 'm':
			if d.origin < 0 {
				return nil, fmt.Errorf("sdp: line %d: m= before o=", idx+1)
			}
			if len(d.Streams) == MaxStreams {
				return nil, fmt.Errorf("sdp: more than %d media streams", MaxStreams)
			}
			if err := d.parseMedia(idx, val, ln.end, sessDir); err != nil {
				return nil, fmt.Errorf("sdp: line %d: %w", idx+1, err)
			}
			inMedia = true
		case 'i':
			if inMedia {
				d.media[len(d.media)-1].insertC = idx
			}
		case 'a':
			dir, isDir := direction(text[2:])
			switch {
			case isDir && inMedia:
				d.Streams[len(d.Streams)-1].Direction = dir
			case isDir:
				sessDir = dir
			case !inMedia:
			case bytes.Equal(text[2:], []byte("rtcp-mux")):
				d.Streams[len(d.Streams)-1].Mux = true
			case bytes.HasPrefix(text[2:], []byte("rtcp:")):
				if err := d.parseRTCP(idx, val+5, ln.end); err != nil {
					return nil, fmt.Errorf("sdp: line %d: %w", idx+1, err)
				}
			case bytes.HasPrefix(text[2:], []byte("rtpmap:")):
				// Malformed rtpmap lines are not ours to judge: they pass
				// through, and only the clock rate lookup misses them.
				if m, ok := parseRTPMap(text[9:]); ok {
					s := &d.Streams[len(d.Streams)-1]
					s.RTPMaps = append(s.RTPMaps, m)
				}
			}
		}
	}
	if d.origin < 0 {
		return nil, fmt.Errorf("sdp: no o= line (RFC 4566 §5.2)")
	}
	for i := range d.Streams {
		s, m := &d.Streams[i], &d.media[i]
		if m.c < 0 {
			s.Addr = d.SessionAddr
		}
		if !s.Addr.IsValid() && s.Port != 0 {
			return nil, fmt.Errorf("sdp: line %d: media without a c= line at session or media level (RFC 4566 §5.7)", m.m+1)
		}
		if m.rtcp < 0 {
			s.RTCP = netip.AddrPortFrom(s.Addr, s.Port+1)
			if s.Port == 0 || s.Port == 65535 {
				s.RTCP = netip.AddrPortFrom(s.Addr, 0)
			}
		} else if !s.RTCP.Addr().IsValid() {
			s.RTCP = netip.AddrPortFrom(s.Addr, s.RTCP.Port())
		}
		if m.rtcp >= 0 && s.RTCP.Port() == s.Port {
			m.rtcpSame = true
		}
	}
	return d, nil
}

// clip shortens a line quoted in an error.
func clip(b []byte) []byte {
	if len(b) > 40 {
		return b[:40]
	}
	return b
}

// fields splits src[start:end] at runs of spaces and tabs and returns up to
// max spans; extra text stays in the last span.
func (d *SDP) fields(start, end, max int) []span {
	var out []span
	i := start
	for len(out) < max {
		for i < end && (d.src[i] == ' ' || d.src[i] == '\t') {
			i++
		}
		if i == end {
			break
		}
		j := i
		if len(out) == max-1 {
			j = end
			for j > i && (d.src[j-1] == ' ' || d.src[j-1] == '\t') {
				j--
			}
		} else {
			for j < end && d.src[j] != ' ' && d.src[j] != '\t' {
				j++
			}
		}
		out = append(out, span{i, j})
		i = j
	}
	return out
}

func (d *SDP) str(s span) string { return string(d.src[s.start:s.end]) }

func (d *SDP) parseOrigin(idx, start, end int) error {
	f := d.fields(start, end, 7)
	if len(f) != 6 {
		return fmt.Errorf("o= needs exactly 6 fields (RFC 4566 §5.2)")
	}
	for _, c := range d.src[f[2].start:f[2].end] {
		if c < '0' || c > '9' {
			return fmt.Errorf("o= sess-version %q is not decimal digits (RFC 4566 §9)", d.str(f[2]))
		}
	}
	if d.str(f[3]) != "IN" {
		return fmt.Errorf("o= nettype %q, want IN", d.str(f[3]))
	}
	d.origin, d.version, d.oAddr = idx, f[2], span{f[4].start, f[5].end}
	d.Origin = Origin{Username: d.str(f[0]), SessionID: d.str(f[1]), Version: d.str(f[2])}
	// The o= address only names the session's creator (RFC 4566 §5.2);
	// it may be a host name, so it is informational and not validated.
	d.Origin.Addr, _ = netip.ParseAddr(d.str(f[5]))
	return nil
}

// parseConn reads "IN IP4 addr" of a c= line (RFC 4566 §5.7) and returns the
// address and the span from addrtype to the end of the address.
func (d *SDP) parseConn(start, end int) (netip.Addr, span, error) {
	f := d.fields(start, end, 3)
	if len(f) != 3 || d.str(f[0]) != "IN" {
		return netip.Addr{}, span{}, fmt.Errorf("c= needs IN <addrtype> <address> (RFC 4566 §5.7)")
	}
	a, err := parseAddr(d.str(f[1]), d.str(f[2]))
	if err != nil {
		return netip.Addr{}, span{}, fmt.Errorf("c=: %w", err)
	}
	return a, span{f[1].start, f[2].end}, nil
}

// parseAddr checks an addrtype/address pair: an IP literal of that family
// and unicast (or the unspecified hold address). The relay can anchor
// neither a host name nor a multicast group.
func parseAddr(typ, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("address %q is not an IP literal (the relay needs one)", s)
	}
	switch {
	case typ == "IP4" && a.Is4(), typ == "IP6" && a.Is6() && !a.Is4In6():
	default:
		return netip.Addr{}, fmt.Errorf("address %q does not match addrtype %q", s, typ)
	}
	if a.Zone() != "" || a.IsMulticast() {
		return netip.Addr{}, fmt.Errorf("address %q: multicast and zoned addresses are not relayed", s)
	}
	return a, nil
}

func (d *SDP) parseMedia(idx, start, end int, sessDir Direction) error {
	f := d.fields(start, end, 4)
	if len(f) < 3 {
		return fmt.Errorf("m= needs <media> <port> <proto> <fmt> (RFC 4566 §5.14)")
	}
	port, err := strconv.ParseUint(d.str(f[1]), 10, 16)
	if err != nil {
		// Also rejects "port/count": several consecutive ports per stream
		// (hierarchical coding) cannot be anchored by a pair-wise relay.
		return fmt.Errorf("m= port %q is not a number 0..65535", d.str(f[1]))
	}
	s := Stream{Media: d.str(f[0]), Proto: d.str(f[2]), Port: uint16(port), Direction: sessDir}
	if len(f) == 4 {
		for _, g := range d.fields(f[3].start, f[3].end, 1<<10) {
			s.Formats = append(s.Formats, d.str(g))
		}
	}
	d.Streams = append(d.Streams, s)
	d.media = append(d.media, mediaPos{m: idx, port: f[1], c: -1, rtcp: -1, insertC: idx})
	return nil
}

// parseRTCP reads a=rtcp:<port> [IN <addrtype> <address>] (RFC 3605 §2.1).
func (d *SDP) parseRTCP(idx, start, end int) error {
	m := &d.media[len(d.media)-1]
	if m.rtcp >= 0 {
		return fmt.Errorf("second a=rtcp in a media section")
	}
	f := d.fields(start, end, 4)
	if len(f) != 1 && len(f) != 4 {
		return fmt.Errorf("a=rtcp needs <port> [IN <addrtype> <address>] (RFC 3605 §2.1)")
	}
	port, err := strconv.ParseUint(d.str(f[0]), 10, 16)
	if err != nil || port == 0 {
		return fmt.Errorf("a=rtcp port %q is not a number 1..65535", d.str(f[0]))
	}
	var a netip.Addr
	if len(f) == 4 {
		if d.str(f[1]) != "IN" {
			return fmt.Errorf("a=rtcp nettype %q, want IN", d.str(f[1]))
		}
		if a, err = parseAddr(d.str(f[2]), d.str(f[3])); err != nil {
			return fmt.Errorf("a=rtcp: %w", err)
		}
	}
	m.rtcp, m.rtcpV, m.rtcpA = idx, span{f[0].start, f[len(f)-1].end}, len(f) == 4
	d.Streams[len(d.Streams)-1].RTCP = netip.AddrPortFrom(a, uint16(port))
	return nil
}

func direction(attr []byte) (Direction, bool) {
	switch string(attr) {
	case "sendrecv":
		return SendRecv, true
	case "sendonly":
		return SendOnly, true
	case "recvonly":
		return RecvOnly, true
	case "inactive":
		return Inactive, true
	}
	return 0, false
}

// parseRTPMap reads "<pt> <encoding>/<clock rate>[/<params>]".
func parseRTPMap(v []byte) (RTPMap, bool) {
	pt, rest, ok := bytes.Cut(v, []byte(" "))
	if !ok {
		return RTPMap{}, false
	}
	n, err := strconv.ParseUint(string(pt), 10, 7)
	if err != nil {
		return RTPMap{}, false
	}
	enc, rest, ok := bytes.Cut(bytes.TrimSpace(rest), []byte("/"))
	if !ok {
		return RTPMap{}, false
	}
	rate, _, _ := bytes.Cut(rest, []byte("/"))
	r, err := strconv.ParseUint(string(rate), 10, 32)
	if err != nil || r == 0 {
		return RTPMap{}, false
	}
	return RTPMap{PayloadType: uint8(n), Encoding: string(enc), ClockRate: uint32(r)}, true
}
