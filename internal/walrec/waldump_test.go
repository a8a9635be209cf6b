package walrec

import (
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/wal"
)

// TestWaldump reads the WAL of a PostgreSQL 15 server and compares every
// record, and every event, with what pg_waldump makes of the same files.
func TestWaldump(t *testing.T) {
	t.Parallel()
	c := pgtest.Start(t, pgtest.Options{Version: 15, Conf: serverConf(15)})
	f := workload(t, c)
	start, paths, data := segments(t, c.DataDir(), 1, f.end)
	events, seen := readReal(t, start, data, true, 9000)
	compareWaldump(t, waldump(t, paths), seen, events)
	checkFacts(t, f, events)
	plain, _ := readReal(t, start, data, false, 9000)
	checkCarries(t, f, start, data, plain)
	t.Logf("%d records, %d events in %d bytes of WAL from %s", len(seen), len(events), len(data), start)
	if *update {
		writeSeeds(t, start, data, events)
	}
}

// TestPromotion promotes a standby of a PostgreSQL 15 server and reads the
// new timeline's first segments, which begin with WAL of the old one.
func TestPromotion(t *testing.T) {
	t.Parallel()
	c := pgtest.Start(t, pgtest.Options{Version: 15})
	c.Exec(t, "CREATE TABLE before (a int); INSERT INTO before SELECT generate_series(1, 1000)")
	basebackup, err := pgtest.ClientBin("pg_basebackup")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(pgtest.MkdirOwned(t), "data")
	cmd := exec.Command(basebackup, "-D", dir, "-X", "stream", "-R", "-c", "fast", "-d", c.ConnString())
	cmd.Dir = "/"
	pgtest.RunAs(t, cmd)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pg_basebackup: %v\n%s", err, out)
	}
	s := pgtest.StartDataDir(t, dir, pgtest.Options{Version: 15})
	if got := s.Scalar(t, "SELECT pg_promote()"); got != "t" {
		t.Fatalf("pg_promote() = %q", got)
	}
	s.Exec(t, "INSERT INTO before VALUES (0)")
	end, err := wal.ParseLSN(s.Scalar(t, "SELECT pg_switch_wal()"))
	if err != nil {
		t.Fatal(err)
	}
	start, paths, data := segments(t, s.DataDir(), 2, end)
	events, seen := readReal(t, start, data, true, 9000)
	compareWaldump(t, waldump(t, paths), seen, events)
	var promoted []Event
	for _, ev := range events {
		if ev.Kind == EndOfRecovery {
			promoted = append(promoted, ev)
		}
	}
	if len(promoted) != 1 || promoted[0].TLI != 2 {
		t.Errorf("end-of-recovery events %+v, want one starting timeline 2", promoted)
	}
}

// dumped is a record as pg_waldump prints it.
type dumped struct {
	rmgr   string
	totLen uint32
	xid    uint32
	lsn    wal.LSN
	desc   string
}

var dumpedLine = regexp.MustCompile(`^rmgr: (\S+)\s+len \(rec/tot\):\s*\d+/\s*(\d+), tx:\s*(\d+), lsn: ([0-9A-F]+/[0-9A-F]+), prev [0-9A-F]+/[0-9A-F]+, desc: (.*)$`)

// waldump runs PostgreSQL 15's pg_waldump over the segment files, which
// follow each other, with times in UTC.
func waldump(t *testing.T, paths []string) []dumped {
	t.Helper()
	bin, err := pgtest.ClientBin("pg_waldump")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--path", filepath.Dir(paths[0]), filepath.Base(paths[0]), filepath.Base(paths[len(paths)-1]))
	cmd.Env = []string{"TZ=UTC"}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("pg_waldump: %v\n%s", err, stderr.Bytes())
	}
	var recs []dumped
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		m := dumpedLine.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("pg_waldump printed %q", line)
		}
		totLen, err1 := strconv.ParseUint(m[2], 10, 32)
		xid, err2 := strconv.ParseUint(m[3], 10, 32)
		lsn, err3 := wal.ParseLSN(m[4])
		if err1 != nil || err2 != nil || err3 != nil {
			t.Fatalf("pg_waldump printed %q", line)
		}
		recs = append(recs, dumped{m[1], uint32(totLen), uint32(xid), lsn, m[5]})
	}
	return recs
}

// rmgrNames are pg_waldump's names of PostgreSQL 15's resource managers.
var rmgrNames = []string{"XLOG", "Transaction", "Storage", "CLOG", "Database", "Tablespace", "MultiXact",
	"RelMap", "Standby", "Heap2", "Heap", "Btree", "Hash", "Gin", "Gist", "Sequence", "SPGist", "BRIN",
	"CommitTs", "ReplicationOrigin", "Generic", "LogicalMessage"}

