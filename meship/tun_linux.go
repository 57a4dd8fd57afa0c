package meship

import (
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/sipmesh/sipmesh/netx"
	"github.com/sipmesh/sipmesh/ssr"
)

// forwardingSysctl is IPv6 forwarding for every interface (ip-sysctl.rst):
// the node routes between its LAN and the TUN.
const forwardingSysctl = "/proc/sys/net/ipv6/conf/all/forwarding"

// Kernel is what Open put in place; Close takes it all away.
type Kernel struct {
	Dev     Device
	Name    string
	MTU     int
	lan     string
	lanAddr netip.Prefix
	lanOurs bool         // the LAN address is to be removed
	fwd     func() error // releases the hold on IPv6 forwarding
}

// Open creates the TUN name (wireguard-go's tun.CreateTUN) with mtu in
// the calling thread's network namespace, brings it up, and gives it the
// node's mesh address as a /48, which routes the whole mesh (MeshNet)
// into it, and routes CLATNet into it. With lan set it puts LANAddr/116 on
// that interface, so that
// the kernel routes id's LAN prefix there and the LAN hosts have a router,
// and it turns IPv6 forwarding on. Close undoes all of it; closing the TUN
// removes the interface with its address and route.
func Open(name string, mtu int, id ssr.NodeID, lan string) (*Kernel, error) {
	dev, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return nil, fmt.Errorf("meship: creating TUN %s: %w", name, err)
	}
	real, err := dev.Name()
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("meship: TUN name: %w", err)
	}
	k := &Kernel{Dev: dev, Name: real, MTU: mtu, lan: lan}
	if err := k.setup(id); err != nil {
		k.Close()
		return nil, err
	}
	return k, nil
}

func (k *Kernel) setup(id ssr.NodeID) error {
	if err := linkUp(k.Name); err != nil {
		return err
	}
	if _, err := netx.AddAddress(k.Name, netip.PrefixFrom(id.Addr(), MeshNet.Bits())); err != nil {
		return fmt.Errorf("meship: %w", err)
	}
	// The CLAT prefixes of all nodes; this node's CLAT device has a more
	// specific route for its own (the CLAT's wiring).
	if err := netx.AddDeviceRoute(k.Name, CLATNet); err != nil {
		return fmt.Errorf("meship: %w", err)
	}
	if k.lan == "" {
		return nil
	}
	k.lanAddr = netip.PrefixFrom(LANAddr(id), spaceBits)
	if _, err := netx.AddAddress(k.lan, k.lanAddr); err != nil {
		return fmt.Errorf("meship: %w", err)
	}
	// Removed at stop even if it was there already: it is derived from
	// the node's ID, so only this node (a run killed with SIGKILL, which
	// left it) puts it there.
	k.lanOurs = true
	// Held, not set: the NAT64 and the CLAT want forwarding too, and the
	// last of them to stop puts the old value back (netx.HoldSysctl).
	var err error
	if k.fwd, err = netx.HoldSysctl(forwardingSysctl, "1"); err != nil {
		return fmt.Errorf("meship: turning IPv6 forwarding on: %w", err)
	}
	return nil
}

// ExitMetric is the metric of AddRoute's routes: above the kernel's
// default (1024), so that a route for the same prefix into a local device
// (a gateway's own NAT64 for its prefix) wins while that device is there,
// and the route into the mesh takes over when it goes.
const ExitMetric = 2048

// AddRoute routes p into the TUN (`ip route replace p dev sipmesh0 metric
// ExitMetric`): a prefix outside the mesh whose packets the plane's Exit
// hook sends to an exit (a NAT64 prefix). The route goes with the TUN, or
// with RemoveRoute.
func (k *Kernel) AddRoute(p netip.Prefix) error {
	if err := netx.AddDeviceRouteMetric(k.Name, p, ExitMetric); err != nil {
		return fmt.Errorf("meship: %w", err)
	}
	return nil
}

// RemoveRoute removes a route of AddRoute (none there: no error).
func (k *Kernel) RemoveRoute(p netip.Prefix) error {
	if err := netx.RemoveDeviceRoute(k.Name, p, ExitMetric); err != nil {
		return fmt.Errorf("meship: %w", err)
	}
	return nil
}

// Close removes the LAN address, releases its hold on forwarding (off
// again if Open found it off and nothing else holds it; after a SIGKILL
// it stays on: a router's normal state), and closes the TUN (which
// removes it). The plane's Run
// closes the TUN too; closing twice is harmless.
func (k *Kernel) Close() error {
	var errs []error
	if k.lanOurs {
		errs = append(errs, netx.RemoveAddress(k.lan, k.lanAddr))
		k.lanOurs = false
	}
	if k.fwd != nil {
		errs = append(errs, k.fwd())
		k.fwd = nil
	}
	k.Dev.Close()
	return errors.Join(errs...)
}

// linkUp sets IFF_UP on ifname, as `ip link set up` does.
func linkUp(ifname string) error {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("meship: bringing %s up: %w", ifname, err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(ifname)
	if err != nil {
		return fmt.Errorf("meship: bringing %s up: %w", ifname, err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("meship: bringing %s up: %w", ifname, err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("meship: bringing %s up: %w", ifname, err)
	}
	return nil
}
