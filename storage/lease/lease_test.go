package lease

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/walship/walship/internal/miniotest"
	"github.com/walship/walship/internal/testlog"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/file"
	"github.com/walship/walship/storage/s3"
)

// leaseStores runs f against a file store and a real MinIO through
// storage/s3, a fresh repository for each.
func TestMain(m *testing.M) { os.Exit(miniotest.Main(m)) }

func leaseStores(t *testing.T, f func(t *testing.T, s storage.Store)) {
	t.Run("file", func(t *testing.T) {
		t.Parallel()
		s, err := file.New(filepath.Join(t.TempDir(), "repo"))
		if err != nil {
			t.Fatal(err)
		}
		f(t, s)
	})
	t.Run("minio", func(t *testing.T) {
		t.Parallel()
		srv := miniotest.Start(t)
		s, err := s3.New(t.Context(), s3.Config{
			Bucket:      srv.Bucket(t),
			Prefix:      "repo",
			Endpoint:    srv.URL(),
			Region:      "us-east-1",
			PathStyle:   true,
			Credentials: credentials.NewStaticCredentialsProvider(srv.AccessKey, srv.SecretKey, ""),
		})
		if err != nil {
			t.Fatal(err)
		}
		f(t, s)
	})
}

// faultStore is a store whose Put, Create and List can be replaced.
type faultStore struct {
	storage.Store
	put    func(ctx context.Context, key string, r io.Reader) error
	create func(ctx context.Context, key string, r io.Reader) error
	list   func(ctx context.Context, prefix string) iter.Seq2[storage.ObjectInfo, error]
}

func (f faultStore) List(ctx context.Context, prefix string) iter.Seq2[storage.ObjectInfo, error] {
	if f.list != nil {
		return f.list(ctx, prefix)
	}
	return f.Store.List(ctx, prefix)
}

func (f faultStore) Put(ctx context.Context, key string, r io.Reader) error {
	if f.put != nil {
		return f.put(ctx, key, r)
	}
	return f.Store.Put(ctx, key, r)
}

func (f faultStore) Create(ctx context.Context, key string, r io.Reader) error {
	if f.create != nil {
		return f.create(ctx, key, r)
	}
	return f.Store.(storage.Creator).Create(ctx, key, r)
}

var leaseT0 = time.Date(2030, 1, 2, 3, 4, 5, 600, time.UTC)

// at is a clock stopped at t.
func at(t time.Time) func() time.Time { return func() time.Time { return t } }

// acquireLease acquires or fails the test, and releases the lease when the
// test ends so that no fence timer outlives it.
func acquireLease(t *testing.T, s storage.Store, opts Options) *Lease {
	t.Helper()
	if opts.Log == nil {
		opts.Log = testlog.New(t)
	}
	l, err := Acquire(t.Context(), s, opts)
	if err != nil {
		t.Fatalf("Acquire(%s): %v", opts.Holder, err)
	}
	t.Cleanup(func() { _ = l.Release(context.Background()) })
	return l
}

// wantHeld checks that acquiring fails with a HeldError and returns it.
func wantHeld(t *testing.T, s storage.Store, opts Options) *HeldError {
	t.Helper()
	opts.Log = testlog.New(t)
	l, err := Acquire(t.Context(), s, opts)
	if err == nil {
		_ = l.Release(context.Background())
		t.Fatalf("Acquire(%s) took generation %d, want a HeldError", opts.Holder, l.Generation())
	}
	var held *HeldError
	if !errors.As(err, &held) {
		t.Fatalf("Acquire(%s) = %v, want a HeldError", opts.Holder, err)
	}
	return held
}

func listObjects(t *testing.T, s storage.Store, prefix string) []storage.ObjectInfo {
	t.Helper()
	var infos []storage.ObjectInfo
	for info, err := range s.List(t.Context(), prefix) {
		if err != nil {
			t.Fatal(err)
		}
		infos = append(infos, info)
	}
	return infos
}

