package catalog

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/walship/walship/storage"
)

// flakyGet cuts every Get's body short, as a connection reset mid-body
// would.
type flakyGet struct{ storage.Store }

func (f flakyGet) Get(ctx context.Context, key string, off int64) (io.ReadCloser, error) {
	return io.NopCloser(io.MultiReader(strings.NewReader("{\"for"), errReader{io.ErrUnexpectedEOF})), nil
}

func (f flakyGet) Create(ctx context.Context, key string, r io.Reader) error {
	return f.Store.(storage.Creator).Create(ctx, key, r)
}

// TestMetaUnusable: the errors of ReadMeta and Init that reading again
// cannot change are ErrUnusable (an archiver stops on them), and the
// store's failures are not (an archiver tries again).
func TestMetaUnusable(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	m := Meta{SystemID: "7441337033001234567", SegmentSize: 16 * mb}
	if _, err := r.Init(ctx, m); err != nil {
		t.Fatal(err)
	}
	other := m
	other.SystemID = "7441337033009999999"
	if _, err := r.Init(ctx, other); !errors.Is(err, ErrUnusable) || !strings.Contains(err.Error(), "system identifier") {
		t.Errorf("Init for another cluster = %v, want ErrUnusable naming the system identifier", err)
	}
	other = m
	other.SegmentSize = 1 * mb
	if _, err := r.Init(ctx, other); !errors.Is(err, ErrUnusable) {
		t.Errorf("Init with another segment size = %v, want ErrUnusable", err)
	}
	if _, err := New(flakyGet{r.Store()}, Options{}).Init(ctx, m); err == nil || errors.Is(err, ErrUnusable) {
		t.Errorf("Init through a read cut short = %v, want a store error, not ErrUnusable", err)
	}
	if _, err := New(flakyGet{r.Store()}, Options{}).ReadMeta(ctx); !errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, ErrUnusable) {
		t.Errorf("ReadMeta through a read cut short = %v, want the read error, not ErrUnusable", err)
	}
	if err := r.Store().Put(ctx, MetaKey, strings.NewReader("{")); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ReadMeta(ctx); !errors.Is(err, ErrUnusable) || !strings.Contains(err.Error(), "damaged") {
		t.Errorf("ReadMeta of a damaged walship.json = %v, want ErrUnusable saying it is damaged", err)
	}
	if _, err := r.Init(ctx, m); !errors.Is(err, ErrUnusable) {
		t.Errorf("Init over a damaged walship.json = %v, want ErrUnusable", err)
	}
}
