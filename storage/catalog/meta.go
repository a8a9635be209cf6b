package catalog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage"
)

// FormatVersion is the repository format this walship writes and reads.
const FormatVersion = 1

// Meta is walship.json: what the repository holds, fixed at creation.
type Meta struct {
	Format int `json:"format"`
	// SystemID is the PostgreSQL system identifier, in decimal as
	// pg_controldata prints it.
	SystemID    string    `json:"system_identifier"`
	SegmentSize uint64    `json:"wal_segment_size"`
	Created     time.Time `json:"created"`
	// Recipients are the age recipients objects are encrypted to, if any.
	Recipients []string `json:"encryption_recipients,omitempty"`
}

// maxMeta bounds walship.json.
const maxMeta = 64 << 10

// ErrNoMeta reports a store without walship.json: not a repository yet.
var ErrNoMeta = errors.New("catalog: no walship.json: not a walship repository yet")

// ErrUnusable is wrapped by the errors of ReadMeta, Init and Compatible
// that reading again cannot change: walship.json is damaged or of a newer
// format, or describes another cluster or segment size. Their other errors
// are the store's, which may pass.
var ErrUnusable = errors.New("catalog: the repository cannot be used")

// unusable marks err as ErrUnusable, keeping its message.
type unusable struct{ err error }

func (u unusable) Error() string   { return u.err.Error() }
func (u unusable) Unwrap() []error { return []error{u.err, ErrUnusable} }
func markUnusable(err error) error { return unusable{err} }

// ReadMeta reads and checks walship.json.
func (r *Repo) ReadMeta(ctx context.Context) (Meta, error) {
	rc, err := r.store.Get(ctx, MetaKey, 0)
	if errors.Is(err, storage.ErrNotExist) {
		return Meta{}, ErrNoMeta
	}
	if err != nil {
		return Meta{}, fmt.Errorf("read %s: %w", MetaKey, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxMeta+1))
	if err != nil {
		return Meta{}, fmt.Errorf("read %s: %w", MetaKey, err)
	}
	return parseMeta(b)
}

func parseMeta(b []byte) (Meta, error) {
	m, err := parseMetaBytes(b)
	if err != nil {
		return Meta{}, markUnusable(err)
	}
	return m, nil
}

func parseMetaBytes(b []byte) (Meta, error) {
	if len(b) > maxMeta {
		return Meta{}, fmt.Errorf("%s is larger than %d bytes; it is not walship's", MetaKey, maxMeta)
	}
	var m Meta
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&m); err != nil {
		return Meta{}, fmt.Errorf("%s: %v; the repository description is damaged", MetaKey, err)
	}
	switch {
	case m.Format > FormatVersion:
		return Meta{}, fmt.Errorf("%s: format %d is newer than this walship's %d; upgrade walship", MetaKey, m.Format, FormatVersion)
	case m.Format < 1:
		return Meta{}, fmt.Errorf("%s: no format version; the repository description is damaged", MetaKey)
	case m.SystemID == "" || !decimal(m.SystemID):
		return Meta{}, fmt.Errorf("%s: system_identifier %q is not a decimal number", MetaKey, m.SystemID)
	case !wal.ValidSegmentSize(m.SegmentSize):
		return Meta{}, fmt.Errorf("%s: wal_segment_size %d is not a power of two from 1 MB to 1 GB", MetaKey, m.SegmentSize)
	}
	return m, nil
}

func decimal(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return len(s) <= 20
}

// Init makes the store a repository for the cluster m describes, or checks
// that it already is one: a repository of another cluster (system
// identifier) or segment size is refused with an error that says so. Of two
// racing Inits, one creates walship.json and the other checks against it.
func (r *Repo) Init(ctx context.Context, m Meta) (Meta, error) {
	m.Format = FormatVersion
	if m.Created.IsZero() {
		m.Created = time.Now().UTC().Truncate(time.Second)
	}
	if _, err := parseMeta(encodeMeta(m)); err != nil {
		return Meta{}, fmt.Errorf("catalog: new repository: %w", err)
	}
	for {
		have, err := r.ReadMeta(ctx)
		if err == nil {
			return have, Compatible(have, m)
		}
		if !errors.Is(err, ErrNoMeta) {
			return Meta{}, err
		}
		c, ok := r.store.(storage.Creator)
		if !ok {
			return Meta{}, fmt.Errorf("catalog: the store cannot create objects conditionally")
		}
		err = c.Create(ctx, MetaKey, bytes.NewReader(encodeMeta(m)))
		if errors.Is(err, storage.ErrExist) {
			continue // another writer was first: check against its description
		}
		if err != nil {
			return Meta{}, fmt.Errorf("create %s: %w", MetaKey, err)
		}
		return m, nil
	}
}

// Compatible reports whether a cluster described by want may use the
// repository described by have.
func Compatible(have, want Meta) error {
	if have.SystemID != want.SystemID {
		return markUnusable(fmt.Errorf("this repository belongs to the PostgreSQL cluster with system identifier %s, not %s; use another --repo (or prefix) for this cluster", have.SystemID, want.SystemID))
	}
	if have.SegmentSize != want.SegmentSize {
		return markUnusable(fmt.Errorf("this repository holds WAL segments of %d bytes, but the server's wal_segment_size is %d; use another --repo for this cluster", have.SegmentSize, want.SegmentSize))
	}
	return nil
}

func encodeMeta(m Meta) []byte {
	// A Meta has no types that fail to marshal.
	b, _ := json.MarshalIndent(m, "", "  ")
	return append(b, '\n')
}
