package scheduler

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/catalog"
)

// TakeInventory lists what retention decides about. backupRunning is
// whether a backup holds the backup lease.
func TakeInventory(ctx context.Context, repo *catalog.Repo, backupRunning bool) (Inventory, error) {
	meta, err := repo.ReadMeta(ctx)
	if err != nil {
		return Inventory{}, err
	}
	l, err := repo.ListBackups(ctx)
	if err != nil {
		return Inventory{}, err
	}
	if len(l.Invalid) > 0 {
		for id, err := range l.Invalid {
			return Inventory{}, fmt.Errorf("backup %s has an unreadable backup.json (%v): retention will not guess what it needs; run walship verify", id, err)
		}
	}
	inv := Inventory{SegmentSize: meta.SegmentSize, Backups: l.Backups, Unfinished: l.Orphans, BackupRunning: backupRunning}
	for oi, err := range repo.Store().List(ctx, "wal/") {
		if err != nil {
			return Inventory{}, err
		}
		inv.WAL = append(inv.WAL, oi)
	}
	return inv, nil
}

// Prune deletes what plan says, in its order: a backup's backup.json before
// its other objects, so that a prune cut short leaves at worst unfinished
// backups, which the next prune removes.
func Prune(ctx context.Context, repo *catalog.Repo, plan Plan, log *slog.Logger) (int, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n := 0
	for _, key := range plan.DeleteKeys {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		if err := repo.Store().Delete(ctx, key); err != nil {
			return n, fmt.Errorf("prune: %w", err)
		}
		log.Debug("deleted", slog.String("key", key))
		n++
	}
	return n, nil
}

// SweepPlan is what a sweep removes: the leftovers of interrupted writes
// (temporary files, incomplete multipart uploads) begun before Before.
type SweepPlan struct {
	Before time.Time          `json:"before"`
	Sweep  []storage.Leftover `json:"sweep"`
	// Kept are leftovers old enough but under backups/ while a backup
	// runs: they may be its uploads.
	Kept  []storage.Leftover `json:"kept,omitempty"`
	Notes []string           `json:"notes,omitempty"`
}

// sweptPrefixes are where walship writes: a sweep looks nowhere else, for
// a bucket may hold other repositories and other tools' uploads.
var sweptPrefixes = []string{"wal/", catalog.BackupsPrefix, "locks/", "check/", catalog.MetaKey}

// sweepAll runs sw.Sweep over every prefix walship writes under.
func sweepAll(ctx context.Context, sw storage.Sweeper, before time.Time, remove func(storage.Leftover) bool) error {
	for _, p := range sweptPrefixes {
		if err := sw.Sweep(ctx, p, before, remove); err != nil {
			return err
		}
	}
	return nil
}

// PlanSweep lists the leftovers of writes begun before before; while a
// backup runs (backupRunning), those under backups/ are kept.
func PlanSweep(ctx context.Context, repo *catalog.Repo, before time.Time, backupRunning bool) (SweepPlan, error) {
	plan := SweepPlan{Before: before, Sweep: []storage.Leftover{}}
	sw, ok := repo.Store().(storage.Sweeper)
	if !ok {
		plan.Notes = append(plan.Notes, "this store cannot find what interrupted writes left behind")
		return plan, nil
	}
	err := sweepAll(ctx, sw, before, func(l storage.Leftover) bool {
		if backupRunning && strings.HasPrefix(l.Key, catalog.BackupsPrefix) {
			plan.Kept = append(plan.Kept, l)
		} else {
			plan.Sweep = append(plan.Sweep, l)
		}
		return false
	})
	if err != nil {
		return SweepPlan{}, err
	}
	if len(plan.Kept) > 0 {
		plan.Notes = append(plan.Notes, fmt.Sprintf("%d leftovers under %s kept: a backup is running and they may be its uploads", len(plan.Kept), catalog.BackupsPrefix))
	}
	return plan, nil
}

// Sweep removes the leftovers that plan lists, those still there, and
// returns how many (with an error, the last one counted may remain).
func Sweep(ctx context.Context, repo *catalog.Repo, plan SweepPlan, log *slog.Logger) (int, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	sw, ok := repo.Store().(storage.Sweeper)
	if !ok || len(plan.Sweep) == 0 {
		return 0, nil
	}
	type id struct{ key, id string }
	todo := map[id]bool{}
	for _, l := range plan.Sweep {
		todo[id{l.Key, l.ID}] = true
	}
	n := 0
	err := sweepAll(ctx, sw, plan.Before, func(l storage.Leftover) bool {
		if !todo[id{l.Key, l.ID}] {
			return false
		}
		log.Debug("sweeping", slog.String("key", l.Key), slog.String("leftover", l.ID))
		n++
		return true
	})
	if err != nil {
		return n, fmt.Errorf("sweep: %w", err)
	}
	return n, nil
}
