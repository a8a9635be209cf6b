package restore

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage/catalog"
)

// TestKeepBacksOff: while every download fails (a store answering 503
// SlowDown, say), the keeper tries again less and less often instead of
// every 50 ms; it would otherwise hammer a throttling store with its whole
// window of segments twenty times a second until it went idle, after the
// recovery it served had failed. It prefetches again once the store is
// back.
func TestKeepBacksOff(t *testing.T) {
	repo, fs := newRepo(t, catalog.Options{})
	var names []string
	for i := range uint64(10) {
		s := wal.Segment{TLI: 1, No: 1 + i}
		put(t, repo, catalog.SegmentKey(s, segSize), make([]byte, segSize))
		names = append(names, s.Name(segSize))
	}
	slow := errors.New("503 SlowDown (test)")
	var failing atomic.Bool
	failing.Store(true)
	fs.get = func(key string) error {
		if failing.Load() && strings.HasPrefix(key, "wal/") {
			return slow
		}
		return nil
	}
	data := t.TempDir()
	spool := Spool{Dir: filepath.Join(data, "walship_prefetch", "x")}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- fetcher(repo).Keep(ctx, spool, names[0], 4, 2, time.Minute) }()
	time.Sleep(2 * time.Second)
	tried := fs.gets.Load()
	// Four segments a round: with a backoff from the first failure that
	// doubles, a handful of rounds in two seconds, not forty.
	if tried > 40 {
		t.Errorf("the keeper made %d requests in 2s against a failing store, want it to back off", tried)
	}
	failing.Store(false)
	waitFor(t, 10*time.Second, "prefetching after the store came back", func() bool {
		return len(spool.segments(1, segSize)) == 4
	})
	t.Logf("%d requests while failing for 2s", tried)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the keeper did not end")
	}
}
