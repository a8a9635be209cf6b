package archiver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/catalog"
)

// jobKind says what an upload job stores.
type jobKind int

const (
	jobPiece   jobKind = iota + 1 // bytes [start, end) of a filling segment
	jobSegment                    // a complete segment
	jobPartial                    // a segment cut short by a timeline switch
	jobIndex                      // a segment's index of commit times and restore points
)

// job is one object to store. Jobs complete in any order, but the durable
// position advances only over a contiguous run of completed jobs.
type job struct {
	kind      jobKind
	key       string
	data      []byte  // immutable until the job is encoded
	buf       *segBuf // the segment buffer data lies in; nil if data is the job's own
	end       wal.LSN // the WAL position durable once this and every earlier job are stored
	seq       uint64  // order of creation
	pieceKeys []string
}

// result is a job encoded (its segment buffer may be reused) or finished.
type result struct {
	j       *job
	encoded bool // only encoded; a finished result follows
	err     error
}

// shipper encodes and stores jobs, retrying storage errors with backoff.
type shipper struct {
	repo    *catalog.Repo
	log     *slog.Logger
	backoff time.Duration // first retry's wait; doubles up to 30 s
	stats   *Stats
}

// encode encodes j in memory, after which j's data may be reused.
func (s *shipper) encode(j *job) (*catalog.Encoded, error) {
	return s.repo.Encode(j.key, bytes.NewReader(j.data))
}

// storeBytes encodes and stores data under key.
func (s *shipper) storeBytes(ctx context.Context, key string, data []byte) error {
	e, err := s.repo.Encode(key, bytes.NewReader(data))
	if err != nil {
		return err
	}
	defer e.Release()
	return s.store(ctx, e, false)
}

// store writes e, retrying transient failures. An object already stored with
// the same payload counts as stored; with a different one it is an error
// that retrying cannot fix, unless keepExisting: then whatever is stored
// counts (a segment's index, which a run that started cold may write with
// one record fewer than the run before).
func (s *shipper) store(ctx context.Context, e *catalog.Encoded, keepExisting bool) error {
	backoff := s.backoff
	for attempt := 1; ; attempt++ {
		start := time.Now()
		err := s.storeOnce(ctx, e, keepExisting)
		s.log.Debug("upload", slog.String(keyKey, e.Key), slog.Int64("bytes", e.StoredSize), slog.Duration("took", time.Since(start)), slog.Any(keyError, err))
		if err == nil {
			s.stats.uploadedBytes.Add(uint64(e.StoredSize))
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		s.stats.uploadErrors.Add(1)
		if errors.Is(err, errConflict) {
			return err
		}
		if attempt == maxAttempts {
			// The session ends and reconnects with its own backoff; a
			// bounded run gives up, a continuous one tries again.
			return fmt.Errorf("after %d attempts: %w", attempt, err)
		}
		s.log.Warn("upload failed; retrying", slog.String(keyKey, e.Key), slog.Int("attempt", attempt), slog.Duration("in", backoff), slog.Any(keyError, err))
		s.stats.uploadRetries.Add(1)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return ctx.Err()
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

// maxAttempts bounds the retries of one upload (about 25 s of backoff at the
// default first wait of 200 ms), so
// that a permanent storage error (credentials, a missing bucket) surfaces.
const maxAttempts = 8

// errConflict marks an object that exists with different bytes.
var errConflict = errors.New("conflict")

func (s *shipper) storeOnce(ctx context.Context, e *catalog.Encoded, keepExisting bool) error {
	err := s.repo.CreateEncoded(ctx, e)
	if !errors.Is(err, storage.ErrExist) || keepExisting {
		if errors.Is(err, storage.ErrExist) {
			return nil
		}
		return err
	}
	same, err := s.repo.SameAsStored(ctx, e)
	if err != nil {
		return err
	}
	if !same {
		return fmt.Errorf("%w: the repository already holds different data under %s; another cluster or a diverged primary writes to this repository: stop it, or use another --repo", errConflict, e.Key)
	}
	return nil
}

// deletePieces removes the pieces a stored segment supersedes; a failure
// only leaves garbage that the next run or prune removes.
func (s *shipper) deletePieces(ctx context.Context, keys []string) {
	for _, k := range keys {
		if err := s.repo.Store().Delete(ctx, k); err != nil {
			s.log.Warn("delete superseded piece", slog.String(keyKey, k), slog.Any(keyError, err))
		}
	}
}
