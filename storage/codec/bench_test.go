package codec

import (
	"bytes"
	"fmt"
	"io"
	"testing"

	"filippo.io/age"
)

// benchSize is the payload of the benchmarks: a 16 MiB WAL segment's worth.
const benchSize = 16 << 20

// benchCase is a configuration the benchmarks measure.
type benchCase struct {
	name       string
	opts       Options
	identities []age.Identity
}

// benchCases returns the configurations the benchmarks measure.
func benchCases(b *testing.B) []benchCase {
	id := newIdentity(b)
	rcpt := []age.Recipient{id.Recipient()}
	ids := []age.Identity{id}
	return []benchCase{
		{"none", Options{}, nil},
		{"zstd-c1", Options{Compression: Zstd, Concurrency: 1}, nil},
		{"zstd-c2", Options{Compression: Zstd, Concurrency: 2}, nil},
		{"zstd-c1+age", Options{Compression: Zstd, Concurrency: 1, Recipients: rcpt}, ids},
		{"age", Options{Recipients: rcpt}, ids},
	}
}

// BenchmarkWriter measures encoding 16 MiB of half text, half random bytes.
// The stored-% metric is the stored size relative to the payload.
func BenchmarkWriter(b *testing.B) {
	payload := mixedBytes(1, benchSize)
	for _, bc := range benchCases(b) {
		b.Run(bc.name, func(b *testing.B) {
			benchWrite(b, payload, bc.opts)
		})
	}
}

// BenchmarkWriterLevel measures the zstd levels, one per encoder speed, on
// the same data as BenchmarkWriter; DefaultLevel was chosen from it.
func BenchmarkWriterLevel(b *testing.B) {
	payload := mixedBytes(1, benchSize)
	for _, level := range []int{1, 3, 6, 10} {
		b.Run(fmt.Sprintf("level%d", level), func(b *testing.B) {
			benchWrite(b, payload, Options{Compression: Zstd, Level: level})
		})
	}
}

// benchWrite encodes payload with opts b.N times.
func benchWrite(b *testing.B, payload []byte, opts Options) {
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	var stored int64
	for b.Loop() {
		w, err := NewWriter(io.Discard, opts)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := w.Write(payload); err != nil {
			b.Fatal(err)
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
		stored = w.StoredSize()
	}
	b.ReportMetric(100*float64(stored)/float64(len(payload)), "stored-%")
}

// BenchmarkReader measures decoding and verifying what BenchmarkWriter
// encodes.
func BenchmarkReader(b *testing.B) {
	payload := mixedBytes(1, benchSize)
	for _, bc := range benchCases(b) {
		b.Run(bc.name, func(b *testing.B) {
			stored, _ := encode(b, payload, bc.opts)
			b.SetBytes(int64(len(payload)))
			b.ReportAllocs()
			for b.Loop() {
				r, err := NewReader(bytes.NewReader(stored), testName, bc.identities)
				if err != nil {
					b.Fatal(err)
				}
				n, err := io.Copy(io.Discard, r)
				if err != nil || n != int64(len(payload)) {
					b.Fatalf("read %d bytes, %v; want %d", n, err, len(payload))
				}
				r.Close()
			}
		})
	}
}

// BenchmarkVerify measures checking an object without decoding it.
func BenchmarkVerify(b *testing.B) {
	stored, _ := encode(b, mixedBytes(1, benchSize), Options{Compression: Zstd})
	b.SetBytes(int64(len(stored)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Verify(bytes.NewReader(stored), testName); err != nil {
			b.Fatal(err)
		}
	}
}
