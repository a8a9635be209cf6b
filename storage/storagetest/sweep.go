package storagetest

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/storage"
)

// sweepWriteSize is what a stalled write sends before it stalls: more than
// one part of the backends' default part size (8 MiB), so that an S3 store
// has begun a multipart upload.
const sweepWriteSize = 12 << 20

// stalledWrite is a Put that sends sweepWriteSize bytes and then waits: for
// finish (the write completes) or for its context to end (its process
// died, as far as the store can tell).
type stalledWrite struct {
	key    string
	cancel context.CancelFunc
	finish chan struct{}
	done   chan struct{}
	err    error // of Put, once done is closed
}

func startStalledWrite(t *testing.T, s storage.Store, key string) *stalledWrite {
	c, cancel := context.WithCancel(ctx(t))
	w := &stalledWrite{key: key, cancel: cancel, finish: make(chan struct{}), done: make(chan struct{})}
	r := &stallingReader{ctx: c, left: sweepWriteSize, finish: w.finish}
	go func() {
		defer close(w.done)
		w.err = s.Put(c, key, r)
	}()
	t.Cleanup(func() { cancel(); <-w.done })
	return w
}

// wait returns the Put's result once it has ended.
func (w *stalledWrite) wait() error {
	<-w.done
	return w.err
}

// stallingReader yields left zero bytes, then blocks until finish is closed
// (io.EOF) or ctx ends.
type stallingReader struct {
	ctx    context.Context
	left   int
	finish chan struct{}
}

func (r *stallingReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		select {
		case <-r.finish:
			return 0, io.EOF
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
	}
	n := min(len(p), r.left)
	clear(p[:n])
	r.left -= n
	return n, nil
}

// leftovers runs a sweep that removes nothing and returns the keys it
// visited, sorted.
func leftovers(t *testing.T, sw storage.Sweeper, prefix string, cutoff time.Time) []string {
	t.Helper()
	var keys []string
	err := sw.Sweep(ctx(t), prefix, cutoff, func(l storage.Leftover) bool {
		if !strings.HasPrefix(l.Key, prefix) || l.ID == "" || l.Time.IsZero() || !l.Time.Before(cutoff) {
			t.Errorf("Sweep(%q, %s) visited %+v", prefix, cutoff.Format(time.RFC3339Nano), l)
		}
		keys = append(keys, l.Key)
		return false
	})
	if err != nil {
		t.Fatalf("Sweep(%q): %v", prefix, err)
	}
	slices.Sort(keys)
	return keys
}

// testSweep checks storage.Sweeper on writes that stall midway, as one whose
// process was killed would: a sweep sees them only when they began before
// its cut-off and their key has its prefix, removes only what it is told
// to, and leaves every object and every write it skipped intact; a write
// that was swept never becomes visible.
func testSweep(t *testing.T, s storage.Store) {
	sw, ok := s.(storage.Sweeper)
	if !ok {
		t.Fatalf("%T does not implement storage.Sweeper", s)
	}
	began := time.Now()
	later := began.Add(time.Hour)
	put(t, s, "sweep/kept", []byte("an object"))
	if got := leftovers(t, sw, "", later); len(got) != 0 {
		t.Fatalf("leftovers before any write stalled: %q", got)
	}
	dead := startStalledWrite(t, s, "sweep/a/dead")
	live := startStalledWrite(t, s, "other/live")
	want := []string{"other/live", "sweep/a/dead"}
	deadline := time.Now().Add(30 * time.Second)
	for !slices.Equal(leftovers(t, sw, "", later), want) {
		if time.Now().After(deadline) {
			t.Fatalf("stalled writes of %q: Sweep sees %q", want, leftovers(t, sw, "", later))
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Writes that began after the cut-off are never visited. File times
	// may run a clock tick behind time.Now, hence the second.
	if got := leftovers(t, sw, "", began.Add(-time.Second)); len(got) != 0 {
		t.Errorf("Sweep with a cut-off before the writes began visited %q", got)
	}
	for _, prefix := range []string{"sweep/", "sweep/a/d", "sweep/a/dead", "sweep/a/dead/", "sweep/b", "nothing"} {
		var want []string
		if strings.HasPrefix("sweep/a/dead", prefix) {
			want = []string{"sweep/a/dead"}
		}
		if got := leftovers(t, sw, prefix, later); !slices.Equal(got, want) {
			t.Errorf("Sweep(%q) visited %q, want %q", prefix, got, want)
		}
	}

	// Remove the dead write's leftover, keep the other one.
	var removed []string
	err := sw.Sweep(ctx(t), "", later, func(l storage.Leftover) bool {
		removed = append(removed, fmt.Sprintf("%s (%s)", l.Key, l.ID))
		return l.Key == "sweep/a/dead"
	})
	if err != nil {
		t.Fatalf("Sweep: %v", err)
	}
	t.Logf("visited %q", removed)
	if got := leftovers(t, sw, "", later); !slices.Equal(got, []string{"other/live"}) {
		t.Errorf("after removing sweep/a/dead's leftover, Sweep sees %q, want only other/live", got)
	}
	dead.cancel()
	if err := dead.wait(); err == nil {
		t.Error("a write whose leftover was swept succeeded")
	}
	wantAbsent(t, s, "sweep/a/dead")

	// The write that was skipped completes.
	close(live.finish)
	if err := live.wait(); err != nil {
		t.Fatalf("the write whose leftover was kept: %v", err)
	}
	if oi, err := s.Stat(ctx(t), "other/live"); err != nil || oi.Size != sweepWriteSize {
		t.Errorf("after the kept write completed: Stat = %+v, %v; want %d bytes", oi, err, sweepWriteSize)
	}
	if got := leftovers(t, sw, "", later); len(got) != 0 {
		t.Errorf("after every write ended, Sweep sees %q", got)
	}
	if got := string(get(t, s, "sweep/kept", 0)); got != "an object" {
		t.Errorf("sweep/kept holds %q after the sweeps", got)
	}
	if got := keys(t, s, ""); !slices.Equal(got, []string{"other/live", "sweep/kept"}) {
		t.Errorf("objects after the sweeps: %q", got)
	}
}
