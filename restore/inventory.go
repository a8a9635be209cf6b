package restore

import (
	"context"
	"errors"
	"fmt"

	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/catalog"
)

// LoadInventory reads what planning needs from repo: its metadata, the
// complete backups, the WAL extents and every timeline history file.
func LoadInventory(ctx context.Context, repo *catalog.Repo) (Inventory, error) {
	meta, err := repo.ReadMeta(ctx)
	if errors.Is(err, storage.ErrNotExist) {
		return Inventory{}, errors.New("the repository is empty (no walship.json): check --repo, or run walship archive first")
	}
	if err != nil {
		return Inventory{}, err
	}
	inv := Inventory{SegmentSize: meta.SegmentSize, Histories: map[wal.TimeLineID][]wal.HistoryEntry{}}
	bl, err := repo.ListBackups(ctx)
	if err != nil {
		return Inventory{}, err
	}
	for _, b := range bl.Backups {
		if b.SystemID == meta.SystemID {
			inv.Backups = append(inv.Backups, b)
		}
	}
	if inv.Extents, err = repo.WALExtents(ctx, meta.SegmentSize); err != nil {
		return Inventory{}, err
	}
	for _, e := range inv.Extents {
		if !e.History {
			continue
		}
		b, err := repo.ReadAll(ctx, catalog.HistoryKey(e.TLI), 1<<20)
		if err != nil {
			return Inventory{}, fmt.Errorf("read the history of timeline %d: %w", e.TLI, err)
		}
		h, err := wal.ParseHistory(b)
		if err != nil {
			return Inventory{}, fmt.Errorf("%s: %w", catalog.HistoryKey(e.TLI), err)
		}
		inv.Histories[e.TLI] = h
	}
	return inv, nil
}
