package restore

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage/catalog"
)

const mib = 1 << 20

var planT0 = time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)

func at(min int) time.Time { return planT0.Add(time.Duration(min) * time.Minute) }

func backup(id string, tli uint32, start, end wal.LSN, startMin, stopMin int) catalog.Backup {
	return catalog.Backup{ID: id, StartTLI: tli, EndTLI: tli, StartLSN: start, EndLSN: end, StartTime: at(startMin), StopTime: at(stopMin)}
}

// extent is a timeline holding segments first..last (1 MiB each) except
// those in missing, stored last at newest.
func extent(tli wal.TimeLineID, first, last uint64, newest int, missing ...catalog.SegmentRange) catalog.Extent {
	return catalog.Extent{TLI: tli, History: tli > 1, First: first, Last: last, Segments: int(last - first + 1), Missing: missing, Newest: at(newest)}
}

func commit(tli wal.TimeLineID, lsn wal.LSN, min int, xid uint64) Event {
	return Event{TLI: tli, LSN: lsn, Time: at(min), XID: xid}
}

// oneTimeline: backups b1 (ends at 3 MiB) and b2 (ends at 8 MiB), WAL
// segments 1-15, a commit every MiB at minute = MiB, xid = 100 + MiB, a
// restore point "rp9" at 9.5 MiB.
func oneTimeline() Inventory {
	inv := Inventory{
		SegmentSize: mib,
		Backups: []catalog.Backup{
			backup("b1", 1, 1*mib+0x28, 3*mib+0x100, 1, 3),
			backup("b2", 1, 6*mib+0x28, 8*mib+0x100, 6, 8),
		},
		Extents: []catalog.Extent{extent(1, 1, 15, 16)},
	}
	for m := 1; m <= 15; m++ {
		inv.Events = append(inv.Events, commit(1, wal.LSN(m*mib+0x200), m, uint64(100+m)))
	}
	inv.Events = append(inv.Events, Event{TLI: 1, LSN: 9*mib + mib/2, Time: at(9).Add(30 * time.Second), Name: "rp9"})
	return inv
}

