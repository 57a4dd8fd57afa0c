// Package tun64 is the NAT64 data plane on a TUN device, TAYGA style: the
// kernel routes the NAT64 prefix (IPv6) and the translator's IPv4 pool
// into one TUN device; Run reads each packet, translates it with a
// nat64.Translator (In6 for IPv6, In4Split for IPv4) and writes the
// translation, or the ICMP error answering it, back into the same device
// for the kernel to route on.
//
// The wiring, as TestNetnsTAYGAWiring sets it up: the device up, the
// prefix routed into it (ip -6 route add 64:ff9b::/96 dev nat64), the pool
// too (ip route add 192.0.2.1/32 dev nat64). A gateway adds forwarding
// and, since its pool is an address of its own not routed to it from the
// Internet, the kernel's NAT44 of the pool out of the uplink, with
// FORWARD accepts for firewalls that drop by default: Wiring (wire.go)
// puts all of it in place and takes it away. CLATWiring (clat.go) is the
// same for a node's CLAT (nat64.NewCLAT), whose IPv4 side is the LAN.
//
// The device is anything with the batch I/O of wireguard-go's tun.Device
// (golang.zx2c4.com/wireguard/tun), which satisfies Device as it is;
// OpenTUN opens a real one on Linux, in every build (the node opens its
// NAT64 and CLAT devices with it).
package tun64

import (
	"context"
	"errors"
	"log/slog"
	"sync"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/sipmesh/sipmesh/nat64"
)

// Device is the part of a TUN device Run uses: wireguard-go's
// tun.Device batch I/O. Read fills bufs[i][offset:offset+sizes[i]];
// Write sends bufs[i][offset:], and may use the offset bytes in front of
// each packet (the Linux device puts its virtio header there).
type Device interface {
	Read(bufs [][]byte, sizes []int, offset int) (int, error)
	Write(bufs [][]byte, offset int) (int, error)
	BatchSize() int
	Close() error
}

const (
	// Offset is the headroom kept in front of every packet: wireguard-go's
	// Linux device needs 10 bytes for the virtio-net header; 16 is what
	// wireguard-go itself reserves.
	Offset = 16
	// maxPacket is the largest packet read: an IP datagram.
	maxPacket = 65535
	// maxBatch bounds the packets moved per read, and so the buffers held.
	// A device with offloads (wireguard-go's Linux TUN) splits each GSO
	// super-packet the kernel hands it (up to 64 KiB: TCP the uplink's GRO
	// merged) into segments of at most the device MTU, one per buffer; 64
	// holds the 45 full-sized segments of a 64 KiB TCP super-packet (MSS
	// 1448). A larger split loses its rest (tun.ErrTooManySegments,
	// logged and counted; TCP sends it again). The buffers are then of
	// the device MTU, two per packet: some 200 KiB for a 1500-byte MTU.
	// Without offloads a read is one packet of up to maxPacket.
	maxBatch = 64
	// growth is what translation can add to a packet: IPv6 and Fragment
	// headers for the IPv4 header, and a quoted header's growth.
	growth = 56
)

// Run moves packets between dev and tr until ctx ends (then it returns
// nil) or reading fails. It closes dev before it returns, and waits for
// the goroutine it starts.
func Run(ctx context.Context, dev Device, tr *nat64.Translator, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "tun64")
	var once sync.Once
	closeDev := func() { once.Do(func() { dev.Close() }) }
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-ctx.Done():
			closeDev() // unblocks Read
		case <-done:
		}
	}()
	err := loop(dev, tr, log)
	close(done)
	wg.Wait()
	closeDev()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func loop(dev Device, tr *nat64.Translator, log *slog.Logger) error {
	batch := min(max(dev.BatchSize(), 1), maxBatch)
	size := maxPacket
	if m, ok := dev.(interface{ MTU() (int, error) }); ok && batch > 1 {
		// Offloads: every packet read is at most the device MTU (GSO
		// super-packets come split).
		if mtu, err := m.MTU(); err == nil && mtu > 0 && mtu < maxPacket {
			size = mtu
		}
	}
	in := make([][]byte, batch)
	out := make([][]byte, batch)
	for i := range in {
		in[i] = make([]byte, Offset+size)
		out[i] = make([]byte, Offset+size+growth)
	}
	sizes := make([]int, batch)
	writes := make([][]byte, 0, batch)
	// Fragments (In4Split) go out one by one through their own buffer,
	// since each needs headroom in front of it.
	frag := make([]byte, Offset+maxPacket)
	one := make([][]byte, 1)
	var writeErrs, splitErrs uint64
	emit := func(f []byte) {
		n := copy(frag[Offset:], f)
		one[0] = frag[:Offset+n]
		if _, err := dev.Write(one, Offset); err != nil {
			writeErrs++
		}
	}
	for {
		n, err := dev.Read(in, sizes, Offset)
		if errors.Is(err, tun.ErrTooManySegments) {
			// A super-packet split into more than the batch: the
			// segments read are good, the rest is lost (see maxBatch).
			splitErrs++
			if splitErrs&(splitErrs-1) == 0 {
				log.Warn("GSO packet larger than a batch: segments lost", "times", splitErrs)
			}
			err = nil
		}
		if err != nil {
			return err
		}
		writes = writes[:0]
		for i := range n {
			p := in[i][Offset : Offset+sizes[i]]
			if len(p) == 0 {
				continue
			}
			o := out[i][Offset:]
			var m int
			switch p[0] >> 4 {
			case 6:
				m, _, _ = tr.In6(p, o)
			case 4:
				m, _, _ = tr.In4Split(p, o, emit)
			}
			// Drops are counted in tr.Stats; nothing to log per packet.
			if m > 0 {
				writes = append(writes, out[i][:Offset+m])
			}
		}
		if len(writes) > 0 {
			if _, err := dev.Write(writes, Offset); err != nil {
				// A write error is one packet lost (ENOBUFS, a packet
				// the kernel rejects); a closed device ends the loop at
				// the next Read.
				writeErrs++
				if writeErrs&(writeErrs-1) == 0 { // 1, 2, 4, 8...: a bounded log
					log.Warn("writing translated packets", "err", err, "errors", writeErrs)
				}
			}
		}
	}
}
