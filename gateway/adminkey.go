package gateway

import "crypto/ed25519"

// LoadOrCreateAdminKey returns the mesh administrator key kept at path
// (PKCS #8 PEM, like the node key), creating it (mode 0600, directory
// 0700) when the file does not exist. The administrator key signs account
// records; copy the file to the nodes from which accounts are managed, and
// keep it nowhere else: whoever holds it can add subscribers.
func LoadOrCreateAdminKey(path string) (key ed25519.PrivateKey, created bool, err error) {
	return loadOrCreateKey(path, "admin key")
}
