package restore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"time"

	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/catalog"
	"github.com/walship/walship/storage/codec"
)

// ErrNotFound is wrapped by the error Fetch returns when the repository does
// not hold the file asked for, which PostgreSQL takes as the end of the
// archive (restore_command exits 1). No other failure wraps it.
var ErrNotFound = errors.New("not in the repository")

// Attribute keys of the fetcher's log records.
const (
	attrName    = "name"
	attrKey     = "key"
	attrBytes   = "bytes"
	attrPieces  = "pieces"
	attrTook    = "took"
	attrAttempt = "attempt"
	attrError   = "error"
	attrHoleAt  = "hole_at"
)

// Defaults of Fetcher.
const (
	DefaultAttempts = 4
	DefaultBackoff  = 500 * time.Millisecond
)

const (
	// maxHistory bounds a timeline history file.
	maxHistory = 1 << 20
	// maxBackupFile bounds a backup history file.
	maxBackupFile = 64 << 10
	// copyBuf is the size of the buffers that stream objects to disk.
	copyBuf = 256 << 10
)

// Fetcher serves PostgreSQL's restore_command from a repository.
type Fetcher struct {
	// Repo is the repository, which must hold walship.json.
	Repo *catalog.Repo
	// Log receives what was served; nil discards.
	Log *slog.Logger
	// Attempts is how often a fetch that failed in a way that may pass
	// (a storage or network error) is tried in all; 0 means
	// DefaultAttempts. "Not found", damaged objects and bad names are
	// never retried.
	Attempts int
	// Backoff is the wait after the first failed attempt, doubled after
	// each further one; 0 means DefaultBackoff.
	Backoff time.Duration
	// NoPieces serves complete segments only, never the tip from its
	// pieces: for a standby, whose own pg_wal may hold more of the tip
	// (streamed from the primary) than the repository; a shorter copy from
	// the archive would hide it and make promotion fail.
	NoPieces bool
	// TipTimeline, if set, is the timeline recovery targets: only its tip
	// is served from pieces, successors or not (a stray branch off it does
	// not hide its newest WAL), and never an ancestor's. When 0, pieces
	// are served for a timeline without a successor.
	TipTimeline wal.TimeLineID
	// Spool, if set, serves segments prefetched into it (see Prefetch),
	// waiting up to SpoolWait for one a prefetcher is still downloading.
	Spool     *Spool
	SpoolWait time.Duration
}

// Fetch is (&Fetcher{Repo: repo, Log: log}).Fetch(ctx, name, dest).
func Fetch(ctx context.Context, repo *catalog.Repo, name, dest string, log *slog.Logger) error {
	return (&Fetcher{Repo: repo, Log: log}).Fetch(ctx, name, dest)
}

// Fetch writes the WAL file that PostgreSQL names (restore_command's %f) to
// dest (%p): a segment, a .partial segment, a timeline history file or a
// backup history file. dest is written atomically, with checksums verified,
// or not at all.
//
// A complete segment must be exactly the repository's segment size. A
// segment that is not complete in the repository is served from its shipped
// pieces, zero-padded, as long as its timeline has no successor: the
// contiguous bytes from its start, where overlapping pieces must agree. A
// .partial segment is served only under its .partial name, as stored.
//
// The error wraps ErrNotFound when the repository does not hold the file,
// and only then: a repository without walship.json, a name that is not a WAL
// file's, a damaged object and a storage failure that persists through the
// retries are other errors, on which recovery must stop instead of ending.
func (f *Fetcher) Fetch(ctx context.Context, name, dest string) error {
	attempts, backoff := f.Attempts, f.Backoff
	if attempts <= 0 {
		attempts = DefaultAttempts
	}
	if backoff <= 0 {
		backoff = DefaultBackoff
	}
	log := f.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if taken, err := f.FromSpool(name, dest); taken || err != nil {
		return err
	}
	return retrying(ctx, log, "fetch failed; trying again", name, attempts, backoff,
		func() error { return f.fetch(ctx, log, name, dest) }, transient)
}

