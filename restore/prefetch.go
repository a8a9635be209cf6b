package restore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage/catalog"
)

// Spool is a directory of segments prefetched from one repository: each
// file is a complete segment, verified, written atomically under its WAL
// file name. It lives outside pg_wal, so that pg_rewind and the server
// never see it. A prefetcher claims a segment with a ".claim" file while it
// downloads it.
type Spool struct {
	Dir string
}

// SpoolDir is the default spool of a data directory for a repository: a
// directory per repository, so that two repositories never share segments.
func SpoolDir(dataDir, repoURL string) string {
	h := sha256.Sum256([]byte(repoURL))
	return filepath.Join(dataDir, "walship_prefetch", hex.EncodeToString(h[:6]))
}

// claimTTL is how long a claim keeps others off a segment; a prefetcher
// that died leaves one behind, which then goes stale.
const claimTTL = 2 * time.Minute

// Take moves the spooled segment name to dest, waiting up to wait while a
// prefetcher still downloads it. It reports whether the spool had it, and
// removes the spooled segments of the same timeline that come before name,
// which recovery has passed.
func (s Spool) Take(name, dest string, wait time.Duration) (bool, error) {
	path := filepath.Join(s.Dir, name)
	deadline := time.Now().Add(wait)
	for {
		err := os.Rename(path, dest)
		if err == nil {
			s.prune(name)
			return true, nil // unsynced, as restore_command's file may be
		}
		if errors.Is(err, syscall.EXDEV) {
			return false, nil // another file system: fetch it as usual
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return false, permanent(fmt.Errorf("take %s from the prefetch spool: %w", name, err))
		}
		if !s.claimed(name) || time.Now().After(deadline) {
			return false, nil
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (s Spool) claimed(name string) bool {
	fi, err := os.Stat(filepath.Join(s.Dir, name+".claim"))
	return err == nil && time.Since(fi.ModTime()) < claimTTL
}

// prune removes spooled segments of name's timeline before name.
func (s Spool) prune(name string) {
	entries, err := os.ReadDir(s.Dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		n := e.Name()
		if len(n) == len(name) && n[:8] == name[:8] && n < name {
			_ = os.Remove(filepath.Join(s.Dir, n))
		}
	}
}

// Ahead counts the segments of name's timeline after name that are spooled
// or being downloaded, so that a caller starts a prefetcher only when the
// spool runs low.
func (s Spool) Ahead(name string) int {
	entries, err := os.ReadDir(s.Dir)
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		seg := strings.TrimSuffix(e.Name(), ".claim")
		if len(seg) == len(name) && seg[:8] == name[:8] && seg > name {
			n++
		}
	}
	return n
}

// claim takes the right to download name; false when another prefetcher
// holds it or the segment is spooled already.
func (s Spool) claim(name string) bool {
	if _, err := os.Stat(filepath.Join(s.Dir, name)); err == nil {
		return false
	}
	path := filepath.Join(s.Dir, name+".claim")
	for range 2 {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err == nil {
			_ = f.Close()
			return true
		}
		if !errors.Is(err, fs.ErrExist) || s.claimed(name) {
			return false
		}
		_ = os.Remove(path) // stale: its prefetcher died
	}
	return false
}

func (s Spool) release(name string) { _ = os.Remove(filepath.Join(s.Dir, name+".claim")) }

// Prefetch downloads the count segments after name (a segment's file name)
// into spool, concurrency at a time: complete segments only, checksums
// verified, never the pieces of the tip, which change. It stops at the first
// segment the repository does not hold.
func (f *Fetcher) Prefetch(ctx context.Context, spool Spool, name string, count, concurrency int) error {
	meta, err := f.Repo.ReadMeta(ctx)
	if err != nil {
		return err
	}
	file, err := wal.ParseFileName(name, meta.SegmentSize)
	if err != nil || file.Kind != wal.KindSegment {
		return fmt.Errorf("prefetch after %q: not a segment's file name", name)
	}
	// The spool and its parent, but never above: if the data directory
	// is gone, so is the need.
	for _, d := range []string{filepath.Dir(spool.Dir), spool.Dir} {
		if err := os.Mkdir(d, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	}
	log := f.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, max(concurrency, 1))
	var wg sync.WaitGroup
	var mu sync.Mutex
	end := uint64(0) // the first segment not found, once known
	for i := 1; i <= count; i++ {
		seg := wal.Segment{TLI: file.TLI, No: file.Segment.No + uint64(i)}
		next := seg.Name(meta.SegmentSize)
		mu.Lock()
		stop := end != 0 && seg.No >= end
		mu.Unlock()
		if stop || ctx.Err() != nil {
			break
		}
		if !spool.claim(next) {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			defer spool.release(next)
			// Synced: a spooled file that a power failure left torn under
			// its name would be served.
			o := &fetch{Fetcher: f, log: log, name: next, dest: filepath.Join(spool.Dir, next), start: time.Now(), sync: true}
			err := o.object(ctx, catalog.SegmentKey(seg, meta.SegmentSize), int64(meta.SegmentSize), int64(meta.SegmentSize))
			if errors.Is(err, ErrNotFound) {
				mu.Lock()
				if end == 0 || seg.No < end {
					end = seg.No
				}
				mu.Unlock()
				return
			}
			if err != nil {
				log.Warn("prefetch failed; wal-fetch will download it", attrName, next, attrError, err)
			}
		})
	}
	wg.Wait()
	return nil
}

// spoolable tells whether name is a segment's file name, the only files
// prefetched.
func spoolable(name string) bool {
	return len(name) == 24 && !strings.ContainsAny(name, "./")
}
