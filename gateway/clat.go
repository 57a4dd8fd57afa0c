package gateway

import (
	"context"
	"net/netip"
	"time"

	"github.com/sipmesh/sipmesh/nat64"
	"github.com/sipmesh/sipmesh/nat64/tun64"
)

// The CLAT (issue 15, RFC 6877 464XLAT): IPv4 hosts on a node's LAN (desk
// phones fetching the time, their firmware, their provisioning) reach
// the IPv4 Internet through the mesh. The node translates their packets
// statelessly (nat64.NewCLAT) to IPv6 from its CLAT prefix (clat-prefix:
// a /96 the mesh routes back to this node; with ip-network on, by default
// meship.CLATPrefix of the node's ID) to the NAT64 prefix of the
// gateway it would use (nat64exit.go), which the kernel routes into the
// mesh (or, on a gateway, into its own NAT64 device); the gateway's
// NAT64 does the stateful part. The kernel brings the LAN's IPv4 packets
// to the CLAT device by a policy rule (tun64.CLATWiring): only packets
// arriving on the LAN interface and not for the node itself, so SIP and
// RTP to the node stay on the ALG and relay, and the mesh's own LAN
// subnets (lan-supernet) stay off it.
const (
	// clatDevice is the CLAT's TUN device.
	clatDevice = "sipmesh-clat"
	// clatMTU is the device MTU and the IPv4 side's (the LAN's); the
	// IPv6 side is the mesh's (Node.ipv6MTU): bigger translations get
	// Fragmentation Needed (DF) or IPv6 fragments (RFC 7915 §4.1).
	clatMTU = 1500
	// clatTable and clatPriority are the routing table and policy rule
	// priority of the LAN's IPv4 packets to the CLAT.
	clatTable    = 6464
	clatPriority = 6464
	// clatPrefixEvery is how often the CLAT's NAT64 prefix is compared
	// with the one of the gateway in use.
	clatPrefixEvery = time.Second
)

// runCLAT runs the CLAT until ctx ends. A failure to set it up is logged
// as an error (the rest of the node runs on).
func (n *Node) runCLAT(ctx context.Context) error {
	o := n.opts
	log := n.base.With("component", "gateway.clat")
	prefix, ok := n.NAT64Prefix()
	if !ok {
		prefix = o.NAT64Prefix // until a gateway is known
	}
	tr, err := nat64.NewCLAT(nat64.CLATConfig{CLAT: o.CLATPrefix, Prefix: prefix, MTU4: clatMTU, MTU6: n.ipv6MTU()})
	if err != nil {
		log.Error("CLAT not running", "err", err)
		return nil
	}
	dev, err := n.openTUN(clatDevice, clatMTU)
	if err != nil {
		log.Error("CLAT not running", "err", err)
		return nil
	}
	w := tun64.CLATWiring{Device: clatDevice, CLAT: o.CLATPrefix, LAN: o.LANInterface, Table: clatTable, Priority: clatPriority,
		Keep: []netip.Prefix{o.LANSupernet}}
	wd, err := n.wireCLAT(w)
	if err != nil {
		dev.Close()
		log.Error("CLAT not running", "err", err)
		return nil
	}
	n.svc.mu.Lock()
	n.svc.clat = tr
	n.svc.mu.Unlock()
	log.Info("CLAT up", "device", clatDevice, "clat_prefix", o.CLATPrefix, "nat64_prefix", prefix, "lan", o.LANInterface)
	follow, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(clatPrefixEvery)
		defer t.Stop()
		cur := prefix
		for {
			select {
			case <-follow.Done():
				return
			case <-t.C:
			}
			if p, ok := n.NAT64Prefix(); ok && p != cur {
				if err := tr.SetPrefix(p); err != nil {
					log.Warn("NAT64 prefix of the gateway refused", "prefix", p, "err", err)
					continue
				}
				cur = p
				log.Info("CLAT follows the gateway's NAT64 prefix", "prefix", p)
			}
		}
	}()
	err = tun64.Run(ctx, dev, tr, log)
	stop()
	<-done
	n.svc.mu.Lock()
	n.svc.clat = nil
	n.svc.mu.Unlock()
	if derr := wd.Down(); derr != nil {
		log.Error("removing the CLAT wiring", "err", derr)
	}
	if err != nil {
		log.Error("CLAT stopped", "err", err)
	}
	return nil
}
