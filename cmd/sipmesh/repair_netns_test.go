//go:build linux

package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/internal/netns"
	"github.com/sipmesh/sipmesh/ssr"
)

// TestRepairInNamespaces (issue 13): five `sipmesh node` processes in a
// physical ring of network namespaces, a stream of mesh echoes n1→n3 every
// 20 ms (both directions of a call's path: a reply needs both), and the
// veth that carries it taken down — 20 times, alternating the end that goes
// down, healing in between. The node at the downed end sees its interface
// go down, the one across sees its carrier go (netlink RTMGRP_LINK): both
// drop the neighbour at once, so replies must stop for at most 1 s, and no
// link may carry a storm (frames counted on every veth during the cut).
func TestRepairInNamespaces(t *testing.T) {
	netns.RequireRoot(t)
	if testing.Short() {
		t.Skip("starts five nodes in network namespaces and cuts a link 20 times; takes some 2 minutes")
	}
	bin := buildSipmesh(t)
	tmp := t.TempDir()
	sockDir, err := os.MkdirTemp("", "smr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })

	const n = 5
	edges := [][2]int{{1, 2}, {2, 3}, {3, 4}, {4, 5}, {5, 1}}
	ifname := func(to int) string { return fmt.Sprintf("ve-n%d", to) }
	spaces := make([]*netns.NS, n+1)
	for i := 1; i <= n; i++ {
		spaces[i] = netns.New(t, fmt.Sprintf("r%d", i))
	}
	ifaces := make([][]string, n+1)
	for _, e := range edges {
		a, b := e[0], e[1]
		netns.Veth(t, spaces[a], ifname(b), spaces[b], ifname(a))
		ifaces[a] = append(ifaces[a], ifname(b))
		ifaces[b] = append(ifaces[b], ifname(a))
	}
	for i := 1; i <= n; i++ {
		for _, ifn := range ifaces[i] {
			spaces[i].LinkLocal(t, ifn)
		}
	}
	nodes := make([]*nsNode, n+1)
	names := map[string]string{}
	for i := 1; i <= n; i++ {
		nd := &nsNode{name: fmt.Sprintf("n%d", i), ns: spaces[i], sock: filepath.Join(sockDir, fmt.Sprintf("n%d.sock", i))}
		nd.id = writeNodeKey(t, filepath.Join(tmp, nd.name, "state"), byte(i))
		names[nd.id.String()] = nd.name
		nodes[i] = nd
	}
	for i := 1; i <= n; i++ {
		nodes[i].start(t, bin, tmp, ifaces[i])
	}
	ids := make([]ssr.NodeID, 0, n)
	for _, nd := range nodes[1:] {
		ids = append(ids, nd.id)
	}
	slices.Sort(ids)
	ringOK := func() (bool, string) {
		for _, nd := range nodes[1:] {
			st, err := nd.status(bin)
			if err != nil {
				return false, err.Error()
			}
			want := ids[(slices.Index(ids, nd.id)+1)%n].String()
			if len(st.Successors) == 0 || st.Successors[0].ID != want {
				return false, fmt.Sprintf("%s: successors %v, want %s first", nd.name, succNames(st, names), names[want])
			}
		}
		return true, ""
	}
	waitFor(t, 60*time.Second, "the ring to form", ringOK)
	index := func(id string) int {
		return slices.IndexFunc(nodes, func(nd *nsNode) bool { return nd != nil && nd.id.String() == id })
	}
	n1, n3 := nodes[1], nodes[3]
	var worst time.Duration
	for run := range 20 {
		out, err := exec.Command(bin, "ping", "--control", n1.sock, "--count", "1", n3.id.Addr().String()).CombinedOutput()
		if err != nil {
			t.Fatalf("run %d: ping n1→n3 before the cut: %v\n%s", run, err, out)
		}
		route := parseRoute(t, string(out))
		// The first link of the route: n1–n2 or n1–n5.
		peer := index(route[1])
		down, other := 1, peer
		if run%2 == 1 {
			down, other = peer, 1
		}
		gap, frames := cutDuringStream(t, bin, n1, n3, spaces, ifaces, func() {
			spaces[down].SetLink(t, ifname(other), false)
		})
		worst = max(worst, gap)
		t.Logf("run %d: route %s, n%d set its end of n%d–n%d down: replies stopped for %v; busiest veth end sent %.0f frames/s during the cut",
			run, routeNames(route, names), down, down, other, gap.Round(time.Millisecond), frames)
		// The goal is ≤ 1 s (carrier loss is seen in tens of ms; the log
		// line above reports each run). The assertion allows for a CPU
		// starved by a parallel build: 2 s still fails the old behaviour,
		// which waited 3.5 s for the neighbour timeout.
		if gap > 2*time.Second {
			t.Errorf("run %d: no reply n1→n3 for %v after the cut of n%d–n%d", run, gap, down, other)
		}
		if frames > 500 {
			t.Errorf("run %d: a veth sent %.0f frames/s during the cut: a storm", run, frames)
		}
		spaces[down].SetLink(t, ifname(other), true)
		spaces[down].LinkLocal(t, ifname(other))
		waitFor(t, 20*time.Second, "the healed link's ends to be neighbours again", func() (bool, string) {
			for _, p := range [][2]int{{down, other}, {other, down}} {
				st, err := nodes[p[0]].status(bin)
				if err != nil {
					return false, err.Error()
				}
				if !slices.ContainsFunc(st.Neighbours, func(nb ssr.NeighbourStatus) bool { return nb.ID == nodes[p[1]].id.String() }) {
					return false, fmt.Sprintf("n%d neighbours: %+v", p[0], st.Neighbours)
				}
			}
			return true, ""
		})
		waitFor(t, 20*time.Second, "the ring after healing", ringOK)
	}
	t.Logf("20 cuts: longest pause of n1→n3 echo replies %v", worst.Round(time.Millisecond))
}

// cutDuringStream pings from→to every 20 ms, cuts after 1 s and goes on
// for 3 s. It returns the longest time without a reply from the cut on,
// and the highest frame rate any veth end sent during those 3 s.
func cutDuringStream(t *testing.T, bin string, from, to *nsNode, spaces []*netns.NS, ifaces [][]string, cut func()) (time.Duration, float64) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "ping", "--control", from.sock, "--count", "0", "--interval", "20ms", "--timeout", "200ms", to.id.Addr().String())
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var (
		mu      sync.Mutex
		replies []time.Time
		wg      sync.WaitGroup
	)
	wg.Go(func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "reply from ") {
				mu.Lock()
				replies = append(replies, time.Now())
				mu.Unlock()
			}
		}
	})
	time.Sleep(time.Second) // the stream runs before the cut
	before := txPackets(t, spaces, ifaces)
	cutAt := time.Now()
	cut()
	time.Sleep(3 * time.Second) // the stream runs on after the cut
	end := time.Now()
	after := txPackets(t, spaces, ifaces)
	elapsed := time.Since(cutAt).Seconds()
	cancel()
	wg.Wait()
	cmd.Wait()
	var busiest float64
	for k, b := range before {
		busiest = max(busiest, float64(after[k]-b)/elapsed)
	}
	mu.Lock()
	defer mu.Unlock()
	last, gap := cutAt, time.Duration(0)
	for _, at := range replies {
		if at.Before(cutAt) {
			continue
		}
		gap = max(gap, at.Sub(last))
		last = at
	}
	return max(gap, end.Sub(last)), busiest
}

// txPackets reads the transmitted-packet counter of every veth end.
func txPackets(t *testing.T, spaces []*netns.NS, ifaces [][]string) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	for i := 1; i < len(spaces); i++ {
		for _, ifn := range ifaces[i] {
			s, err := spaces[i].Try("cat", "/sys/class/net/"+ifn+"/statistics/tx_packets")
			if err != nil {
				t.Fatalf("tx_packets of %s in %s: %v\n%s", ifn, spaces[i].Name, err, s)
			}
			v, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
			if err != nil {
				t.Fatalf("tx_packets of %s: %q", ifn, s)
			}
			out[fmt.Sprintf("n%d/%s", i, ifn)] = v
		}
	}
	return out
}
