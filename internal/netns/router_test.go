//go:build linux

package netns_test

import (
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
	rig := newMeshRig(t, topo) // waits for a two-hop route A→C
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
