package storagetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/walship/walship/storage"
)

// BigObjectEnv names the environment variable that sets the size in bytes of
// the bounded-memory test object; the default is 1 GiB.
const BigObjectEnv = "WALSHIP_TEST_BIG_OBJECT"

// Option relaxes the suite for what a server, not walship, does.
type Option func(*options)

type options struct {
	listMayMiss bool
}

// ListingMayMissReplaced accepts a listing that misses an object replaced
// during it (MinIO on one drive walks its directories as the file store
// does, without the file store's reread), as long as the listing right after
// shows it: what the lease relies on.
func ListingMayMissReplaced() Option { return func(o *options) { o.listMayMiss = true } }

// Run runs the whole suite. newStore returns an empty store that no other
// test uses; it is called once per subtest.
func Run(t *testing.T, newStore func(t *testing.T) storage.Store, opts ...Option) {
	RunBehaviour(t, newStore, opts...)
	t.Run("BigObject", func(t *testing.T) { testBigObject(t, newStore(t)) })
}

// RunBehaviour runs every test but the large-object memory test, for second
// configurations of a backend whose memory use they do not change.
func RunBehaviour(t *testing.T, newStore func(t *testing.T) storage.Store, opts ...Option) {
	var o options
	for _, f := range opts {
		f(&o)
	}
	t.Run("Missing", func(t *testing.T) { testMissing(t, newStore(t)) })
	t.Run("RoundTrip", func(t *testing.T) { testRoundTrip(t, newStore(t)) })
	t.Run("Overwrite", func(t *testing.T) { testOverwrite(t, newStore(t)) })
	t.Run("List", func(t *testing.T) { testList(t, newStore(t)) })
	t.Run("ListWhileReplacing", func(t *testing.T) { testListWhileReplacing(t, newStore(t), o.listMayMiss) })
	t.Run("InvalidKeys", func(t *testing.T) { testInvalidKeys(t, newStore(t)) })
	t.Run("Create", func(t *testing.T) { testCreate(t, newStore(t)) })
	t.Run("CancelledPut", func(t *testing.T) { testCancelledPut(t, newStore(t)) })
	t.Run("FailingReader", func(t *testing.T) { testFailingReader(t, newStore(t)) })
	t.Run("Codec", func(t *testing.T) { testCodec(t, newStore(t)) })
	t.Run("Sweep", func(t *testing.T) { testSweep(t, newStore(t)) })
}

func ctx(t *testing.T) context.Context { return t.Context() }

func put(t *testing.T, s storage.Store, key string, data []byte) {
	t.Helper()
	if err := s.Put(ctx(t), key, bytes.NewReader(data)); err != nil {
		t.Fatalf("Put(%q): %v", key, err)
	}
}

