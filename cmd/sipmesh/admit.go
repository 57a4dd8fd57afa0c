package main

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/sipmesh/sipmesh/gateway"
	"github.com/sipmesh/sipmesh/ssr"
)

func init() {
	register(command{name: "admit", summary: "sign a node's admission to a closed mesh with the administrator key", run: runAdmit})
}

func runAdmit(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("admit", "[flags] PUBLIC-KEY", `Admit signs a node's admission to a mesh with mesh-admission closed, using
the mesh administrator key. PUBLIC-KEY is the node's public key in hex, as
`+"`sipmesh status`"+` on that node shows it. The admission (hex) is printed; put
it in the file `+gateway.AdmissionFile+` in that node's state directory. A node
holding the administrator key admits itself.`, stderr)
	keyPath := fs.String("admin-key", "/etc/sipmesh/admin.key", "the mesh administrator key `FILE`")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageErrorf("want exactly one PUBLIC-KEY, got %d arguments", fs.NArg())
	}
	pub, err := hex.DecodeString(strings.TrimSpace(fs.Arg(0)))
	if err != nil || len(pub) != ed25519.PublicKeySize {
		return usageErrorf("%q is not a node public key (%d bytes in hex)", fs.Arg(0), ed25519.PublicKeySize)
	}
	// Never create the administrator key here: a typo in the path would
	// sign with a new key that no node trusts.
	if _, err := os.Stat(*keyPath); err != nil {
		return fmt.Errorf("admit: administrator key: %w", err)
	}
	admin, _, err := gateway.LoadOrCreateAdminKey(*keyPath)
	if err != nil {
		return fmt.Errorf("admit: %w", err)
	}
	fmt.Fprintf(stdout, "%x\n", ssr.Admit(admin, ed25519.PublicKey(pub)))
	fmt.Fprintf(stderr, "node %s admitted; write the line above to %s in its state directory\n",
		ssr.IDFromPublicKey(ed25519.PublicKey(pub)), gateway.AdmissionFile)
	return nil
}
