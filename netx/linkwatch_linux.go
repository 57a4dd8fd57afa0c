package netx

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// WatchLinks implements LinkWatcher with a netlink socket subscribed to
// RTMGRP_LINK (rtnetlink(7)): the kernel sends RTM_NEWLINK whenever an
// interface's flags change (admin state, carrier) and RTM_DELLINK when it
// is removed.
func (Kernel) WatchLinks(ctx context.Context, fn func(LinkEvent)) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netx: netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_LINK}); err != nil {
		unix.Close(fd)
		return fmt.Errorf("netx: netlink bind RTMGRP_LINK: %w", err)
	}
	// An *os.File on the non-blocking socket uses the runtime poller, so
	// Close unblocks the Read below when ctx ends.
	f := os.NewFile(uintptr(fd), "netlink-route")
	stop := context.AfterFunc(ctx, func() { f.Close() })
	defer stop()
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := f.Read(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, os.ErrClosed) {
				return nil
			}
			if errors.Is(err, unix.ENOBUFS) {
				// The kernel dropped events (a burst): keep going; the
				// router's poll catches what was missed.
				continue
			}
			return fmt.Errorf("netx: netlink read: %w", err)
		}
		for _, ev := range parseLinkEvents(buf[:n]) {
			fn(ev)
		}
	}
}

// parseLinkEvents decodes the RTM_NEWLINK and RTM_DELLINK messages in one
// netlink datagram; anything else (or malformed) is skipped.
func parseLinkEvents(b []byte) []LinkEvent {
	msgs, err := syscall.ParseNetlinkMessage(b)
	if err != nil {
		return nil
	}
	var out []LinkEvent
	for _, m := range msgs {
		if m.Header.Type != unix.RTM_NEWLINK && m.Header.Type != unix.RTM_DELLINK {
			continue
		}
		if len(m.Data) < unix.SizeofIfInfomsg {
			continue
		}
		ifi := (*unix.IfInfomsg)(unsafe.Pointer(&m.Data[0]))
		ev := LinkEvent{Index: int(ifi.Index)}
		ev.Up = m.Header.Type == unix.RTM_NEWLINK && ifi.Flags&unix.IFF_UP != 0 && ifi.Flags&unix.IFF_RUNNING != 0
		attrs, err := syscall.ParseNetlinkRouteAttr(&m)
		if err != nil {
			continue
		}
		for _, a := range attrs {
			if a.Attr.Type == unix.IFLA_IFNAME {
				name := a.Value
				for len(name) > 0 && name[len(name)-1] == 0 {
					name = name[:len(name)-1]
				}
				ev.Name = string(name)
			}
		}
		out = append(out, ev)
	}
	return out
}
