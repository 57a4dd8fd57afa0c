package registrar

import (
	"context"
	"crypto/md5"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// loadClient registers users u0000..u(users-1) (password pwNNNN, the
// convention of the SIPp users file and Kamailio's WITH_AUTH) at
// a registrar over UDP, keeping `window` registrations in flight. One
// registration is two transactions: REGISTER → 401, REGISTER with MD5
// digest → 200. Each registration has its own Call-ID. It is the same
// code, with the same parsing cost, whichever registrar it measures.
type loadClient struct {
	runs   int // makes Call-IDs and branches unique across runs
	users  int
	window int
	domain string // Request-URI and AOR host
	rto    time.Duration
}

type loadResult struct {
	ok, failed, retrans int
	elapsed             time.Duration
}

type loadCall struct {
	id       int
	user     int
	cseq     int
	auth     string
	sent     time.Time
	tries    int
	lastSent []byte
}

func (lc *loadClient) run(ctx context.Context, server netip.AddrPort, total int) (loadResult, error) {
	conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		return loadResult{}, err
	}
	defer conn.Close()
	local := conn.LocalAddr().(*net.UDPAddr).AddrPort()
	dst := net.UDPAddrFromAddrPort(server)
	lc.runs++
	tag := fmt.Sprintf("r%d-%d", lc.runs, time.Now().UnixNano()%1e9)
	calls := make(map[string]*loadCall, lc.window)
	var res loadResult
	started := 0
	send := func(c *loadCall) error {
		c.cseq++
		u := fmt.Sprintf("u%04d", c.user)
		var b strings.Builder
		fmt.Fprintf(&b, "REGISTER sip:%s SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bK%s.%d.%d;rport\r\nMax-Forwards: 70\r\n", lc.domain, local, tag, c.id, c.cseq)
		fmt.Fprintf(&b, "From: <sip:%s@%s>;tag=t%d\r\nTo: <sip:%s@%s>\r\nCall-ID: %d@%s\r\nCSeq: %d REGISTER\r\n", u, lc.domain, c.id, u, lc.domain, c.id, tag, c.cseq)
		fmt.Fprintf(&b, "Contact: <sip:%s@127.0.0.1:%d>\r\nExpires: 300\r\n", u, 40000+c.user)
		if c.auth != "" {
			b.WriteString("Authorization: " + c.auth + "\r\n")
		}
		b.WriteString("User-Agent: sipmesh-load\r\nContent-Length: 0\r\n\r\n")
		c.lastSent = []byte(b.String())
		c.sent, c.tries = time.Now(), 0
		_, err := conn.WriteTo(c.lastSent, dst)
		return err
	}
	start := func() error {
		c := &loadCall{id: started, user: started % lc.users}
		started++
		calls[strconv.Itoa(c.id)+"@"+tag] = c
		return send(c)
	}
	t0 := time.Now()
	for started < min(total, lc.window) {
		if err := start(); err != nil {
			return res, err
		}
	}
	buf := make([]byte, 65535)
	lastSweep := time.Now()
	for len(calls) > 0 {
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		conn.SetReadDeadline(time.Now().Add(lc.rto / 4))
		n, _, err := conn.ReadFrom(buf)
		if err == nil {
			code, callID, chal := scanResponse(buf[:n])
			c := calls[callID]
			switch {
			case c == nil || code < 200:
				// A late retransmitted answer or a provisional.
			case code == 401 && c.auth == "" && chal != nil:
				c.auth = lc.authorization(chal, c.user)
				if err := send(c); err != nil {
					return res, err
				}
			default:
				delete(calls, callID)
				if code == 200 {
					res.ok++
				} else {
					res.failed++
				}
				if started < total {
					if err := start(); err != nil {
						return res, err
					}
				}
			}
		} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
			return res, err
		}
		if now := time.Now(); now.Sub(lastSweep) >= lc.rto/4 {
			lastSweep = now
			for k, c := range calls {
				if now.Sub(c.sent) < lc.rto<<c.tries {
					continue
				}
				if c.tries >= 4 {
					delete(calls, k)
					res.failed++
					if started < total {
						if err := start(); err != nil {
							return res, err
						}
					}
					continue
				}
				c.tries++
				res.retrans++
				conn.WriteTo(c.lastSent, dst)
			}
		}
	}
	res.elapsed = time.Since(t0)
	return res, nil
}

// authorization answers an MD5 challenge for user uNNNN (RFC 7616 §3.4).
func (lc *loadClient) authorization(chal *digestParams, user int) string {
	u := fmt.Sprintf("u%04d", user)
	ha1 := md5.Sum([]byte(u + ":" + chal.realm + ":" + fmt.Sprintf("pw%04d", user)))
	p := digestParams{uri: "sip:" + lc.domain, nonce: chal.nonce, nc: 1, cnonce: "0a4f113b"}
	if chal.qop != "" {
		p.qop = "auth"
	}
	resp := digestResponse(md5.New, ha1[:], "REGISTER", &p)
	a := `Digest username="` + u + `", realm="` + chal.realm + `", nonce="` + chal.nonce + `", uri="` + p.uri + `", response="` + resp + `", algorithm=MD5`
	if p.qop != "" {
		a += `, qop=auth, nc=00000001, cnonce="0a4f113b"`
	}
	return a
}

// scanResponse reads the status code, Call-ID and the MD5 challenge of a
// response with plain string scanning, cheap and the same for both
// registrars.
func scanResponse(b []byte) (code int, callID string, chal *digestParams) {
	s := string(b)
	if len(s) < 12 || !strings.HasPrefix(s, "SIP/2.0 ") {
		return 0, "", nil
	}
	code, _ = strconv.Atoi(s[8:11])
	for _, line := range strings.Split(s, "\r\n") {
		name, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		val = strings.TrimSpace(val)
		switch strings.ToLower(name) {
		case "call-id", "i":
			callID = val
		case "www-authenticate":
			if c, ok := parseDigest(val); ok && (c.algorithm == "" || strings.EqualFold(c.algorithm, "MD5")) && chal == nil {
				chal = &c
			}
		}
	}
	return code, callID, chal
}
