package restore

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/catalog"
	"github.com/walship/walship/storage/codec"
	"github.com/walship/walship/storage/file"
)

const segSize = 1 << 20

// faultStore is a store whose Get can be made to fail.
type faultStore struct {
	*file.Store
	get  func(key string) error // nil: no fault
	gets atomic.Int64
}

func (f *faultStore) Get(ctx context.Context, key string, off int64) (io.ReadCloser, error) {
	f.gets.Add(1)
	if f.get != nil {
		if err := f.get(key); err != nil {
			return nil, err
		}
	}
	return f.Store.Get(ctx, key, off)
}

// newRepo returns a repository of 1 MB segments in a file store.
func newRepo(t *testing.T, opts catalog.Options) (*catalog.Repo, *faultStore) {
	t.Helper()
	s, err := file.New(filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	fs := &faultStore{Store: s}
	if opts.Codec.Compression == codec.None {
		opts.Codec.Compression = codec.Zstd
	}
	repo := catalog.New(fs, opts)
	if _, err := repo.Init(context.Background(), catalog.Meta{SystemID: "7441337033001234567", SegmentSize: segSize}); err != nil {
		t.Fatal(err)
	}
	return repo, fs
}

func randomBytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, 2))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func put(t *testing.T, repo *catalog.Repo, key string, b []byte) {
	t.Helper()
	if _, err := repo.Put(context.Background(), key, bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}
}

// destDir is a directory for DEST files that checks, when the test ends,
// that it holds nothing but the files named.
func destDir(t *testing.T, keep ...string) string {
	dir := t.TempDir()
	t.Cleanup(func() {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			found := false
			for _, k := range keep {
				found = found || e.Name() == k
			}
			if !found {
				t.Errorf("%s left in the destination directory", e.Name())
			}
		}
	})
	return dir
}

func fetcher(repo *catalog.Repo) *Fetcher {
	return &Fetcher{Repo: repo, Backoff: time.Millisecond}
}

var seg = wal.Segment{TLI: 3, No: 0x21}

func TestFetchSegment(t *testing.T) {
	repo, _ := newRepo(t, catalog.Options{})
	data := randomBytes(segSize, 1)
	put(t, repo, catalog.SegmentKey(seg, segSize), data)
	dir := destDir(t, "RECOVERYXLOG")
	dest := filepath.Join(dir, "RECOVERYXLOG")
	if err := os.WriteFile(dest, []byte("stale"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := fetcher(repo).Fetch(context.Background(), seg.Name(segSize), dest); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(dest)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("DEST holds %d bytes (%v), want the segment", len(got), err)
	}
}

func TestFetchOtherKinds(t *testing.T) {
	repo, _ := newRepo(t, catalog.Options{})
	history := []byte("1\t0/3000000\tno recovery target specified\n2\t0/5000000\tbefore 2026\n")
	put(t, repo, catalog.HistoryKey(3), history)
	partial := randomBytes(300000, 2)
	put(t, repo, catalog.PartialKey(seg, segSize), partial)
	backup := []byte("START WAL LOCATION: 0/21000028 (file 000000030000000000000021)\n")
	put(t, repo, catalog.BackupKey(seg, segSize, 0x28), backup)
	dir := destDir(t, "h", "p", "b")
	for _, c := range []struct {
		name, dest string
		want       []byte
	}{
		{"00000003.history", "h", history},
		{seg.Name(segSize) + ".partial", "p", partial}, // unpadded, under its own name only
		{seg.Name(segSize) + ".00000028.backup", "b", backup},
	} {
		dest := filepath.Join(dir, c.dest)
		if err := fetcher(repo).Fetch(context.Background(), c.name, dest); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got, _ := os.ReadFile(dest); !bytes.Equal(got, c.want) {
			t.Errorf("%s: DEST holds %d bytes, want %d", c.name, len(got), len(c.want))
		}
	}
	// The .partial is never served for the segment's own name.
	err := fetcher(repo).Fetch(context.Background(), seg.Name(segSize), filepath.Join(dir, "x"))
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("segment with only a .partial = %v, want ErrNotFound", err)
	}
}

