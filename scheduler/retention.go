package scheduler

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/catalog"
)

// Policy says what retention keeps. A backup is kept when either rule keeps
// it, and the newest backup always is.
type Policy struct {
	// Keep keeps the Keep newest backups; 0 means no count rule.
	Keep int
	// KeepWithin keeps what recovery to any moment of the last KeepWithin
	// needs: every backup finished within it, and the newest one finished
	// before it, with all WAL from that backup on. 0 means no time rule.
	KeepWithin time.Duration
}

// Validate says what is wrong with a policy.
func (p Policy) Validate() error {
	switch {
	case p.Keep < 0:
		return fmt.Errorf("keep %d: want a positive number of backups", p.Keep)
	case p.KeepWithin < 0:
		return fmt.Errorf("keep-within %s: want a positive duration", p.KeepWithin)
	case p.Keep == 0 && p.KeepWithin == 0:
		return errors.New("no retention rule: give --keep N, --keep-within D, or both")
	}
	return nil
}

// Inventory is what the repository holds, as retention sees it.
type Inventory struct {
	SegmentSize uint64
	Backups     []catalog.Backup                // complete backups, any order
	Unfinished  map[string][]storage.ObjectInfo // objects of backups without backup.json, by id
	WAL         []storage.ObjectInfo            // every object under wal/
	// BackupRunning says a backup holds the backup lease: the objects of
	// unfinished backups may be its own and are kept.
	BackupRunning bool
}

// Decision is one kept or deleted item and why.
type Decision struct {
	ID     string `json:"id"`
	Reason string `json:"reason"`
}

// Plan is what retention keeps and deletes.
type Plan struct {
	Keep          []Decision `json:"keep"`
	DeleteBackups []Decision `json:"delete_backups"`
	// DeleteKeys are the objects to delete: those of deleted and unfinished
	// backups (each backup's backup.json first) and WAL no kept backup needs.
	DeleteKeys []string `json:"delete_keys"`
	// WALBefore is the first LSN kept WAL starts at; WAL wholly before it
	// is deleted.
	WALBefore string   `json:"wal_before,omitempty"`
	Notes     []string `json:"notes,omitempty"`
}

// PlanRetention decides what p keeps of inv at now. It never deletes WAL
// that a kept backup needs (any WAL from the oldest start position of the
// kept backups on), nor history files, nor anything while no backup exists.
func PlanRetention(inv Inventory, p Policy, now time.Time) (Plan, error) {
	if err := p.Validate(); err != nil {
		return Plan{}, err
	}
	plan := Plan{Keep: []Decision{}, DeleteBackups: []Decision{}, DeleteKeys: []string{}}
	backups := slices.Clone(inv.Backups)
	slices.SortFunc(backups, func(a, b catalog.Backup) int { return strings.Compare(a.ID, b.ID) })

	keep := map[string]string{}
	cut := now.Add(-p.KeepWithin)
	base := -1 // the newest backup finished before the window
	for i, b := range backups {
		if p.KeepWithin > 0 && b.StopTime.Before(cut) && (base < 0 || b.StopTime.After(backups[base].StopTime)) {
			base = i
		}
	}
	n := len(backups)
	for i, b := range backups {
		var why []string
		if p.Keep > 0 && i >= n-p.Keep {
			why = append(why, fmt.Sprintf("one of the %d newest", p.Keep))
		}
		if p.KeepWithin > 0 && !b.StopTime.Before(cut) {
			why = append(why, "finished within "+p.KeepWithin.String())
		}
		if i == base {
			why = append(why, "base for recovery to the start of the "+p.KeepWithin.String()+" window")
		}
		if i == n-1 && len(why) == 0 {
			why = append(why, "the newest backup is always kept")
		}
		if len(why) > 0 {
			keep[b.ID] = strings.Join(why, "; ")
		}
	}

	var oldest wal.LSN
	found := false
	for _, b := range backups {
		if why, ok := keep[b.ID]; ok {
			plan.Keep = append(plan.Keep, Decision{b.ID, why})
			if !found || b.StartLSN < oldest {
				oldest, found = b.StartLSN, true
			}
			continue
		}
		plan.DeleteBackups = append(plan.DeleteBackups, Decision{b.ID, "outside the policy"})
		plan.DeleteKeys = append(plan.DeleteKeys, catalog.BackupMetaKey(b.ID))
		for _, o := range b.Objects {
			plan.DeleteKeys = append(plan.DeleteKeys, catalog.BackupObjectKey(b.ID, o.Name))
		}
	}

	ids := make([]string, 0, len(inv.Unfinished))
	for id := range inv.Unfinished {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		if inv.BackupRunning {
			plan.Notes = append(plan.Notes, "unfinished backup "+id+" kept: a backup is running and it may be that one")
			continue
		}
		plan.DeleteBackups = append(plan.DeleteBackups, Decision{id, "never finished (no backup.json)"})
		for _, o := range inv.Unfinished[id] {
			plan.DeleteKeys = append(plan.DeleteKeys, o.Key)
		}
	}

	if !found {
		plan.Notes = append(plan.Notes, "no backup is kept, so all WAL is kept")
		return plan, nil
	}
	// Segments wholly before the oldest kept start go, on every timeline;
	// history files stay (they are tiny and recovery reads them).
	first := uint64(oldest) / inv.SegmentSize
	plan.WALBefore = wal.Segment{No: first}.Start(inv.SegmentSize).String()
	for _, oi := range inv.WAL {
		o, err := catalog.ParseWALKey(oi.Key, inv.SegmentSize)
		if err != nil {
			plan.Notes = append(plan.Notes, "kept "+oi.Key+": not a WAL key walship writes")
			continue
		}
		if o.Kind == catalog.History {
			continue
		}
		if o.Segment.No < first {
			plan.DeleteKeys = append(plan.DeleteKeys, oi.Key)
		}
	}
	return plan, nil
}
