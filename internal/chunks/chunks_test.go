package chunks

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"
	"testing/iotest"
)

func TestBuffer(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, Size - 1, Size, Size + 1, 3*Size + 17} {
		data := make([]byte, n)
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		for _, limit := range []int64{int64(n), int64(n) + 5, int64(n / 2)} {
			// One byte at a time exercises short reads.
			var b Buffer
			got, err := b.Fill(iotest.OneByteReader(bytes.NewReader(data)), limit)
			if err != nil {
				t.Fatal(err)
			}
			want := data[:min(int64(n), limit)]
			if got != int64(len(want)) || b.Len() != got {
				t.Fatalf("n=%d limit=%d: read %d, len %d, want %d", n, limit, got, b.Len(), len(want))
			}
			if err := iotest.TestReader(b.Reader(), want); err != nil {
				t.Errorf("n=%d limit=%d: %v", n, limit, err)
			}
			if len(b.chunks) != (len(want)+Size-1)/Size {
				t.Errorf("n=%d limit=%d: %d chunks for %d bytes", n, limit, len(b.chunks), len(want))
			}
			b.Release()
		}
		// Write in uneven pieces.
		var w Buffer
		for rest := data; len(rest) > 0; {
			k := min(len(rest), 1+rng.IntN(Size/3))
			if _, err := w.Write(rest[:k]); err != nil {
				t.Fatal(err)
			}
			rest = rest[k:]
		}
		if got, err := io.ReadAll(w.Reader()); err != nil || !bytes.Equal(got, data) {
			t.Errorf("n=%d: written then read %d bytes (%v), want %d identical", n, len(got), err, n)
		}
		w.Release()
	}
}

func TestBufferReadError(t *testing.T) {
	boom := io.ErrClosedPipe
	var b Buffer
	n, err := b.Fill(io.MultiReader(bytes.NewReader(make([]byte, Size+3)), iotest.ErrReader(boom)), 4*Size)
	if err != boom {
		t.Fatalf("Fill error %v, want %v", err, boom)
	}
	if n != Size+3 || b.Len() != n {
		t.Errorf("read %d, len %d, want the %d bytes before the error", n, b.Len(), Size+3)
	}
	b.Release()
}
