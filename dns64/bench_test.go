//go:build linux

package dns64

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/sipmesh/sipmesh/netx"
)

// BenchmarkMeshQueries measures .mesh queries per second answered over
// loopback UDP by one Server and, in the same run with the same client and
// query count, by unbound (Debian's) serving the same names from a static
// local zone. Metrics: sipmesh_qps, unbound_qps and their ratio.
func BenchmarkMeshQueries(b *testing.B) {
	requireTools(b, map[string]string{"unbound": "unbound", "unbound-checkconf": "unbound"})
	lo := netip.MustParseAddr("127.0.0.1")

	s := startServer(b, Config{
		Network: netx.Kernel{}, Port: -1, Listen: []Listen{{Addr: lo}},
		Zone:   StaticZone{"node1.mesh": {netip.MustParseAddr("fd00::1")}},
		Logger: testLogger(b),
		Rate:   1e12, Burst: 1 << 30,
	}, make(chan error, 1))
	ours := s.Addrs()[0]

	// Same names for unbound; as many threads as the Go server may use
	// cores, so neither side is held to one core.
	port := freePort(b)
	theirs := netip.AddrPortFrom(lo, port)
	conf := unboundConf(b.TempDir(), "127.0.0.1", int(port), []string{
		`local-zone: "mesh." static`,
		`local-data: "mesh. 60 IN SOA sipserver.mesh. hostmaster.mesh. 1 3600 600 86400 30"`,
		`local-data: "sipserver.mesh. 60 IN A 127.0.0.1"`,
		`local-data: "node1.mesh. 60 IN AAAA fd00::1"`,
	})
	conf = fmt.Sprintf("%s\nserver:\n\tnum-threads: %d\n\tso-reuseport: yes\n\tratelimit: 0\n\tip-ratelimit: 0\n",
		conf, runtime.GOMAXPROCS(0))
	startUnbound(b, nil, netx.Kernel{}, conf, theirs)

	queries := [][]byte{packQuery(b, "sipserver.mesh.", dns.TypeA), packQuery(b, "node1.mesh.", dns.TypeAAAA)}
	// Warm both up (and check they answer the same names).
	for _, srv := range []netip.AddrPort{ours, theirs} {
		if _, err := load(srv, queries, 200, 2); err != nil {
			b.Fatalf("%v: %v", srv, err)
		}
	}
	// Alternate the two servers in rounds, so load from elsewhere on the
	// machine falls on both alike.
	const clients, rounds = 4, 10
	var dOurs, dTheirs time.Duration
	b.ResetTimer()
	for i := range rounds {
		n := b.N/rounds + btoi(i < b.N%rounds)
		if n == 0 {
			continue
		}
		d, err := load(ours, queries, n, clients)
		if err != nil {
			b.Fatalf("sipmesh: %v", err)
		}
		dOurs += d
		d, err = load(theirs, queries, n, clients)
		if err != nil {
			b.Fatalf("unbound: %v", err)
		}
		dTheirs += d
	}
	b.StopTimer()
	qOurs := float64(b.N) / dOurs.Seconds()
	qTheirs := float64(b.N) / dTheirs.Seconds()
	b.ReportMetric(qOurs, "sipmesh_qps")
	b.ReportMetric(qTheirs, "unbound_qps")
	b.ReportMetric(qOurs/qTheirs, "sipmesh/unbound")
}

func packQuery(b testing.TB, name string, qtype uint16) []byte {
	m := question(name, qtype)
	m.RecursionDesired = false
	p, err := m.Pack()
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// freePort returns a UDP port on 127.0.0.1 that was free a moment ago.
func freePort(b testing.TB) uint16 {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	return uint16(c.LocalAddr().(*net.UDPAddr).Port)
}

// load sends n queries to server from `clients` sockets, each waiting for
// its answer before the next (closed loop), and returns the time taken. An
// answer must carry the query's ID, NOERROR and one answer record; a lost
// one (none expected on loopback) is an error.
func load(server netip.AddrPort, queries [][]byte, n, clients int) (time.Duration, error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	start := time.Now()
	for c := range clients {
		wg.Go(func() {
			conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(server))
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			bufs := make([][]byte, len(queries))
			for i, q := range queries {
				bufs[i] = append([]byte(nil), q...)
			}
			reply := make([]byte, 1500)
			for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
				q := bufs[int(i)%len(bufs)]
				id := uint16(i) ^ uint16(c<<12)
				binary.BigEndian.PutUint16(q, id)
				conn.SetDeadline(time.Now().Add(2 * time.Second))
				if _, err := conn.Write(q); err != nil {
					errs <- err
					return
				}
				k, err := conn.Read(reply)
				if err != nil {
					errs <- fmt.Errorf("query %d: %w", i, err)
					return
				}
				if k < 12 || binary.BigEndian.Uint16(reply) != id || reply[3]&0xf != 0 || binary.BigEndian.Uint16(reply[6:]) != 1 {
					errs <- fmt.Errorf("query %d: bad answer % x", i, reply[:min(k, 12)])
					return
				}
			}
		})
	}
	wg.Wait()
	d := time.Since(start)
	select {
	case err := <-errs:
		return d, err
	default:
		return d, nil
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