func TestFetchNotFound(t *testing.T) {
	repo, fs := newRepo(t, catalog.Options{})
	dir := destDir(t)
	for _, name := range []string{
		seg.Name(segSize), seg.Name(segSize) + ".partial", "00000004.history", seg.Name(segSize) + ".00000028.backup",
	} {
		fs.gets.Store(0)
		start := time.Now()
		err := (&Fetcher{Repo: repo, Backoff: time.Second}).Fetch(context.Background(), name, filepath.Join(dir, "RECOVERYXLOG"))
		if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: %v, want ErrNotFound naming it", name, err)
		}
		// Quickly: no retries.
		if took := time.Since(start); took > 500*time.Millisecond {
			t.Errorf("%s: not found after %v", name, took)
		}
		if n := fs.gets.Load(); n > 3 {
			t.Errorf("%s: %d gets for a missing file", name, n)
		}
	}
}

// TestFetchStops checks the failures that must stop recovery: each an error
// that is not ErrNotFound, tried once, leaving no DEST.
func TestFetchStops(t *testing.T) {
	ctx := context.Background()
	t.Run("no walship.json", func(t *testing.T) {
		s, err := file.New(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		dir := destDir(t)
		err = fetcher(catalog.New(s, catalog.Options{})).Fetch(ctx, seg.Name(segSize), filepath.Join(dir, "d"))
		if err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "--repo") {
			t.Errorf("Fetch from a store without walship.json = %v", err)
		}
	})
	for _, name := range []string{"pg_control", "../../etc/passwd", "000000030000000000000021.zst", "0000000300000000000000211", "", "00000000.history"} {
		t.Run("name "+name, func(t *testing.T) {
			repo, fs := newRepo(t, catalog.Options{})
			fs.gets.Store(0)
			err := fetcher(repo).Fetch(ctx, name, filepath.Join(destDir(t), "d"))
			if err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "file name") {
				t.Errorf("Fetch(%q) = %v", name, err)
			}
			if n := fs.gets.Load(); n != 1 {
				t.Errorf("Fetch(%q) made %d gets, want 1 (walship.json), no retries", name, n)
			}
		})
	}
	t.Run("corrupt", func(t *testing.T) {
		repo, fs := newRepo(t, catalog.Options{})
		key := catalog.SegmentKey(seg, segSize)
		put(t, repo, key, randomBytes(segSize, 3))
		flipByte(t, fs, key, 5000)
		fs.gets.Store(0)
		err := fetcher(repo).Fetch(ctx, seg.Name(segSize), filepath.Join(destDir(t), "d"))
		if err == nil || errors.Is(err, ErrNotFound) || !errors.Is(err, codec.ErrCorrupt) || !strings.Contains(err.Error(), key) {
			t.Errorf("Fetch of a damaged object = %v, want a corruption error naming %s", err, key)
		}
		if n := fs.gets.Load(); n != 2 {
			t.Errorf("%d gets, want 2: damage is not retried", n)
		}
	})
	t.Run("short segment", func(t *testing.T) {
		repo, _ := newRepo(t, catalog.Options{})
		put(t, repo, catalog.SegmentKey(seg, segSize), randomBytes(segSize-1, 3))
		err := fetcher(repo).Fetch(ctx, seg.Name(segSize), filepath.Join(destDir(t), "d"))
		if err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "holds 1048575 bytes, but a segment is 1048576") {
			t.Errorf("Fetch of a short segment = %v", err)
		}
	})
	t.Run("long segment", func(t *testing.T) {
		repo, _ := newRepo(t, catalog.Options{})
		put(t, repo, catalog.SegmentKey(seg, segSize), randomBytes(segSize+1, 3))
		err := fetcher(repo).Fetch(ctx, seg.Name(segSize), filepath.Join(destDir(t), "d"))
		if err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "but a segment is 1048576") {
			t.Errorf("Fetch of a long segment = %v", err)
		}
	})
	t.Run("no destination directory", func(t *testing.T) {
		repo, _ := newRepo(t, catalog.Options{})
		put(t, repo, catalog.SegmentKey(seg, segSize), randomBytes(segSize, 3))
		err := fetcher(repo).Fetch(ctx, seg.Name(segSize), filepath.Join(t.TempDir(), "no", "d"))
		if err == nil || errors.Is(err, ErrNotFound) || transient(err) {
			t.Errorf("Fetch into a missing directory = %v", err)
		}
	})
	t.Run("encrypted without identity", func(t *testing.T) {
		id, err := age.GenerateX25519Identity()
		if err != nil {
			t.Fatal(err)
		}
		repo, fs := newRepo(t, catalog.Options{Codec: codec.Options{Recipients: []age.Recipient{id.Recipient()}}})
		data := randomBytes(segSize, 4)
		put(t, repo, catalog.SegmentKey(seg, segSize), data)
		dir := destDir(t, "ok")
		err = fetcher(catalog.New(fs, catalog.Options{})).Fetch(ctx, seg.Name(segSize), filepath.Join(dir, "d"))
		if !errors.Is(err, codec.ErrIdentity) || errors.Is(err, ErrNotFound) {
			t.Errorf("Fetch of an encrypted segment without identity = %v", err)
		}
		err = fetcher(catalog.New(fs, catalog.Options{Identities: []age.Identity{id}})).Fetch(ctx, seg.Name(segSize), filepath.Join(dir, "ok"))
		if got, _ := os.ReadFile(filepath.Join(dir, "ok")); err != nil || !bytes.Equal(got, data) {
			t.Errorf("Fetch with the identity = %v", err)
		}
	})
}