func TestPlanTargets(t *testing.T) {
	for _, tc := range []struct {
		name     string
		target   Target
		noIndex  bool
		backup   string
		stop     wal.LSN
		walEnd   wal.LSN
		wantErr  string
		wantNote string
	}{
		{name: "latest", target: Target{Kind: Latest}, backup: "b2", stop: 16 * mib, walEnd: 16 * mib},
		{name: "immediate", target: Target{Kind: Immediate}, backup: "b2", stop: 8*mib + 0x100, walEnd: 8*mib + 0x100},
		{name: "immediate from a chosen backup", target: Target{Kind: Immediate, Backup: "b1"}, backup: "b1", stop: 3*mib + 0x100, walEnd: 3*mib + 0x100},
		{name: "lsn after b2", target: Target{Kind: ToLSN, LSN: 9 * mib}, backup: "b2", stop: 9 * mib, walEnd: 9*mib + 1},
		{name: "lsn between", target: Target{Kind: ToLSN, LSN: 5 * mib}, backup: "b1", stop: 5 * mib, walEnd: 5*mib + 1},
		{name: "lsn at the end of the WAL", target: Target{Kind: ToLSN, LSN: 16 * mib}, wantErr: "at or past the end of the archived WAL"},
		{name: "lsn before every backup's end", target: Target{Kind: ToLSN, LSN: 2 * mib}, wantErr: "before the end of the oldest usable backup"},
		{name: "lsn past the WAL", target: Target{Kind: ToLSN, LSN: 20 * mib}, wantErr: "at or past the end of the archived WAL"},
		// Commits at minute m; the first later than 10:30 is minute 11's.
		{name: "time after b2", target: Target{Kind: ToTime, Time: at(10).Add(30 * time.Second)}, backup: "b2", stop: 11*mib + 0x200, walEnd: 11*mib + 0x200},
		{name: "time between", target: Target{Kind: ToTime, Time: at(5).Add(time.Second)}, backup: "b1", stop: 6*mib + 0x200, walEnd: 6*mib + 0x200},
		// b2 holds the commits of minutes 6 and 7: 6:30 stops at minute 7's
		// commit, before b2 ends, so b1 it is.
		{name: "time inside b2", target: Target{Kind: ToTime, Time: at(6).Add(30 * time.Second)}, backup: "b1", stop: 7*mib + 0x200, walEnd: 7*mib + 0x200},
		{name: "time at b2's last commit", target: Target{Kind: ToTime, Time: at(7)}, backup: "b2", stop: 8*mib + 0x200, walEnd: 8*mib + 0x200},
		{name: "time exactly on a commit, inclusive", target: Target{Kind: ToTime, Time: at(12)}, backup: "b2", stop: 13*mib + 0x200, walEnd: 13*mib + 0x200},
		{name: "time exactly on a commit, exclusive", target: Target{Kind: ToTime, Time: at(12), Exclusive: true}, backup: "b2", stop: 12*mib + 0x200, walEnd: 12*mib + 0x200},
		{name: "time before the window", target: Target{Kind: ToTime, Time: at(1)}, wantErr: "outside the recoverable window [2026-11-28T10:02:00Z, 2026-11-28T10:15:00Z)"},
		{name: "time at the window's start", target: Target{Kind: ToTime, Time: at(2)}, backup: "b1", stop: 3*mib + 0x200, walEnd: 3*mib + 0x200},
		{name: "time after the last commit", target: Target{Kind: ToTime, Time: at(15)}, wantErr: "outside the recoverable window"},
		{name: "xid after b2", target: Target{Kind: ToXID, XID: 112}, backup: "b2", stop: 12*mib + 0x200, walEnd: 12*mib + 0x200},
		{name: "xid inside b2", target: Target{Kind: ToXID, XID: 107}, backup: "b1", stop: 7*mib + 0x200, walEnd: 7*mib + 0x200},
		{name: "xid before every backup's end", target: Target{Kind: ToXID, XID: 102}, wantErr: "comes before the end of every usable backup"},
		{name: "unknown xid", target: Target{Kind: ToXID, XID: 999}, wantErr: "transaction 999 is not in the archived WAL"},
		{name: "restore point", target: Target{Kind: ToName, Name: "rp9"}, backup: "b2", stop: 9*mib + mib/2, walEnd: 9*mib + mib/2},
		{name: "unknown restore point", target: Target{Kind: ToName, Name: "nope"}, wantErr: `restore point "nope" is not in the archived WAL`},
		{name: "unknown backup", target: Target{Kind: Latest, Backup: "zz"}, wantErr: "backup zz is not in the repository"},
		// Without the index: backup stop times, and the oldest backup for
		// xid and name targets; recovery may read to the end.
		{name: "time without index", noIndex: true, target: Target{Kind: ToTime, Time: at(9)}, backup: "b2", stop: 16 * mib, walEnd: 16 * mib, wantNote: "chosen by its stop time"},
		{name: "time before b2 without index", noIndex: true, target: Target{Kind: ToTime, Time: at(7)}, backup: "b1", stop: 16 * mib, walEnd: 16 * mib},
		{name: "time before the window without index", noIndex: true, target: Target{Kind: ToTime, Time: at(2)}, wantErr: "outside the recoverable window [2026-11-28T10:03:00Z, 2026-11-28T10:16:00Z) (from backup and object times; approximate)"},
		{name: "xid without index", noIndex: true, target: Target{Kind: ToXID, XID: 112}, backup: "b1", stop: 16 * mib, walEnd: 16 * mib, wantNote: "oldest backup"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inv := oneTimeline()
			if tc.noIndex {
				inv.Events = nil
			}
			p, err := PlanRestore(inv, tc.target)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("PlanRestore = %+v, %v; want an error containing %q", p.Backup.ID, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Backup.ID != tc.backup || p.Stop != tc.stop || p.WALEnd != tc.walEnd || p.Timeline != 1 {
				t.Errorf("plan: backup %s, stop %s, WAL to %s, timeline %d; want %s, %s, %s, 1", p.Backup.ID, p.Stop, p.WALEnd, p.Timeline, tc.backup, tc.stop, tc.walEnd)
			}
			if tc.wantNote != "" && !strings.Contains(strings.Join(p.Notes, "; "), tc.wantNote) {
				t.Errorf("notes %q, want one containing %q", p.Notes, tc.wantNote)
			}
		})
	}
}

