// Package durable makes local file-system changes survive a crash: the
// fsync of a directory after an entry in it was created, renamed or linked.
package durable

import "os"

// SyncDir fsyncs the directory dir, so that a new or renamed entry in it is
// on disk.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
