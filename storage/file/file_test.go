package file_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/file"
	"github.com/walship/walship/storage/storagetest"
)

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store {
		s, err := file.New(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func BenchmarkFile(b *testing.B) {
	s, err := file.New(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	storagetest.Bench(b, s)
}

// TestEmptyDirectories: Delete and Sweep remove the directories they empty,
// and writes into a directory that is removed meanwhile still succeed.
func TestEmptyDirectories(t *testing.T) {
	root := t.TempDir()
	s, err := file.New(root)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	for _, k := range []string{"backups/b1/base.tar", "backups/b1/backup.json", "wal/00000001/seg"} {
		if err := s.Put(ctx, k, strings.NewReader(k)); err != nil {
			t.Fatal(err)
		}
	}
	tmp := filepath.Join(root, "backups", "b2", ".base.tar.tmp-123")
	if err := os.MkdirAll(filepath.Dir(tmp), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tmp, []byte("cut short"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"backups/b1/base.tar", "backups/b1/backup.json"} {
		if err := s.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Sweep(ctx, "backups/", time.Now().Add(time.Minute), func(storage.Leftover) bool { return true }); err != nil {
		t.Fatal(err)
	}
	var left []string
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && p != root {
			left = append(left, strings.TrimPrefix(p, root+"/"))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"wal", "wal/00000001", "wal/00000001/seg"}; !slices.Equal(left, want) {
		t.Errorf("left %q, want %q", left, want)
	}

	// A writer and a deleter of keys in one directory: the directory comes
	// and goes under the writer, which never fails for it.
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				_ = s.Delete(ctx, "x/y/a")
			}
		}
	})
	for i := range 300 {
		if err := s.Put(ctx, "x/y/a", strings.NewReader("a")); err != nil {
			t.Fatalf("put %d while the directory comes and goes: %v", i, err)
		}
	}
	close(stop)
	wg.Wait()
}