// TestPlanTimeBeforeBackup: a backup whose own span holds no commit may
// still hold commits past the target from before it started.
func TestPlanTimeBeforeBackup(t *testing.T) {
	inv := oneTimeline()
	inv.Events = slices.DeleteFunc(inv.Events, func(e Event) bool { return e.LSN >= 6*mib && e.LSN < 8*mib })
	p, err := PlanRestore(inv, Target{Kind: ToTime, Time: at(3).Add(30 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if p.Backup.ID != "b1" || p.Stop != 4*mib+0x200 {
		t.Errorf("plan = backup %s, stop %s; want b1 (b2 holds the commits of minutes 4 and 5), stop 0/400200", p.Backup.ID, p.Stop)
	}
}

func TestPlanMissingWAL(t *testing.T) {
	inv := oneTimeline()
	inv.Extents = []catalog.Extent{extent(1, 1, 15, 16, catalog.SegmentRange{From: 10, To: 10})}
	if _, err := PlanRestore(inv, Target{Kind: Latest}); err == nil || !strings.Contains(err.Error(), "WAL segment 00000001000000000000000A") {
		t.Errorf("latest over a hole = %v, want an error naming segment 0A", err)
	}
	if p, err := PlanRestore(inv, Target{Kind: ToLSN, LSN: 9 * mib}); err != nil || p.Backup.ID != "b2" {
		t.Errorf("a target before the hole = %+v, %v; want b2", p.Backup.ID, err)
	}
	// Segments lost before an accepted gap.
	inv.Extents = []catalog.Extent{extent(1, 1, 15, 16)}
	inv.Extents[0].Lost = []catalog.SegmentRange{{From: 4, To: 5}}
	if _, err := PlanRestore(inv, Target{Kind: ToLSN, LSN: 5 * mib, Backup: "b1"}); err == nil || !strings.Contains(err.Error(), "000000010000000000000004") {
		t.Errorf("b1 across lost WAL = %v, want an error naming segment 04", err)
	}
	if p, err := PlanRestore(inv, Target{Kind: Latest}); err != nil || p.Backup.ID != "b2" {
		t.Errorf("latest from b2, after the lost WAL = %+v, %v", p.Backup.ID, err)
	}
	// The tip in pieces counts.
	inv.Extents = []catalog.Extent{extent(1, 1, 15, 16)}
	inv.Extents[0].TipEnd = 16*mib + 0x4000
	if p, err := PlanRestore(inv, Target{Kind: Latest}); err != nil || p.Stop != 16*mib+0x4000 {
		t.Errorf("latest with a tip = stop %s, %v; want 0/1004000", p.Stop, err)
	}
}

// timelines: timeline 1 (segments 1-5) switched to 2 at 5.5 MiB (segments
// 5-12, stored last); a stray timeline 3 branched off 1 at 3.5 MiB
// (segments 3-4, stored earlier, as by a test restore that promoted).
func timelines() Inventory {
	return Inventory{
		SegmentSize: mib,
		Backups: []catalog.Backup{
			backup("b1", 1, 1*mib, 2*mib, 1, 2),
			backup("b2", 1, 3*mib+0x28, 4*mib, 3, 4),
			backup("b3", 2, 7*mib, 8*mib, 7, 8),
		},
		Histories: map[wal.TimeLineID][]wal.HistoryEntry{
			2: {{TLI: 1, Switch: 5*mib + mib/2}},
			3: {{TLI: 1, Switch: 3*mib + mib/2}},
		},
		Extents: []catalog.Extent{
			extent(1, 1, 5, 6),
			extent(2, 5, 12, 13),
			extent(3, 3, 4, 9),
		},
	}
}

func TestPlanTimelines(t *testing.T) {
	inv := timelines()
	p, err := PlanRestore(inv, Target{Kind: Latest})
	if err != nil {
		t.Fatal(err)
	}
	if p.Timeline != 2 || p.Backup.ID != "b3" || p.Stop != 13*mib {
		t.Errorf("latest = timeline %d, backup %s, stop %s; want 2, b3, 0/D00000 (the stray timeline 3 is older)", p.Timeline, p.Backup.ID, p.Stop)
	}
	// Before timeline 2's backup: b2 on timeline 1, across the switch.
	p, err = PlanRestore(inv, Target{Kind: ToLSN, LSN: 6 * mib})
	if err != nil {
		t.Fatal(err)
	}
	if p.Backup.ID != "b2" || len(p.Path) != 2 || p.Path[0].TLI != 1 || p.Path[1].TLI != 2 {
		t.Errorf("lsn 6 MiB = backup %s, path %+v; want b2 along timelines 1 and 2", p.Backup.ID, p.Path)
	}
	// Segment 5 is read from timeline 2 (it holds the switch): timeline
	// 1's copy is not needed.
	inv.Extents[0] = extent(1, 1, 4, 6)
	if _, err := PlanRestore(inv, Target{Kind: ToLSN, LSN: 6 * mib}); err != nil {
		t.Errorf("without timeline 1's copy of the switch segment: %v", err)
	}
	// Timeline 1's segment 4 is needed.
	inv.Extents[0] = extent(1, 1, 5, 6, catalog.SegmentRange{From: 4, To: 4})
	if _, err := PlanRestore(inv, Target{Kind: ToLSN, LSN: 6 * mib}); err == nil || !strings.Contains(err.Error(), "000000010000000000000004") {
		t.Errorf("without timeline 1's segment 4 = %v", err)
	}
	inv = timelines()
	// The stray timeline, asked for: b2 ends after its branch point.
	p, err = PlanRestore(inv, Target{Kind: Latest, Timeline: 3})
	if err != nil {
		t.Fatal(err)
	}
	if p.Timeline != 3 || p.Backup.ID != "b1" || p.Stop != 5*mib {
		t.Errorf("timeline 3 = timeline %d, backup %s, stop %s; want 3, b1, 0/500000", p.Timeline, p.Backup.ID, p.Stop)
	}
	if _, err := PlanRestore(inv, Target{Kind: Latest, Timeline: 3, Backup: "b3"}); err == nil || !strings.Contains(err.Error(), "not on the WAL history of timeline 3") {
		t.Errorf("timeline 2's backup on timeline 3 = %v", err)
	}
	if _, err := PlanRestore(inv, Target{Kind: Latest, Timeline: 4}); err == nil || !strings.Contains(err.Error(), "timeline 4 has no history file") {
		t.Errorf("an unknown timeline = %v", err)
	}
	// A stray timeline stored last wins "latest" only by being newest.
	inv.Extents[2].Newest = at(20)
	if p, err := PlanRestore(inv, Target{Kind: Latest}); err != nil || p.Timeline != 3 {
		t.Errorf("latest with timeline 3 newest = %d, %v", p.Timeline, err)
	}
}

func TestRecoverableWindow(t *testing.T) {
	w, ok := RecoverableWindow(oneTimeline(), 0)
	if !ok || !w.Exact || !w.From.Equal(at(2)) || !w.To.Equal(at(15)) {
		t.Errorf("window = %v, %v; want [10:02, 10:15) exact", w, ok)
	}
	inv := oneTimeline()
	inv.Events = nil
	w, ok = RecoverableWindow(inv, 0)
	if !ok || w.Exact || !w.From.Equal(at(3)) || !w.To.Equal(at(16)) {
		t.Errorf("window without index = %v, %v; want [10:03, 10:16) approximate", w, ok)
	}
	inv.Backups = nil
	if _, ok := RecoverableWindow(inv, 0); ok {
		t.Error("a window without backups")
	}
}