// flipByte damages the stored object at key.
func flipByte(t *testing.T, s storage.Store, key string, off int) {
	t.Helper()
	ctx := context.Background()
	rc, err := s.Get(ctx, key, 0)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	b[off%len(b)] ^= 0x40
	if err := s.Put(ctx, key, bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}
}

func TestFetchRetries(t *testing.T) {
	ctx := context.Background()
	repo, fs := newRepo(t, catalog.Options{})
	key := catalog.SegmentKey(seg, segSize)
	data := randomBytes(segSize, 5)
	put(t, repo, key, data)
	boom := errors.New("503 slow down")
	failures := 2
	fs.get = func(k string) error {
		if k == key && failures > 0 {
			failures--
			return boom
		}
		return nil
	}
	dir := destDir(t, "d")
	if err := fetcher(repo).Fetch(ctx, seg.Name(segSize), filepath.Join(dir, "d")); err != nil {
		t.Fatalf("Fetch through two transient failures: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "d")); !bytes.Equal(got, data) {
		t.Error("DEST differs from the segment")
	}
	// A failure that persists ends as that failure, not ErrNotFound, after
	// every attempt.
	failures = 100
	fs.gets.Store(0)
	err := (&Fetcher{Repo: repo, Attempts: 3, Backoff: time.Millisecond}).Fetch(ctx, seg.Name(segSize), filepath.Join(destDir(t), "d"))
	if !errors.Is(err, boom) || errors.Is(err, ErrNotFound) {
		t.Errorf("Fetch through a persistent failure = %v", err)
	}
	if n := fs.gets.Load(); n != 6 {
		t.Errorf("%d gets, want 3 attempts of 2", n)
	}
	// A cancelled context stops the retries.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := fetcher(repo).Fetch(cctx, seg.Name(segSize), filepath.Join(destDir(t), "d")); err == nil || errors.Is(err, ErrNotFound) {
		t.Errorf("Fetch with a cancelled context = %v", err)
	}
}