func leaseKeys(t *testing.T, s storage.Store) []string {
	t.Helper()
	var keys []string
	for _, info := range listObjects(t, s, Prefix) {
		keys = append(keys, info.Key)
	}
	return keys
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func TestLeaseKey(t *testing.T) {
	if got, want := Key(1), "locks/archiver/0000000000000001"; got != want {
		t.Errorf("Key(1) = %q, want %q", got, want)
	}
	for _, tc := range []struct {
		key string
		gen uint64
		ok  bool
	}{
		{"locks/archiver/00000000000000FF", 255, true},
		{"locks/archiver/FFFFFFFFFFFFFFFF", 1<<64 - 1, true},
		{"locks/archiver/00000000000000ff", 0, false}, // not the canonical spelling
		{"locks/archiver/0000000000000000", 0, false},
		{"locks/archiver/000000000000001", 0, false},
		{"locks/archiver/README", 0, false},
		{"locks/other/0000000000000001", 0, false},
	} {
		gen, ok := parseLeaseKey(Prefix, tc.key)
		if gen != tc.gen || ok != tc.ok {
			t.Errorf("parseLeaseKey(%q) = %d, %v; want %d, %v", tc.key, gen, ok, tc.gen, tc.ok)
		}
	}
}

func TestLeaseOptions(t *testing.T) {
	s, err := file.New(filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Acquire(t.Context(), s, Options{TTL: 50 * time.Millisecond}); err == nil || !strings.Contains(err.Error(), "at least") {
		t.Errorf("TTL 50ms: err = %v, want a TTL error", err)
	}
	_, err = Acquire(t.Context(), struct{ storage.Store }{s}, Options{})
	if err == nil || !strings.Contains(err.Error(), "conditionally") {
		t.Errorf("store without Creator: err = %v, want one saying it cannot create conditionally", err)
	}
	l := acquireLease(t, s, Options{})
	parts := strings.Split(l.Holder(), "/")
	if len(parts) != 3 || parts[1] != strconv.Itoa(os.Getpid()) || len(parts[2]) != 12 {
		t.Errorf("default holder %q, want host/%d/<12 hex digits>", l.Holder(), os.Getpid())
	}
}

func TestLeaseAcquireEmpty(t *testing.T) {
	leaseStores(t, func(t *testing.T, s storage.Store) {
		l := acquireLease(t, s, Options{Holder: "a", Now: at(leaseT0)})
		if got, want := l.Generation(), uint64(1); got != want {
			t.Errorf("generation %d, want %d", got, want)
		}
		if got, want := leaseKeys(t, s), []string{"locks/archiver/0000000000000001"}; !slices.Equal(got, want) {
			t.Errorf("lease objects %q, want %q", got, want)
		}
		rec, err := readLease(t.Context(), s, l.Key())
		if err != nil {
			t.Fatal(err)
		}
		want := leaseRecord{Holder: "a", Acquired: leaseT0, Renewed: leaseT0, Expires: leaseT0.Add(DefaultTTL)}
		if rec != want {
			t.Errorf("lease object %+v, want %+v", rec, want)
		}
		if isClosed(l.Lost()) {
			t.Error("a fresh lease is lost")
		}
	})
}

func TestLeaseHeld(t *testing.T) {
	leaseStores(t, func(t *testing.T, s storage.Store) {
		acquireLease(t, s, Options{Holder: "host-a/42/abc", Now: at(leaseT0)})
		// Expired, but not by more than the clock skew allowed for.
		late := leaseT0.Add(DefaultTTL + DefaultClockSkew - time.Millisecond)
		for _, now := range []time.Time{leaseT0, late} {
			held := wantHeld(t, s, Options{Holder: "b", Now: at(now)})
			want := HeldError{Key: Key(1), Holder: "host-a/42/abc", Expires: leaseT0.Add(DefaultTTL)}
			if *held != want {
				t.Errorf("at %s: HeldError %+v, want %+v", now, *held, want)
			}
			if msg := held.Error(); !strings.Contains(msg, `"host-a/42/abc"`) || !strings.Contains(msg, "2030-01-02T03:04:35Z") || !strings.Contains(msg, "stop it") {
				t.Errorf("message %q does not name the holder, the expiry and what to do", msg)
			}
		}
	})
}

func TestLeaseTakeoverAfterExpiry(t *testing.T) {
	leaseStores(t, func(t *testing.T, s storage.Store) {
		a := acquireLease(t, s, Options{Holder: "a", Now: at(leaseT0)})
		later := leaseT0.Add(DefaultTTL + DefaultClockSkew)
		b := acquireLease(t, s, Options{Holder: "b", Now: at(later)})
		if got, want := b.Generation(), uint64(2); got != want {
			t.Errorf("taker's generation %d, want %d", got, want)
		}
		if got, want := leaseKeys(t, s), []string{Key(2)}; !slices.Equal(got, want) {
			t.Errorf("lease objects after takeover %q, want %q (the old generation deleted)", got, want)
		}
		if err := a.Renew(t.Context()); !errors.Is(err, ErrLost) {
			t.Errorf("old holder's Renew = %v, want ErrLost", err)
		}
		if !isClosed(a.Lost()) {
			t.Error("old holder's Lost is open")
		}
		if err := a.Keep(t.Context()); !errors.Is(err, ErrLost) {
			t.Errorf("old holder's Keep = %v, want ErrLost", err)
		}
		if err := b.Renew(t.Context()); err != nil {
			t.Errorf("new holder's Renew: %v", err)
		}
		// The old holder's release leaves the new holder's lease alone.
		if err := a.Release(t.Context()); err != nil {
			t.Errorf("old holder's Release: %v", err)
		}
		rec, err := readLease(t.Context(), s, Key(2))
		if err != nil {
			t.Fatal(err)
		}
		if rec.Holder != "b" || rec.Released {
			t.Errorf("after the old holder's release the lease is %+v, want b's and not released", rec)
		}
	})
}

func TestLeaseReleaseLetsNextAcquire(t *testing.T) {
	leaseStores(t, func(t *testing.T, s storage.Store) {
		a := acquireLease(t, s, Options{Holder: "a", Now: at(leaseT0)})
		if err := a.Release(t.Context()); err != nil {
			t.Fatal(err)
		}
		if err := a.Release(t.Context()); err != nil {
			t.Errorf("second Release: %v", err)
		}
		if err := a.Renew(t.Context()); err == nil || errors.Is(err, ErrLost) {
			t.Errorf("Renew after Release = %v, want an error other than ErrLost", err)
		}
		if isClosed(a.Lost()) {
			t.Error("a released lease reports itself lost")
		}
		if err := a.Keep(t.Context()); err != nil {
			t.Errorf("Keep after Release = %v, want nil", err)
		}
		// At the very same instant, well before the expiry.
		b := acquireLease(t, s, Options{Holder: "b", Now: at(leaseT0)})
		if got, want := b.Generation(), uint64(2); got != want {
			t.Errorf("next generation %d, want %d (generations never go back)", got, want)
		}
		if got, want := leaseKeys(t, s), []string{Key(2)}; !slices.Equal(got, want) {
			t.Errorf("lease objects %q, want %q", got, want)
		}
	})
}

func TestLeaseRace(t *testing.T) {
	leaseStores(t, func(t *testing.T, s storage.Store) {
		acquireLease(t, s, Options{Holder: "old", Now: at(leaseT0)})
		later := at(leaseT0.Add(time.Hour))
		const n = 8
		leases := make([]*Lease, n)
		errs := make([]error, n)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				<-start
				leases[i], errs[i] = Acquire(t.Context(), s, Options{Holder: fmt.Sprintf("taker-%d", i), Now: later, Log: testlog.New(t)})
			})
		}
		close(start)
		wg.Wait()
		var winner *Lease
		for i, l := range leases {
			if l != nil {
				t.Cleanup(func() { _ = l.Release(context.Background()) })
				if winner != nil {
					t.Errorf("both %s and %s won", winner.Holder(), l.Holder())
				}
				winner = l
			} else if errs[i] == nil {
				t.Errorf("taker %d: no lease and no error", i)
			}
		}
		if winner == nil {
			t.Fatalf("nobody won: %v", errs)
		}
		if got, want := winner.Generation(), uint64(2); got != want {
			t.Errorf("winner's generation %d, want %d", got, want)
		}
		for i, err := range errs {
			if leases[i] != nil {
				continue
			}
			var held *HeldError
			if !errors.As(err, &held) || held.Holder != winner.Holder() {
				t.Errorf("taker %d: %v, want a HeldError naming %s", i, err, winner.Holder())
			}
		}
		if got, want := leaseKeys(t, s), []string{Key(2)}; !slices.Equal(got, want) {
			t.Errorf("lease objects %q, want %q", got, want)
		}
	})
}

