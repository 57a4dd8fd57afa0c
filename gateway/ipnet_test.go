package gateway

import (
	"errors"
	"strings"
	"testing"

	"github.com/sipmesh/sipmesh/memnet"
)

// TestIPNetworkNeedsKernel: ip-network on is refused on an emulated
// network, which has no TUN or routes to give, with the key named; off,
// the node has no ip_network status. (The IP network itself is tested on
// the kernel's network in cmd/sipmesh's TestIPNetwork.)
func TestIPNetworkNeedsKernel(t *testing.T) {
	h := memnet.New(memnet.Config{}).AddHost("a")
	h.AddInterface("m0", 1500)
	o := DefaultOptions()
	o.StateDir, o.MeshInterfaces, o.Control = t.TempDir(), []string{"m0"}, ""
	o.IPNetwork = true
	_, err := NewNode(o, h, nil)
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Field != "ip-network" || !strings.Contains(err.Error(), "kernel") {
		t.Fatalf("NewNode with ip-network on memnet: %v, want a ConfigError for ip-network", err)
	}
	o.IPNetwork = false
	n, err := NewNode(o, h, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st := n.ipStatus(); st != nil {
		t.Fatalf("ip network status %+v with ip-network off", st)
	}
}
