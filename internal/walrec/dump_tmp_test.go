package walrec

import (
	"os"
	"testing"

	"github.com/walship/walship/internal/wal"
)

func BenchmarkDumpTmp(b *testing.B) {
	start, data := pgbenchSegment(b, 16<<20)
	os.WriteFile("/tmp/pgbench.seg", data, 0o644)
	b.Logf("start %s", start)
}

func BenchmarkFileTmp(b *testing.B) {
	data, _ := os.ReadFile("/tmp/pgbench.seg")
	start := data[8:16]
	s := uint64(start[0]) | uint64(start[1])<<8 | uint64(start[2])<<16 | uint64(start[3])<<24 | uint64(start[4])<<32
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		r := NewReader(wal.LSN(s), 16<<20)
		for off := 0; off < len(data); off += 128 << 10 {
			if _, err := r.Write(data[off : off+128<<10]); err != nil {
				b.Fatal(err)
			}
			r.Events()
		}
	}
}
