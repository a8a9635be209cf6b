package scheduler

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/catalog"
)

var update = flag.Bool("update", false, "rewrite the golden files")

const seg = 16 << 20

var now = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)

// backup makes a backup that started daysAgo days before now, at startSeg.
func backup(daysAgo float64, tli uint32, startSeg uint64) catalog.Backup {
	start := now.Add(-time.Duration(daysAgo * float64(24*time.Hour)))
	return catalog.Backup{
		ID: catalog.NewBackupID(start), StartTime: start, StopTime: start.Add(10 * time.Minute),
		StartLSN: wal.LSN(startSeg*seg + 0x28), EndLSN: wal.LSN(startSeg*seg + 0x1000), StartTLI: tli, EndTLI: tli,
		SegmentSize: seg, Objects: []catalog.BackupObject{{Name: "base.tar"}, {Name: "backup_manifest"}},
	}
}

// walObjects lists complete segments from..to on tli, the pieces of the
// next, and the timeline's history file.
func walObjects(tli uint32, from, to uint64) []storage.ObjectInfo {
	var out []storage.ObjectInfo
	if tli > 1 {
		out = append(out, storage.ObjectInfo{Key: catalog.HistoryKey(wal.TimeLineID(tli))})
	}
	for no := from; no <= to; no++ {
		out = append(out, storage.ObjectInfo{Key: catalog.SegmentKey(wal.Segment{TLI: wal.TimeLineID(tli), No: no}, seg)})
	}
	out = append(out, storage.ObjectInfo{Key: catalog.PieceKey(wal.Segment{TLI: wal.TimeLineID(tli), No: to + 1}, seg, 0, 0x2000)})
	return out
}

func TestPlanRetention(t *testing.T) {
	daily := []catalog.Backup{backup(5, 1, 10), backup(4, 1, 20), backup(2, 1, 30), backup(1, 1, 40)}
	cases := []struct {
		name   string
		inv    Inventory
		policy Policy
	}{
		{"keep-2", Inventory{Backups: daily, WAL: walObjects(1, 9, 45)}, Policy{Keep: 2}},
		{"keep-within-3d", Inventory{Backups: daily, WAL: walObjects(1, 9, 45)}, Policy{KeepWithin: 72 * time.Hour}},
		{"keep-1-or-within-36h", Inventory{Backups: daily, WAL: walObjects(1, 9, 45)}, Policy{Keep: 1, KeepWithin: 36 * time.Hour}},
		{"keep-more-than-there-are", Inventory{Backups: daily, WAL: walObjects(1, 9, 45)}, Policy{Keep: 10}},
		{"window-older-than-all", Inventory{Backups: daily[2:], WAL: walObjects(1, 9, 45)}, Policy{KeepWithin: 10 * 24 * time.Hour}},
		{"all-outside-the-window", Inventory{Backups: daily, WAL: walObjects(1, 9, 45)}, Policy{KeepWithin: time.Hour}},
		{"unfinished-deleted", Inventory{Backups: daily[3:], WAL: walObjects(1, 39, 45),
			Unfinished: map[string][]storage.ObjectInfo{"20261127T000000.000Z": {{Key: "backups/20261127T000000.000Z/base.tar"}}}}, Policy{Keep: 1}},
		{"unfinished-kept-while-a-backup-runs", Inventory{Backups: daily[3:], WAL: walObjects(1, 39, 45), BackupRunning: true,
			Unfinished: map[string][]storage.ObjectInfo{"20261127T000000.000Z": {{Key: "backups/20261127T000000.000Z/base.tar"}}}}, Policy{Keep: 1}},
		{"no-backups-keeps-wal", Inventory{WAL: walObjects(1, 1, 5)}, Policy{Keep: 3}},
		// A point-in-time recovery branched timeline 2 off below the
		// older backup's start: the newer backup (on 2) starts lower.
		{"timeline-branch", Inventory{Backups: []catalog.Backup{backup(3, 1, 50), backup(1, 2, 35)},
			WAL: append(append(walObjects(1, 20, 60), walObjects(2, 30, 40)...), storage.ObjectInfo{Key: "wal/README"})}, Policy{Keep: 2}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.inv.SegmentSize = seg
			plan, err := PlanRetention(c.inv, c.policy, now)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := json.MarshalIndent(plan, "", "  ")
			golden := filepath.Join("testdata", "retention", c.name+".golden")
			if *update {
				if err := os.WriteFile(golden, append(got, '\n'), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./scheduler -run TestPlanRetention -update)", err)
			}
			if !bytes.Equal(append(got, '\n'), want) {
				t.Errorf("plan differs from %s:\n%s", golden, got)
			}
			checkInvariants(t, c.inv, plan)
		})
	}
}

// checkInvariants: no kept backup loses an object or WAL from its start on,
// history files stay, and the newest backup is kept.
func checkInvariants(t *testing.T, inv Inventory, plan Plan) {
	deleted := map[string]bool{}
	for _, k := range plan.DeleteKeys {
		deleted[k] = true
	}
	kept := map[string]bool{}
	for _, d := range plan.Keep {
		kept[d.ID] = true
	}
	var newest string
	for _, b := range inv.Backups {
		newest = max(newest, b.ID)
		if !kept[b.ID] {
			continue
		}
		for _, o := range b.Objects {
			if deleted[catalog.BackupObjectKey(b.ID, o.Name)] {
				t.Errorf("kept backup %s loses %s", b.ID, o.Name)
			}
		}
		for _, oi := range inv.WAL {
			o, err := catalog.ParseWALKey(oi.Key, seg)
			if err == nil && deleted[oi.Key] && o.Segment.Start(seg)+seg > b.StartLSN {
				t.Errorf("kept backup %s (start %s) loses WAL %s", b.ID, b.StartLSN, oi.Key)
			}
			if err == nil && o.Kind == catalog.History && deleted[oi.Key] {
				t.Errorf("history file %s deleted", oi.Key)
			}
		}
	}
	if newest != "" && !kept[newest] {
		t.Errorf("the newest backup %s is not kept", newest)
	}
}

func TestPolicyValidate(t *testing.T) {
	for _, p := range []Policy{{}, {Keep: -1}, {KeepWithin: -time.Hour}} {
		if _, err := PlanRetention(Inventory{SegmentSize: seg}, p, now); err == nil {
			t.Errorf("policy %+v accepted", p)
		}
	}
}
