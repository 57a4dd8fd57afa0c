//go:build !linux

package netx

import (
	"context"
	"errors"
)

// WatchLinks implements LinkWatcher: link events are only watched on Linux;
// elsewhere routing relies on its poll and timeouts.
func (Kernel) WatchLinks(context.Context, func(LinkEvent)) error {
	return errors.ErrUnsupported
}
