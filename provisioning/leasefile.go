package provisioning

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// leaseFileVersion is the format version written to the lease file.
const leaseFileVersion = 1

type leaseFile struct {
	Version int      `json:"version"`
	Subnet  string   `json:"subnet"`
	Leases  []record `json:"leases"`
}

// loadLeaseFile reads the lease file; a missing file is an empty store.
// A file that does not parse is an error: silently starting empty would
// hand the addresses of running phones to others.
func loadLeaseFile(path string) ([]record, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("provisioning: lease file: %w", err)
	}
	var f leaseFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("provisioning: lease file %s: %w", path, err)
	}
	if f.Version != leaseFileVersion {
		return nil, fmt.Errorf("provisioning: lease file %s: version %d, want %d", path, f.Version, leaseFileVersion)
	}
	return f.Leases, nil
}

// writeLeaseFile replaces the lease file atomically: the new content goes
// to a temporary file in the same directory, is fsynced, renamed over the
// old one, and the directory is fsynced so the rename itself survives a
// power cut. A crash at any point leaves either the old or the new file.
func writeLeaseFile(path, subnet string, recs []record) error {
	b, err := json.MarshalIndent(leaseFile{Version: leaseFileVersion, Subnet: subnet, Leases: recs}, "", "\t")
	if err != nil {
		return fmt.Errorf("provisioning: encode leases: %w", err)
	}
	b = append(b, '\n')
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("provisioning: write leases: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(b); err != nil {
		return fmt.Errorf("provisioning: write leases: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("provisioning: fsync leases: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("provisioning: write leases: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("provisioning: replace lease file: %w", err)
	}
	ok = true
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("provisioning: fsync lease directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("provisioning: fsync lease directory: %w", err)
	}
	return nil
}