// retrying calls attempt until it succeeds, fails with an error that again
// says trying again cannot fix, or has failed attempts times, waiting
// backoff, then twice as long each time, in between; it logs each failure
// it tries again after as msg, with name.
func retrying(ctx context.Context, log *slog.Logger, msg, name string, attempts int, backoff time.Duration, attempt func() error, again func(error) bool) error {
	for n := 1; ; n++ {
		err := attempt()
		if err == nil || !again(err) || n >= attempts || ctx.Err() != nil {
			return err
		}
		log.Warn(msg, attrName, name, attrAttempt, n, attrError, err)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(backoff):
		}
		backoff *= 2
	}
}

// FromSpool moves segment name from f.Spool to dest, if the spool has it
// or gets it within f.SpoolWait. It needs no repository, so that a caller
// can open one only when the spool misses.
func (f *Fetcher) FromSpool(name, dest string) (bool, error) {
	if f.Spool == nil || !spoolable(name) {
		return false, nil
	}
	start := time.Now()
	taken, err := f.Spool.Take(name, dest, f.SpoolWait)
	if taken && f.Log != nil {
		f.Log.Info("fetched from the prefetch spool", attrName, name, attrTook, time.Since(start).Round(time.Microsecond))
	}
	return taken, err
}

// permanentError marks an error that trying again cannot fix.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

func permanent(err error) error { return &permanentError{err} }

// transient reports whether trying again may help: storage and network
// errors, but not "not found", damage, bad names or local failures.
func transient(err error) bool {
	var pe *permanentError
	switch {
	case errors.Is(err, ErrNotFound), errors.Is(err, catalog.ErrNoMeta),
		errors.Is(err, codec.ErrCorrupt), errors.Is(err, codec.ErrIdentity), errors.Is(err, codec.ErrUnsupported),
		errors.As(err, &pe):
		return false
	}
	return true
}

// fetch is one attempt of Fetch.
func (f *Fetcher) fetch(ctx context.Context, log *slog.Logger, name, dest string) error {
	meta, err := f.Repo.ReadMeta(ctx)
	if errors.Is(err, catalog.ErrNoMeta) {
		return fmt.Errorf("wal-fetch %s: %w; check that --repo names the repository this cluster archives to", name, err)
	}
	if err != nil {
		return fmt.Errorf("wal-fetch %s: %w", name, err)
	}
	segSize := meta.SegmentSize
	file, err := wal.ParseFileName(name, segSize)
	if err != nil {
		return permanent(fmt.Errorf("wal-fetch: %w; restore_command must pass %%f", err))
	}
	o := &fetch{Fetcher: f, log: log, name: name, dest: dest, start: time.Now()}
	switch file.Kind {
	case wal.KindHistory:
		return o.object(ctx, catalog.HistoryKey(file.TLI), maxHistory, -1)
	case wal.KindBackup:
		return o.object(ctx, catalog.BackupKey(file.Segment, segSize, file.Offset), maxBackupFile, -1)
	case wal.KindPartial:
		return o.object(ctx, catalog.PartialKey(file.Segment, segSize), int64(segSize), -1)
	}
	key := catalog.SegmentKey(file.Segment, segSize)
	err = o.object(ctx, key, int64(segSize), int64(segSize))
	if !errors.Is(err, ErrNotFound) || f.NoPieces {
		return err
	}
	return o.tip(ctx, file.Segment, segSize)
}

// fetch is one attempt at one file.
type fetch struct {
	*Fetcher
	log   *slog.Logger
	name  string
	dest  string
	start time.Time
	sync  bool // fsync dest: for the spool, not for restore_command's file
}

// write writes dest atomically, synced if o.sync.
func (o *fetch) write(fill func(*os.File) error) error {
	if o.sync {
		return writeAtomic(o.dest, fill)
	}
	return writeUnsynced(o.dest, fill)
}

