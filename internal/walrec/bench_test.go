package walrec

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/wal"
)

// BenchmarkReader reads a 16 MB segment of pgbench's transactions in writes
// of 128 kB, taking the events after each, as an archiver would.
func BenchmarkReader(b *testing.B) {
	const segSize, piece = 16 << 20, 128 << 10
	start, data := pgbenchSegment(b, segSize)
	b.SetBytes(int64(len(data)))
	events, loops := 0, 0
	for b.Loop() {
		loops++
		r := NewReader(start, segSize)
		for off := 0; off < len(data); off += piece {
			if _, err := r.Write(data[off : off+piece]); err != nil {
				b.Fatal(err)
			}
			events += len(r.Events())
		}
	}
	b.ReportMetric(float64(events)/float64(loops), "events/op")
}

// pgbenchSegment runs pgbench on a PostgreSQL 15 server with segments of
// segSize bytes until one segment holds nothing but its transactions, and
// returns that segment.
func pgbenchSegment(b *testing.B, segSize uint64) (wal.LSN, []byte) {
	c := pgtest.Start(b, pgtest.Options{Version: 15, WALSegSizeMB: int(segSize >> 20), Conf: []string{"synchronous_commit = off"}})
	bin, err := pgtest.ClientBin("pgbench")
	if err != nil {
		b.Fatal(err)
	}
	pgbench := func(args ...string) {
		cmd := exec.Command(bin, append(args, "-h", "127.0.0.1", "-p", strconv.Itoa(c.Port()), "-U", "postgres", "postgres")...)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("pgbench %v: %v\n%s", args, err, out)
		}
	}
	lsn := func() wal.LSN {
		l, err := wal.ParseLSN(c.Scalar(b, "SELECT pg_current_wal_lsn()"))
		if err != nil {
			b.Fatal(err)
		}
		return l
	}
	pgbench("-i", "-q", "-s", "2")
	seg := wal.SegmentOf(1, lsn(), segSize)
	seg.No++
	for lsn() < seg.Start(segSize)+wal.LSN(segSize) {
		pgbench("-n", "-M", "prepared", "-c", "4", "-j", "2", "-t", "5000")
	}
	data, err := os.ReadFile(filepath.Join(c.DataDir(), "pg_wal", seg.Name(segSize)))
	if err != nil {
		b.Fatal(err)
	}
	return seg.Start(segSize), data
}
