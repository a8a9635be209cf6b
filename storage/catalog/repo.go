package catalog

import (
	"context"
	"errors"
	"fmt"
	"io"

	"filippo.io/age"

	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/codec"
)

// Repo is a repository: a store whose objects go through the codec.
type Repo struct {
	store storage.Store
	opts  Options
}

// Options say how objects are written and read.
type Options struct {
	Codec      codec.Options  // for writing
	Identities []age.Identity // for reading encrypted objects
}

// New returns the repository in s.
func New(s storage.Store, opts Options) *Repo { return &Repo{store: s, opts: opts} }

// WithConcurrency returns the repository writing objects with n zstd
// goroutines each, for large objects such as base backup archives.
func (r *Repo) WithConcurrency(n int) *Repo {
	c := *r
	c.opts.Codec.Concurrency = n
	return &c
}

// Codec is how objects are written.
func (r *Repo) Codec() codec.Options { return r.opts.Codec }

// EncryptsBlind tells whether r encrypts to recipients without holding an
// identity, so that it cannot read back the encrypted objects it writes (an
// archiver given only the public key).
func (r *Repo) EncryptsBlind() bool {
	return len(r.opts.Codec.Recipients) > 0 && len(r.opts.Identities) == 0
}

// Store is the store underneath.
func (r *Repo) Store() storage.Store { return r.store }

// Object describes an object as written.
type Object struct {
	Key        string
	Size       int64 // payload bytes
	StoredSize int64
	Sum        [32]byte // sha256 of the stored bytes
}

// Put encodes everything src yields and stores it under key, replacing any
// object there.
func (r *Repo) Put(ctx context.Context, key string, src io.Reader) (Object, error) {
	return r.write(ctx, key, src, r.store.Put)
}

// Create is Put that fails with storage.ErrExist when key is taken. It needs
// a store with the storage.Creator capability.
func (r *Repo) Create(ctx context.Context, key string, src io.Reader) (Object, error) {
	c, ok := r.store.(storage.Creator)
	if !ok {
		return Object{}, fmt.Errorf("create %s: the store cannot create objects conditionally", key)
	}
	return r.write(ctx, key, src, c.Create)
}

func (r *Repo) write(ctx context.Context, key string, src io.Reader, put func(context.Context, string, io.Reader) error) (Object, error) {
	pr, pw := io.Pipe()
	var obj Object
	done := make(chan struct{})
	go func() {
		defer close(done)
		w, err := codec.NewWriter(pw, r.opts.Codec)
		if err == nil {
			_, err = io.Copy(w, src)
			if cerr := w.Close(); err == nil {
				err = cerr
			}
			obj = Object{Key: key, Size: w.Size(), StoredSize: w.StoredSize(), Sum: w.Sum()}
		}
		pw.CloseWithError(err)
	}()
	err := put(ctx, key, pr)
	// Unblock the encoder if the store stopped reading early, and let it
	// finish with src before the caller gets src back.
	_ = pr.CloseWithError(errors.New("store stopped reading"))
	<-done
	if err != nil {
		return Object{}, err
	}
	return obj, nil
}

// Open opens key for reading its payload. Reading to io.EOF verifies the
// object's checksum; any damage is an error naming the key.
func (r *Repo) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	rc, err := r.store.Get(ctx, key, 0)
	if err != nil {
		return nil, err
	}
	cr, err := codec.NewReader(rc, key, r.opts.Identities)
	if err != nil {
		_ = rc.Close()
		return nil, err
	}
	return &reader{cr: cr, rc: rc}, nil
}

type reader struct {
	cr *codec.Reader
	rc io.ReadCloser
}

func (r *reader) Read(p []byte) (int, error) { return r.cr.Read(p) }

func (r *reader) Close() error {
	err := r.cr.Close()
	if cerr := r.rc.Close(); err == nil {
		err = cerr
	}
	return err
}

// ErrTooLarge is wrapped by ReadAll's error for an object larger than the
// caller allows.
var ErrTooLarge = errors.New("larger than expected")

// ReadAll reads and verifies the payload of key, which must be at most max
// bytes.
func (r *Repo) ReadAll(ctx context.Context, key string, max int64) ([]byte, error) {
	rc, err := r.Open(ctx, key)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("read %s: %w: more than the %d bytes expected", key, ErrTooLarge, max)
	}
	return b, nil
}