func get(t *testing.T, s storage.Store, key string, off int64) []byte {
	t.Helper()
	rc, err := s.Get(ctx(t), key, off)
	if err != nil {
		t.Fatalf("Get(%q, %d): %v", key, off, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %q: %v", key, err)
	}
	return b
}

func keys(t *testing.T, s storage.Store, prefix string) []string {
	t.Helper()
	var got []string
	for oi, err := range s.List(ctx(t), prefix) {
		if err != nil {
			t.Fatalf("List(%q): %v", prefix, err)
		}
		got = append(got, oi.Key)
	}
	return got
}

func wantAbsent(t *testing.T, s storage.Store, key string) {
	t.Helper()
	if _, err := s.Stat(ctx(t), key); !errors.Is(err, storage.ErrNotExist) {
		t.Fatalf("Stat(%q) = %v, want ErrNotExist", key, err)
	}
	if got := keys(t, s, key); len(got) != 0 {
		t.Fatalf("List(%q) = %q, want nothing", key, got)
	}
}

func testMissing(t *testing.T, s storage.Store) {
	if _, err := s.Get(ctx(t), "no/such/key", 0); !errors.Is(err, storage.ErrNotExist) {
		t.Errorf("Get missing = %v, want ErrNotExist", err)
	}
	if _, err := s.Stat(ctx(t), "no/such/key"); !errors.Is(err, storage.ErrNotExist) {
		t.Errorf("Stat missing = %v, want ErrNotExist", err)
	}
	if err := s.Delete(ctx(t), "no/such/key"); err != nil {
		t.Errorf("Delete missing = %v, want nil", err)
	}
	put(t, s, "dir/obj", []byte("x"))
	// A "directory" of other keys is not an object.
	if _, err := s.Stat(ctx(t), "dir"); !errors.Is(err, storage.ErrNotExist) {
		t.Errorf("Stat of a key prefix = %v, want ErrNotExist", err)
	}
	if _, err := s.Get(ctx(t), "dir/obj/below", 0); !errors.Is(err, storage.ErrNotExist) {
		t.Errorf("Get below an object = %v, want ErrNotExist", err)
	}
	if err := s.Delete(ctx(t), "dir/obj"); err != nil {
		t.Fatal(err)
	}
	wantAbsent(t, s, "dir/obj")
}

func testRoundTrip(t *testing.T, s storage.Store) {
	for _, n := range []int{0, 1, 4096, 5<<20 + 1, 17 << 20} {
		key := "rt/" + strconv.Itoa(n)
		data := pattern(n)
		put(t, s, key, data)
		if got := get(t, s, key, 0); !bytes.Equal(got, data) {
			t.Fatalf("%s: got %d bytes, want %d identical", key, len(got), len(data))
		}
		oi, err := s.Stat(ctx(t), key)
		if err != nil {
			t.Fatal(err)
		}
		if oi.Key != key || oi.Size != int64(n) || oi.ModTime.IsZero() {
			t.Errorf("Stat = %+v, want key %s size %d and a time", oi, key, n)
		}
		if n > 0 {
			off := int64(n / 3)
			if got := get(t, s, key, off); !bytes.Equal(got, data[off:]) {
				t.Errorf("%s from %d: got %d bytes, want %d identical", key, off, len(got), n-int(off))
			}
		}
	}
}

func testOverwrite(t *testing.T, s storage.Store) {
	put(t, s, "k", []byte("first version"))
	put(t, s, "k", []byte("second"))
	if got := string(get(t, s, "k", 0)); got != "second" {
		t.Errorf("after overwrite got %q", got)
	}
}

func testList(t *testing.T, s storage.Store) {
	all := []string{
		"a.b", "a/b", "a/c/d", "a0", "ab", "b/x",
		"wal/00000001/000000010000000000000001", "wal/00000001/000000010000000000000002",
		"wal/00000001/000000010000000000000002.partial/00000000", "wal/00000002.history",
		"wal/00000002/000000020000000000000002",
	}
	// Insert in a scrambled order.
	for _, i := range []int{5, 0, 8, 3, 10, 1, 7, 6, 4, 9, 2} {
		put(t, s, all[i], []byte(all[i]))
	}
	want := slices.Clone(all)
	slices.Sort(want)
	cases := map[string][]string{
		"":                     want,
		"a":                    {"a.b", "a/b", "a/c/d", "a0", "ab"},
		"a/":                   {"a/b", "a/c/d"},
		"a/c":                  {"a/c/d"},
		"wal/00000001/0000000": {"wal/00000001/000000010000000000000001", "wal/00000001/000000010000000000000002", "wal/00000001/000000010000000000000002.partial/00000000"},
		"wal/00000002":         {"wal/00000002.history", "wal/00000002/000000020000000000000002"},
		"zzz":                  nil,
		"b/x":                  {"b/x"},
		"b/x/":                 nil,
	}
	for prefix, want := range cases {
		if got := keys(t, s, prefix); !slices.Equal(got, want) {
			t.Errorf("List(%q)\n got %q\nwant %q", prefix, got, want)
		}
	}
	// Sizes come with the listing, and an early break stops it.
	n := 0
	for oi, err := range s.List(ctx(t), "wal/") {
		if err != nil {
			t.Fatal(err)
		}
		if oi.Size != int64(len(oi.Key)) {
			t.Errorf("List size of %s = %d, want %d", oi.Key, oi.Size, len(oi.Key))
		}
		if n++; n == 2 {
			break
		}
	}
	// A cancelled context ends the listing with an error.
	c, cancel := context.WithCancel(ctx(t))
	cancel()
	var lerr error
	for _, err := range s.List(c, "") {
		lerr = err
	}
	if lerr == nil {
		t.Error("List with a cancelled context gave no error")
	}
}

func testInvalidKeys(t *testing.T, s storage.Store) {
	for _, k := range []string{"", "/abs", "../up", "a/../b", "a//b", "a/", ".hidden", "a/.tmp", "a/./b", "nul\x00byte", "new\nline"} {
		if err := s.Put(ctx(t), k, strings.NewReader("x")); err == nil {
			t.Errorf("Put(%q) succeeded, want an error", k)
		}
		if _, err := s.Get(ctx(t), k, 0); err == nil || errors.Is(err, storage.ErrNotExist) {
			t.Errorf("Get(%q) = %v, want a key error", k, err)
		}
	}
	if got := keys(t, s, ""); len(got) != 0 {
		t.Errorf("invalid puts left %q", got)
	}
}

func testCreate(t *testing.T, s storage.Store) {
	c, ok := s.(storage.Creator)
	if !ok {
		t.Fatalf("%T does not implement storage.Creator", s)
	}
	if err := c.Create(ctx(t), "lock", strings.NewReader("one")); err != nil {
		t.Fatalf("first Create: %v", err)
	}
	if err := c.Create(ctx(t), "lock", strings.NewReader("two")); !errors.Is(err, storage.ErrExist) {
		t.Fatalf("second Create = %v, want ErrExist", err)
	}
	if got := string(get(t, s, "lock", 0)); got != "one" {
		t.Errorf("after a refused Create the object holds %q, want %q", got, "one")
	}
	// Racing creators: exactly one wins, with single and multipart uploads.
	for _, size := range []int{100, 6 << 20, 17 << 20} {
		raceCreate(t, s, c, "race-"+strconv.Itoa(size), size)
	}
}

func raceCreate(t *testing.T, s storage.Store, c storage.Creator, key string, size int) {
	const n = 4
	var wg sync.WaitGroup
	errs := make([]error, n)
	bodies := make([][]byte, n)
	for i := range n {
		bodies[i] = bytes.Repeat([]byte{byte('a' + i)}, size)
		wg.Go(func() { errs[i] = c.Create(ctx(t), key, bytes.NewReader(bodies[i])) })
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Fatalf("%s: both creators %d and %d won", key, winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, storage.ErrExist):
			t.Fatalf("creator %d: %v, want ErrExist or success", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no creator won")
	}
	if got := get(t, s, key, 0); !bytes.Equal(got, bodies[winner]) {
		t.Errorf("%s: the object is not the winner's body", key)
	}
}

// blockingReader yields size bytes, then blocks until its context is done.
type blockingReader struct {
	ctx  context.Context
	left int
	sent chan struct{}
}

func (r *blockingReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		close(r.sent)
		<-r.ctx.Done()
		return 0, r.ctx.Err()
	}
	n := min(len(p), r.left)
	clear(p[:n])
	r.left -= n
	return n, nil
}

func testCancelledPut(t *testing.T, s storage.Store) {
	put(t, s, "old", []byte("old bytes"))
	for _, key := range []string{"new", "old"} {
		for _, size := range []int{1000, 12 << 20} {
			c, cancel := context.WithCancel(ctx(t))
			r := &blockingReader{ctx: c, left: size, sent: make(chan struct{})}
			go func() { <-r.sent; cancel() }()
			var err error
			if cr, ok := s.(storage.Creator); ok && key == "new" {
				err = cr.Create(c, key, r)
			} else {
				err = s.Put(c, key, r)
			}
			cancel()
			if err == nil {
				t.Fatalf("%s, %d bytes: cancelled write succeeded", key, size)
			}
			if key == "new" {
				wantAbsent(t, s, key)
			} else if got := string(get(t, s, key, 0)); got != "old bytes" {
				t.Fatalf("cancelled overwrite left %d bytes, want the old object", len(got))
			}
		}
	}
}

var errBroken = errors.New("source broke")

func testFailingReader(t *testing.T, s storage.Store) {
	for _, size := range []int{0, 100, 11 << 20} {
		r := io.MultiReader(bytes.NewReader(pattern(size)), iotestErr{errBroken})
		err := s.Put(ctx(t), "short", r)
		if !errors.Is(err, errBroken) {
			t.Fatalf("Put from a reader failing after %d bytes = %v, want that reader's error", size, err)
		}
		wantAbsent(t, s, "short")
	}
}

type iotestErr struct{ err error }

func (e iotestErr) Read([]byte) (int, error) { return 0, e.err }

// pattern returns n bytes that differ at every offset modulo a large prime,
// so that a misplaced range shows.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

func testBigObject(t *testing.T, s storage.Store) {
	size := int64(1 << 30)
	if v := os.Getenv(BigObjectEnv); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			t.Fatalf("%s=%q: want a positive byte count", BigObjectEnv, v)
		}
		size = n
	}
	// Bounded memory means far below the object, whatever its size; the
	// limit allows for a backend's part buffers in flight.
	limit := min(size/4, 96<<20)

	src := newRandomReader(size, 1)
	peak, err := peakHeapGrowth(func() error { return s.Put(ctx(t), "big", src) })
	if err != nil {
		t.Fatalf("Put %d bytes: %v", size, err)
	}
	t.Logf("Put of %d MiB: peak heap growth %d MiB", size>>20, peak>>20)
	if peak > limit {
		t.Errorf("Put of %d MiB grew the heap by %d MiB, want at most %d MiB", size>>20, peak>>20, limit>>20)
	}
	oi, err := s.Stat(ctx(t), "big")
	if err != nil || oi.Size != size {
		t.Fatalf("Stat = %+v, %v; want size %d", oi, err, size)
	}

	var n int64
	h := sha256.New()
	peak, err = peakHeapGrowth(func() error {
		rc, err := s.Get(ctx(t), "big", 0)
		if err != nil {
			return err
		}
		defer rc.Close()
		n, err = io.Copy(h, rc)
		return err
	})
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	t.Logf("Get of %d MiB: peak heap growth %d MiB", size>>20, peak>>20)
	if peak > limit {
		t.Errorf("Get of %d MiB grew the heap by %d MiB, want at most %d MiB", size>>20, peak>>20, limit>>20)
	}
	if n != size || !bytes.Equal(h.Sum(nil), src.sum()) {
		t.Errorf("Get returned %d bytes with a different digest, want the %d bytes put", n, size)
	}
	if err := s.Delete(ctx(t), "big"); err != nil {
		t.Fatal(err)
	}
}

