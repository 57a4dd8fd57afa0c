// Package sipstress makes the hostile SIP traffic of the hardening
// stress test (issue 11): thousands of mutated messages built from the
// RFC 4475 torture corpus and from well-formed requests, each mutation of
// a kind a fuzzer or a broken phone produces — truncation, huge and
// repeated headers, NULs, invalid UTF-8, extreme numbers, bad
// Content-Length, lost line ends. The test that sends them
// (cmd/sipmesh's TestSIPStress) probes the node after every message.
//
// Everything is deterministic under a seed, so a message that breaks a
// node can be rebuilt and replayed from the test's log line.
package sipstress

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
)

// MaxDatagram is the largest mutated message: what one UDP datagram over
// IPv4 can carry (65,535 − 20 − 8).
const MaxDatagram = 65507

// LoadCorpus reads the RFC 4475 torture messages (*.dat, one message a
// file, RFC 4475 Appendix A) from dir, in name order.
func LoadCorpus(dir string) ([][]byte, error) {
	names, err := filepath.Glob(filepath.Join(dir, "*.dat"))
	if err != nil {
		return nil, err
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("sipstress: no *.dat torture messages in %s", dir)
	}
	sort.Strings(names)
	out := make([][]byte, 0, len(names))
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

// Valid returns a well-formed request of method (OPTIONS, REGISTER,
// INVITE, MESSAGE, SUBSCRIBE) for user at server, sent from src (an IPv4
// "host:port" that is the Via sent-by, so the node's answer comes back).
// callID identifies it in the answer. A node must answer each of them
// (200, 401, 407, 404 …: any final or provisional response).
func Valid(method, user, server, src, callID string, cseq int) []byte {
	body := ""
	ctype := ""
	switch method {
	case "INVITE":
		ctype = "application/sdp"
		body = "v=0\r\no=- 1 1 IN IP4 " + hostOf(src) + "\r\ns=-\r\nc=IN IP4 " + hostOf(src) +
			"\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
	case "MESSAGE":
		ctype = "text/plain"
		body = "stress test"
	}
	var b bytes.Buffer
	ruri := "sip:" + user + "@" + server
	if method == "REGISTER" {
		ruri = "sip:" + server
	}
	fmt.Fprintf(&b, "%s %s SIP/2.0\r\n", method, ruri)
	fmt.Fprintf(&b, "Via: SIP/2.0/UDP %s;branch=z9hG4bK-%s;rport\r\n", src, callID)
	fmt.Fprintf(&b, "Max-Forwards: 70\r\n")
	fmt.Fprintf(&b, "From: <sip:201@%s>;tag=t%s\r\n", server, callID)
	to := user
	if method == "REGISTER" {
		to = "201"
	}
	fmt.Fprintf(&b, "To: <sip:%s@%s>\r\n", to, server)
	fmt.Fprintf(&b, "Call-ID: %s\r\n", callID)
	fmt.Fprintf(&b, "CSeq: %d %s\r\n", cseq, method)
	fmt.Fprintf(&b, "Contact: <sip:201@%s>\r\n", src)
	if method == "SUBSCRIBE" {
		b.WriteString("Event: dialog\r\nExpires: 60\r\n")
	}
	if ctype != "" {
		fmt.Fprintf(&b, "Content-Type: %s\r\n", ctype)
	}
	fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n%s", len(body), body)
	return b.Bytes()
}

func hostOf(hostport string) string {
	if i := bytes.LastIndexByte([]byte(hostport), ':'); i >= 0 {
		return hostport[:i]
	}
	return hostport
}

// Kinds names the mutations, in the order Mutate picks them by index.
var Kinds = []string{
	"truncate", "repeat-header", "huge-header", "nul-bytes", "bad-utf8",
	"extreme-number", "bad-content-length", "drop-line-ends", "flip-bytes",
	"many-params", "deep-nesting", "empty-header-values",
}

// Mutator derives mutated messages from base messages, deterministically
// under its seed.
type Mutator struct {
	rng *rand.Rand
}

// NewMutator returns a Mutator seeded with seed.
func NewMutator(seed uint64) *Mutator {
	return &Mutator{rng: rand.New(rand.NewPCG(seed, seed^0x5eed))}
}

// Mutate returns a mutated copy of msg (never longer than MaxDatagram) and
// the kind of mutation applied; msg itself is not changed.
func (m *Mutator) Mutate(msg []byte) ([]byte, string) {
	k := m.rng.IntN(len(Kinds))
	out := m.apply(k, bytes.Clone(msg))
	if len(out) > MaxDatagram {
		out = out[:MaxDatagram]
	}
	return out, Kinds[k]
}

func (m *Mutator) apply(kind int, b []byte) []byte {
	r := m.rng
	lines := bytes.Split(b, []byte("\r\n"))
	end := len(lines) // the blank line before the body, or the end
	for i, l := range lines {
		if i > 0 && len(l) == 0 {
			end = i
			break
		}
	}
	header := func() int { // index of a header line (not the start line)
		if end < 2 {
			return 0
		}
		return 1 + r.IntN(end-1)
	}
	join := func() []byte { return bytes.Join(lines, []byte("\r\n")) }
	switch Kinds[kind] {
	case "truncate":
		if len(b) == 0 {
			return b
		}
		return b[:r.IntN(len(b))]
	case "repeat-header":
		i := header()
		n := 50 + r.IntN(2000)
		rep := make([][]byte, 0, len(lines)+n)
		rep = append(rep, lines[:i+1]...)
		for range n {
			rep = append(rep, lines[i])
		}
		lines = append(rep, lines[i+1:]...)
		return join()
	case "huge-header":
		i := header()
		lines[i] = append(lines[i], bytes.Repeat([]byte{'a' + byte(r.IntN(26))}, 1000+r.IntN(60000))...)
		return join()
	case "nul-bytes":
		for range 1 + r.IntN(8) {
			if len(b) > 0 {
				b[r.IntN(len(b))] = 0
			}
		}
		return b
	case "bad-utf8":
		i := header()
		bad := [][]byte{{0xff}, {0xc0, 0x80}, {0xed, 0xa0, 0x80}, {0xf8, 0x88, 0x80, 0x80, 0x80}, {0xe2, 0x82}}
		lines[i] = append(lines[i], bad[r.IntN(len(bad))]...)
		return join()
	case "extreme-number":
		nums := []string{"4294967296", "18446744073709551616", "-1", "99999999999999999999999", "0x7fffffff", "1e308", "-0", "00000000000000000000001"}
		changed := false
		for _, h := range []string{"CSeq: ", "Content-Length: ", "Max-Forwards: ", "Expires: ", "Retry-After: "} {
			for i, l := range lines {
				if bytes.HasPrefix(l, []byte(h)) && r.IntN(2) == 0 {
					changed = true
					rest := l[len(h):]
					if j := bytes.IndexByte(rest, ' '); j >= 0 && h == "CSeq: " {
						lines[i] = append([]byte(h+nums[r.IntN(len(nums))]), rest[j:]...)
					} else {
						lines[i] = []byte(h + nums[r.IntN(len(nums))])
					}
				}
			}
		}
		if !changed || r.IntN(3) == 0 {
			lines = append(lines[:1], append([][]byte{[]byte("Expires: " + nums[r.IntN(len(nums))])}, lines[1:]...)...)
		}
		return join()
	case "bad-content-length":
		vals := []string{"-5", "100000", strconv.Itoa(len(b) * 2), "0", "abc", "", "5, 7"}
		for i, l := range lines {
			if bytes.HasPrefix(bytes.ToLower(l), []byte("content-length:")) || bytes.HasPrefix(l, []byte("l:")) {
				lines[i] = []byte("Content-Length: " + vals[r.IntN(len(vals))])
			}
		}
		return join()
	case "drop-line-ends":
		seps := [][]byte{[]byte("\n"), []byte("\r"), nil, []byte("\r\r\n")}
		return bytes.ReplaceAll(b, []byte("\r\n"), seps[r.IntN(len(seps))])
	case "flip-bytes":
		for range 1 + r.IntN(32) {
			if len(b) > 0 {
				b[r.IntN(len(b))] = byte(r.IntN(256))
			}
		}
		return b
	case "many-params":
		i := header()
		var p bytes.Buffer
		for j := range 200 + r.IntN(3000) {
			fmt.Fprintf(&p, ";p%d=%d", j, j)
		}
		lines[i] = append(lines[i], p.Bytes()...)
		return join()
	case "deep-nesting":
		i := header()
		n := 100 + r.IntN(5000)
		nest := append(bytes.Repeat([]byte{'<', '"', '('}, n), bytes.Repeat([]byte{')', '"', '>'}, n/2)...)
		lines[i] = append(lines[i], nest...)
		return join()
	case "empty-header-values":
		for range 1 + r.IntN(4) {
			i := header()
			if j := bytes.IndexByte(lines[i], ':'); j >= 0 {
				lines[i] = lines[i][:j+1]
			}
		}
		return join()
	}
	panic("sipstress: unknown mutation kind")
}
