package archiver

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage/catalog"
)

// standby makes a streaming standby of primary with pg_basebackup -R.
func standby(t *testing.T, primary *pgtest.Cluster) *pgtest.Cluster {
	bin, err := pgtest.ClientBin("pg_basebackup")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(pgtest.MkdirOwned(t), "data")
	cmd := exec.Command(bin, "-d", primary.ConnString(), "-D", dir, "-R", "-X", "stream", "--checkpoint=fast")
	cmd.Dir = filepath.Dir(dir)
	pgtest.RunAs(t, cmd)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pg_basebackup: %v\n%s", err, out)
	}
	return pgtest.StartDataDir(t, dir, pgtest.Options{Version: primary.Version()})
}

// TestTimelineSwitch archives from a standby that is then promoted, as
// PostgreSQL's own 020_pg_receivewal test does: the archiver follows the
// server to the new timeline, stores its history file before any of its
// WAL, keeps the old timeline's last segment only as a partial, and restarts
// at the start of the segment holding the switch point.
func TestTimelineSwitch(t *testing.T) {
	t.Run("streaming", func(t *testing.T) { testTimelineSwitch(t, true) })
	// The archiver was down during the promotion: on restart it finishes
	// timeline 1 from the server's history and goes on with timeline 2.
	t.Run("restarted", func(t *testing.T) { testTimelineSwitch(t, false) })
}

func testTimelineSwitch(t *testing.T, running bool) {
	const segSize = 1 << 20
	primary := pgtest.Start(t, pgtest.Options{})
	workload(t, primary, 1000)
	sb := standby(t, primary)
	repo := fileRepo(t)
	cfg := testConfig(t, sb)
	stop := background(t, repo, cfg)
	workload(t, primary, 3000)
	primary.Exec(t, "SELECT pg_switch_wal()")
	workload(t, primary, 500)
	lsn := flushLSN(t, primary)
	waitFor(t, "the standby's archiver to catch up", func() bool {
		complete, pieces := segmentsIn(t, repo, segSize)
		end := wal.LSN(0)
		if len(complete) > 0 {
			end = complete[len(complete)-1].Start(segSize) + segSize
		}
		if len(pieces) > 0 {
			end = pieces[len(pieces)-1].Segment.Start(segSize) + wal.LSN(pieces[len(pieces)-1].End)
		}
		return end >= lsn
	})
	if !running {
		if _, err := stop(); err != nil {
			t.Fatal(err)
		}
	}
	primary.Stop(t)
	sb.Exec(t, "SELECT pg_promote()")
	waitFor(t, "promotion", func() bool { return sb.Scalar(t, "SELECT pg_is_in_recovery()") == "f" })
	sb.Exec(t, "CREATE TABLE after_promotion AS SELECT 1 AS v")
	sb.Exec(t, "SELECT pg_switch_wal()")
	workload(t, sb, 500)
	after := flushLSN(t, sb)
	if !running {
		stop = background(t, repo, cfg)
	}
	waitFor(t, "WAL of timeline 2", func() bool {
		for oi, err := range repo.Store().List(t.Context(), catalog.TimelinePrefix(2)) {
			if err != nil {
				t.Fatal(err)
			}
			if o, err := catalog.ParseWALKey(oi.Key, segSize); err == nil && o.Segment.Start(segSize)+wal.LSN(segSize) > after {
				return true
			}
		}
		return false
	})
	if _, err := stop(); err != nil {
		t.Fatal(err)
	}

	hist, err := repo.ReadAll(t.Context(), catalog.HistoryKey(2), 1<<20)
	if err != nil {
		t.Fatalf("history of timeline 2: %v", err)
	}
	entries, err := wal.ParseHistory(hist)
	if err != nil || len(entries) != 1 || entries[0].TLI != 1 {
		t.Fatalf("history %q: %+v, %v", hist, entries, err)
	}
	switchAt := entries[0].Switch
	switchSeg := wal.SegmentOf(1, switchAt, segSize)
	var old, next []catalog.WALObject
	for oi, err := range repo.Store().List(t.Context(), "wal/") {
		if err != nil {
			t.Fatal(err)
		}
		o, err := catalog.ParseWALKey(oi.Key, segSize)
		if err != nil {
			t.Fatalf("stray key %s", oi.Key)
		}
		switch o.TLI {
		case 1:
			old = append(old, o)
		case 2:
			next = append(next, o)
		}
	}
	for _, o := range old {
		if o.Segment.No > switchSeg.No || o.Segment.No == switchSeg.No && o.Kind == catalog.Segment {
			t.Errorf("timeline 1 holds %s at or past the switch point %s under a final name", o.Key, switchAt)
		}
	}
	if switchAt%segSize != 0 {
		if _, err := repo.Store().Stat(t.Context(), catalog.PartialKey(switchSeg, segSize)); err != nil {
			t.Errorf("no partial of timeline 1's last segment: %v", err)
		}
	}
	if len(next) < 2 || next[0].Kind != catalog.History {
		t.Fatalf("timeline 2's objects %v: want the history file first", next)
	}
	first := next[1]
	if first.Segment.No != switchSeg.No || first.Kind != catalog.Segment {
		t.Errorf("timeline 2 starts with %s, want the complete segment %s", first.Key, wal.Segment{TLI: 2, No: switchSeg.No}.Name(segSize))
	}
	// Timeline 2's WAL, from its first segment on, reads as one stream that
	// holds the table created after promotion.
	var last wal.Segment
	for _, o := range next[1:] {
		if o.Kind == catalog.Segment {
			last = o.Segment
		}
	}
	dir := fetchRange(t, repo, 2, switchSeg.No, last.No, segSize)
	dump := waldump(t, dir, 2, switchSeg.Start(segSize), last.Start(segSize)+segSize-1)
	if !strings.Contains(dump, "CREATE") && !strings.Contains(dump, "after_promotion") && !strings.Contains(dump, "Storage") {
		t.Errorf("timeline 2's WAL shows no trace of the table created after promotion:\n%s", lastLines(dump, 10))
	}
	if !strings.Contains(dump, "END_OF_RECOVERY") {
		t.Errorf("timeline 2's WAL lacks the end-of-recovery record:\n%s", lastLines(dump, 10))
	}
}
