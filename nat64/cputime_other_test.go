//go:build !unix

package nat64

import "time"

func cpuTime() time.Duration { return 0 }
