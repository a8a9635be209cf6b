package multipart

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/walship/walship/internal/chunks"
)

// MaxParts is S3's limit on the parts of one upload.
const MaxParts = 10000

// Target is one object's destination in a backend.
type Target[P any] interface {
	// Single stores body as the whole object in one request.
	Single(ctx context.Context, body *io.SectionReader) error
	// Begin starts a multipart upload.
	Begin(ctx context.Context) (Upload[P], error)
}

// Upload is a started multipart upload.
type Upload[P any] interface {
	// Part sends part n (1-based); it may run concurrently with other parts.
	Part(ctx context.Context, n int32, body *io.SectionReader) (P, error)
	// Complete publishes the object from the parts, in part-number order.
	Complete(ctx context.Context, parts []P) error
	// Abort discards the upload and its parts.
	Abort(ctx context.Context) error
}

// Config bounds an upload's memory: InFlight bodies of at most the current
// part size exist at once.
type Config struct {
	PartSize int64 // first part size; doubles every 1000 parts
	InFlight int
}

// sizeOf returns the size of part n (1-based). It doubles every 1000 parts
// so that an object of unknown length fits in MaxParts (with 8 MiB parts, up
// to about 8 TiB) while small objects keep small buffers.
func (c Config) sizeOf(n int32) int64 {
	return min(c.PartSize<<((n-1)/1000), 5<<30)
}

// Stream uploads everything r yields to t. On any failure, a started upload
// is aborted (even when ctx is done) and the first error is returned, so that
// no object becomes visible. An *io.SectionReader smaller than a part goes
// to t.Single as it is, from its start, without a copy.
func Stream[P any](ctx context.Context, t Target[P], r io.Reader, cfg Config) error {
	if sr, ok := r.(*io.SectionReader); ok && sr.Size() < cfg.sizeOf(1) {
		if err := ctx.Err(); err != nil {
			return err
		}
		return t.Single(ctx, io.NewSectionReader(sr, 0, sr.Size()))
	}
	first := new(chunks.Buffer)
	defer first.Release()
	if _, err := first.Fill(r, cfg.sizeOf(1)); err != nil {
		return err
	}
	if first.Len() < cfg.sizeOf(1) {
		if err := ctx.Err(); err != nil {
			return err
		}
		return t.Single(ctx, first.Reader())
	}
	up, err := t.Begin(ctx)
	if err != nil {
		return err
	}
	parts, err := sendParts(ctx, up, first, r, cfg)
	if err == nil {
		err = ctx.Err()
	}
	if err == nil {
		err = up.Complete(ctx, parts)
	}
	if err != nil {
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if aerr := up.Abort(actx); aerr != nil {
			err = errors.Join(err, fmt.Errorf("abort multipart upload (its parts remain until walship prune sweeps them, after --sweep-older-than): %w", aerr))
		}
	}
	return err
}

func sendParts[P any](ctx context.Context, up Upload[P], first *chunks.Buffer, r io.Reader, cfg Config) ([]P, error) {
	g, gctx := errgroup.WithContext(ctx)
	sem := make(chan struct{}, max(cfg.InFlight, 1))
	var (
		mu    sync.Mutex
		parts []P
	)
	send := func(n int32, body *chunks.Buffer) {
		g.Go(func() error {
			defer func() {
				if n > 1 { // the caller releases the first
					body.Release()
				}
				<-sem
			}()
			p, err := up.Part(gctx, n, body.Reader())
			if err != nil {
				return fmt.Errorf("part %d: %w", n, err)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(parts) < int(n) {
				parts = append(parts, make([]P, int(n)-len(parts))...)
			}
			parts[n-1] = p
			return nil
		})
	}
	sem <- struct{}{}
	send(1, first)
	readErr := func() error {
		for n := int32(2); ; n++ {
			select {
			case sem <- struct{}{}:
			case <-gctx.Done():
				return nil // Wait reports the failed part's error
			}
			body := new(chunks.Buffer)
			_, err := body.Fill(r, cfg.sizeOf(n))
			switch {
			case err != nil:
				body.Release()
				<-sem
				return err
			case body.Len() == 0:
				body.Release()
				<-sem
				return nil
			case n > MaxParts:
				body.Release()
				<-sem
				return fmt.Errorf("object exceeds %d parts", MaxParts)
			}
			last := body.Len() < cfg.sizeOf(n)
			send(n, body)
			if last {
				return nil
			}
		}
	}()
	werr := g.Wait()
	if readErr != nil {
		return nil, readErr
	}
	if werr != nil {
		return nil, werr
	}
	return parts, nil
}
