package walrec

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/wal"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

const pgSegSize = 1 << 20 // pgtest's default

// serverConf is what the servers of these tests run with: two-phase commit,
// commit timestamps, all their WAL kept, compressed full-page images except
// on 15, whose images keep their holes in the clear, and no autovacuum, whose
// WAL could come between pgtest.PadWAL and the record it places.
func serverConf(version int) []string {
	conf := []string{"max_prepared_transactions = 5", "track_commit_timestamp = on", "wal_keep_size = '256MB'", "autovacuum = off"}
	if version != 15 {
		conf = append(conf, "wal_compression = on")
	}
	return conf
}

// facts is what a workload knows about the WAL it made.
type facts struct {
	start         wal.LSN // the WAL position before it
	end           wal.LSN // the end of its last record, an XLOG_SWITCH
	committed     map[uint32]bool
	aborted       map[uint32]bool
	prepared      map[uint32]bool // committed or rolled back with COMMIT/ROLLBACK PREPARED
	restorePoints map[string]wal.LSN
	backupStart   wal.LSN
	across        []uint32 // commits that run into the next segment
}

// workload writes WAL of every kind a Reader reports, and of what makes
// reading hard: records across pages and segments, a record larger than a
// segment, commit records with thousands of invalidations, full-page images,
// a segment switch in the middle, and records of interest placed to run into
// the next segment.
func workload(t *testing.T, c *pgtest.Cluster) facts {
	t.Helper()
	ctx := context.Background()
	conn := c.Conn(t)
	f := facts{committed: map[uint32]bool{}, aborted: map[uint32]bool{}, prepared: map[uint32]bool{}, restorePoints: map[string]wal.LSN{}}
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	scalar := func(sql string, args ...any) string {
		t.Helper()
		var s string
		if err := conn.QueryRow(ctx, sql, args...).Scan(&s); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return s
	}
	lsn := func(sql string, args ...any) wal.LSN {
		t.Helper()
		l, err := wal.ParseLSN(scalar(sql, args...))
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	xid := func() uint32 {
		t.Helper()
		x, err := strconv.ParseUint(scalar("SELECT pg_current_xact_id()::text"), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return uint32(x)
	}
	// inTx runs sql in a transaction and ends it with end.
	inTx := func(end string, sql ...string) uint32 {
		t.Helper()
		exec("BEGIN")
		for _, s := range sql {
			exec(s)
		}
		x := xid()
		exec(end)
		return x
	}
	manyTables := func(verb string) string {
		return fmt.Sprintf(`DO $$ BEGIN FOR i IN 1..100 LOOP EXECUTE format('%s many_%%s %s', i); END LOOP; END $$`,
			verb, map[string]string{"CREATE TABLE": "(a int PRIMARY KEY, b text)", "DROP TABLE": ""}[verb])
	}

	f.start = lsn("SELECT pg_current_wal_lsn()::text")
	exec("CREATE TABLE t (id int PRIMARY KEY, v text)")
	exec("SELECT pg_switch_wal()") // the small transactions begin a segment, for FuzzReader's seeds
	for i := range 200 {
		f.committed[inTx("COMMIT", fmt.Sprintf("INSERT INTO t VALUES (%d, 'small')", i))] = true
	}
	for i := range 20 {
		f.aborted[inTx("ROLLBACK", fmt.Sprintf("INSERT INTO t VALUES (%d, 'rolled back')", 1000+i))] = true
	}
	f.committed[inTx("COMMIT", "INSERT INTO t VALUES (2000, 'outer')", "SAVEPOINT s",
		"INSERT INTO t VALUES (2001, 'inner')", "ROLLBACK TO s")] = true
	f.committed[inTx("COMMIT", "INSERT INTO t SELECT g, repeat('big', 70) FROM generate_series(10000, 20000) g")] = true
	exec("SELECT pg_logical_emit_message(false, 'walrec', repeat('larger than a segment ', 120000))")
	f.committed[inTx("COMMIT", manyTables("CREATE TABLE"))] = true
	exec("SELECT pg_switch_wal()")
	for _, s := range []struct{ end, gid, sql string }{
		{"COMMIT PREPARED 'p1'", "p1", "INSERT INTO t VALUES (3000, 'prepared')"},
		{"COMMIT PREPARED 'drop'", "drop", manyTables("DROP TABLE")},
		{"ROLLBACK PREPARED 'p2'", "p2", "INSERT INTO t VALUES (3001, 'prepared, rolled back')"},
	} {
		x := inTx("PREPARE TRANSACTION '"+s.gid+"'", s.sql)
		exec(s.end)
		f.prepared[x] = true
	}
	f.restorePoints["before the switch"] = lsn("SELECT pg_create_restore_point('before the switch')::text")
	exec("SELECT pg_switch_wal()")
	f.restorePoints["après le switch"] = lsn("SELECT pg_create_restore_point('après le switch')::text")
	exec("CHECKPOINT")
	f.committed[inTx("COMMIT", "UPDATE t SET v = v || ' updated' WHERE id % 3 = 0")] = true // full-page images
	if c.Version() >= 15 {
		f.backupStart = lsn("SELECT pg_backup_start('walrec', true)::text")
		exec("SELECT pg_backup_stop(false)")
	} else {
		f.backupStart = lsn("SELECT pg_start_backup('walrec', true, false)::text")
		exec("SELECT pg_stop_backup(false)")
	}
	f.committed[inTx("COMMIT", "INSERT INTO t VALUES (4000, 'last')")] = true

	// A commit whose header runs into the next segment, a commit and a
	// restore point whose data do, and a commit of 30000 subtransactions
	// that starts too far back for a Carry.
	for _, left := range []int{16, 24} {
		pgtest.PadWAL(t, conn, pgSegSize, left)
		x := inTx("COMMIT")
		f.committed[x], f.across = true, append(f.across, x)
	}
	pgtest.PadWAL(t, conn, pgSegSize, 56)
	f.restorePoints["across"] = lsn("SELECT pg_create_restore_point('across')::text")
	exec("CREATE UNLOGGED TABLE subs (i int)")
	exec("BEGIN")
	exec("DO $$ BEGIN FOR i IN 1..30000 LOOP BEGIN INSERT INTO subs VALUES (i); EXCEPTION WHEN others THEN RAISE; END; END LOOP; END $$")
	x := xid()
	pgtest.PadWAL(t, c.Conn(t), pgSegSize, 100000) // more than CarryMax
	exec("COMMIT")
	f.committed[x], f.across = true, append(f.across, x)
	f.end = lsn("SELECT pg_switch_wal()::text")
	return f
}

// segments returns the WAL of timeline tli in the data directory's pg_wal,
// from the oldest segment there up to the one holding the byte before end:
// where it starts, the segment files and their bytes.
func segments(t *testing.T, dataDir string, tli wal.TimeLineID, end wal.LSN) (wal.LSN, []string, []byte) {
	t.Helper()
	last := wal.SegmentOf(tli, end-1, pgSegSize)
	var paths []string
	for seg := last; ; seg.No-- {
		path := filepath.Join(dataDir, "pg_wal", seg.Name(pgSegSize))
		if _, err := os.Stat(path); err != nil || seg.No == 0 {
			break
		}
		paths = append(paths, path)
	}
	slices.Reverse(paths)
	var data []byte
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) != pgSegSize {
			t.Fatalf("%s has %d bytes, want %d", p, len(b), pgSegSize)
		}
		data = append(data, b...)
	}
	if len(paths) == 0 {
		t.Fatalf("no WAL of timeline %d before %s in %s", tli, end, dataDir)
	}
	first := wal.Segment{TLI: tli, No: last.No - uint64(len(paths)) + 1}
	return first.Start(pgSegSize), paths, data
}