// TestLeaseStaleListing: a listing that misses the newest generation (taken
// over and the old one deleted after the listing began) must not let a taker
// reuse a deleted generation.
func TestLeaseStaleListing(t *testing.T) {
	leaseStores(t, func(t *testing.T, s storage.Store) {
		acquireLease(t, s, Options{Holder: "old", Now: at(leaseT0)})
		later := at(leaseT0.Add(time.Hour))
		winner := acquireLease(t, s, Options{Holder: "winner", Now: later})
		if got, want := leaseKeys(t, s), []string{Key(2)}; !slices.Equal(got, want) {
			t.Fatalf("lease objects %q, want %q", got, want)
		}
		stale := true
		fs := faultStore{Store: s, list: func(ctx context.Context, prefix string) iter.Seq2[storage.ObjectInfo, error] {
			if stale {
				stale = false
				return func(func(storage.ObjectInfo, error) bool) {} // nothing yet
			}
			return s.List(ctx, prefix)
		}}
		_, err := Acquire(t.Context(), fs, Options{Holder: "late", Now: later, Log: testlog.New(t)})
		var held *HeldError
		if !errors.As(err, &held) || held.Holder != "winner" {
			t.Errorf("Acquire after a stale listing = %v, want a HeldError naming winner", err)
		}
		if got, want := leaseKeys(t, s), []string{Key(2)}; !slices.Equal(got, want) {
			t.Errorf("lease objects %q, want %q (the reused generation withdrawn)", got, want)
		}
		if err := winner.Renew(t.Context()); err != nil {
			t.Errorf("the winner's renewal: %v", err)
		}
	})
}

