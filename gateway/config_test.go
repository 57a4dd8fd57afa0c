package gateway

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/proxy"
)

func TestParseConfig(t *testing.T) {
	full := `# a node
name node1
state-dir /var/lib/sipmesh        # node.key lives here
mesh-interface veth0
mesh-interface wlan0 wlan1
mesh-port 7448
mesh-encryption on
control /run/sipmesh/node1.sock
log-level debug
admin-key /etc/sipmesh/admin.key
`
	want := DefaultOptions()
	want.Name, want.StateDir = "node1", "/var/lib/sipmesh"
	want.MeshInterfaces = []string{"veth0", "wlan0", "wlan1"}
	want.MeshEncryption = true
	want.MeshPort, want.Control, want.LogLevel = 7448, "/run/sipmesh/node1.sock", slog.LevelDebug
	want.AdminKey = "/etc/sipmesh/admin.key"
	got, err := ParseConfig(strings.NewReader(full))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ParseConfig:\n got %+v\nwant %+v", got, want)
	}

	min, err := ParseConfig(strings.NewReader("mesh-interface eth1\n"))
	if err != nil {
		t.Fatal(err)
	}
	def := DefaultOptions()
	def.MeshInterfaces = []string{"eth1"}
	if !reflect.DeepEqual(min, def) {
		t.Errorf("defaults:\n got %+v\nwant %+v", min, def)
	}

	none, err := ParseConfig(strings.NewReader("mesh-interface eth1\ncontrol none\n"))
	if err != nil || none.Control != "" {
		t.Errorf("control none: %q, %v", none.Control, err)
	}
	rg, err := ParseConfig(strings.NewReader("mesh-interface eth1\nring-group 600=201,202\nring-group 601=203\n"))
	if err != nil || !reflect.DeepEqual(rg.RingGroups, map[string][]string{"600": {"201", "202"}, "601": {"203"}}) {
		t.Errorf("ring-group: %v, %v", rg.RingGroups, err)
	}
	hg, err := ParseConfig(strings.NewReader("mesh-interface eth1\nhunt-group 700=201,202/20\nhunt-group 701=203\n"))
	if err != nil || !reflect.DeepEqual(hg.HuntGroups, map[string]proxy.HuntGroup{
		"700": {Members: []string{"201", "202"}, Timeout: 20 * time.Second},
		"701": {Members: []string{"203"}, Timeout: proxy.DefaultHuntTimeout}}) {
		t.Errorf("hunt-group: %v, %v", hg.HuntGroups, err)
	}
	web, err := ParseConfig(strings.NewReader("mesh-interface eth1\nweb-listen 10.64.7.1:80 [fd00::1]:8080\nweb-port 8081\n"))
	if err != nil || len(web.WebListen) != 2 || web.WebListen[1].String() != "[fd00::1]:8080" || web.WebPort != 8081 || web.WebOff {
		t.Errorf("web-listen: %v %v %v, %v", web.WebListen, web.WebPort, web.WebOff, err)
	}
	off, err := ParseConfig(strings.NewReader("mesh-interface eth1\nweb-listen none\n"))
	if err != nil || !off.WebOff {
		t.Errorf("web-listen none: %v, %v", off.WebOff, err)
	}
	lim, err := ParseConfig(strings.NewReader("mesh-interface eth1\nsip-rate off\nsip-burst 50\nsip-max-transactions 256\ndns-rate 2.5\ndns-burst 10\n"))
	if err != nil || lim.SIPRate != -1 || lim.SIPBurst != 50 || lim.SIPMaxTransactions != 256 || lim.DNSRate != 2.5 || lim.DNSBurst != 10 {
		t.Errorf("limits: %v %v %v %v %v, %v", lim.SIPRate, lim.SIPBurst, lim.SIPMaxTransactions, lim.DNSRate, lim.DNSBurst, err)
	}
	gw, err := ParseConfig(strings.NewReader("mesh-interface wlan0\nuplink-interface eth1\nstun-server 203.0.113.3\ndns-upstream 192.0.2.53\n" +
		"sip-domain Voice.Example.ORG.\ndial-prefix 0\ntrunk-registrar sip:sip.provider.example\ntrunk-user 5550100\ntrunk-password-file /etc/sipmesh/trunk.pw\n"))
	if err != nil || !gw.Gateway() || gw.UplinkInterface != "eth1" || gw.STUNServer.String() != "203.0.113.3:3478" || gw.SIPDomain != "voice.example.org" ||
		gw.DialPrefix != "0" || gw.TrunkRegistrar != "sip:sip.provider.example" || gw.TrunkUser != "5550100" || gw.TrunkPasswordFile != "/etc/sipmesh/trunk.pw" {
		t.Errorf("gateway keys: %+v, %v", gw, err)
	}
	pub, err := ParseConfig(strings.NewReader("mesh-interface wlan0\nuplink-interface eth1\npublic-address 198.51.100.7\ndns-upstream 192.0.2.53\n"))
	if err != nil || pub.PublicAddress.String() != "198.51.100.7" || pub.STUNServer.IsValid() {
		t.Errorf("public-address: %v, %v", pub.PublicAddress, err)
	}
	if min.Gateway() {
		t.Error("a node without uplink-interface is a gateway")
	}
	hash, err := ParseConfig(strings.NewReader("mesh-interface eth1\nname a#b\n"))
	if err != nil || hash.Name != "a#b" {
		t.Errorf("# inside a value: %q, %v", hash.Name, err)
	}
}