// seenRecord is a record a Reader saw in its check-everything mode.
type seenRecord struct {
	lsn    wal.LSN
	rmid   uint8
	totLen uint32
}

// readReal reads data, which starts at start, in random pieces of up to
// maxPiece bytes, with a Reader that checks every record if all is set.
func readReal(t *testing.T, start wal.LSN, data []byte, all bool, maxPiece int) ([]Event, []seenRecord) {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 0))
	r := NewReader(start, pgSegSize)
	r.all = all
	var seen []seenRecord
	r.seen = func(lsn wal.LSN, rmid, _ uint8, totLen uint32) { seen = append(seen, seenRecord{lsn, rmid, totLen}) }
	var events []Event
	for off := 0; off < len(data); {
		n := min(1+rng.IntN(maxPiece), len(data)-off)
		if _, err := r.Write(data[off : off+n]); err != nil {
			t.Fatalf("reading in random pieces (seed %d): %v", seed, err)
		}
		events = append(events, r.Events()...)
		off += n
	}
	return events, seen
}

// checkCarries reads data, which starts at start, a segment at a time with
// Readers made from Carries, and wants the events of a Reader that read it
// all, events, among them the records the workload ran into the next
// segment.
func checkCarries(t *testing.T, f facts, start wal.LSN, data []byte, events []Event) {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 1))
	got, carries := readChain(t, start, pgSegSize, data, func(rest int) int { return 1 + rng.IntN(min(rest, 1<<16)) })
	if !slices.Equal(got, events) {
		for i := range min(len(got), len(events)) {
			if got[i] != events[i] {
				t.Fatalf("read a segment at a time (seed %d), event %d is %+v, read at once %+v", seed, i, got[i], events[i])
			}
		}
		t.Fatalf("read a segment at a time (seed %d), %d events; read at once %d", seed, len(got), len(events))
	}
	kinds := map[carryKind]int{}
	for _, c := range carries {
		kinds[c.kind]++
	}
	if kinds[carryRecord] < 3 || kinds[carrySkip] == 0 || kinds[carryBoundary] == 0 || kinds[carryUnknown] == 0 {
		t.Errorf("carries of kinds %v, want 3 records or more and some of every other kind", kinds)
	}
	across := map[uint32]bool{}
	for _, x := range f.across {
		across[x] = true
	}
	for _, ev := range events {
		if across[ev.XID] && ev.Kind == Commit || ev.Kind == RestorePoint && ev.Name == "across" {
			if uint64(ev.LSN)/pgSegSize == uint64(ev.End-1)/pgSegSize {
				t.Errorf("%s %d %q at %s..%s does not run into the next segment; did other WAL come first?", ev.Kind, ev.XID, ev.Name, ev.LSN, ev.End)
			}
		}
	}
	t.Logf("%d segments, carries of kinds %v", len(carries), kinds)
}