func TestLeaseWait(t *testing.T) {
	leaseStores(t, func(t *testing.T, s storage.Store) {
		const ttl = 3 * time.Second // polls every 500ms
		a := acquireLease(t, s, Options{Holder: "a", TTL: ttl})

		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		defer cancel()
		_, err := Acquire(ctx, s, Options{Holder: "impatient", TTL: ttl, Wait: true, Log: testlog.New(t)})
		var held *HeldError
		if !errors.As(err, &held) || held.Holder != "a" || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("waiting past the deadline: %v, want a HeldError naming a and DeadlineExceeded", err)
		}

		type result struct {
			l   *Lease
			err error
		}
		got := make(chan result, 1)
		go func() {
			l, err := Acquire(t.Context(), s, Options{Holder: "b", TTL: ttl, Wait: true, Log: testlog.New(t)})
			got <- result{l, err}
		}()
		select {
		case r := <-got:
			t.Fatalf("acquired while held: %v, %v", r.l, r.err)
		case <-time.After(700 * time.Millisecond):
		}
		if err := a.Release(t.Context()); err != nil {
			t.Fatal(err)
		}
		// Timed from Release's end: its own write can take seconds on a
		// loaded disk.
		released := time.Now()
		r := <-got
		if r.err != nil {
			t.Fatalf("waiting acquirer: %v", r.err)
		}
		t.Cleanup(func() { _ = r.l.Release(context.Background()) })
		if took := time.Since(released); took > ttl/6+time.Second {
			t.Errorf("acquired %s after the release, want within a poll interval (%s)", took, ttl/6)
		}
		if r.l.Generation() != 2 {
			t.Errorf("generation %d, want 2", r.l.Generation())
		}
	})
}

func TestLeaseUnreadable(t *testing.T) {
	for _, tc := range []struct {
		name string
		body []byte
	}{
		{"garbage", []byte("not json\x00\xff")},
		{"no holder", []byte(`{"holder":"","expires":"2030-01-02T03:04:05Z"}`)},
		{"too large", append(bytes.Repeat([]byte(" "), leaseMaxObject), `{"holder":"x","expires":"2030-01-02T03:04:05Z"}`...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leaseStores(t, func(t *testing.T, s storage.Store) {
				if err := s.Put(t.Context(), Key(1), bytes.NewReader(tc.body)); err != nil {
					t.Fatal(err)
				}
				// An object that is not a generation is ignored.
				if err := s.Put(t.Context(), Prefix+"README", strings.NewReader("hello")); err != nil {
					t.Fatal(err)
				}
				var mod time.Time
				for _, info := range listObjects(t, s, Key(1)) {
					mod = info.ModTime
				}
				held := wantHeld(t, s, Options{Holder: "b", Now: at(mod.Add(time.Second))})
				want := HeldError{Key: Key(1), Expires: mod.Add(DefaultTTL)}
				if !held.Expires.Equal(want.Expires) || held.Key != want.Key || held.Holder != "" {
					t.Errorf("HeldError %+v, want %+v", *held, want)
				}
				if msg := held.Error(); !strings.Contains(msg, "cannot be read") || !strings.Contains(msg, Key(1)) {
					t.Errorf("message %q does not say the lease cannot be read", msg)
				}
				l := acquireLease(t, s, Options{Holder: "b", Now: at(mod.Add(DefaultTTL + DefaultClockSkew))})
				if got, want := l.Generation(), uint64(2); got != want {
					t.Errorf("generation %d, want %d", got, want)
				}
				if got, want := leaseKeys(t, s), []string{Key(2), Prefix + "README"}; !slices.Equal(got, want) {
					t.Errorf("lease objects %q, want %q", got, want)
				}
			})
		})
	}
}