func TestParseConfigErrors(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"bad port", "mesh-interface a\n\n\nmesh-port abc\n", `config line 4: mesh-port: "abc" is not a port`},
		{"port zero", "mesh-port 0\n", `config line 1: mesh-port: "0" is not a port`},
		{"port too big", "mesh-port 70000\n", `config line 1: mesh-port: "70000" is not a port`},
		{"unknown key", "mesh-interface a\nmesh-iface b\n", `config line 2: unknown key "mesh-iface"`},
		{"missing value", "name\n", `config line 1: name: missing value`},
		{"twice", "name a\nname b\n", `config line 2: name: set twice (first on line 1)`},
		{"two values", "name a b\n", `config line 1: name: want one value, got 2`},
		{"relative state dir", "state-dir var/lib\n", `config line 1: state-dir: "var/lib" is not an absolute path`},
		{"relative control", "control x.sock\n", `config line 1: control: "x.sock" is not an absolute path`},
		{"bad level", "log-level loud\n", `config line 1: log-level: "loud" is not a level`},
		{"relative admin key", "admin-key admin.key\n", `config line 1: admin-key: "admin.key" is not an absolute path`},
		{"long interface", "mesh-interface averyveryverylongname\n", `config line 1: mesh-interface: "averyveryverylongname" is not an interface name`},
		{"duplicate interface", "mesh-interface a\nmesh-interface a\n", `config line 2: mesh-interface: a listed twice`},
		{"no interface", "name a\n", `config: mesh-interface: none given`},
		{"bad ring group", "ring-group 600\n", `config line 1: ring-group: "600": want GROUP=EXT`},
		{"bad hunt timeout", "hunt-group 700=201/0\n", `config line 1: hunt-group: "0": the timeout after / is 1 to 300 seconds`},
		{"group twice", "ring-group 700=201\nhunt-group 700=202\n", `config line 2: hunt-group: group 700 listed twice`},
		{"web on every interface", "web-listen 0.0.0.0:8080\n", `config line 1: web-listen: "0.0.0.0:8080" listens on every interface`},
		{"web on every v6 interface", "web-listen [::]:80\n", `config line 1: web-listen: "[::]:80" listens on every interface`},
		{"web without port", "web-listen 10.64.7.1\n", `config line 1: web-listen: "10.64.7.1" is not an address:port`},
		{"bad mesh-encryption", "mesh-encryption yes\n", `config line 1: mesh-encryption: "yes": want on or off`},
		{"web port zero", "web-port 0\n", `config line 1: web-port: "0" is not a port`},
		{"rate zero", "sip-rate 0\n", `config line 1: sip-rate: "0" is not a rate`},
		{"rate negative", "dns-rate -5\n", `config line 1: dns-rate: "-5" is not a rate`},
		{"burst zero", "sip-burst 0\n", `config line 1: sip-burst: "0" is not a count`},
		{"table not a number", "sip-max-transactions many\n", `config line 1: sip-max-transactions: "many" is not a count`},
		// The gateway role (issue 14).
		{"private public-address", "public-address 192.168.1.2\n", `config line 1: public-address: "192.168.1.2" is not a public IPv4 address`},
		{"v6 public-address", "public-address 2001:db8::1\n", `config line 1: public-address: "2001:db8::1" is not a public IPv4 address`},
		{"bad stun-server", "stun-server stun.example.net\n", `config line 1: stun-server: "stun.example.net" is not an IPv4 address`},
		{"v6 stun-server", "stun-server [2001:db8::1]:3478\n", `config line 1: stun-server: "[2001:db8::1]:3478" is not an IPv4 address`},
		{"mesh sip-domain", "sip-domain x.mesh\n", `config line 1: sip-domain: "x.mesh" is not a public DNS domain`},
		{"one-label sip-domain", "sip-domain localhost\n", `config line 1: sip-domain: "localhost" is not a public DNS domain`},
		{"letters in dial-prefix", "dial-prefix 0a\n", `config line 1: dial-prefix: "0a" is not a dial prefix`},
		{"trunk registrar with user", "trunk-registrar sip:me@provider.example\n", `config line 1: trunk-registrar: "sip:me@provider.example" is not the provider's registrar`},
		{"trunk registrar not sip", "trunk-registrar http://provider.example\n", `config line 1: trunk-registrar: "http://provider.example" is not the provider's registrar`},
		{"trunk user with @", "trunk-user me@example\n", `config line 1: trunk-user: "me@example" is not an account name`},
		{"relative trunk password", "trunk-password-file pw\n", `config line 1: trunk-password-file: "pw" is not an absolute path`},
		{"gateway key without uplink", "mesh-interface a\nsip-domain voice.example.org\n", `config: sip-domain: needs uplink-interface`},
		{"uplink without public address", "mesh-interface a\nuplink-interface eth1\n", `config: uplink-interface: a gateway needs public-address or stun-server`},
		{"gateway without DNS", "mesh-interface a\nuplink-interface eth1\npublic-address 198.51.100.7\n", `config: uplink-interface: a gateway needs dns-upstream`},
		{"uplink is the mesh", "mesh-interface a\nuplink-interface a\npublic-address 198.51.100.7\n", `config: uplink-interface: a is also a mesh or LAN interface`},
		{"trunk half", "mesh-interface a\nuplink-interface eth1\npublic-address 198.51.100.7\ndns-upstream 192.0.2.53\ntrunk-user me\n", `config: trunk-registrar: missing: a trunk needs`},
		{"prefix without trunk", "mesh-interface a\nuplink-interface eth1\npublic-address 198.51.100.7\ndns-upstream 192.0.2.53\ndial-prefix 0\n", `config: dial-prefix: numbers dialled with the prefix go to the trunk`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfig(strings.NewReader(tt.in))
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("ParseConfig(%q) = %v, want an error starting %q", tt.in, err, tt.want)
			}
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Errorf("error %T is not a *ConfigError", err)
			}
		})
	}
}

func TestLoadConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "node.conf")
	if err := os.WriteFile(path, []byte("mesh-interface a\nmesh-port x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := LoadConfig(path)
	if want := path + `: config line 2: mesh-port: "x" is not a port`; err == nil || err.Error() != want {
		t.Errorf("LoadConfig: %v, want %q", err, want)
	}
	if _, err := LoadConfig(path + ".missing"); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("LoadConfig of a missing file: %v", err)
	}
}
