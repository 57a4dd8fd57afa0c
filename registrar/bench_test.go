package registrar

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sipmesh/sipmesh/internal/kamailio"
	"github.com/sipmesh/sipmesh/netx"
)

// Benchmark parameters: both registrars get the same client, the same
// users and the same number of registrations.
const (
	benchUsers  = 1000
	benchWindow = 64    // registrations in flight
	benchRegs   = 20000 // per registrar per iteration (40 000 transactions)
	// benchRounds interleaves the two registrars in rounds of
	// benchRegs/benchRounds, alternating which goes first, so that load
	// from other processes on the machine falls on both alike.
	benchRounds = 10
)

// kamailioCfg is the reference configuration: the repository's
// testdata/kamailio (see the comments in it).
func kamailioCfg(tb testing.TB) string {
	const p = "../testdata/kamailio/kamailio.cfg"
	if _, err := os.Stat(p); err != nil {
		tb.Fatalf("Kamailio reference config: %v", err)
	}
	return p
}

// newBenchRegistrar returns a registrar with accounts u0000..u0999
// (password pwNNNN), rate limit off (the load comes from one source, and
// Kamailio's reference config has no pike limit either).
func newBenchRegistrar(tb testing.TB) *Registrar {
	pub, priv, _ := ed25519.GenerateKey(nil)
	accts := NewMemAccounts(pub)
	for i := range benchUsers {
		a, err := NewAccount(fmt.Sprintf("u%04d", i), fmt.Sprintf("pw%04d", i), "")
		if err != nil {
			tb.Fatal(err)
		}
		rec, _ := SignAccount(priv, a, false)
		if err := accts.PutRecord(context.Background(), rec); err != nil {
			tb.Fatal(err)
		}
	}
	r, err := NewRegistrar(RegistrarConfig{Locations: NewMemLocation(), Accounts: accts, Rate: -1,
		Addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, MaxTxCache: 1 << 16, Workers: benchWorkers()})
	if err != nil {
		tb.Fatal(err)
	}
	return r
}

// benchWorkers lets a run try other worker counts
// (SIPMESH_BENCH_WORKERS=n); 0 is the registrar's default.
func benchWorkers() int {
	n, _ := strconv.Atoi(os.Getenv("SIPMESH_BENCH_WORKERS"))
	return n
}

// helperEnv makes the test binary a registrar process (see TestMain).
const helperEnv = "SIPMESH_BENCH_REGISTRAR"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		os.Exit(runHelperRegistrar())
	}
	os.Exit(m.Run())
}

// runHelperRegistrar serves the benchmark registrar on kernel UDP
// 127.0.0.1 (a free port, printed on stdout) until stdin closes or
// SIGTERM: the registrar runs in its own process, as Kamailio does, so
// neither shares the load client's process.
func runHelperRegistrar() int {
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer cancel()
	go func() {
		io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	r := newBenchRegistrar(&testing.B{})
	pc, err := netx.Kernel{}.ListenPacket(ctx, "udp4", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if path := os.Getenv("SIPMESH_BENCH_CPUPROFILE"); path != "" {
		// Profile the registrar process alone: go tool pprof PATH.PID.
		f, err := os.Create(fmt.Sprintf("%s.%d", path, os.Getpid()))
		if err == nil {
			pprof.StartCPUProfile(f)
			defer func() {
				pprof.StopCPUProfile()
				f.Close()
			}()
		}
	}
	fmt.Println(pc.LocalAddr().String())
	if err := r.ServeUDP(ctx, pc); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// startRegistrarProcess runs the registrar in a child process (this test
// binary in helper mode) and stops it by PID when the benchmark ends.
func startRegistrarProcess(tb testing.TB) netip.AddrPort {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		stdin.Close()
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		tb.Fatalf("registrar process: %v", err)
	}
	addr, err := netip.ParseAddrPort(strings.TrimSpace(line))
	if err != nil {
		tb.Fatalf("registrar process printed %q", line)
	}
	return addr
}

// BenchmarkRegisterVsKamailio measures REGISTER with digest (401, then
// MD5 credentials, then 200: two transactions per registration) handled
// by one sipmesh registrar and by Kamailio from Debian, side by side in
// the same run, same load client, same users and count. Each registrar
// runs in its own process (Kamailio with its reference config's 4
// workers, sipmesh as this test binary in helper mode with GOMAXPROCS =
// cores), the client in this one. Metrics: each
// side's registrations/s and transactions/s, and their ratio
// (sipmesh/kamailio; above 1 means sipmesh is faster).
func BenchmarkRegisterVsKamailio(b *testing.B) {
	kam := kamailio.Start(b, kamailioCfg(b), "WITH_AUTH")
	own := startRegistrarProcess(b)
	ctx := context.Background()
	// Kamailio's realm is the From domain, so both are addressed by IP.
	lc := &loadClient{users: benchUsers, window: benchWindow, domain: "127.0.0.1", rto: 500 * time.Millisecond}
	// Warm both up: every user registered once, caches filled.
	for _, dst := range []netip.AddrPort{own, kam} {
		if _, err := lc.run(ctx, dst, benchUsers); err != nil {
			b.Fatal(err)
		}
	}
	var ownT, kamT time.Duration
	var ownRes, kamRes loadResult
	type side struct {
		dst netip.AddrPort
		sum *loadResult
		t   *time.Duration
	}
	sides := []side{{own, &ownRes, &ownT}, {kam, &kamRes, &kamT}}
	for b.Loop() {
		for round := range benchRounds {
			for i := range sides {
				s := sides[(i+round)%2]
				res, err := lc.run(ctx, s.dst, benchRegs/benchRounds)
				if err != nil {
					b.Fatal(err)
				}
				s.sum.ok += res.ok
				s.sum.failed += res.failed
				s.sum.retrans += res.retrans
				*s.t += res.elapsed
			}
		}
	}
	for name, res := range map[string]loadResult{"sipmesh": ownRes, "kamailio": kamRes} {
		if res.failed > 0 || res.ok == 0 {
			b.Errorf("%s: %d registrations failed, %d ok, %d retransmissions", name, res.failed, res.ok, res.retrans)
		}
	}
	ownRate := float64(ownRes.ok) / ownT.Seconds()
	kamRate := float64(kamRes.ok) / kamT.Seconds()
	b.ReportMetric(ownRate, "sipmesh-reg/s")
	b.ReportMetric(kamRate, "kamailio-reg/s")
	b.ReportMetric(2*ownRate, "sipmesh-tx/s")
	b.ReportMetric(2*kamRate, "kamailio-tx/s")
	b.ReportMetric(ownRate/kamRate, "ratio")
	b.ReportMetric(float64(ownRes.retrans+kamRes.retrans), "retransmissions")
	b.Logf("sipmesh %d ok in %v (%d retrans), kamailio %d ok in %v (%d retrans)",
		ownRes.ok, ownT, ownRes.retrans, kamRes.ok, kamT, kamRes.retrans)
}
