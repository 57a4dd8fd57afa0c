package netx

import "context"

// LinkEvent reports a change of an interface's operational state.
type LinkEvent struct {
	Index int
	Name  string
	// Up: administratively up and with carrier (on Linux IFF_UP and
	// IFF_RUNNING). A cable pulled, a veth peer gone or a radio that lost
	// its association report Up = false.
	Up bool
}

// LinkWatcher is implemented by a Network that can report interface state
// changes as they happen, so that routing reacts at once instead of at its
// next poll or timeout. Kernel implements it on Linux with a netlink
// RTMGRP_LINK subscription; memnet hosts implement it for links cut with
// Link.SetCarrier.
type LinkWatcher interface {
	// WatchLinks calls fn for every change until ctx ends, then returns
	// nil; it returns an error at once if it cannot watch. fn runs on
	// WatchLinks' goroutine and must not block for long.
	WatchLinks(ctx context.Context, fn func(LinkEvent)) error
}
