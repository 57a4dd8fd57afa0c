package memnet

import (
	"context"

	"github.com/sipmesh/sipmesh/netx"
)

var _ netx.LinkWatcher = (*Host)(nil)

// linkWatch is one WatchLinks subscription of a host.
type linkWatch struct {
	fn func(netx.LinkEvent)
}

// WatchLinks implements netx.LinkWatcher: fn hears the carrier changes of
// the host's interfaces made with Link.SetCarrier (SetDown cuts a link
// silently, as a radio link that stops delivering). It returns when ctx
// ends.
func (h *Host) WatchLinks(ctx context.Context, fn func(netx.LinkEvent)) error {
	w := &linkWatch{fn: fn}
	h.net.mu.Lock()
	h.watches = append(h.watches, w)
	h.net.mu.Unlock()
	<-ctx.Done()
	h.net.mu.Lock()
	for i, x := range h.watches {
		if x == w {
			h.watches = append(h.watches[:i], h.watches[i+1:]...)
			break
		}
	}
	h.net.mu.Unlock()
	return nil
}

// SetCarrier cuts (false) or heals (true) the link as SetDown does, and
// reports it to the watchers (WatchLinks) of every attached interface's
// host, as a kernel reports a lost carrier: a cable pulled, a veth peer
// gone. The watchers run before SetCarrier returns, outside the network's
// lock.
func (l *Link) SetCarrier(up bool) {
	type call struct {
		fn func(netx.LinkEvent)
		ev netx.LinkEvent
	}
	var calls []call
	l.net.mu.Lock()
	l.cfg.Down = !up
	for _, ifc := range l.members {
		for _, w := range ifc.host.watches {
			calls = append(calls, call{w.fn, netx.LinkEvent{Index: ifc.index, Name: ifc.name, Up: up}})
		}
	}
	l.net.mu.Unlock()
	for _, c := range calls {
		c.fn(c.ev)
	}
}
