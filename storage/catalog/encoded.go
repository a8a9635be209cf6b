package catalog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/walship/walship/internal/chunks"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/codec"
)

// Encoded is an object encoded in memory, so that its source can be reused
// at once and a retried upload does not encode it again.
type Encoded struct {
	Object
	buf chunks.Buffer
}

// Encode encodes everything src yields for key, in memory.
func (r *Repo) Encode(key string, src io.Reader) (*Encoded, error) {
	e := &Encoded{}
	w, err := codec.NewWriter(&e.buf, r.opts.Codec)
	if err != nil {
		return nil, err
	}
	_, err = io.Copy(w, src)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		e.Release()
		return nil, fmt.Errorf("encode %s: %w", key, err)
	}
	e.Object = Object{Key: key, Size: w.Size(), StoredSize: w.StoredSize(), Sum: w.Sum()}
	return e, nil
}

// Release frees e's memory; e must not be used afterwards.
func (e *Encoded) Release() { e.buf.Release() }

// CreateEncoded stores e under its key; storage.ErrExist when the key is
// taken.
func (r *Repo) CreateEncoded(ctx context.Context, e *Encoded) error {
	c, ok := r.store.(storage.Creator)
	if !ok {
		return fmt.Errorf("create %s: the store cannot create objects conditionally", e.Key)
	}
	return c.Create(ctx, e.Key, e.buf.Reader())
}

// SameAsStored tells whether the object stored under e's key holds e's
// payload: the same stored bytes, or (as when encryption is not
// deterministic) the same payload once decoded, which needs the identity of
// an encrypted repository; a repo that encrypts without holding an identity
// compares payload lengths only.
func (r *Repo) SameAsStored(ctx context.Context, e *Encoded) (bool, error) {
	rc, err := r.store.Get(ctx, e.Key, 0)
	if err != nil {
		return false, err
	}
	info, err := codec.Verify(rc, e.Key)
	_ = rc.Close()
	if err != nil && !errors.Is(err, codec.ErrUnsupported) {
		return false, err
	}
	if info.Sum == e.Sum && info.StoredSize == e.StoredSize {
		return true, nil
	}
	if info.Size != e.Size {
		return false, nil
	}
	if r.EncryptsBlind() {
		// A writer holding only the recipient cannot read what it wrote:
		// the same length is all it can compare. It keeps what is stored.
		return true, nil
	}
	stored, err := r.Open(ctx, e.Key)
	if err != nil {
		return false, err
	}
	defer stored.Close()
	ours, err := codec.NewReader(e.buf.Reader(), e.Key, r.opts.Identities)
	if err != nil {
		return false, err
	}
	defer ours.Close()
	return sameStream(stored, ours)
}

// sameStream compares two streams to their ends.
func sameStream(a, b io.Reader) (bool, error) {
	const n = 64 << 10
	ba, bb := make([]byte, n), make([]byte, n)
	for {
		na, erra := io.ReadFull(a, ba)
		nb, errb := io.ReadFull(b, bb)
		if erra != nil && erra != io.EOF && erra != io.ErrUnexpectedEOF {
			return false, erra
		}
		if errb != nil && errb != io.EOF && errb != io.ErrUnexpectedEOF {
			return false, errb
		}
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			return false, nil
		}
		if na < n {
			return true, nil
		}
	}
}
