package proxy

import (
	"bytes"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
)

// lockedBuffer is a log sink shared by the service's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestJunkDoesNotFloodLog (issue 11, finding 6): 2,000 unparsable
// datagrams starting with "SIP/2.0 " (which reach sipgo's parser, which
// logs them at error level with their content) and 2,000 requests that
// cannot be forwarded, from 8 LAN addresses, write a bounded log: lines
// rate-limited per source and in total, values truncated.
func TestJunkDoesNotFloodLog(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		var sink lockedBuffer
		m := newMeshRig(t, 1, func(c *SIPServiceConfig) {
			c.Logger = slog.New(slog.NewTextHandler(&sink, nil))
		})
		lan := net.UDPAddrFromAddrPort(netip.AddrPortFrom(m.nodes[0].lanIP, 5060))
		junk := "SIP/2.0 x" + strings.Repeat("\x01junk", 200) + "\r\n\r\n"
		sent := 0
		for i := range 8 {
			pc := m.flooder(1, byte(i+1))
			for range 250 {
				pc.WriteTo([]byte(junk), lan)
				sent += len(junk)
				time.Sleep(10 * time.Millisecond)
			}
		}
		time.Sleep(time.Minute) // the janitor flushes the suppressed counts
		log := sink.String()
		lines := strings.Count(log, "\n")
		t.Logf("%d bytes of junk in 20 s wrote %d log lines, %d bytes", sent, lines, len(log))
		if len(log) > 64*1024 {
			t.Errorf("%d bytes of log for %d bytes of junk", len(log), sent)
		}
		if strings.Contains(log, strings.Repeat("\\x01junk", 60)) {
			t.Error("a junk datagram was logged in full")
		}
	})
}
