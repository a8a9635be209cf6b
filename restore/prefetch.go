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
// directory per repository, so that two repositories never share segments,
// and per boot of the machine where Linux names it, so that a segment a
// power failure tore is never served after it: such a spool needs no
// fsyncs.
func SpoolDir(dataDir, repoURL string) string {
	dir := filepath.Join(dataDir, spoolRel(repoURL))
	if id := bootID(); id != "" {
		dir = filepath.Join(dir, id)
	}
	return dir
}

// spoolRel is the default spool relative to the data directory, without
// the boot.
func spoolRel(repoURL string) string {
	h := sha256.Sum256([]byte(repoURL))
	return filepath.Join("walship_prefetch", hex.EncodeToString(h[:6]))
}

// bootIDFile holds the kernel's random id of the current boot.
const bootIDFile = "/proc/sys/kernel/random/boot_id"

// bootID is the id of the machine's current boot, "" where it is unknown.
var bootID = sync.OnceValue(func() string {
	b, err := os.ReadFile(bootIDFile)
	id := strings.TrimSpace(string(b))
	if err != nil || !validBootID(id) {
		return ""
	}
	return id
})

// validBootID tells whether id looks like the kernel's boot id, a UUID.
func validBootID(id string) bool {
	if len(id) != 36 {
		return false
	}
	for i, r := range id {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			if r != '-' {
				return false
			}
		} else if !strings.ContainsRune("0123456789abcdef", r) {
			return false
		}
	}
	return true
}

// volatile tells whether the spool belongs to this boot only: its files
// need no fsync, since no later boot reads them.
func (s Spool) volatile() bool {
	id := bootID()
	return id != "" && filepath.Base(s.Dir) == id
}

// removeOtherBoots removes the spools of earlier boots next to a spool of
// this boot: what they hold may have been torn by a power failure.
func (s Spool) removeOtherBoots() {
	if !s.volatile() {
		return
	}
	parent := filepath.Dir(s.Dir)
	entries, _ := os.ReadDir(parent)
	for _, e := range entries {
		if e.Name() != bootID() && (validBootID(e.Name()) || spoolable(e.Name())) {
			_ = os.RemoveAll(filepath.Join(parent, e.Name()))
		}
	}
}

// removeEmptyParents removes the default spool's parents, up to and with
// walship_prefetch, as far as they are empty.
func (s Spool) removeEmptyParents() {
	for dir := filepath.Dir(s.Dir); ; dir = filepath.Dir(dir) {
		base := filepath.Base(dir)
		inTree := base == "walship_prefetch" || filepath.Base(filepath.Dir(dir)) == "walship_prefetch"
		if !inTree || os.Remove(dir) != nil || base == "walship_prefetch" {
			return
		}
	}
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
	segSize, seg, err := f.spoolStart(ctx, spool, name)
	if err != nil {
		return err
	}
	f.prefetch(ctx, spool, seg, segSize, count, concurrency)
	return nil
}

// spoolStart reads the segment size, parses name and makes the spool.
func (f *Fetcher) spoolStart(ctx context.Context, spool Spool, name string) (uint64, wal.Segment, error) {
	meta, err := f.Repo.ReadMeta(ctx)
	if err != nil {
		return 0, wal.Segment{}, err
	}
	seg, err := spoolSegment(name, meta.SegmentSize)
	if err != nil {
		return 0, wal.Segment{}, err
	}
	return meta.SegmentSize, seg, spool.make()
}

func spoolSegment(name string, segSize uint64) (wal.Segment, error) {
	file, err := wal.ParseFileName(name, segSize)
	if err != nil || file.Kind != wal.KindSegment {
		return wal.Segment{}, fmt.Errorf("prefetch after %q: not a segment's file name", name)
	}
	return file.Segment, nil
}