// object writes the payload of key to dest. It must be at most limit bytes,
// and exactly exact bytes unless exact is negative.
func (o *fetch) object(ctx context.Context, key string, limit, exact int64) error {
	rc, err := o.Repo.Open(ctx, key)
	if errors.Is(err, storage.ErrNotExist) {
		o.log.Debug("not in the repository", attrName, o.name, attrKey, key)
		return fmt.Errorf("wal-fetch %s: %s: %w", o.name, key, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("wal-fetch %s: get %s: %w", o.name, key, err)
	}
	defer rc.Close()
	var n int64
	err = o.write(func(w *os.File) error {
		var err error
		n, err = copyTo(w, io.LimitReader(rc, limit+1), key)
		if err != nil {
			return err
		}
		switch {
		case exact >= 0 && n != exact:
			return permanent(fmt.Errorf("wal-fetch %s: %s holds %d bytes, but a segment is %d; the repository is damaged: "+
				"recovery cannot use it (run walship verify)", o.name, key, n, exact))
		case n > limit:
			return permanent(fmt.Errorf("wal-fetch %s: %s holds more than the %d bytes of such a file; the repository is damaged", o.name, key, limit))
		}
		return nil
	})
	if err != nil {
		return err
	}
	o.log.Info("fetched", attrName, o.name, attrKey, key, attrBytes, n, attrTook, time.Since(o.start).Round(time.Millisecond))
	return nil
}

// localError marks an error of the local file system in copyTo.
type localError struct{ err error }

func (e localError) Error() string { return e.err.Error() }

type localWriter struct{ w io.Writer }

func (l localWriter) Write(p []byte) (int, error) {
	n, err := l.w.Write(p)
	if err != nil {
		err = localError{err}
	}
	return n, err
}

// copyTo copies r, the payload of key, to w, telling the errors of each side
// apart.
func copyTo(w io.Writer, r io.Reader, key string) (int64, error) {
	n, err := io.CopyBuffer(localWriter{w}, r, make([]byte, copyBuf))
	var le localError
	switch {
	case errors.As(err, &le):
		return n, permanent(fmt.Errorf("write: %w", le.err))
	case err != nil:
		return n, fmt.Errorf("read %s: %w", key, err)
	}
	return n, nil
}

// tip serves a segment that the repository holds only as pieces: the
// contiguous bytes from offset 0, zero-padded to the segment size. Never
// for a timeline that has a successor, whose pieces may hold WAL that the
// successor's history left behind.
func (o *fetch) tip(ctx context.Context, seg wal.Segment, segSize uint64) error {
	segKey := catalog.SegmentKey(seg, segSize)
	if o.TipTimeline != 0 && seg.TLI != o.TipTimeline {
		return fmt.Errorf("wal-fetch %s: %s: %w (pieces are served for timeline %d only, the one recovery targets)",
			o.name, segKey, ErrNotFound, o.TipTimeline)
	}
	next := catalog.HistoryKey(seg.TLI + 1)
	_, err := o.Repo.Store().Stat(ctx, next)
	if o.TipTimeline != 0 {
		// Recovery follows this timeline: a successor is a branch it
		// does not take.
		err = storage.ErrNotExist
	}
	if err == nil {
		o.log.Debug("not serving pieces: the timeline has a successor", attrName, o.name, attrKey, next)
		return fmt.Errorf("wal-fetch %s: %s: %w (and timeline %d has a successor, %s, so its pieces are never served)",
			o.name, segKey, ErrNotFound, seg.TLI, next)
	}
	if !errors.Is(err, storage.ErrNotExist) {
		return fmt.Errorf("wal-fetch %s: stat %s: %w", o.name, next, err)
	}
	pieces, err := o.pieces(ctx, seg, segSize)
	if err != nil {
		return err
	}
	if len(pieces) == 0 || pieces[0].Start != 0 {
		// The archiver may have completed the segment since we looked.
		return o.object(ctx, segKey, int64(segSize), int64(segSize))
	}
	var end int64
	var used int
	err = o.write(func(w *os.File) error {
		buf, cmp := make([]byte, copyBuf), make([]byte, copyBuf)
		for _, p := range pieces {
			if int64(p.Start) > end {
				o.log.Warn("pieces after a hole are not served", attrName, o.name, attrKey, p.Key, attrHoleAt, end)
				break
			}
			if err := o.piece(ctx, p, w, end, buf, cmp); err != nil {
				return err
			}
			end = max(end, int64(p.End))
			used++
		}
		if err := w.Truncate(int64(segSize)); err != nil {
			return permanent(fmt.Errorf("pad %s with zeros: %w", w.Name(), err))
		}
		return nil
	})
	if err != nil {
		return err
	}
	o.log.Info("fetched the unfinished segment from its pieces, zero-padded", attrName, o.name, attrKey, catalog.PiecePrefix(seg, segSize),
		attrPieces, used, attrBytes, end, attrTook, time.Since(o.start).Round(time.Millisecond))
	return nil
}

// pieces lists the pieces of seg, by start offset, longest first.
func (o *fetch) pieces(ctx context.Context, seg wal.Segment, segSize uint64) ([]catalog.WALObject, error) {
	prefix := catalog.PiecePrefix(seg, segSize)
	var out []catalog.WALObject
	for oi, err := range o.Repo.Store().List(ctx, prefix) {
		if err != nil {
			return nil, fmt.Errorf("wal-fetch %s: list %s: %w", o.name, prefix, err)
		}
		p, err := catalog.ParseWALKey(oi.Key, segSize)
		if err != nil || p.Kind != catalog.Piece || p.Segment != seg {
			return nil, permanent(fmt.Errorf("wal-fetch %s: %s is among the pieces of %s but is not one of them; remove it if it does not belong to the repository",
				o.name, oi.Key, catalog.SegmentKey(seg, segSize)))
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b catalog.WALObject) int {
		if a.Start != b.Start {
			return int(int64(a.Start) - int64(b.Start))
		}
		return int(int64(b.End) - int64(a.End))
	})
	return out, nil
}

// piece copies piece p into w at its offset. The bytes below end are already
// in w: p's bytes there must be the same.
func (o *fetch) piece(ctx context.Context, p catalog.WALObject, w *os.File, end int64, buf, cmp []byte) error {
	rc, err := o.Repo.Open(ctx, p.Key)
	if errors.Is(err, storage.ErrNotExist) {
		// Not ErrNotFound: the archiver may have completed the segment
		// and removed its pieces; another attempt fetches the segment.
		return fmt.Errorf("wal-fetch %s: piece %s disappeared while it was assembled", o.name, p.Key)
	}
	if err != nil {
		return fmt.Errorf("wal-fetch %s: get %s: %w", o.name, p.Key, err)
	}
	defer rc.Close()
	off := int64(p.Start)
	for {
		n, rerr := rc.Read(buf)
		if off+int64(n) > int64(p.End) {
			return permanent(fmt.Errorf("wal-fetch %s: piece %s holds more than the %d bytes its name says; the repository is damaged",
				o.name, p.Key, p.End-p.Start))
		}
		chunk := buf[:n]
		if k := min(int64(len(chunk)), end-off); k > 0 {
			if _, err := w.ReadAt(cmp[:k], off); err != nil {
				return permanent(fmt.Errorf("read back %s: %w", w.Name(), err))
			}
			if !bytes.Equal(cmp[:k], chunk[:k]) {
				return permanent(fmt.Errorf("wal-fetch %s: piece %s disagrees with the pieces before it within bytes %d to %d of the segment: "+
					"two archivers shipped different WAL for it; recovery stops here rather than guess which is right",
					o.name, p.Key, off, off+k))
			}
			chunk, off = chunk[k:], off+k
		}
		if len(chunk) > 0 {
			if _, err := w.WriteAt(chunk, off); err != nil {
				return permanent(fmt.Errorf("write %s: %w", w.Name(), err))
			}
			off += int64(len(chunk))
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("wal-fetch %s: read %s: %w", o.name, p.Key, rerr)
		}
	}
	if off != int64(p.End) {
		return permanent(fmt.Errorf("wal-fetch %s: piece %s holds %d bytes, but its name says %d; the repository is damaged",
			o.name, p.Key, off-int64(p.Start), p.End-p.Start))
	}
	return nil
}
