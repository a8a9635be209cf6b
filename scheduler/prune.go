package scheduler

import (
	"context"
	"fmt"
	"log/slog"

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
