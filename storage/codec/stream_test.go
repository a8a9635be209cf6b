package codec

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"time"

	"filippo.io/age"
)

// generator produces n bytes of half text, half random, 64 KiB at a time,
// without holding more than two 1 MiB blocks.
type generator struct {
	text []byte
	rng  *rand.ChaCha8
	left int64
	page int
	off  int // offset in the current 64 KiB page
}

// newGenerator returns a generator of n bytes.
func newGenerator(n int64) *generator {
	return &generator{text: textBytes(42, 1<<20), rng: rand.NewChaCha8([32]byte{42}), left: n}
}

// Read fills p with the next bytes.
func (g *generator) Read(p []byte) (int, error) {
	if g.left == 0 {
		return 0, io.EOF
	}
	const page = 64 << 10
	n := int(min(int64(len(p)), g.left, int64(page-g.off)))
	if g.page%2 == 0 {
		start := (g.page * 37 << 10) % (len(g.text) - page)
		copy(p[:n], g.text[start+g.off:])
	} else {
		_, _ = g.rng.Read(p[:n])
	}
	g.off += n
	g.left -= int64(n)
	if g.off == page {
		g.page, g.off = g.page+1, 0
	}
	return n, nil
}

// heapPeak samples the heap in use until stop is called, and returns its
// peak growth over the heap in use when it started.
func heapPeak() (stop func() uint64) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > base {
				peak = max(peak, ms.HeapInuse-base)
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return func() uint64 {
		close(done)
		wg.Wait()
		return peak
	}
}

// TestStreamMemory streams a 256 MiB payload through a Writer, an io.Pipe
// and a Reader, and checks that the heap stays small: nothing holds the
// object.
func TestStreamMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("streams 256 MiB")
	}
	const size = 256 << 20
	id := newIdentity(t)
	for _, tc := range []struct {
		name  string
		opts  Options
		limit uint64
	}{
		{"none", Options{}, 64 << 20},
		{"zstd+age", Options{Compression: Zstd, Recipients: []age.Recipient{id.Recipient()}}, 64 << 20},
		// Parallel compression holds sections in flight: about 30 MiB per
		// goroutine, as Options.Concurrency says.
		{"zstd-concurrency2", Options{Compression: Zstd, Concurrency: 2}, (64 + 32) << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stop := heapPeak()
			want, got, stored, err := pipeThrough(newGenerator(size), tc.opts, []age.Identity{id})
			peak := stop()
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Fatalf("read payload hashes to %x, want %x", got, want)
			}
			t.Logf("256 MiB payload, %d MiB stored, heap peak +%.1f MiB", stored>>20, float64(peak)/(1<<20))
			if peak >= tc.limit {
				t.Errorf("heap grew by %d MiB, want under %d MiB", peak>>20, tc.limit>>20)
			}
		})
	}
}

// pipeThrough writes src through a Writer into an io.Pipe, reads it back
// through a Reader, and returns the sha256 of what was written and of what
// was read, and the stored size.
func pipeThrough(src io.Reader, opts Options, identities []age.Identity) (want, got [32]byte, stored int64, err error) {
	pr, pw := io.Pipe()
	var werr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		h := sha256.New()
		w, err := NewWriter(pw, opts)
		if err == nil {
			_, err = io.Copy(w, io.TeeReader(src, h))
			if cerr := w.Close(); err == nil {
				err = cerr
			}
			stored = w.StoredSize()
		}
		h.Sum(want[:0])
		werr = err
		pw.CloseWithError(err)
	}()

	r, err := NewReader(pr, testName, identities)
	if err == nil {
		h := sha256.New()
		_, err = io.Copy(h, r)
		h.Sum(got[:0])
		r.Close()
	}
	pr.CloseWithError(errors.New("reader stopped"))
	wg.Wait()
	if werr != nil {
		return want, got, stored, fmt.Errorf("write: %w", werr)
	}
	return want, got, stored, err
}

// TestNoGoroutineLeak checks that writers and readers, finished or
// abandoned after an error, leave no goroutine behind once closed.
func TestNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	payload := mixedBytes(13, 2<<20)
	for _, v := range variants(t) {
		for _, concurrency := range []int{1, 2, 4} {
			opts := v.opts
			opts.Concurrency = concurrency
			stored, _ := encode(t, payload, opts)

			// A writer that fails part way.
			w, err := NewWriter(&failingWriter{limit: 1000}, opts)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = w.Write(payload)
			_ = w.Close()

			// A reader closed half way, and one of a damaged object.
			r, err := NewReader(bytes.NewReader(stored), testName, v.identities)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.CopyN(io.Discard, r, 1<<20); err != nil {
				t.Fatal(err)
			}
			r.Close()
			bad := bytes.Clone(stored)
			bad[len(bad)/2] ^= 1
			if _, err := decode(bad, v.identities); err == nil {
				t.Fatal("decoded a damaged object")
			}
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if after := runtime.NumGoroutine(); after > before {
		buf := make([]byte, 1<<16)
		t.Errorf("%d goroutines before, %d after:\n%s", before, after, buf[:runtime.Stack(buf, true)])
	}
}
