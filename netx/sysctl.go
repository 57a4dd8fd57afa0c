package netx

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"sync"
)

// Sysctls shared by several parts of a node: IPv4 and IPv6 forwarding are
// wanted by the IP network (meship), the gateway's NAT64 and the CLAT
// (nat64/tun64), which start and stop independently. If each remembered
// the value it found and put it back on stop, one stopping first (a NAT64
// that failed, a CLAT restarted) would switch forwarding off under the
// others. HoldSysctl gives each file one owner per network namespace: the
// first holder records the value before, the last release puts it back.

type sysctlKey struct{ ns, file string }

type sysctlHold struct {
	value   string // the value held
	old     string // the value before the first holder
	changed bool   // the first holder wrote value (old differs)
	holders int
}

var (
	sysctlMu    sync.Mutex
	sysctlHolds = map[sysctlKey]*sysctlHold{}
)

// HoldSysctl sets the sysctl file (a /proc/sys path) to value in the
// calling thread's network namespace and holds it there until release is
// called by every holder; then the value from before the first hold is
// written back, if the first hold changed it. Holding a file another
// holder holds at a different value is an error.
func HoldSysctl(file, value string) (release func() error, err error) {
	ns, _ := os.Readlink("/proc/thread-self/ns/net") // namespaces differ per thread in tests
	k := sysctlKey{ns, file}
	sysctlMu.Lock()
	defer sysctlMu.Unlock()
	h := sysctlHolds[k]
	if h != nil && h.value != value {
		return nil, fmt.Errorf("netx: %s is held at %s, not %s", file, h.value, value)
	}
	if h == nil {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("netx: %w", err)
		}
		h = &sysctlHold{value: value, old: strings.TrimSpace(string(b))}
		if h.old != value {
			if err := os.WriteFile(file, []byte(value), 0o644); err != nil {
				return nil, fmt.Errorf("netx: %s = %s: %w", file, value, err)
			}
			h.changed = true
		}
		sysctlHolds[k] = h
	}
	h.holders++
	var once sync.Once
	return func() (err error) {
		once.Do(func() {
			sysctlMu.Lock()
			defer sysctlMu.Unlock()
			if h.holders--; h.holders > 0 {
				return
			}
			delete(sysctlHolds, k)
			if h.changed {
				// An interface's file may be gone with the interface.
				if werr := os.WriteFile(file, []byte(h.old), 0o644); werr != nil && !errors.Is(werr, fs.ErrNotExist) {
					err = fmt.Errorf("netx: putting %s back to %s: %w", file, h.old, werr)
				}
			}
		})
		return err
	}, nil
}
