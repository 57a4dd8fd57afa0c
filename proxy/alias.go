package proxy

import (
	"context"
	"errors"
	"strings"

	"github.com/emiago/sipgo/sip"
)

// Aliases (registrar.Alias, in the DHT): a Request-URI user that is no
// extension (the lookup answered 404) and that the dial plan names is
// retargeted (RFC 3261 §16.5) to the alias's target and looked up again,
// forwards and all: an extension, or a SIP URI of the mesh domain or of
// this node. An alias of an alias is followed up to maxAliasDepth names.
// A URI outside the mesh is accepted in the dial plan but answered 480
// until the Internet uplink exists.

// maxAliasDepth bounds the aliases followed for one request.
const maxAliasDepth = 4

// resolveAlias retargets base to the alias of its Request-URI user; ok is
// false, with the answer to give, when there is none (404) or its target
// cannot be reached.
func (p *proxyTx) resolveAlias(base *sip.Request) (ok bool, code int, reason string) {
	s := p.s
	if s.cfg.Aliases == nil {
		return false, 404, "Not Found"
	}
	name := base.Recipient.User
	ctx, cancel := context.WithTimeout(s.ctx, lookupTimeout)
	a, err := s.cfg.Aliases.Alias(ctx, name)
	cancel()
	switch {
	case err != nil:
		s.log.Warn("alias lookup failed", "name", name, "err", err)
		return false, 404, "Not Found"
	case a.Target == "":
		return false, 404, "Not Found"
	}
	ext := a.Target
	if strings.Contains(a.Target, ":") {
		var u sip.Uri
		if err := sip.ParseUri(a.Target, &u); err != nil || !s.ourHost(u.Host) || u.User == "" {
			if err == nil {
				err = errors.New("outside the mesh")
			}
			s.log.Info("alias target not reachable", "name", name, "target", a.Target, "err", err)
			return false, 480, "Temporarily Unavailable (alias target outside the mesh)"
		}
		ext = u.User
	}
	s.log.Debug("alias", "name", name, "target", ext)
	base.Recipient.User = ext
	return true, 0, ""
}
