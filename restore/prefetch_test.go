package restore

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage/catalog"
)

func TestPrefetch(t *testing.T) {
	ctx := context.Background()
	repo, store := newRepo(t, catalog.Options{})
	segs := map[string][]byte{}
	var names []string
	for i := range uint64(10) {
		s := wal.Segment{TLI: 1, No: 1 + i}
		data := randomBytes(segSize, 10+i)
		put(t, repo, catalog.SegmentKey(s, segSize), data)
		segs[s.Name(segSize)] = data
		names = append(names, s.Name(segSize))
	}
	// The tip of segment 11 in pieces: never prefetched.
	tip := wal.Segment{TLI: 1, No: 11}
	put(t, repo, catalog.PieceKey(tip, segSize, 0, 4096), randomBytes(4096, 99))
	spool := Spool{Dir: filepath.Join(t.TempDir(), "spool")}
	spooled := func() []string {
		entries, _ := os.ReadDir(spool.Dir)
		var out []string
		for _, e := range entries {
			out = append(out, e.Name())
		}
		return out
	}
	f := fetcher(repo)
	f.Spool, f.SpoolWait = &spool, time.Second

	if err := f.Prefetch(ctx, spool, names[0], 5, 2); err != nil {
		t.Fatal(err)
	}
	if got := spooled(); !slices.Equal(got, names[1:6]) {
		t.Fatalf("spool after prefetching 5 after %s: %q, want %q", names[0], got, names[1:6])
	}
	// Served from the spool: no download.
	dir := destDir(t, "RECOVERYXLOG")
	dest := filepath.Join(dir, "RECOVERYXLOG")
	gets := store.gets.Load()
	if err := f.Fetch(ctx, names[2], dest); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(dest); !bytes.Equal(got, segs[names[2]]) {
		t.Errorf("%s from the spool differs from the stored segment", names[2])
	}
	if n := store.gets.Load() - gets; n != 0 {
		t.Errorf("a spooled segment cost %d GETs", n)
	}
	// Taking one prunes the spooled segments recovery has passed.
	if got := spooled(); !slices.Equal(got, names[3:6]) {
		t.Errorf("spool after taking %s: %q, want %q", names[2], got, names[3:6])
	}
	// Prefetch stops at the end of the complete segments: the tip's
	// pieces are not spooled, and no claim is left behind.
	if err := f.Prefetch(ctx, spool, names[7], 8, 4); err != nil {
		t.Fatal(err)
	}
	if got := spooled(); !slices.Equal(got, append(slices.Clone(names[3:6]), names[8:10]...)) {
		t.Errorf("spool after prefetching past the end: %q", got)
	}
	// A segment claimed by a prefetcher that never delivers: wal-fetch
	// waits SpoolWait, then downloads it itself.
	if err := os.WriteFile(filepath.Join(spool.Dir, names[9]+".claim"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(spool.Dir, names[9])); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := f.Fetch(ctx, names[9], dest); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited < f.SpoolWait {
		t.Errorf("did not wait for the claimed segment (%v)", waited)
	}
	if got, _ := os.ReadFile(dest); !bytes.Equal(got, segs[names[9]]) {
		t.Errorf("%s downloaded after the wait differs", names[9])
	}
	// A stale claim is taken over.
	past := time.Now().Add(-claimTTL - time.Minute)
	if err := os.Chtimes(filepath.Join(spool.Dir, names[9]+".claim"), past, past); err != nil {
		t.Fatal(err)
	}
	if !spool.claim(names[9]) {
		t.Error("a stale claim was not taken over")
	}
}

// TestKeep: the keeper stays count segments ahead of a recovery that takes
// segments from the spool by renaming them, follows a wanted segment, and
// is the only one; in a spool of its own and in this boot's default spool,
// which it makes.
func TestKeep(t *testing.T) {
	t.Run("spool", func(t *testing.T) {
		data := t.TempDir()
		testKeep(t, data, Spool{Dir: filepath.Join(data, "walship_prefetch", "x")})
	})
	t.Run("default spool", func(t *testing.T) {
		data := t.TempDir()
		testKeep(t, data, Spool{Dir: SpoolDir(data, "file:///repo")})
	})
}

func testKeep(t *testing.T, data string, spool Spool) {
	ctx := t.Context()
	repo, _ := newRepo(t, catalog.Options{})
	var names []string
	for i := range uint64(30) {
		s := wal.Segment{TLI: 1, No: 1 + i}
		data := make([]byte, segSize) // content does not matter here
		data[0] = byte(i)
		put(t, repo, catalog.SegmentKey(s, segSize), data)
		names = append(names, s.Name(segSize))
	}
	f := fetcher(repo)
	done := make(chan error, 1)
	go func() { done <- f.Keep(ctx, spool, names[0], 4, 2, 2*time.Second) }()
	waitSpooled := func(want []string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			var got []string
			entries, _ := os.ReadDir(spool.Dir)
			for _, e := range entries {
				if len(e.Name()) == 24 {
					got = append(got, e.Name())
				}
			}
			if slices.Equal(got, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("spool %q, want %q", got, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitSpooled(names[1:5])
	// A second keeper returns at once.
	start := time.Now()
	if err := f.Keep(ctx, spool, names[0], 4, 2, time.Hour); err != nil || time.Since(start) > time.Second {
		t.Errorf("a second keeper: %v after %v, want to return at once", err, time.Since(start))
	}
	// Recovery takes two by renaming: the keeper refills.
	dest := t.TempDir()
	for _, n := range names[1:3] {
		if err := os.Rename(filepath.Join(spool.Dir, n), filepath.Join(dest, n)); err != nil {
			t.Fatal(err)
		}
	}
	waitSpooled(names[3:7])
	// A miss far ahead moves it there, and what it passed goes.
	spool.Want(names[20])
	waitSpooled(names[21:25])
	// Idle: it ends.
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the keeper did not end when nothing was taken")
	}
	if got := dirNames(t, data); len(got) != 0 {
		t.Errorf("the idle keeper left %v behind", got)
	}
}

// TestSpoolBoots checks that a keeper of this boot's spool removes the
// spools of other boots (and of none), which a power failure may have torn,
// and that the spool's empty parents go with it.
func TestSpoolBoots(t *testing.T) {
	data := t.TempDir()
	spool := Spool{Dir: SpoolDir(data, "file:///repo")}
	if !spool.volatile() {
		t.Fatalf("spool %s is not this boot's", spool.Dir)
	}
	parent := filepath.Dir(spool.Dir)
	other := filepath.Join(parent, "0c6f4b1e-2d3a-4f5b-8c9d-0e1f2a3b4c5d")
	for _, d := range []string{spool.Dir, other} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{filepath.Join(other, "000000010000000000000003"), filepath.Join(parent, "000000010000000000000004"), filepath.Join(parent, "notes"), filepath.Join(spool.Dir, "000000010000000000000005")} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	spool.removeOtherBoots()
	if got := strings.Join(dirNames(t, parent), " "); got != bootID()+" notes" {
		t.Errorf("after removeOtherBoots the spool's parent holds %s", got)
	}
	if len(dirNames(t, spool.Dir)) != 1 {
		t.Error("removeOtherBoots touched this boot's spool")
	}
	os.Remove(filepath.Join(parent, "notes"))
	os.RemoveAll(spool.Dir)
	spool.removeEmptyParents()
	if got := dirNames(t, data); len(got) != 0 {
		t.Errorf("the data directory still holds %v", got)
	}
}
