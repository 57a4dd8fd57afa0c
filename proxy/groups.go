package proxy

import "github.com/sipmesh/sipmesh/registrar"

// Ring groups: a group extension (say 600) rings every member's phones in
// parallel, wherever they are registered; the first to answer takes the
// call and the proxy CANCELs the other branches (RFC 3261 §16.7 step 10,
// the forking of proxy.go). The groups are node configuration
// (SIPServiceConfig.RingGroups), the same on every node: a group is
// resolved by the caller's node, so every node must know it, and a
// configuration file every node carries survives the loss of any node
// without a DHT lookup on the call path; changing a group means
// reprovisioning the nodes. A member that is itself a group is skipped
// (no nesting). Hunting (members in order, each for a timeout) is not
// here yet.

// groupTargets forks to the bindings of every member of a ring group;
// ok is false when ext is not a group.
func (p *proxyTx) groupTargets(ext string) (ts []target, code int, reason string, ok bool) {
	members := p.s.cfg.RingGroups[ext]
	if len(members) == 0 {
		return nil, 0, "", false
	}
	for _, m := range members {
		if len(p.s.cfg.RingGroups[m]) > 0 || registrar.ValidExt(m) != nil {
			continue
		}
		mt, code, _ := p.lookup(m)
		if code != 0 {
			continue // this member is not reachable now; the others ring
		}
		ts = append(ts, mt...)
		if len(ts) >= maxForks {
			ts = ts[:maxForks]
			break
		}
	}
	if len(ts) == 0 {
		return nil, 480, "Temporarily Unavailable (no member of the group is reachable)", true
	}
	return ts, 0, "", true
}
