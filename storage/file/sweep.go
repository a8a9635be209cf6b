package file

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/walship/walship/storage"
)

// tempInfix separates a temporary file's target name from its random part:
// ".<name>.tmp-<digits>".
const tempInfix = ".tmp-"

// Sweep implements storage.Sweeper. The leftovers are the temporary files
// of writes whose process died before renaming or removing them, judged by
// their last write: a file written at or after cutoff is never touched.
// Directories that removing them leaves empty go too.
func (s *Store) Sweep(ctx context.Context, prefix string, cutoff time.Time, remove func(storage.Leftover) bool) error {
	start := ""
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		start = prefix[:i]
		if storage.ValidKey(start) != nil {
			return nil // no valid key can lie under it
		}
	}
	if err := s.sweepDir(ctx, start, prefix, cutoff, remove); err != nil {
		return fmt.Errorf("sweep %s: %w", prefix, err)
	}
	return nil
}

func (s *Store) sweepDir(ctx context.Context, dirKey, prefix string, cutoff time.Time, remove func(storage.Leftover) bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	dir := filepath.Join(s.root, filepath.FromSlash(dirKey))
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, errNotDir) {
		return nil
	}
	if err != nil {
		return err
	}
	join := func(name string) string {
		if dirKey == "" {
			return name
		}
		return dirKey + "/" + name
	}
	removed := false
	for _, e := range entries {
		if e.IsDir() {
			key := join(e.Name())
			if !strings.HasPrefix(e.Name(), ".") && (strings.HasPrefix(key+"/", prefix) || strings.HasPrefix(prefix, key+"/")) {
				if err := s.sweepDir(ctx, key, prefix, cutoff, remove); err != nil {
					return err
				}
			}
			continue
		}
		target, ok := tempTarget(e.Name())
		if !ok || !e.Type().IsRegular() || !strings.HasPrefix(join(target), prefix) {
			continue
		}
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // renamed into place or removed by its writer
		}
		if err != nil {
			return err
		}
		if !fi.ModTime().Before(cutoff) {
			continue
		}
		if !remove(storage.Leftover{Key: join(target), ID: e.Name(), Time: fi.ModTime()}) {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		removed = true
	}
	if removed {
		s.removeEmptyDirs(dir)
	}
	return nil
}

// tempTarget returns the name that the temporary file name is written for,
// if name is one that write makes: "." + target + tempInfix + digits.
func tempTarget(name string) (string, bool) {
	i := strings.LastIndex(name, tempInfix)
	if i < 2 || name[0] != '.' {
		return "", false
	}
	target, digits := name[1:i], name[i+len(tempInfix):]
	if digits == "" || strings.Trim(digits, "0123456789") != "" || storage.ValidKey(target) != nil {
		return "", false
	}
	return target, true
}
