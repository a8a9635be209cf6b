//go:build unix

package file

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/walship/walship/internal/durable"
)

// errNotDir is what a path through a regular file gives: for keys it means
// the object does not exist.
var errNotDir = syscall.ENOTDIR

func syncDir(dir string) error { return durable.SyncDir(dir) }

// mkdirAll creates dir and its missing parents, syncing each parent that
// gained an entry so that the new directories survive a crash. It returns
// only once dir's entry is durable, also when another writer of this
// process is creating dir at the same time: a file written into a directory
// whose own entry could still be lost would not be durable.
func mkdirAll(dir string) error {
	fi, err := os.Stat(dir)
	if err == nil {
		if !fi.IsDir() {
			return &fs.PathError{Op: "mkdir", Path: dir, Err: syscall.ENOTDIR}
		}
		if c, ok := creating.Load(dir); ok {
			<-c.(chan struct{}) // made, not yet synced in its parent
			return nil
		}
		// Another process may have made it and not yet synced its
		// parent: the first time this process meets it, sync that.
		if _, seen := synced.Load(dir); !seen {
			if err := syncDir(filepath.Dir(dir)); err != nil {
				return err
			}
			synced.Store(dir, true)
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
	done := make(chan struct{})
	if c, loaded := creating.LoadOrStore(dir, done); loaded {
		<-c.(chan struct{})
		return mkdirAll(dir) // that creation may have failed
	}
	defer func() {
		creating.Delete(dir)
		close(done)
	}()
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	// Made here or, just now, by another process: synced either way.
	if err := syncDir(parent); err != nil {
		return err
	}
	synced.Store(dir, true)
	return nil
}

// creating holds the directories this process is making, each with a
// channel closed once the directory's entry is durable; synced, those whose
// entries it has made durable (until it removes them).
var creating, synced sync.Map