// make creates the spool and its parent (and the parent's parent for this
// boot's spool), but never above: if the data directory is gone, so is the
// need.
func (s Spool) make() error {
	dirs := []string{filepath.Dir(s.Dir), s.Dir}
	if s.volatile() {
		dirs = append([]string{filepath.Dir(dirs[0])}, dirs...)
	}
	for _, d := range dirs {
		if err := os.Mkdir(d, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	}
	return nil
}

// prefetch downloads the count segments after after that are neither
// spooled nor claimed. It reports whether a download failed other than
// for want of the segment.
func (f *Fetcher) prefetch(ctx context.Context, spool Spool, after wal.Segment, segSize uint64, count, concurrency int) (failed bool) {
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
		seg := wal.Segment{TLI: after.TLI, No: after.No + uint64(i)}
		next := seg.Name(segSize)
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
			// Synced unless the spool is this boot's: a spooled file that a
			// power failure left torn under its name would be served.
			o := &fetch{Fetcher: f, log: log, name: next, dest: filepath.Join(spool.Dir, next), start: time.Now(), sync: !spool.volatile()}
			err := o.object(ctx, catalog.SegmentKey(seg, segSize), int64(segSize), int64(segSize))
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
				mu.Lock()
				failed = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return failed
}

// How often the keeper looks at the spool, and how long it waits after a
// round whose downloads failed: keepRetry, doubled after each further one up
// to keepMaxRetry.
const (
	keepPoll     = 50 * time.Millisecond
	keepRetry    = 250 * time.Millisecond
	keepMaxRetry = 8 * time.Second
)

// Keep runs as the spool's one keeper: it keeps count segments downloaded
// ahead of recovery, which takes them from the spool (with a rename, even
// by the shell: see RestoreCommand) without telling anyone, so the keeper
// reads recovery's position from the spool itself: the segments taken are
// gone. wal-fetch names the segment it had to download in the spool's
// wanted file, which moves the keeper there (a new timeline, or a jump).
// Keep returns at once when another keeper runs, and once nothing was
// taken for idle.
func (f *Fetcher) Keep(ctx context.Context, spool Spool, name string, count, concurrency int, idle time.Duration) error {
	segSize, pos, err := f.spoolStart(ctx, spool, name)
	if err != nil {
		return err
	}
	lock, ok := spool.lockKeeper()
	if !ok {
		return nil
	}
	defer lock.Close()
	spool.removeOtherBoots()
	wanted := spool.wanted()
	lastMove := time.Now()
	prev := -1
	top := pos.No // the newest segment seen spooled
	wait := keepPoll
	for ctx.Err() == nil && time.Since(lastMove) < idle {
		if !spool.keeping(lock) {
			return nil // the spool went away, and another may have come
		}
		if w := spool.wanted(); w != wanted {
			wanted = w
			if s, err := spoolSegment(w, segSize); err == nil {
				pos, lastMove = s, time.Now()
			}
		}
		// Recovery is before the oldest segment still spooled.
		spooled := spool.segments(pos.TLI, segSize)
		switch {
		case len(spooled) > 0:
			top = max(top, spooled[len(spooled)-1])
			if spooled[0] > pos.No+1 {
				pos.No = spooled[0] - 1
			}
		case top > pos.No:
			pos.No = top // all taken
		}
		// What recovery has passed will not be taken.
		ahead := spooled[:0]
		for _, no := range spooled {
			if no <= pos.No {
				_ = os.Remove(filepath.Join(spool.Dir, wal.Segment{TLI: pos.TLI, No: no}.Name(segSize)))
			} else {
				ahead = append(ahead, no)
			}
		}
		if len(ahead) != prev {
			if len(ahead) < prev {
				lastMove = time.Now()
			}
			prev = len(ahead)
		}
		if len(ahead) < count {
			// A store that fails (or throttles) is asked less and
			// less often; wal-fetch downloads what is not spooled.
			if f.prefetch(ctx, spool, pos, segSize, count, concurrency) {
				wait = min(max(2*wait, keepRetry), keepMaxRetry)
			} else {
				wait = keepPoll
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
	if ctx.Err() == nil && spool.keeping(lock) {
		// Recovery is over or stalled: nothing stays behind in the data
		// directory, where a later base backup would copy it.
		_ = os.RemoveAll(spool.Dir)
		spool.removeEmptyParents()
	}
	return nil
}

// segments lists the numbers of tli's spooled segments, in order.
func (s Spool) segments(tli wal.TimeLineID, segSize uint64) []uint64 {
	entries, err := os.ReadDir(s.Dir)
	if err != nil {
		return nil
	}
	var out []uint64
	for _, e := range entries {
		f, err := wal.ParseFileName(e.Name(), segSize)
		if err == nil && f.Kind == wal.KindSegment && f.TLI == tli {
			out = append(out, f.Segment.No)
		}
	}
	return out // ReadDir sorts by name, and so by number
}

// Want records that recovery asked for name and the spool did not have it.
func (s Spool) Want(name string) {
	_ = os.WriteFile(filepath.Join(s.Dir, ".wanted"), []byte(name), 0o600)
}

func (s Spool) wanted() string {
	b, _ := os.ReadFile(filepath.Join(s.Dir, ".wanted"))
	return string(b)
}

// lockKeeper takes the spool's keeper lock, held until the process ends or
// the file is closed; false when another keeper holds it.
func (s Spool) lockKeeper() (*os.File, bool) {
	f, err := os.OpenFile(filepath.Join(s.Dir, ".keeper"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, false
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		return nil, false
	}
	return f, true
}

// keeping tells whether lock is still the spool's keeper lock: a spool
// removed (and perhaps made again, with a keeper of its own) is not ours.
func (s Spool) keeping(lock *os.File) bool {
	held, err := lock.Stat()
	if err != nil {
		return false
	}
	now, err := os.Stat(filepath.Join(s.Dir, ".keeper"))
	return err == nil && os.SameFile(held, now)
}

// spoolable tells whether name is a segment's file name, the only files
// prefetched.
func spoolable(name string) bool {
	return len(name) == 24 && !strings.ContainsAny(name, "./")
}
