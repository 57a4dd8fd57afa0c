package phones

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"

	"github.com/sipmesh/sipmesh/sipnet"
)

// maxAuthTries bounds digest retries of one request: a second challenge
// after credentials means a stale nonce (RFC 3261 §22.4); a third, wrong
// credentials.
const maxAuthTries = 2

// Register registers the phone's Contact at Settings.Server for
// Settings.Expires (RFC 3261 §10), answering digest challenges, and keeps
// the binding refreshed in the background until Unregister or the end of
// Run.
func (p *Phone) Register(ctx context.Context) error {
	if !p.cfg.Server.IsValid() {
		return errors.New("phones: Register: no Settings.Server")
	}
	granted, err := p.register(ctx, p.cfg.Expires)
	if err != nil {
		return err
	}
	rs := &p.regState
	rs.Lock()
	defer rs.Unlock()
	rs.registered, rs.expires = granted > 0, p.now().Add(granted)
	if rs.cancel != nil || granted == 0 {
		return nil
	}
	if !p.enter() {
		return ErrClosed
	}
	ctx, cancel := context.WithCancel(p.base)
	rs.cancel, rs.done = cancel, make(chan struct{})
	go func(done chan struct{}) {
		defer p.wg.Done()
		defer close(done)
		p.refresh(ctx, granted)
	}(rs.done)
	return nil
}

// Registered reports whether the phone holds a binding and until when.
func (p *Phone) Registered() (bool, time.Time) {
	rs := &p.regState
	rs.Lock()
	defer rs.Unlock()
	return rs.registered && p.now().Before(rs.expires), rs.expires
}

// refresh re-registers halfway through each granted lifetime; after a
// failure it retries sooner.
func (p *Phone) refresh(ctx context.Context, granted time.Duration) {
	wait := granted / 2
	for {
		t := time.NewTimer(max(wait, time.Second))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		g, err := p.register(ctx, p.cfg.Expires)
		rs := &p.regState
		rs.Lock()
		if err == nil {
			rs.registered, rs.expires = g > 0, p.now().Add(g)
			wait = g / 2
		} else {
			wait = min(granted/4, 30*time.Second)
		}
		rs.Unlock()
		if err != nil && ctx.Err() == nil {
			p.log.Warn("registration refresh failed", "err", err)
		}
	}
}

// Unregister stops refreshing and removes the binding (Expires: 0, RFC
// 3261 §10.2.2).
func (p *Phone) Unregister(ctx context.Context) error {
	rs := &p.regState
	rs.Lock()
	cancel, done := rs.cancel, rs.done
	rs.cancel, rs.done, rs.registered = nil, nil, false
	rs.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
	_, err := p.register(ctx, 0)
	return err
}

// register sends one REGISTER (with digest retries) and returns the
// lifetime granted.
func (p *Phone) register(ctx context.Context, expires time.Duration) (time.Duration, error) {
	p.regMu.Lock()
	defer p.regMu.Unlock()
	if p.isClosing() {
		return 0, ErrClosed
	}
	p.regSeq++
	req := sip.NewRequest(sip.REGISTER, sip.Uri{Scheme: "sip", Host: p.cfg.Domain})
	req.AppendHeader(p.via())
	req.AppendHeader(&sip.FromHeader{DisplayName: p.cfg.DisplayName, Address: p.aor,
		Params: sipnet.TagParams(sip.GenerateTagN(10))})
	req.AppendHeader(&sip.ToHeader{DisplayName: p.cfg.DisplayName, Address: p.aor, Params: sip.NewParams()})
	cid := sip.CallIDHeader(p.regCallID)
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: p.regSeq, MethodName: sip.REGISTER})
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(&mf)
	req.AppendHeader(p.contactHeader())
	secs := int(expires / time.Second)
	req.AppendHeader(sip.NewHeader("Expires", strconv.Itoa(secs)))
	req.AppendHeader(sip.NewHeader("User-Agent", "sipmesh-phone"))
	req.SetBody(nil)

	res, err := p.authedRequest(ctx, req)
	if err != nil {
		return 0, fmt.Errorf("phones: REGISTER: %w", err)
	}
	p.regSeq = req.CSeq().SeqNo
	if !res.IsSuccess() {
		return 0, &StatusError{Method: "REGISTER", Code: res.StatusCode, Reason: res.Reason}
	}
	if expires == 0 {
		return 0, nil
	}
	return p.expiresOf(res, expires), nil
}

// authedRequest sends a non-INVITE request to the server and answers up to
// maxAuthTries digest challenges (RFC 3261 §22.2).
func (p *Phone) authedRequest(ctx context.Context, req *sip.Request) (*sip.Response, error) {
	for try := 0; ; try++ {
		tx, err := p.send(req, p.cfg.Server)
		if err != nil {
			return nil, err
		}
		res, err := finalResponse(ctx, tx)
		tx.Terminate()
		if err != nil {
			return nil, err
		}
		if (res.StatusCode != 401 && res.StatusCode != 407) || try >= maxAuthTries || p.cfg.Password == "" {
			return res, nil
		}
		if err := p.authorize(req, res); err != nil {
			return nil, err
		}
	}
}

// authorize adds credentials for the challenge in res to req, and makes
// req a new transaction: CSeq+1 (§22.2), a new Via branch.
func (p *Phone) authorize(req *sip.Request, res *sip.Response) error {
	chalHdr, credHdr := "WWW-Authenticate", "Authorization"
	if res.StatusCode == 407 {
		chalHdr, credHdr = "Proxy-Authenticate", "Proxy-Authorization"
	}
	var best *digest.Challenge
	for _, h := range res.GetHeaders(chalHdr) {
		ch, err := digest.ParseChallenge(h.Value())
		if err != nil {
			continue
		}
		ch.Algorithm = strings.ToUpper(ch.Algorithm)
		if !digest.CanDigest(ch) || strings.HasSuffix(ch.Algorithm, "-SESS") {
			continue
		}
		// RFC 8760 §2.4: a server may offer several algorithms, the most
		// preferred first; take the strongest we support.
		if best == nil || algRank(ch.Algorithm) > algRank(best.Algorithm) {
			best = ch
		}
	}
	if best == nil {
		return fmt.Errorf("phones: %d without a usable digest challenge", res.StatusCode)
	}
	cred, err := digest.Digest(best, digest.Options{
		Method: string(req.Method), URI: req.Recipient.String(),
		Username: p.cfg.User, Password: p.cfg.Password, Count: 1,
	})
	if err != nil {
		return fmt.Errorf("phones: digest: %w", err)
	}
	req.RemoveHeader(credHdr)
	req.AppendHeader(sip.NewHeader(credHdr, cred.String()))
	req.CSeq().SeqNo++
	req.RemoveHeader("Via")
	req.PrependHeader(p.via())
	return nil
}

func algRank(a string) int {
	switch a {
	case "SHA-512-256":
		return 3
	case "SHA-256":
		return 2
	case "SHA-512":
		return 1
	}
	return 0
}

func (p *Phone) isClosing() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closing
}