// compareWaldump compares the records a Reader saw, and its events, with
// pg_waldump's.
func compareWaldump(t *testing.T, recs []dumped, seen []seenRecord, events []Event) {
	t.Helper()
	if len(seen) != len(recs) {
		t.Errorf("the Reader saw %d records, pg_waldump %d", len(seen), len(recs))
	}
	for i := range min(len(seen), len(recs)) {
		s, d := seen[i], recs[i]
		if s.lsn != d.lsn || s.totLen != d.totLen || int(s.rmid) >= len(rmgrNames) || rmgrNames[s.rmid] != d.rmgr {
			t.Fatalf("record %d: the Reader saw %d bytes of rmgr %d at %s, pg_waldump %d bytes of %s at %s",
				i, s.totLen, s.rmid, s.lsn, d.totLen, d.rmgr, d.lsn)
		}
	}
	var want []Event
	next := map[wal.LSN]wal.LSN{} // record start -> next record's start
	for i, d := range recs {
		if i+1 < len(recs) {
			next[d.lsn] = recs[i+1].lsn
		}
		if ev, ok := dumpedEvent(t, d); ok {
			want = append(want, ev)
		}
	}
	if len(events) != len(want) {
		t.Errorf("the Reader reports %d events, pg_waldump shows %d", len(events), len(want))
	}
	for i := range min(len(events), len(want)) {
		got := events[i]
		if n, ok := next[got.LSN]; ok && n != got.End && !(got.End%8192 == 0 && n == got.End+headerAt(got.End)) {
			t.Errorf("%s at %s ends at %s, but the next record starts at %s", got.Kind, got.LSN, got.End, n)
		}
		got.End = 0
		if got.Kind == RestorePoint { // pg_waldump does not show its time
			if time.Since(got.Time) > time.Hour || time.Until(got.Time) > time.Minute {
				t.Errorf("restore point %q made at %v", got.Name, got.Time)
			}
			got.Time = time.Time{}
		}
		if got != want[i] {
			t.Errorf("event %d:\n got %+v\nwant %+v (pg_waldump)", i, got, want[i])
		}
	}
}

// headerAt is the size of the page header at a page start.
func headerAt(lsn wal.LSN) wal.LSN {
	if lsn%pgSegSize == 0 {
		return longPageHeader
	}
	return shortPageHeader
}

// dumpedEvent makes the event a Reader should report for a record
// pg_waldump printed, with End and a restore point's time left out.
func dumpedEvent(t *testing.T, d dumped) (Event, bool) {
	t.Helper()
	parseTime := func(s string) time.Time {
		t.Helper()
		s, _, _ = strings.Cut(s, ";")
		tm, err := time.Parse("2006-01-02 15:04:05.000000 MST", s)
		if err != nil {
			t.Fatalf("pg_waldump's time in %q: %v", d.desc, err)
		}
		return tm.UTC()
	}
	ev := Event{LSN: d.lsn, XID: d.xid}
	op, rest, _ := strings.Cut(d.desc, " ")
	switch d.rmgr + " " + op {
	case "Transaction COMMIT", "Transaction ABORT":
		ev.Kind = map[string]Kind{"COMMIT": Commit, "ABORT": Abort}[op]
		ev.Time = parseTime(rest)
	case "Transaction COMMIT_PREPARED", "Transaction ABORT_PREPARED":
		ev.Kind = map[string]Kind{"COMMIT_PREPARED": CommitPrepared, "ABORT_PREPARED": AbortPrepared}[op]
		x, ts, _ := strings.Cut(rest, ": ")
		xid, err := strconv.ParseUint(x, 10, 32)
		if err != nil {
			t.Fatalf("pg_waldump's xid in %q: %v", d.desc, err)
		}
		ev.XID, ev.Time = uint32(xid), parseTime(ts)
	case "XLOG RESTORE_POINT":
		ev.Kind, ev.Name = RestorePoint, rest
	case "XLOG END_OF_RECOVERY":
		var tli, prev uint32
		if _, err := fmt.Sscanf(rest, "tli %d; prev tli %d; time ", &tli, &prev); err != nil {
			t.Fatalf("pg_waldump's %q: %v", d.desc, err)
		}
		ev.Kind, ev.TLI = EndOfRecovery, wal.TimeLineID(tli)
		ev.Time = parseTime(rest[strings.Index(rest, "time ")+len("time "):])
	case "XLOG BACKUP_END":
		lsn, err := wal.ParseLSN(rest)
		if err != nil {
			t.Fatalf("pg_waldump's %q: %v", d.desc, err)
		}
		ev.Kind, ev.BackupStart = BackupEnd, lsn
	default:
		return Event{}, false
	}
	return ev, true
}
