package archiver

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
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
	jobHistory                    // a timeline history file
)

// job is one object to store. Jobs complete in any order, but the durable
// position advances only over a contiguous run of completed jobs.
type job struct {
	kind       jobKind
	key        string
	data       []byte  // immutable while the job is in flight
	end        wal.LSN // the WAL position durable once this and every earlier job are stored
	seq        uint64  // order of creation
	pieceKeys  []string
	releaseBuf func() // returns a segment buffer once its segment is stored
}

// result is a finished job.
type result struct {
	j   *job
	err error
}

// shipper stores jobs with a few workers, retrying storage errors with
// backoff until its context ends.
type shipper struct {
	repo    *catalog.Repo
	log     *slog.Logger
	backoff time.Duration // first retry's wait; doubles up to 30 s
}

// store writes j, retrying transient failures. A segment, partial or history
// already stored with the same bytes counts as stored; with different bytes
// it is an error that retrying cannot fix.
func (s *shipper) store(ctx context.Context, j *job) error {
	backoff := s.backoff
	for attempt := 1; ; attempt++ {
		start := time.Now()
		err := s.storeOnce(ctx, j)
		s.log.Debug("upload", slog.String(keyKey, j.key), slog.Int("bytes", len(j.data)), slog.Duration("took", time.Since(start)), slog.Any(keyError, err))
		if err == nil || errors.Is(err, errConflict) || ctx.Err() != nil {
			return err
		}
		if attempt == maxAttempts {
			// The session ends and reconnects with its own backoff; a
			// bounded run gives up, a continuous one tries again.
			return fmt.Errorf("after %d attempts: %w", attempt, err)
		}
		s.log.Warn("upload failed; retrying", slog.String(keyKey, j.key), slog.Int("attempt", attempt), slog.Duration("in", backoff), slog.Any(keyError, err))
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

func (s *shipper) storeOnce(ctx context.Context, j *job) error {
	_, err := s.repo.Create(ctx, j.key, bytes.NewReader(j.data))
	if !errors.Is(err, storage.ErrExist) {
		return err
	}
	same, err := s.sameContent(ctx, j.key, j.data)
	if err != nil {
		return err
	}
	if !same {
		return fmt.Errorf("%w: the repository already holds different data under %s; another cluster or a diverged primary writes to this repository: stop it, or use another --repo", errConflict, j.key)
	}
	return nil
}

// sameContent compares the stored payload of key with data by hashing the
// stored object while streaming it.
func (s *shipper) sameContent(ctx context.Context, key string, data []byte) (bool, error) {
	rc, err := s.repo.Open(ctx, key)
	if err != nil {
		return false, err
	}
	defer rc.Close()
	h := sha256.New()
	n, err := io.Copy(h, rc)
	if err != nil {
		return false, err
	}
	want := sha256.Sum256(data)
	return n == int64(len(data)) && bytes.Equal(h.Sum(nil), want[:]), nil
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
