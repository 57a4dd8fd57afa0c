package sipnet

import (
	"bytes"
	"strings"
	"unicode/utf8"
)

// What sipgo's parser accepts wrongly or rejects silently, checked on the
// raw bytes before it: both the registrar's own server and the proxy's
// guarded sipgo sockets answer malformed requests with a 400 here instead
// of dropping them (RFC 3261 §8.2, RFC 4475).

// BareCRLF reports a CR or LF in the header section of data that is not
// part of a CRLF pair (RFC 3261 §7: lines end in CRLF).
func BareCRLF(data []byte) bool {
	end := bytes.Index(data, []byte("\r\n\r\n"))
	if end < 0 {
		end = len(data)
	}
	h := data[:end]
	for i, c := range h {
		switch c {
		case '\r':
			if i+1 >= len(h) || h[i+1] != '\n' {
				return true
			}
		case '\n':
			if i == 0 || h[i-1] != '\r' {
				return true
			}
		}
	}
	return false
}

// DescribeParseError turns a sipgo parser error into the text of a 400
// reason phrase.
func DescribeParseError(err error) string {
	s := err.Error()
	switch {
	case strings.Contains(s, "reading body incomplete"), strings.Contains(s, "EOF"):
		return "message shorter than its Content-Length or unterminated"
	case strings.Contains(s, "is not a SIP message"):
		return "malformed request line"
	case strings.Contains(s, "ParseUint"), strings.Contains(s, "ParseInt"):
		return "number out of range in " + guessHeader(s)
	}
	return "unparsable: " + s
}

func guessHeader(s string) string {
	if i := strings.Index(s, "parsing "); i >= 0 {
		return "a header (" + strings.TrimSpace(s[i:]) + ")"
	}
	return "a header"
}

// RawContactProblem finds what sipgo accepts but RFC 3261 §20.10 forbids:
// a Contact in addr-spec form (no <>) whose URI has headers or several
// URI parameters that can't be told from header parameters (RFC 4475
// §3.1.2.13).
func RawContactProblem(data []byte) string {
	for len(data) > 0 {
		line := data
		if k := bytes.IndexByte(data, '\n'); k >= 0 {
			line, data = data[:k], data[k+1:]
		} else {
			data = nil
		}
		line = bytes.TrimRight(line, "\r")
		if len(line) == 0 {
			break // end of the headers
		}
		colon := bytes.IndexByte(line, ':')
		if colon < 0 {
			continue
		}
		name := bytes.TrimSpace(line[:colon])
		if !bytes.EqualFold(name, []byte("contact")) && !bytes.EqualFold(name, []byte("m")) {
			continue
		}
		v := bytes.TrimSpace(line[colon+1:])
		if bytes.IndexByte(v, '<') < 0 && bytes.IndexByte(v, '?') >= 0 {
			return "Contact URI with headers must be enclosed in <>"
		}
	}
	return ""
}

// BadRequest builds a 400 for bytes sipgo could not parse, from the raw
// header lines a response needs (RFC 3261 §8.2.6: Via, From, To, Call-ID,
// CSeq). It returns nil when the bytes are not a request or have no Via,
// since no response can then be addressed (RFC 3261 §18.2.1): those are
// dropped.
func BadRequest(data []byte, reason, server string) []byte {
	lines, first := requestLines(data)
	if lines == nil {
		return nil
	}
	status := "400 Bad Request (" + SanitizeReason(reason) + ")"
	if parts := strings.Fields(first); len(parts) == 3 {
		// A URI scheme sipgo does not know (RFC 4475 §3.3.3 soap.beep):
		// 416, as for any scheme we do not serve (RFC 3261 §8.2.2.1).
		if scheme, _, ok := strings.Cut(parts[1], ":"); ok && isToken(scheme) {
			switch strings.ToLower(scheme) {
			case "sip", "sips", "tel":
			default:
				status = "416 Unsupported URI Scheme"
			}
		}
	}
	return rawResponse(lines, status, server)
}

// TooLarge builds a 513 for a request whose bytes (at least its header
// section) are data, too large to be read whole (RFC 3261 §21.5.14); nil
// when no response can be addressed, as for BadRequest.
func TooLarge(data []byte, server string) []byte {
	lines, _ := requestLines(data)
	if lines == nil {
		return nil
	}
	return rawResponse(lines, "513 Message Too Large", server)
}

// requestLines splits the bytes of a request into lines and returns its
// request line; nil for what is not a request (a response, junk).
func requestLines(data []byte) (lines [][]byte, first string) {
	lines = bytes.Split(data, []byte("\n"))
	if len(lines) < 2 {
		return nil, ""
	}
	first = strings.TrimSpace(string(lines[0]))
	if first == "" || strings.HasPrefix(first, "SIP/") || !strings.Contains(first, "SIP/") {
		return nil, ""
	}
	return lines, first
}

// rawResponse writes a response with status from the header lines of a
// request (after its request line) a response copies.
func rawResponse(lines [][]byte, status, server string) []byte {
	var b strings.Builder
	b.WriteString("SIP/2.0 " + status + "\r\n")
	have := map[string]bool{}
	for _, l := range lines[1:] {
		l = bytes.TrimRight(l, "\r")
		if len(l) == 0 {
			break
		}
		if l[0] == ' ' || l[0] == '\t' {
			continue // a folded continuation: the copy keeps the first line only
		}
		name, val, ok := bytes.Cut(l, []byte(":"))
		if !ok {
			continue
		}
		var canon string
		switch strings.ToLower(strings.TrimSpace(string(name))) {
		case "via", "v":
			canon = "Via"
		case "from", "f":
			canon = "From"
		case "to", "t":
			canon = "To"
		case "call-id", "i":
			canon = "Call-ID"
		case "cseq":
			canon = "CSeq"
		default:
			continue
		}
		if canon != "Via" && have[canon] {
			continue
		}
		v := strings.TrimSpace(string(val))
		if !utf8.ValidString(v) || strings.ContainsAny(v, "\x00\r") || len(v) > 1024 {
			continue
		}
		have[canon] = true
		b.WriteString(canon + ": " + v + "\r\n")
	}
	if !have["Via"] {
		return nil
	}
	b.WriteString("Server: " + server + "\r\nContent-Length: 0\r\n\r\n")
	return []byte(b.String())
}

// isToken reports whether s is an RFC 3261 §25.1 token (a URI scheme is
// narrower, but anything else is not a scheme).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-.!%*_+`'~", c) >= 0
		if !ok {
			return false
		}
	}
	return true
}

// SanitizeReason keeps a reason phrase to printable text on one line
// (RFC 3261 §25.1 Reason-Phrase), at most 100 bytes.
func SanitizeReason(s string) string {
	var b strings.Builder
	for _, c := range s {
		if b.Len() >= 100 {
			break
		}
		if c < 0x20 || c == 0x7f || c == utf8.RuneError {
			c = '?'
		}
		b.WriteRune(c)
	}
	return b.String()
}
