//go:build linux

package netns_test

import (
	"bytes"
	"context"
	"net"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/internal/netns"
	"github.com/sipmesh/sipmesh/ssr"
)

// TestRoutersOverVeth runs three SSR routers of this process in three
// namespaces A–B–C, on kernel sockets over veth pairs: the router tests of
// package ssr run on memnet, this is the same code on real sockets.
func TestRoutersOverVeth(t *testing.T) {
	netns.RequireRoot(t)
	leakcheck.Check(t)
	topo := newBenchTopo(t)
	rig := newMeshRig(t, topo, false) // waits for a two-hop route A→C
	defer rig.stop()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	reply, rtt, err := rig.a.Ping(ctx, rig.c.ID())
	if err != nil {
		t.Fatal(err)
	}
	if reply.Hops != 2 || len(reply.Route) != 3 || reply.Route[2] != rig.c.ID() {
		t.Errorf("ping A→C: %+v", reply)
	}
	t.Logf("ping A→C over veth: rtt %v, route %v", rtt, reply.Route)

	pcC, err := rig.c.ListenPacket(5060)
	if err != nil {
		t.Fatal(err)
	}
	defer pcC.Close()
	pcA, err := rig.a.ListenPacket(0)
	if err != nil {
		t.Fatal(err)
	}
	defer pcA.Close()
	if _, err := pcA.WriteTo([]byte("OPTIONS"), pcC.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	pcC.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 100)
	n, from, err := pcC.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	if string(buf[:n]) != "OPTIONS" || from.(*net.UDPAddr).String() != pcA.LocalAddr().String() {
		t.Errorf("got %q from %v, want OPTIONS from %v", buf[:n], from, pcA.LocalAddr())
	}

	// The unicast socket has the mesh port (the group sockets of this
	// Network leave it free), and the interface is up.
	st := rig.a.Status()
	if len(st.Interfaces) != 1 || !st.Interfaces[0].Up || st.Interfaces[0].Port != ssr.DefaultPort || len(st.Neighbours) != 1 {
		t.Errorf("A's status: %+v", st)
	}
}

// TestMeshEncryptionOverVeth captures every packet on the veth between A
// and B (an AF_PACKET socket in B) while A sends C a G.711 tone and a SIP
// request over mesh sockets: with mesh-encryption on neither the tone's
// bytes nor the SIP text is on the wire; off, both are (readable, as
// amateur radio requires), and the frames still arrive authenticated.
func TestMeshEncryptionOverVeth(t *testing.T) {
	netns.RequireRoot(t)
	leakcheck.Check(t)
	topo := newBenchTopo(t)
	tone := make([]byte, 160) // 20 ms of PCMU: a 400 Hz tone's µ-law bytes
	for i := range tone {
		tone[i] = []byte{0xff, 0xa7, 0x9b, 0x93, 0x90, 0x93, 0x9b, 0xa7, 0xff, 0x27, 0x1b, 0x13, 0x10, 0x13, 0x1b, 0x27}[i%16]
	}
	sip := []byte("INVITE sip:201@mesh SIP/2.0\r\nVia: SIP/2.0/UDP [fd00::1]:5060\r\n\r\n")
	for _, enc := range []bool{false, true} {
		rig := newMeshRig(t, topo, enc)
		capture := topo.b.OpenCapture(t, "b-a")
		pcC, err := rig.c.ListenPacket(4000)
		if err != nil {
			t.Fatal(err)
		}
		pcA, err := rig.a.ListenPacket(0)
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		buf := make([]byte, 2048)
		for _, p := range [][]byte{tone, sip} {
			if _, err := pcA.WriteTo(p, pcC.LocalAddr()); err != nil {
				t.Fatal(err)
			}
			pcC.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, _, err := pcC.ReadFrom(buf); err == nil && bytes.Equal(buf[:n], p) {
				got++
			}
		}
		pcA.Close()
		pcC.Close()
		st := rig.c.Status()
		rig.stop()
		frames, plain := 0, 0
		for _, f := range capture.Drain(t) {
			frames++
			if bytes.Contains(f, tone[:32]) || bytes.Contains(f, []byte("sip:201@mesh")) {
				plain++
			}
		}
		t.Logf("mesh-encryption %v: %d of 2 datagrams arrived; %d packets captured on a-b, %d with plaintext; C's link security: %+v", enc, got, frames, plain, st.Auth)
		if got != 2 {
			t.Fatalf("mesh-encryption %v: %d of 2 datagrams arrived", enc, got)
		}
		if st.Auth.Handshakes == 0 || st.Auth.BadMAC != 0 || st.Auth.Encrypted != enc {
			t.Errorf("mesh-encryption %v: C's link security %+v", enc, st.Auth)
		}
		if frames < 2 {
			t.Errorf("mesh-encryption %v: %d packets captured, want at least the two datagrams", enc, frames)
		}
		if enc && plain != 0 {
			t.Errorf("mesh-encryption on: %d packets on the wire carry the tone or the SIP text", plain)
		}
		if !enc && plain < 2 {
			t.Errorf("mesh-encryption off: %d packets carry the plaintext, want the tone and the SIP request", plain)
		}
	}
}