// TestLeaseCreateAnsweredExist covers a Create whose first attempt succeeded
// but whose answer was lost, so that the client's retry found the object: the
// acquirer must see that the lease is its own.
func TestLeaseCreateAnsweredExist(t *testing.T) {
	s, err := file.New(filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	fs := faultStore{Store: s, create: func(ctx context.Context, key string, r io.Reader) error {
		if err := s.Create(ctx, key, r); err != nil {
			return err
		}
		return fmt.Errorf("create %s: retried: %w", key, storage.ErrExist)
	}}
	l := acquireLease(t, fs, Options{Holder: "a"})
	if l.Generation() != 1 {
		t.Errorf("generation %d, want 1", l.Generation())
	}
	wantHeld(t, fs, Options{Holder: "b"})
}

func TestLeaseKeep(t *testing.T) {
	leaseStores(t, func(t *testing.T, s storage.Store) {
		// Long enough that a renewal slowed by a busy 2-core machine (the
		// whole suite runs at once) still lands well within it.
		const ttl = 2 * time.Second
		l := acquireLease(t, s, Options{Holder: "a", TTL: ttl})
		first, err := readLease(t.Context(), s, l.Key())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		kept := make(chan error, 1)
		go func() { kept <- l.Keep(ctx) }()
		time.Sleep(5 * ttl / 2)
		if isClosed(l.Lost()) {
			t.Fatal("the lease was lost while Keep ran")
		}
		cancel()
		if err := <-kept; err != nil {
			t.Errorf("Keep after cancel = %v, want nil", err)
		}
		last, err := readLease(t.Context(), s, l.Key())
		if err != nil {
			t.Fatal(err)
		}
		if !last.Acquired.Equal(first.Acquired) || last.Expires.Sub(first.Expires) < 2*ttl {
			t.Errorf("after %s of renewals the lease is %+v, first %+v: want the same acquisition and an expiry at least %s later", 3*ttl, last, first, 2*ttl)
		}
		wantHeld(t, s, Options{Holder: "b", TTL: ttl})
	})
}

func TestLeaseSelfFence(t *testing.T) {
	const ttl = time.Second
	for _, tc := range []struct {
		name string
		put  func(unblock <-chan struct{}) func(context.Context, string, io.Reader) error
	}{
		{"put fails", func(<-chan struct{}) func(context.Context, string, io.Reader) error {
			return func(context.Context, string, io.Reader) error { return errors.New("injected: store unavailable") }
		}},
		// A put that ignores its context: only the fence timer can tell.
		{"put hangs", func(unblock <-chan struct{}) func(context.Context, string, io.Reader) error {
			return func(context.Context, string, io.Reader) error { <-unblock; return nil }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leaseStores(t, func(t *testing.T, s storage.Store) {
				unblock := make(chan struct{})
				fs := faultStore{Store: s, put: tc.put(unblock)}
				start := time.Now()
				l := acquireLease(t, fs, Options{Holder: "a", TTL: ttl})
				kept := make(chan error, 1)
				go func() { kept <- l.Keep(t.Context()) }()
				select {
				case <-l.Lost():
				case <-time.After(2 * ttl):
					t.Fatal("not lost after twice the TTL")
				}
				took := time.Since(start)
				close(unblock)
				// The fence is a timer at TTL-TTL/6; a busy machine may
				// run it a little late, never early.
				if took >= ttl*3/2 || took < ttl/2 {
					t.Errorf("lost after %s, want between %s and about the TTL %s", took, ttl/2, ttl)
				}
				if err := <-kept; !errors.Is(err, ErrLost) {
					t.Errorf("Keep = %v, want ErrLost", err)
				}
				if err := l.Renew(t.Context()); !errors.Is(err, ErrLost) {
					t.Errorf("Renew after the fence = %v, want ErrLost", err)
				}
				t.Logf("self-fenced after %s", took.Round(time.Millisecond))
			})
		})
	}
}
