package file

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"iter"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/walship/walship/storage"
)

var (
	_ storage.Store   = (*Store)(nil)
	_ storage.Creator = (*Store)(nil)
	_ storage.Sweeper = (*Store)(nil)
)

// Store is a storage.Store rooted at a local directory.
type Store struct {
	root string
}

// New opens the repository directory root, creating it if absent. root must
// be an absolute path.
func New(root string) (*Store, error) {
	if !filepath.IsAbs(root) {
		return nil, fmt.Errorf("file store: root %q is not an absolute path", root)
	}
	root = filepath.Clean(root)
	if err := mkdirAll(root); err != nil {
		return nil, fmt.Errorf("file store: create root: %w", err)
	}
	return &Store{root: root}, nil
}

// Root returns the directory the store is rooted at.
func (s *Store) Root() string { return s.root }

func (s *Store) path(key string) (string, error) {
	if err := storage.ValidKey(key); err != nil {
		return "", err
	}
	return filepath.Join(s.root, filepath.FromSlash(key)), nil
}

// Put implements storage.Store.
func (s *Store) Put(ctx context.Context, key string, r io.Reader) error {
	return s.write(ctx, key, r, os.Rename)
}

// Create implements storage.Creator with a hard link, which fails when the
// target exists, so that exactly one of several racing writers wins.
func (s *Store) Create(ctx context.Context, key string, r io.Reader) error {
	err := s.write(ctx, key, r, func(tmp, dst string) error {
		if err := os.Link(tmp, dst); err != nil {
			return err
		}
		return os.Remove(tmp)
	})
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create %s: %w", key, storage.ErrExist)
	}
	return err
}

func (s *Store) write(ctx context.Context, key string, r io.Reader, publish func(tmp, dst string) error) (err error) {
	dst, err := s.path(key)
	if err != nil {
		return err
	}
	dir := filepath.Dir(dst)
	f, err := createTemp(dir, "."+filepath.Base(dst)+tempInfix+"*")
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if _, err := io.Copy(f, ctxReader{ctx, r}); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("put %s: sync: %w", key, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("put %s: close: %w", key, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	if err := publish(tmp, dst); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	// A directory gone since is one a Delete of this key emptied.
	if err := syncDir(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("put %s: sync directory: %w", key, err)
	}
	return nil
}

// Get implements storage.Store.
func (s *Store) Get(ctx context.Context, key string, off int64) (io.ReadCloser, error) {
	p, err := s.path(key)
	if err != nil {
		return nil, err
	}
	if off < 0 {
		return nil, fmt.Errorf("get %s: negative offset %d", key, off)
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, notExist(err))
	}
	fi, err := f.Stat()
	if err == nil && fi.IsDir() {
		err = storage.ErrNotExist
	}
	if err == nil && off > 0 {
		_, err = f.Seek(off, io.SeekStart)
	}
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	return f, nil
}

// Stat implements storage.Store.
func (s *Store) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	p, err := s.path(key)
	if err != nil {
		return storage.ObjectInfo{}, err
	}
	fi, err := os.Stat(p)
	if err == nil && !fi.Mode().IsRegular() {
		err = storage.ErrNotExist
	}
	if err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("stat %s: %w", key, notExist(err))
	}
	return storage.ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// Delete implements storage.Store, and removes the directories it leaves
// empty. The directory is not synced afterwards: a delete lost to a power
// failure only brings back an object nobody needs.
func (s *Store) Delete(ctx context.Context, key string) error {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("delete %s: %w", key, err)
	}
	s.removeEmptyDirs(filepath.Dir(p))
	return nil
}

// createTemp creates a temporary file in dir, making dir first. A Delete
// or Sweep may remove dir, emptied, between the two: then it tries again.
func createTemp(dir, pattern string) (f *os.File, err error) {
	for range 5 {
		if err = mkdirAll(dir); err == nil {
			if f, err = os.CreateTemp(dir, pattern); err == nil {
				return f, nil
			}
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}
	return nil, err
}

// removeEmptyDirs removes dir and then its parents, up to the root, as long
// as they are empty.
func (s *Store) removeEmptyDirs(dir string) {
	for dir != s.root && strings.HasPrefix(dir, s.root+string(filepath.Separator)) {
		if os.Remove(dir) != nil {
			return
		}
		synced.Delete(dir)
		dir = filepath.Dir(dir)
	}
}

// List implements storage.Store. Directories are walked depth first with each
// directory's entries sorted as if a subdirectory's name ended in "/", which
// yields exactly the byte-wise order of the full keys.
func (s *Store) List(ctx context.Context, prefix string) iter.Seq2[storage.ObjectInfo, error] {
	return func(yield func(storage.ObjectInfo, error) bool) {
		start := ""
		if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
			start = prefix[:i]
		}
		if start != "" {
			if err := storage.ValidKey(start); err != nil {
				return // no valid key can lie under it
			}
		}
		err := s.walk(ctx, start, prefix, yield)
		if err != nil && err != errStop {
			yield(storage.ObjectInfo{}, fmt.Errorf("list %s: %w", prefix, err))
		}
	}
}

var errStop = errors.New("stop")

func (s *Store) walk(ctx context.Context, dirKey, prefix string, yield func(storage.ObjectInfo, error) bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	entries, err := s.readDir(dirKey, prefix)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.dir {
			if err := s.walk(ctx, e.info.Key, prefix, yield); err != nil {
				return err
			}
			continue
		}
		if !yield(e.info, nil) {
			return errStop
		}
	}
	return nil
}

// listEntry is a directory entry on the way to a listing: an object or a
// subdirectory whose keys may match the prefix.
type listEntry struct {
	info storage.ObjectInfo
	dir  bool
}

// readDirAttempts bounds how often readDir rereads a changing directory.
const readDirAttempts = 8

// readDir returns the entries of one directory in key order. It stats every
// object before returning, and when one vanished between reading the
// directory and its stat it reads the directory again: skipping it alone
// would give a listing of a state that never existed (an object replaced by
// a newer one and then deleted would show neither), which the lease
// protocol cannot tolerate.
func (s *Store) readDir(dirKey, prefix string) ([]listEntry, error) {
	for attempt := 1; ; attempt++ {
		list, vanished, err := s.readDirOnce(dirKey, prefix)
		if err != nil || !vanished || attempt == readDirAttempts {
			return list, err
		}
	}
}

func (s *Store) readDirOnce(dirKey, prefix string) (list []listEntry, vanished bool, err error) {
	entries, err := os.ReadDir(filepath.Join(s.root, filepath.FromSlash(dirKey)))
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, errNotDir) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	sortName := func(e fs.DirEntry) string {
		if e.IsDir() {
			return e.Name() + "/"
		}
		return e.Name()
	}
	slices.SortFunc(entries, func(a, b fs.DirEntry) int { return strings.Compare(sortName(a), sortName(b)) })
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		key := e.Name()
		if dirKey != "" {
			key = dirKey + "/" + key
		}
		if e.IsDir() {
			if strings.HasPrefix(key+"/", prefix) || strings.HasPrefix(prefix, key+"/") {
				list = append(list, listEntry{info: storage.ObjectInfo{Key: key}, dir: true})
			}
			continue
		}
		if !e.Type().IsRegular() || !strings.HasPrefix(key, prefix) {
			continue
		}
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			vanished = true // deleted since ReadDir
			continue
		}
		if err != nil {
			return nil, false, err
		}
		list = append(list, listEntry{info: storage.ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}})
	}
	return list, vanished, nil
}

func notExist(err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, errNotDir) {
		return storage.ErrNotExist
	}
	return err
}

// ctxReader stops a copy once its context is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