func TestFetchPieces(t *testing.T) {
	ctx := context.Background()
	data := randomBytes(segSize, 6)
	padded := func(n int) []byte { return append(bytes.Clone(data[:n]), make([]byte, segSize-n)...) }
	type piece struct{ start, end uint32 }
	cases := []struct {
		name   string
		pieces []piece
		want   []byte // nil: ErrNotFound
	}{
		{"one", []piece{{0, 8192}}, padded(8192)},
		{"contiguous", []piece{{0, 100000}, {100000, 300000}, {300000, 300001}}, padded(300001)},
		{"whole", []piece{{0, 500000}, {500000, segSize}}, data},
		{"overlapping", []piece{{0, 200000}, {100000, 300000}, {150000, 250000}, {299999, 400000}}, padded(400000)},
		{"same start", []piece{{0, 100000}, {0, 200000}}, padded(200000)},
		{"hole", []piece{{0, 100000}, {200000, 300000}}, padded(100000)},
		{"not from the start", []piece{{8192, 100000}}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			repo, _ := newRepo(t, catalog.Options{})
			for _, p := range c.pieces {
				put(t, repo, catalog.PieceKey(seg, segSize, p.start, p.end), data[p.start:p.end])
			}
			keep := "d"
			if c.want == nil {
				keep = ""
			}
			dest := filepath.Join(destDir(t, keep), "d")
			err := fetcher(repo).Fetch(ctx, seg.Name(segSize), dest)
			if c.want == nil {
				if !errors.Is(err, ErrNotFound) {
					t.Errorf("Fetch = %v, want ErrNotFound", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, _ := os.ReadFile(dest)
			if !bytes.Equal(got, c.want) {
				t.Errorf("DEST differs from the assembled pieces (%d bytes)", len(got))
			}
		})
	}
	t.Run("successor", func(t *testing.T) {
		repo, _ := newRepo(t, catalog.Options{})
		put(t, repo, catalog.PieceKey(seg, segSize, 0, 100000), data[:100000])
		put(t, repo, catalog.HistoryKey(seg.TLI+1), []byte("3\t0/21010000\tx\n"))
		err := fetcher(repo).Fetch(ctx, seg.Name(segSize), filepath.Join(destDir(t), "d"))
		if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "successor") {
			t.Errorf("Fetch of a segment of a timeline with a successor = %v, want ErrNotFound", err)
		}
		// A history further on does not matter: PostgreSQL looks at T+1.
		repo2, _ := newRepo(t, catalog.Options{})
		put(t, repo2, catalog.PieceKey(seg, segSize, 0, 100000), data[:100000])
		put(t, repo2, catalog.HistoryKey(seg.TLI-1), []byte("1\t0/1000000\tx\n"))
		dir := destDir(t, "d")
		if err := fetcher(repo2).Fetch(ctx, seg.Name(segSize), filepath.Join(dir, "d")); err != nil {
			t.Errorf("Fetch of the newest timeline's tip = %v", err)
		}
	})
	t.Run("tip timeline", func(t *testing.T) {
		repo, _ := newRepo(t, catalog.Options{})
		put(t, repo, catalog.PieceKey(seg, segSize, 0, 100000), data[:100000])
		put(t, repo, catalog.HistoryKey(seg.TLI+1), []byte("3\t0/21010000\tx\n"))
		// Recovery along seg's timeline: a branch off it does not hide
		// its tip.
		f := fetcher(repo)
		f.TipTimeline = seg.TLI
		dir := destDir(t, "d")
		if err := f.Fetch(ctx, seg.Name(segSize), filepath.Join(dir, "d")); err != nil {
			t.Errorf("Fetch of the target timeline's tip with a branch off it = %v", err)
		}
		// Recovery along the successor: the ancestor's pieces never.
		f.TipTimeline = seg.TLI + 1
		err := f.Fetch(ctx, seg.Name(segSize), filepath.Join(destDir(t), "d"))
		if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "timeline 4 only") {
			t.Errorf("Fetch of an ancestor's tip = %v, want ErrNotFound", err)
		}
		// A standby's: complete segments only.
		f.TipTimeline, f.NoPieces = 0, true
		repo2, _ := newRepo(t, catalog.Options{})
		put(t, repo2, catalog.PieceKey(seg, segSize, 0, 100000), data[:100000])
		f.Repo = repo2
		if err := f.Fetch(ctx, seg.Name(segSize), filepath.Join(destDir(t), "d")); !errors.Is(err, ErrNotFound) {
			t.Errorf("Fetch with NoPieces of a tip = %v, want ErrNotFound", err)
		}
	})
	t.Run("divergent overlap", func(t *testing.T) {
		repo, _ := newRepo(t, catalog.Options{})
		put(t, repo, catalog.PieceKey(seg, segSize, 0, 200000), data[:200000])
		other := bytes.Clone(data[100000:300000])
		other[50000] ^= 1
		put(t, repo, catalog.PieceKey(seg, segSize, 100000, 300000), other)
		err := fetcher(repo).Fetch(ctx, seg.Name(segSize), filepath.Join(destDir(t), "d"))
		if err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "disagrees") {
			t.Errorf("Fetch of divergent pieces = %v", err)
		}
	})
	t.Run("piece of the wrong length", func(t *testing.T) {
		repo, _ := newRepo(t, catalog.Options{})
		put(t, repo, catalog.PieceKey(seg, segSize, 0, 200000), data[:199999])
		err := fetcher(repo).Fetch(ctx, seg.Name(segSize), filepath.Join(destDir(t), "d"))
		if err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "holds 199999 bytes") {
			t.Errorf("Fetch of a short piece = %v", err)
		}
		repo, _ = newRepo(t, catalog.Options{})
		put(t, repo, catalog.PieceKey(seg, segSize, 0, 200000), data[:200001])
		err = fetcher(repo).Fetch(ctx, seg.Name(segSize), filepath.Join(destDir(t), "d"))
		if err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "more than the 200000 bytes") {
			t.Errorf("Fetch of a long piece = %v", err)
		}
	})
	t.Run("corrupt piece", func(t *testing.T) {
		repo, fs := newRepo(t, catalog.Options{})
		put(t, repo, catalog.PieceKey(seg, segSize, 0, 100000), data[:100000])
		key := catalog.PieceKey(seg, segSize, 100000, 200000)
		put(t, repo, key, data[100000:200000])
		flipByte(t, fs, key, 3000)
		err := fetcher(repo).Fetch(ctx, seg.Name(segSize), filepath.Join(destDir(t), "d"))
		if !errors.Is(err, codec.ErrCorrupt) || !strings.Contains(err.Error(), key) {
			t.Errorf("Fetch with a damaged piece = %v", err)
		}
	})
	t.Run("stray object", func(t *testing.T) {
		repo, _ := newRepo(t, catalog.Options{})
		put(t, repo, catalog.PieceKey(seg, segSize, 0, 100000), data[:100000])
		put(t, repo, catalog.PiecePrefix(seg, segSize)+"junk", []byte("x"))
		err := fetcher(repo).Fetch(ctx, seg.Name(segSize), filepath.Join(destDir(t), "d"))
		if err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "junk") {
			t.Errorf("Fetch with a stray object among the pieces = %v", err)
		}
	})
	t.Run("complete segment wins", func(t *testing.T) {
		repo, _ := newRepo(t, catalog.Options{})
		put(t, repo, catalog.PieceKey(seg, segSize, 0, 100000), randomBytes(100000, 9))
		put(t, repo, catalog.SegmentKey(seg, segSize), data)
		dest := filepath.Join(destDir(t, "d"), "d")
		if err := fetcher(repo).Fetch(ctx, seg.Name(segSize), dest); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(dest); !bytes.Equal(got, data) {
			t.Error("Fetch served the pieces, not the complete segment")
		}
	})
}
