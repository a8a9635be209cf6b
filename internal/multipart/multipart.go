package multipart

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
)

// MaxParts is S3's limit on the parts of one upload.
const MaxParts = 10000

// Target is one object's destination in a backend.
type Target[P any] interface {
	// Single stores body as the whole object in one request.
	Single(ctx context.Context, body []byte) error
	// Begin starts a multipart upload.
	Begin(ctx context.Context) (Upload[P], error)
}

// Upload is a started multipart upload.
type Upload[P any] interface {
	// Part sends part n (1-based); it may run concurrently with other parts.
	Part(ctx context.Context, n int32, body []byte) (P, error)
	// Complete publishes the object from the parts, in part-number order.
	Complete(ctx context.Context, parts []P) error
	// Abort discards the upload and its parts.
	Abort(ctx context.Context) error
}

// Config bounds an upload's memory: InFlight buffers of at most the current
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
// no object becomes visible.
func Stream[P any](ctx context.Context, t Target[P], r io.Reader, cfg Config) error {
	first, err := readFirst(r, cfg.sizeOf(1))
	defer release(first)
	if err != nil {
		return err
	}
	n := len(first)
	if n < int(cfg.sizeOf(1)) {
		if err := ctx.Err(); err != nil {
			return err
		}
		return t.Single(ctx, first[:n])
	}
	up, err := t.Begin(ctx)
	if err != nil {
		return err
	}
	parts, err := sendParts(ctx, up, first[:n], r, cfg)
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
			err = errors.Join(err, fmt.Errorf("abort multipart upload (its parts remain until a lifecycle rule removes them): %w", aerr))
		}
	}
	return err
}

func sendParts[P any](ctx context.Context, up Upload[P], first []byte, r io.Reader, cfg Config) ([]P, error) {
	g, gctx := errgroup.WithContext(ctx)
	sem := make(chan struct{}, max(cfg.InFlight, 1))
	var (
		mu    sync.Mutex
		parts []P
	)
	send := func(n int32, body []byte) {
		g.Go(func() error {
			defer func() {
				if n > 1 { // the caller releases the first
					release(body)
				}
				<-sem
			}()
			p, err := up.Part(gctx, n, body)
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
			buf := buffer(cfg.sizeOf(n))
			m, err := io.ReadFull(r, buf)
			last := err == io.EOF || err == io.ErrUnexpectedEOF
			switch {
			case last && m == 0:
				<-sem
				return nil
			case n > MaxParts:
				<-sem
				return fmt.Errorf("object exceeds %d parts", MaxParts)
			case last:
				send(n, buf[:m])
				return nil
			case err != nil:
				<-sem
				return err
			}
			send(n, buf)
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

// Part buffers are pooled by size, so that a stream of small objects (WAL
// pieces) and the parts of a large one reuse memory instead of leaving a
// garbage trail of multi-megabyte slices.
var pools sync.Map // int64 → *sync.Pool of *[]byte

func buffer(size int64) []byte {
	p, _ := pools.LoadOrStore(size, &sync.Pool{})
	if b, ok := p.(*sync.Pool).Get().(*[]byte); ok {
		return *b
	}
	return make([]byte, size)
}

func release(b []byte) {
	b = b[:cap(b)]
	if p, ok := pools.Load(int64(len(b))); ok {
		p.(*sync.Pool).Put(&b)
	}
}

// firstChunk is where readFirst starts: most objects (WAL pieces, compressed
// segments) are far smaller than a part.
const firstChunk = 256 << 10

// readFirst reads up to size bytes, growing its buffer as data comes, so
// that a small object holds a small buffer. It returns fewer than size bytes
// only at the end of r.
func readFirst(r io.Reader, size int64) ([]byte, error) {
	buf := buffer(min(firstChunk, size))
	n := 0
	for {
		m, err := io.ReadFull(r, buf[n:])
		n += m
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return buf[:n], nil
		}
		if err != nil {
			return buf[:n], err
		}
		if int64(n) == size {
			return buf, nil
		}
		bigger := buffer(min(int64(2*len(buf)), size))
		copy(bigger, buf)
		release(buf)
		buf = bigger
	}
}
