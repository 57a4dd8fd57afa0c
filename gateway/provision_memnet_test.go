package gateway

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
	"github.com/sipmesh/sipmesh/memnet"
)

// TestPhoneFileThroughNode runs a whole node on the in-memory network with
// a phone LAN: a phone bound with AddPhone gets a lease whose option 66
// is the node's provisioning URL, fetches its file there from its leased
// address through the node's web listener, and a second host of the LAN
// asking for that MAC gets the same 404 as for a MAC nobody has.
func TestPhoneFileThroughNode(t *testing.T) {
	leakcheck.Check(t)
	nw := memnet.New(memnet.Config{})
	h := nw.AddHost("a")
	h.AddInterface("m0", 1500)
	lanSeg := nw.NewSegment("lan", memnet.LinkConfig{})
	lanSeg.Attach(h.AddInterface("lan0", 1500, netip.MustParsePrefix("10.64.7.1/24")))
	o := DefaultOptions()
	o.Name, o.StateDir, o.MeshInterfaces, o.Control = "a", t.TempDir(), []string{"m0"}, ""
	o.AdminKey = filepath.Join(t.TempDir(), "admin.key")
	o.LANInterface, o.LANAddress = "lan0", netip.MustParsePrefix("10.64.7.1/24")
	o.routerParams = fastParams
	n, err := NewNode(o, h, nil)
	if err != nil {
		t.Fatal(err)
	}
	n.dnsPort = 5353
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := n.Run(ctx); err != nil {
			t.Errorf("node: %v", err)
		}
	})
	defer func() {
		cancel()
		wg.Wait()
	}()
	waitCond(t, 10*time.Second, "the phone LAN", func() bool { return n.provisioner() != nil })

	mac := net.HardwareAddr{0x00, 0x15, 0x65, 0xa1, 0xb2, 0xc3}
	if _, err := n.AddPhone(ctx, AddPhoneRequest{MAC: mac.String(), Ext: "201"}); err != nil {
		t.Fatal(err)
	}
	phone, ip, opt66 := leaseOn(t, nw, lanSeg, "phone", mac)
	const url = "http://10.64.7.1:8080/provision/"
	if opt66 != url {
		t.Fatalf("option 66 = %q, want %q", opt66, url)
	}
	code, body := fetchFrom(t, phone, url+"001565a1b2c3.cfg")
	if code != http.StatusOK || !strings.Contains(body, "account.1.user_name = 201\n") || !strings.Contains(body, "account.1.password = ") {
		t.Fatalf("the phone's own file from %v: %d\n%s", ip, code, body)
	}
	other, _, _ := leaseOn(t, nw, lanSeg, "other", net.HardwareAddr{0x02, 0, 0, 0, 0, 9})
	nobodyCode, nobody := fetchFrom(t, other, url+"02aa00000000.cfg")
	if code, body := fetchFrom(t, other, url+"001565a1b2c3.cfg"); code != nobodyCode || body != nobody || code != http.StatusNotFound {
		t.Fatalf("the phone's file from another host: %d %q, want %d %q", code, body, nobodyCode, nobody)
	}
}

// leaseOn plugs a host into seg and runs DISCOVER, REQUEST as mac; it
// returns the host with the leased address on its interface, the address
// and option 66 of the ACK.
func leaseOn(t *testing.T, nw *memnet.Network, seg *memnet.Link, name string, mac net.HardwareAddr) (*memnet.Host, netip.Addr, string) {
	t.Helper()
	h := nw.AddHost(name)
	ifc := h.AddInterface("eth0", 1500)
	seg.Attach(ifc)
	pc, err := h.ListenPacket(context.Background(), "udp4", "0.0.0.0:68")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	ask := dhcpv4.WithRequestedOptions(dhcpv4.OptionSubnetMask, dhcpv4.OptionTFTPServerName)
	exchange := func(m *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
		bcast := &net.UDPAddr{IP: net.IPv4bcast, Port: 67}
		buf := make([]byte, 1500)
		// Retransmitted as a client does (RFC 2131 §4.1) until the answer
		// comes; the bound is a guard, not a measurement.
		for range 50 {
			if _, err := pc.WriteTo(m.ToBytes(), bcast); err != nil {
				t.Fatal(err)
			}
			pc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			for {
				k, _, err := pc.ReadFrom(buf)
				if err != nil {
					break
				}
				if r, err := dhcpv4.FromBytes(buf[:k]); err == nil && r.TransactionID == m.TransactionID && r.OpCode == dhcpv4.OpcodeBootReply {
					return r
				}
			}
		}
		t.Fatalf("%s: no answer to %v", name, m.MessageType())
		return nil
	}
	d, err := dhcpv4.NewDiscovery(mac, ask)
	if err != nil {
		t.Fatal(err)
	}
	offer := exchange(d)
	req, err := dhcpv4.NewRequestFromOffer(offer, ask)
	if err != nil {
		t.Fatal(err)
	}
	ack := exchange(req)
	if ack.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("%s: %v, want ACK", name, ack.MessageType())
	}
	ip, _ := netip.AddrFromSlice(ack.YourIPAddr.To4())
	h.AddAddress(ifc, netip.PrefixFrom(ip, 24))
	return h, ip, string(ack.Options.Get(dhcpv4.OptionTFTPServerName))
}

// fetchFrom GETs url over the in-memory network from h.
func fetchFrom(t *testing.T, h *memnet.Host, url string) (int, string) {
	t.Helper()
	tr := &http.Transport{DisableKeepAlives: true, DialContext: h.Dial}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}