// peakHeapGrowth runs f while sampling the heap and reports the largest
// growth of in-use heap over the level before f started.
func peakHeapGrowth(f func() error) (int64, error) {
	var ms runtime.MemStats
	// Two collections empty sync.Pools, whose buffers would otherwise count
	// as the baseline.
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	base := int64(ms.HeapInuse)
	var peak int64
	done := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			peak = max(peak, int64(ms.HeapInuse)-base)
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	err := f()
	close(done)
	<-sampled
	return peak, err
}

func (r *randomReader) String() string { return fmt.Sprintf("random(%d)", r.size) }

// testListWhileReplacing checks that a listing shows a state the store was
// in: while a writer creates the next object of a sequence and only then
// deletes the previous one, a listing never comes back empty (with mayMiss,
// never twice in a row). The repository lease relies on it to never reuse a
// generation.
func testListWhileReplacing(t *testing.T, s storage.Store, mayMiss bool) {
	const rounds = 200
	key := func(i int) string { return fmt.Sprintf("seq/%08d", i) }
	put(t, s, key(0), []byte("0"))
	done := make(chan struct{})
	var writeErr error
	go func() {
		defer close(done)
		for i := 1; i <= rounds; i++ {
			if writeErr = s.Put(ctx(t), key(i), strings.NewReader(strconv.Itoa(i))); writeErr != nil {
				return
			}
			if writeErr = s.Delete(ctx(t), key(i-1)); writeErr != nil {
				return
			}
		}
	}()
	lists, missed := 0, 0
	for running := true; running; lists++ {
		select {
		case <-done:
			running = false
		default:
		}
		if got := keys(t, s, "seq/"); len(got) == 0 {
			if !mayMiss {
				t.Fatalf("listing %d came back empty while objects were replaced one by one", lists)
			}
			if again := keys(t, s, "seq/"); len(again) == 0 {
				t.Fatalf("listings %d and the one right after came back empty while objects were replaced one by one", lists)
			}
			missed++
		}
	}
	if missed > 0 {
		t.Logf("%d listings missed the object being replaced; the next one showed it", missed)
	}
	if writeErr != nil {
		t.Fatal(writeErr)
	}
	if got, want := keys(t, s, "seq/"), []string{key(rounds)}; !slices.Equal(got, want) {
		t.Errorf("after the writer: %q, want %q", got, want)
	}
	t.Logf("%d listings during %d replacements", lists, rounds)
}
