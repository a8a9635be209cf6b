package storagetest

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
	"testing"

	"github.com/walship/walship/storage"
)

// Bench measures Put and Get throughput of s for object sizes that matter to
// walship: a 1 MiB test WAL segment, a 16 MiB WAL segment, and a 128 MiB
// slice of a base backup.
func Bench(b *testing.B, s storage.Store) {
	for _, size := range []int{1 << 20, 16 << 20, 128 << 20} {
		data := make([]byte, size)
		_, _ = newRandomReader(int64(size), 2).Read(data)
		name := fmt.Sprintf("%dMiB", size>>20)
		b.Run("Put/"+name, func(b *testing.B) {
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if err := s.Put(b.Context(), "bench/put-"+strconv.Itoa(i%4), bytes.NewReader(data)); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("Get/"+name, func(b *testing.B) {
			if err := s.Put(b.Context(), "bench/get", bytes.NewReader(data)); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				rc, err := s.Get(b.Context(), "bench/get", 0)
				if err != nil {
					b.Fatal(err)
				}
				n, err := io.Copy(io.Discard, rc)
				rc.Close()
				if err != nil || n != int64(size) {
					b.Fatalf("read %d bytes: %v", n, err)
				}
			}
		})
	}
}
