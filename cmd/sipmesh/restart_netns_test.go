//go:build linux

package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/gateway"
	"github.com/sipmesh/sipmesh/internal/netns"
)

// TestRestartKeepsSubscribers: three `sipmesh node` processes in a line;
// subscriber 201 is created and a real SIP client (sipsak) registers it at
// n1. Then n1 restarts alone, and then every node is killed at once (a
// power cut: SIGKILL, no clean stop) and started again on its state
// directory. The account and the binding must be there again once the
// ring re-formed — read back before the phone registers anew — and the
// phone's password must still work; the forwarding set for 201 and an
// alias are read back too.
func TestRestartKeepsSubscribers(t *testing.T) {
	netns.RequireRoot(t)
	sipsak, err := exec.LookPath("sipsak")
	if err != nil {
		t.Fatalf("sipsak not found (Debian package sipsak; .ci/run installs it): %v", err)
	}
	m := newLineMesh(t, "ps", 3, 40, func(i int) string {
		if i == 0 {
			// Debian's sipsak knows only MD5 digests.
			return "lan-interface lan0\nlan-address 10.64.7.1/24\ndhcp off\ndigest-algorithms MD5\n"
		}
		return ""
	})
	phone := m.plugPhone(0, "psp")
	phone.Run(t, "ip", "addr", "add", "10.64.7.2/24", "dev", "eth0")
	m.startAll()
	m.waitRing()
	m.addUser(1, "201", "alice-secret")

	register := func(password string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := phone.Command(ctx, sipsak, "-U", "-vvv", "-i", "-H", "10.64.7.2", "-l", "5062",
			"-C", "sip:201@10.64.7.2:5062", "-x", "3600", "-u", "201", "-a", password, "-s", "sip:201@10.64.7.1").CombinedOutput()
		return string(out), err
	}
	waitFor(t, 20*time.Second, "sipsak to register 201 at n1", func() (bool, string) {
		out, err := register("alice-secret")
		return err == nil && strings.Contains(out, "SIP/2.0 200"), out
	})
	m.waitBinding(2, "201", 0)
	// Forwarding settings and an alias: DHT records like the account.
	for _, args := range [][]string{
		{"forward", "set", "--control", m.nodes[1].sock, "--busy", "202", "--unreachable", "203", "201"},
		{"alias", "set", "--control", m.nodes[1].sock, "alice", "201"},
	} {
		if out, err := exec.Command(m.bin, args...).CombinedOutput(); err != nil {
			t.Fatalf("sipmesh %v: %v\n%s", args, err, out)
		}
	}

	// One node restarted (cleanly): it loads what it held.
	n1 := m.nodes[0]
	n1.stop(t)
	n1.start(t, m.bin, m.tmp, m.ifaces[0])
	waitFor(t, 20*time.Second, "n1 to load its records", func() (bool, string) {
		st, err := n1.status(m.bin)
		if err != nil || st.DHT == nil {
			return false, "no status"
		}
		return st.DHT.DiskLoaded > 0, "nothing loaded"
	})
	m.waitRing()
	m.waitBinding(0, "201", 0)

	// Every node's records on disk (nothing pending), then the power cut.
	waitFor(t, 20*time.Second, "every node to write its records", func() (bool, string) {
		for _, nd := range m.nodes {
			st, err := nd.status(m.bin)
			if err != nil || st.DHT == nil {
				return false, nd.name + ": no status"
			}
			if st.DHT.Records == 0 || st.DHT.DiskPending != 0 {
				return false, nd.name + ": records not all on disk yet"
			}
		}
		return true, ""
	})
	for _, nd := range m.nodes {
		nd.cmd.Process.Kill()
		nd.cmd.Wait()
	}
	m.startAll()
	m.waitRing()

	// Read back before the phone registers again.
	m.waitBinding(2, "201", 0)
	out, err := exec.Command(m.bin, "user", "list", "--control", m.nodes[2].sock).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "201") {
		t.Fatalf("user list on n3 after the power cut: %v\n%s", err, out)
	}
	for _, nd := range m.nodes {
		st, err := nd.status(m.bin)
		if err != nil || st.DHT == nil || st.DHT.DiskRefused != 0 || st.DHT.DiskDamaged != 0 {
			b, _ := json.Marshal(st.DHT)
			t.Fatalf("%s after the power cut: %v %s", nd.name, err, b)
		}
		log, _ := os.ReadFile(nd.log)
		if !strings.Contains(string(log), "records loaded from disk") {
			t.Errorf("%s's log does not say it loaded its records", nd.name)
		}
	}
	for args, want := range map[string]string{
		"forward show 201": "201: busy → 202, unreachable → 203",
		"alias show alice": "alice → 201",
	} {
		a := strings.Fields(args)
		out, err := exec.Command(m.bin, append(a[:2:2], "--control", m.nodes[2].sock, a[2])...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), want) {
			t.Fatalf("sipmesh %s on n3 after the power cut: %v\n%s (want %q)", args, err, out, want)
		}
	}
	if out, err := register("alice-secret"); err != nil || !strings.Contains(out, "SIP/2.0 200") {
		t.Fatalf("201 cannot register after the power cut (err %v):\n%s", err, lastLines(out, 12))
	}
	if out, err := register("wrong-password"); err == nil || !strings.Contains(out, "SIP/2.0 403") {
		t.Fatalf("a wrong password was not refused after the power cut (err %v):\n%s", err, lastLines(out, 12))
	}
	var bs []gateway.BindingInfo
	o, err := exec.Command(m.bin, "lookup", "--json", "--control", m.nodes[2].sock, "201").CombinedOutput()
	if err != nil || json.Unmarshal(o, &bs) != nil || len(bs) != 1 || bs[0].Contact != "sip:201@10.64.7.2:5062" {
		t.Fatalf("lookup 201 on n3: %v\n%s", err, o)
	}
}