// checkFacts checks the events against what the workload knows.
func checkFacts(t *testing.T, f facts, events []Event) {
	t.Helper()
	byXID := map[uint32]Event{}
	restorePoints := map[string]Event{}
	var backupEnds []Event
	for _, ev := range events {
		if ev.LSN < f.start {
			continue
		}
		switch ev.Kind {
		case RestorePoint:
			restorePoints[ev.Name] = ev
		case BackupEnd:
			backupEnds = append(backupEnds, ev)
		default:
			byXID[ev.XID] = ev
		}
	}
	for x := range f.committed {
		if ev, ok := byXID[x]; !ok || ev.Kind != Commit {
			t.Errorf("xid %d committed; event %+v", x, ev)
		}
	}
	for x := range f.aborted {
		if ev, ok := byXID[x]; !ok || ev.Kind != Abort {
			t.Errorf("xid %d rolled back; event %+v", x, ev)
		}
	}
	for x := range f.prepared {
		if ev, ok := byXID[x]; !ok || (ev.Kind != CommitPrepared && ev.Kind != AbortPrepared) {
			t.Errorf("prepared xid %d ended; event %+v", x, ev)
		}
	}
	for name, end := range f.restorePoints {
		if ev, ok := restorePoints[name]; !ok || ev.End != end {
			t.Errorf("restore point %q ends at %s, which pg_create_restore_point returned; event %+v", name, end, ev)
		}
	}
	if len(backupEnds) != 1 || backupEnds[0].BackupStart != f.backupStart {
		t.Errorf("backup ends %+v, want one that started at %s", backupEnds, f.backupStart)
	}
}

// TestServers reads the WAL of PostgreSQL 14, 16, 17 and 18 and compares
// every commit time with pg_xact_commit_timestamp. Version 15 has its own
// test, against pg_waldump.
func TestServers(t *testing.T) {
	for _, v := range []int{14, 16, 17, 18} {
		t.Run(strconv.Itoa(v), func(t *testing.T) {
			t.Parallel()
			c := pgtest.Start(t, pgtest.Options{Version: v, Conf: serverConf(v)})
			f := workload(t, c)
			start, _, data := segments(t, c.DataDir(), 1, f.end)
			events, seen := readReal(t, start, data, true, 1<<16)
			plain, _ := readReal(t, start, data, false, 1<<16)
			if !slices.Equal(events, plain) {
				t.Errorf("a Reader that checks every record reports %d events, one that does not %d", len(events), len(plain))
			}
			checkFacts(t, f, events)
			checkCarries(t, f, start, data, plain)
			checkCommitTimestamps(t, c, f, events)
			t.Logf("%d records, %d events in %d bytes of WAL from %s", len(seen), len(events), len(data), start)
		})
	}
}

// checkCommitTimestamps compares the time of every commit after the
// workload's start with what the server recorded for it.
func checkCommitTimestamps(t *testing.T, c *pgtest.Cluster, f facts, events []Event) {
	t.Helper()
	want := map[uint32]time.Time{}
	var xids []int64
	for _, ev := range events {
		if ev.LSN >= f.start && (ev.Kind == Commit || ev.Kind == CommitPrepared) {
			want[ev.XID] = ev.Time
			xids = append(xids, int64(ev.XID))
		}
	}
	rows, err := c.Conn(t).Query(context.Background(),
		"SELECT x, pg_xact_commit_timestamp(x::text::xid) FROM unnest($1::bigint[]) x", xids)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		var x int64
		var ts *time.Time
		if err := rows.Scan(&x, &ts); err != nil {
			t.Fatal(err)
		}
		n++
		if ts == nil || !ts.Equal(want[uint32(x)]) {
			t.Errorf("xid %d committed at %v, the Reader says %v", x, ts, want[uint32(x)])
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if n < len(f.committed) {
		t.Errorf("compared %d commit times, want at least the workload's %d", n, len(f.committed))
	}
}
