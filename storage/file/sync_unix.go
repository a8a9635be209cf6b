//go:build unix

package file

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/walship/walship/internal/durable"
)

// errNotDir is what a path through a regular file gives: for keys it means
// the object does not exist.
var errNotDir = syscall.ENOTDIR

func syncDir(dir string) error { return durable.SyncDir(dir) }

// mkdirAll creates dir and its missing parents, syncing each parent that
// gained an entry so that the new directories survive a crash.
func mkdirAll(dir string) error {
	fi, err := os.Stat(dir)
	if err == nil {
		if !fi.IsDir() {
			return &fs.PathError{Op: "mkdir", Path: dir, Err: syscall.ENOTDIR}
		}
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := mkdirAll(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil // a concurrent writer made it
		}
		return err
	}
	return syncDir(parent)
}
