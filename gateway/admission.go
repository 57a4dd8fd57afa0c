package gateway

import (
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/sipmesh/sipmesh/ssr"
)

// AdmissionFile is the name, inside the state directory, of the node's
// admission to a closed mesh: the mesh administrator's signature of the
// node's public key, in hex, as `sipmesh admit` prints it.
const AdmissionFile = "node.admission"

// loadAdmission returns the admission the node presents in its link
// handshakes (ssr.AuthConfig.Admission). A node holding the administrator
// key admits itself; others read AdmissionFile. A file that is not an
// admission of this key by the administrator (adminPub, when known) is an
// error: a node that would be refused by every neighbour should say so
// when it starts. No file: nil (an open mesh needs none).
func loadAdmission(stateDir string, admin ed25519.PrivateKey, adminPub, pub ed25519.PublicKey) ([]byte, error) {
	if admin != nil {
		return ssr.Admit(admin, pub), nil
	}
	path := filepath.Join(stateDir, AdmissionFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("admission: %w", err)
	}
	sig, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(sig) != ed25519.SignatureSize {
		return nil, fmt.Errorf("admission %s: want %d bytes in hex, as `sipmesh admit` prints", path, ed25519.SignatureSize)
	}
	if adminPub != nil && !ssr.Admitted(adminPub, pub, sig) {
		return nil, fmt.Errorf("admission %s: not the administrator's signature of this node's key %x", path, []byte(pub))
	}
	return sig, nil
}
