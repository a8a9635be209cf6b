package pgtest

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/walship/walship/internal/wal"
)

// walPage is the WAL page size of the servers pgtest starts (XLOG_BLCKSZ).
const walPage = 8192

// PadWAL writes WAL of no interest to recovery, non-transactional logical
// messages, through conn until the next record will start left bytes before
// the end of a segment of segSize bytes, and returns where. Then a record
// longer than left runs into the next segment. left is a multiple of 8 below
// half a segment that leaves that start 512 bytes or more into its 8 kB
// page. Other sessions' WAL may come in between: check where the record went.
func PadWAL(t testing.TB, conn *pgx.Conn, segSize uint64, left int) wal.LSN {
	t.Helper()
	if off := (segSize - uint64(left)) % walPage; left < 8 || uint64(left) >= segSize/2 || left%8 != 0 || off < 512 {
		t.Fatalf("PadWAL: left %d is not a multiple of 8 below half a segment leaving 512 bytes on its page", left)
	}
	ctx := context.Background()
	insert := func() uint64 {
		t.Helper()
		var s string
		if err := conn.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&s); err != nil {
			t.Fatalf("PadWAL: %v", err)
		}
		lsn, err := wal.ParseLSN(s)
		if err != nil {
			t.Fatal(err)
		}
		return uint64(lsn)
	}
	// A message record of n bytes takes 54+n bytes (header, short data
	// header, xl_logical_message, "pad\0"), 57+n from 228 bytes on, and 24
	// more for each page header it crosses.
	emit := func(n uint64) {
		t.Helper()
		if _, err := conn.Exec(ctx, "SELECT pg_logical_emit_message(false, 'pad', repeat('x', $1::int))", int64(n)); err != nil {
			t.Fatalf("PadWAL: %v", err)
		}
	}
	for range 50 {
		pos := insert()
		end := (pos/segSize + 1) * segSize
		target := end - uint64(left)
		samePage := pos/walPage == target/walPage
		switch {
		case pos == target:
			return wal.LSN(pos)
		case samePage && pos+56 <= target && target-pos < 282:
			emit(target - pos - 54)
		case samePage && pos+282 <= target:
			emit(target - pos - 57)
		default:
			// Land on the target's page halfway to it, or on the next
			// segment's when past that.
			land := target - target%walPage/2&^7
			if pos+64 > land {
				land += segSize
			}
			headers := (land/walPage - pos/walPage) * 24
			emit((land - pos) - min(land-pos, headers+57+16))
		}
	}
	t.Fatalf("PadWAL: the insert position does not settle %d bytes before a segment end", left)
	return 0
}
