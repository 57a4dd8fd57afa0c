//go:build unix

package nat64

import (
	"syscall"
	"time"
)

// cpuTime is the process's user+system CPU time. On a shared machine
// wall-clock ns/op includes time the benchmark waited for a CPU; CPU time
// per packet does not.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
