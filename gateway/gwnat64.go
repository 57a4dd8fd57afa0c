package gateway

import (
	"context"
	"net/netip"
	"time"

	"github.com/sipmesh/sipmesh/nat64"
	"github.com/sipmesh/sipmesh/nat64/tun64"
)

// The gateway's NAT64 (issue 15). A gateway node (uplink-interface set,
// nat64 on) runs the user-space stateful NAT64 of package nat64 on a TUN
// device, TAYGA style (nat64/tun64): the kernel routes nat64-prefix and
// nat64-pool into the device, the translator turns IPv6 packets for the
// prefix into IPv4 packets from the pool and back, and the kernel's
// NAT44 masquerades the pool out of the uplink (tun64.Wiring: the rules
// are listed in the README, "NAT64 at gateways"). Packets from the mesh
// reach the device by that kernel route: the mesh's IP data plane writes
// what arrives for the prefix into its own TUN device and the kernel
// forwards it. The gateway announces its prefix (announce.go) only while
// the translator runs, so no node sends packets to a NAT64 that is not
// there.
const (
	// nat64Device is the TUN device of the gateway's NAT64.
	nat64Device = "sipmesh-nat64"
	// nat64MTU is the device MTU and the translator's IPv4 side (the
	// uplink's). Its IPv6 side is the mesh (Node.ipv6MTU: the IP
	// network's TUN MTU), so that IPv4 packets that would not fit the mesh
	// once translated get Fragmentation Needed or are fragmented (RFC
	// 7915 §4.1).
	nat64MTU = 1500
	// nat64Expire is how often idle sessions are swept (the packet path
	// expires as it goes; this frees memory after a busy spell).
	nat64Expire = 30 * time.Second
	// maxPool bounds the pool addresses taken from nat64-pool (a /24).
	maxPool = 256
)

// runNAT64 runs the gateway's NAT64 until ctx ends. A failure to set it
// up (no TUN, no iptables) is logged as an error and shown in the role's
// status; the rest of the gateway keeps running without NAT64, which it
// then does not announce.
func (g *gatewayRole) runNAT64(ctx context.Context) error {
	n := g.n
	o := n.opts
	log := n.base.With("component", "gateway.nat64")
	var pool []netip.Addr
	for a := o.NAT64Pool.Masked().Addr(); o.NAT64Pool.Contains(a) && len(pool) < maxPool; a = a.Next() {
		pool = append(pool, a)
	}
	tr, err := nat64.New(nat64.Config{Prefix: o.NAT64Prefix, Pool: pool, MTU4: nat64MTU, MTU6: n.ipv6MTU()})
	if err != nil {
		return g.nat64Failed(log, err)
	}
	dev, err := n.openTUN(nat64Device, nat64MTU)
	if err != nil {
		return g.nat64Failed(log, err)
	}
	w := tun64.Wiring{Device: nat64Device, Prefix: o.NAT64Prefix, Pool: o.NAT64Pool, Uplink: o.UplinkInterface}
	wd, err := n.wire(w)
	if err != nil {
		dev.Close()
		return g.nat64Failed(log, err)
	}
	g.mu.Lock()
	g.nat64 = tr
	g.mu.Unlock()
	log.Info("NAT64 up", "device", nat64Device, "prefix", o.NAT64Prefix, "pool", o.NAT64Pool, "uplink", o.UplinkInterface)
	sweepDone := make(chan struct{})
	sctx, stopSweep := context.WithCancel(ctx)
	go func() {
		defer close(sweepDone)
		t := time.NewTicker(nat64Expire)
		defer t.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-t.C:
				tr.Expire()
			}
		}
	}()
	err = tun64.Run(ctx, dev, tr, log)
	stopSweep()
	<-sweepDone
	g.mu.Lock()
	g.nat64 = nil
	g.mu.Unlock()
	if derr := wd.Down(); derr != nil {
		log.Error("removing the NAT64 wiring", "err", derr)
	}
	if err != nil {
		return g.nat64Failed(log, err)
	}
	return nil
}

func (g *gatewayRole) nat64Failed(log interface{ Error(string, ...any) }, err error) error {
	log.Error("NAT64 not running", "err", err)
	g.mu.Lock()
	g.nat64Err = err.Error()
	g.mu.Unlock()
	return nil
}

// nat64Prefix is the prefix announced: nat64-prefix while the translator
// runs, none otherwise.
func (g *gatewayRole) nat64Prefix() netip.Prefix {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.nat64 == nil {
		return netip.Prefix{}
	}
	return g.n.opts.NAT64Prefix
}

// NAT64Status is the gateway NAT64's part of the role's status.
type NAT64Status struct {
	Prefix   string `json:"prefix"`
	Pool     string `json:"pool"`
	Running  bool   `json:"running"`
	Out4     uint64 `json:"out4"`
	Out6     uint64 `json:"out6"`
	Dropped  uint64 `json:"dropped"`
	Sessions int    `json:"sessions"`
	Error    string `json:"error,omitempty"`
}

func (g *gatewayRole) nat64Status() *NAT64Status {
	o := g.n.opts
	if !o.NAT64 {
		return nil
	}
	g.mu.Lock()
	tr, errText := g.nat64, g.nat64Err
	g.mu.Unlock()
	st := &NAT64Status{Prefix: o.NAT64Prefix.String(), Pool: o.NAT64Pool.String(), Running: tr != nil, Error: errText}
	if tr != nil {
		s := tr.Stats()
		st.Out4, st.Out6, st.Dropped, st.Sessions = s.Out4, s.Out6, s.Dropped, s.Sessions
	}
	return st
}
