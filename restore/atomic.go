package restore

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/walship/walship/internal/durable"
)

// writeAtomic makes dest hold what fill writes, or leaves it as it was: fill
// writes a temporary file in dest's directory, which is synced, closed and
// renamed over dest, and the directory is synced. On any failure the
// temporary file is removed. Errors of the local file system are
// permanent.
func writeAtomic(dest string, fill func(*os.File) error) error {
	return writeFile(dest, true, fill)
}

// writeUnsynced is writeAtomic without the fsyncs, for a file that a crash
// may lose but must never leave half-written under its name: what
// restore_command writes, which PostgreSQL fetches again after a crash.
func writeUnsynced(dest string, fill func(*os.File) error) error {
	return writeFile(dest, false, fill)
}

func writeFile(dest string, sync bool, fill func(*os.File) error) (err error) {
	dir := filepath.Dir(dest)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(dest)+".walship-*")
	if err != nil {
		return permanent(fmt.Errorf("create a temporary file next to %s: %w", dest, err))
	}
	closed := false
	defer func() {
		if err != nil {
			if !closed {
				_ = tmp.Close()
			}
			_ = os.Remove(tmp.Name())
		}
	}()
	if err := fill(tmp); err != nil {
		return err
	}
	if !sync {
		closed = true
		if err := tmp.Close(); err != nil {
			return permanent(fmt.Errorf("close %s: %w", tmp.Name(), err))
		}
		if err := os.Rename(tmp.Name(), dest); err != nil {
			return permanent(fmt.Errorf("rename %s to %s: %w", tmp.Name(), dest, err))
		}
		return nil
	}
	if err := tmp.Sync(); err != nil {
		return permanent(fmt.Errorf("sync %s: %w", tmp.Name(), err))
	}
	closed = true
	if err := tmp.Close(); err != nil {
		return permanent(fmt.Errorf("close %s: %w", tmp.Name(), err))
	}
	if err := os.Rename(tmp.Name(), dest); err != nil {
		return permanent(fmt.Errorf("rename %s to %s: %w", tmp.Name(), dest, err))
	}
	if err := durable.SyncDir(dir); err != nil {
		return permanent(fmt.Errorf("sync directory %s after writing %s: %w", dir, dest, err))
	}
	return nil
}
