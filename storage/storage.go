package storage

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"iter"
	"strconv"
	"strings"
	"time"
)

// ErrNotExist reports a key that is not in the store. Backends translate their
// own "not found" into it; callers test with errors.Is.
var ErrNotExist = fs.ErrNotExist

// ErrExist reports that Create found the key already present.
var ErrExist = fs.ErrExist

// ObjectInfo describes one stored object.
type ObjectInfo struct {
	Key     string
	Size    int64
	ModTime time.Time
}

// Store is an object store holding immutable-by-convention objects under keys.
// Implementations are safe for concurrent use.
type Store interface {
	// Put stores everything r yields under key, replacing any object there.
	// The object becomes visible only once r returned io.EOF and the bytes are
	// durable; if r fails or ctx is cancelled, Put returns the error and no
	// new object is visible (an old one, if any, is left as it was).
	Put(ctx context.Context, key string, r io.Reader) error

	// Get opens the object at key for reading from byte offset off (0 for the
	// whole object). A missing key gives an error matching ErrNotExist. The
	// reader fails, rather than ending early, if the object's bytes cannot all
	// be delivered.
	Get(ctx context.Context, key string, off int64) (io.ReadCloser, error)

	// Stat describes the object at key; a missing key gives ErrNotExist.
	Stat(ctx context.Context, key string) (ObjectInfo, error)

	// List yields the objects whose keys start with prefix (a plain string
	// prefix, not a directory) in byte-wise lexical key order. A listing error
	// is yielded once, as the last element.
	List(ctx context.Context, prefix string) iter.Seq2[ObjectInfo, error]

	// Delete removes the object at key. Deleting a missing key is not an
	// error.
	Delete(ctx context.Context, key string) error
}

// Creator is the optional capability of creating an object only if its key is
// absent, atomically with respect to other writers (S3's If-None-Match: *).
// It serves leases and any write that must never replace an object.
type Creator interface {
	// Create behaves like Put but fails with an error matching ErrExist when
	// an object is already stored under key, leaving that object untouched.
	// Of several concurrent Creates of one key, exactly one succeeds.
	Create(ctx context.Context, key string, r io.Reader) error
}

// Leftover is what a write cut short can leave behind when its process is
// killed before it could clean up: a backend's temporary file or an
// incomplete multipart upload. It holds no visible object (List, Stat and Get
// never show it) but takes space until it is removed.
type Leftover struct {
	Key  string    `json:"key"`  // the key the write was for
	ID   string    `json:"id"`   // the backend's name for it: a temporary file's name, an upload's id
	Time time.Time `json:"time"` // when the write began; for a temporary file, when it was last written
}

// Sweeper is the optional capability of finding and removing leftovers.
type Sweeper interface {
	// Sweep visits the leftovers of writes of keys that start with prefix
	// and began before cutoff, and removes each one for which remove
	// returns true. A write that began at or after cutoff is never
	// visited, but a running write that began earlier looks like a
	// leftover: callers pick a cutoff older than any write still running.
	// Removing a leftover leaves every object as it was.
	Sweep(ctx context.Context, prefix string, cutoff time.Time, remove func(Leftover) bool) error
}

// ValidKey reports whether key follows the key rules of this package, with an
// error that says what is wrong.
func ValidKey(key string) error {
	if key == "" {
		return errors.New("storage: empty key")
	}
	start := 0
	for i := 0; i <= len(key); i++ {
		if i < len(key) && key[i] != '/' {
			if key[i] < 0x20 || key[i] == 0x7f {
				return &KeyError{Key: key, Reason: "holds a control character"}
			}
			continue
		}
		seg := key[start:i]
		switch {
		case seg == "":
			return &KeyError{Key: key, Reason: "has an empty path segment (leading, trailing or double slash)"}
		case seg == "." || seg == "..":
			return &KeyError{Key: key, Reason: "has a . or .. segment"}
		case seg[0] == '.':
			return &KeyError{Key: key, Reason: "has a segment starting with a dot (reserved for temporary files)"}
		}
		start = i + 1
	}
	return nil
}

// KeyError reports a key that breaks the key rules.
type KeyError struct {
	Key    string
	Reason string
}

func (e *KeyError) Error() string {
	k := e.Key
	if len(k) > 200 {
		k = k[:200] + "..."
	}
	return "storage: key " + strconv.Quote(k) + " " + e.Reason
}

// EmptyAtEnd serves backends whose servers refuse a range that starts at an
// object's end (HTTP 416): reading from there is valid and yields nothing.
// ok is false when off is not key's size.
func EmptyAtEnd(ctx context.Context, s Store, key string, off int64) (io.ReadCloser, bool) {
	if oi, err := s.Stat(ctx, key); err == nil && oi.Size == off {
		return io.NopCloser(strings.NewReader("")), true
	}
	return nil, false
}
