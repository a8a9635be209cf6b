package multipart

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fake records what Stream does with a target; its funcs inject failures.
type fake struct {
	single   []byte
	begun    bool
	mu       sync.Mutex
	parts    map[int32][]byte
	complete []int32
	aborted  bool
	abortCtx error

	inFlight, maxInFlight atomic.Int32

	partErr     func(n int32) error
	completeErr error
}

func (f *fake) Single(_ context.Context, body *io.SectionReader) error {
	b, err := io.ReadAll(body)
	f.single = b
	return err
}

func (f *fake) Begin(context.Context) (Upload[int32], error) {
	f.begun = true
	f.parts = map[int32][]byte{}
	return f, nil
}

func (f *fake) Part(ctx context.Context, n int32, body *io.SectionReader) (int32, error) {
	cur := f.inFlight.Add(1)
	defer f.inFlight.Add(-1)
	for {
		m := f.maxInFlight.Load()
		if cur <= m || f.maxInFlight.CompareAndSwap(m, cur) {
			break
		}
	}
	time.Sleep(time.Millisecond) // let parts overlap
	if f.partErr != nil {
		if err := f.partErr(n); err != nil {
			return 0, err
		}
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	f.mu.Lock()
	b, err := io.ReadAll(body)
	if err != nil {
		return 0, err
	}
	f.parts[n] = b
	f.mu.Unlock()
	return n, nil
}

func (f *fake) Complete(_ context.Context, parts []int32) error {
	f.complete = parts
	return f.completeErr
}

func (f *fake) Abort(ctx context.Context) error {
	f.aborted = true
	f.abortCtx = ctx.Err()
	return nil
}

func (f *fake) joined(t *testing.T) []byte {
	var b []byte
	for i, n := range f.complete {
		if n != int32(i+1) {
			t.Fatalf("Complete got part %d at position %d", n, i)
		}
		b = append(b, f.parts[n]...)
	}
	return b
}

func data(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % 253)
	}
	return b
}

func TestSmallObjectIsOneRequest(t *testing.T) {
	for _, n := range []int{0, 1, 99} {
		f := &fake{}
		if err := Stream(t.Context(), f, bytes.NewReader(data(n)), Config{PartSize: 100, InFlight: 2}); err != nil {
			t.Fatal(err)
		}
		if f.begun || !bytes.Equal(f.single, data(n)) {
			t.Errorf("%d bytes: begun=%v single=%d bytes; want one request with everything", n, f.begun, len(f.single))
		}
	}
}

func TestPartsInOrderAndGrowing(t *testing.T) {
	// 2500 parts' worth: sizes 10 for parts 1-1000, 20 for 1001-2000, 40 after.
	const n = 1000*10 + 1000*20 + 17*40 + 3
	f := &fake{}
	if err := Stream(t.Context(), f, bytes.NewReader(data(n)), Config{PartSize: 10, InFlight: 3}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(f.joined(t), data(n)) {
		t.Fatal("the parts do not add up to the input")
	}
	for _, c := range []struct {
		part int32
		size int
	}{{1, 10}, {1000, 10}, {1001, 20}, {2000, 20}, {2001, 40}, {2017, 40}, {2018, 3}} {
		if got := len(f.parts[c.part]); got != c.size {
			t.Errorf("part %d: %d bytes, want %d", c.part, got, c.size)
		}
	}
	if m := f.maxInFlight.Load(); m > 3 || m < 2 {
		t.Errorf("at most %d parts were in flight, want 2 or 3", m)
	}
	if f.aborted {
		t.Error("a good upload was aborted")
	}
	// An exact multiple of the part size ends without an empty part.
	f = &fake{}
	if err := Stream(t.Context(), f, bytes.NewReader(data(30)), Config{PartSize: 10, InFlight: 2}); err != nil {
		t.Fatal(err)
	}
	if len(f.complete) != 3 || !bytes.Equal(f.joined(t), data(30)) {
		t.Errorf("30 bytes in 10-byte parts: completed %v", f.complete)
	}
}

var errBoom = errors.New("boom")

func TestFailuresAbort(t *testing.T) {
	cases := map[string]struct {
		f   *fake
		r   io.Reader
		ctx func() context.Context
	}{
		"part fails": {
			f: &fake{partErr: func(n int32) error {
				if n == 7 {
					return errBoom
				}
				return nil
			}},
			r: bytes.NewReader(data(200)),
		},
		"source fails": {
			f: &fake{},
			r: io.MultiReader(bytes.NewReader(data(55)), errReader{}),
		},
		"complete fails": {
			f: &fake{completeErr: errBoom},
			r: bytes.NewReader(data(200)),
		},
	}
	for name, c := range cases {
		err := Stream(t.Context(), c.f, c.r, Config{PartSize: 10, InFlight: 2})
		if !errors.Is(err, errBoom) {
			t.Errorf("%s: Stream = %v, want errBoom", name, err)
		}
		if !c.f.aborted {
			t.Errorf("%s: the upload was not aborted", name)
		}
		if name != "complete fails" && c.f.complete != nil {
			t.Errorf("%s: a failed upload was completed", name)
		}
	}
}

func TestCancelAbortsWithLiveContext(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	f := &fake{partErr: func(n int32) error {
		if n == 3 {
			cancel()
		}
		return nil
	}}
	err := Stream(ctx, f, bytes.NewReader(data(500)), Config{PartSize: 10, InFlight: 2})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Stream = %v, want context.Canceled", err)
	}
	if !f.aborted || f.abortCtx != nil {
		t.Errorf("aborted=%v with context error %v; want an abort on a live context", f.aborted, f.abortCtx)
	}
	if f.complete != nil {
		t.Error("a cancelled upload was completed")
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errBoom }
