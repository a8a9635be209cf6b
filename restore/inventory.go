package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/internal/walrec"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/catalog"
	"github.com/walship/walship/storage/codec"
)

// Encrypted returns an error when backups could not be read for want of an
// age identity, so that planning does not go on as if there were none.
func (inv Inventory) Encrypted() error {
	for _, err := range inv.Listing.Invalid {
		if errors.Is(err, codec.ErrIdentity) {
			return fmt.Errorf("the repository is encrypted and its backups cannot be read: %w", err)
		}
	}
	return nil
}

// LoadInventory reads what planning needs from repo: its metadata, the
// complete backups, the WAL extents and every timeline history file, and
// with events the segments' commit-time indexes.
func LoadInventory(ctx context.Context, repo *catalog.Repo, events bool) (Inventory, error) {
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
	inv.Listing = bl
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
	if events {
		if err := LoadEvents(ctx, repo, &inv); err != nil {
			return Inventory{}, err
		}
	}
	return inv, nil
}

// indexReaders is how many index objects are read at once.
const indexReaders = 16

// LoadEvents reads every segment index into inv.Events. When a segment
// lacks one (archived before walship indexed, or by an archiver that could
// not read the WAL), the events are incomplete and inv.Events stays nil:
// planning then falls back to backup times, and says so.
func LoadEvents(ctx context.Context, repo *catalog.Repo, inv *Inventory) error {
	var indexes []catalog.WALObject
	for _, e := range inv.Extents {
		inv.IndexMissing += e.Unindexed
		for _, no := range e.Indexes {
			seg := wal.Segment{TLI: e.TLI, No: no}
			indexes = append(indexes, catalog.WALObject{Kind: catalog.Index, Segment: seg, TLI: e.TLI, Key: catalog.IndexKey(seg, inv.SegmentSize)})
		}
	}
	if inv.IndexMissing > 0 {
		return nil
	}
	// The carries into the tips, from the indexes of the segments before.
	tipCarries := map[wal.Segment]*walrec.Carry{}
	for _, e := range inv.Extents {
		if e.TLI != 0 && e.TipEnd != 0 && e.Segments > 0 {
			tipCarries[wal.Segment{TLI: e.TLI, No: e.Last}] = new(walrec.Carry)
		}
	}
	results := make([][]Event, len(indexes))
	errs := make([]error, len(indexes))
	sem := make(chan struct{}, indexReaders)
	var wg sync.WaitGroup
	for i, o := range indexes {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			evs, carry, err := repo.ReadIndex(ctx, o.Segment, inv.SegmentSize)
			if err != nil {
				errs[i] = err
				return
			}
			results[i] = eventsOf(o.TLI, evs)
			if c, ok := tipCarries[o.Segment]; ok {
				*c = carry
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("read the commit-time index: %w", err)
	}
	inv.Events = []Event{}
	for _, r := range results {
		inv.Events = append(inv.Events, r...)
	}
	// The tips are not indexed yet: read their pieces.
	for _, e := range inv.Extents {
		if e.TLI == 0 || e.TipEnd == 0 {
			continue
		}
		var carry walrec.Carry
		if c, ok := tipCarries[wal.Segment{TLI: e.TLI, No: e.Last}]; ok {
			carry = *c
		}
		evs, err := tipEvents(ctx, repo, e, inv.SegmentSize, carry)
		if err != nil {
			return fmt.Errorf("read the tip of timeline %d: %w", e.TLI, err)
		}
		inv.Events = append(inv.Events, evs...)
	}
	return nil
}

// tipEvents reads the records of interest in the pieces of e's tip, the
// contiguous bytes from its segment's start. carry is that of the index of
// the segment before, if known.
func tipEvents(ctx context.Context, repo *catalog.Repo, e catalog.Extent, segSize uint64, carry walrec.Carry) ([]Event, error) {
	seg := wal.SegmentOf(e.TLI, e.TipEnd-1, segSize)
	var pieces []catalog.WALObject
	for oi, err := range repo.Store().List(ctx, catalog.PiecePrefix(seg, segSize)) {
		if err != nil {
			return nil, err
		}
		if p, err := catalog.ParseWALKey(oi.Key, segSize); err == nil && p.Kind == catalog.Piece {
			pieces = append(pieces, p)
		}
	}
	rec := walrec.NewReader(seg.Start(segSize), segSize)
	if e.Segments > 0 && e.Last+1 == seg.No {
		// A record running into the tip is read whole, from the carry or
		// else from the segment before; that segment's own records are in
		// its index.
		if r, err := walrec.NewReaderFrom(seg.Start(segSize), segSize, carry); err == nil {
			rec = r
		} else if rc, err := repo.Open(ctx, catalog.SegmentKey(wal.Segment{TLI: e.TLI, No: e.Last}, segSize)); err == nil {
			prev := walrec.NewReader(wal.Segment{TLI: e.TLI, No: e.Last}.Start(segSize), segSize)
			_, err := io.Copy(prev, rc)
			rc.Close()
			if err == nil && prev.Pos() == seg.Start(segSize) {
				prev.Events()
				rec = prev
			}
		}
	}
	var off uint32
	for _, p := range pieces { // in order of start, then end
		if p.Start > off || p.End <= off {
			continue
		}
		rc, err := repo.Open(ctx, p.Key)
		if err != nil {
			return nil, err
		}
		_, err = io.CopyN(io.Discard, rc, int64(off-p.Start))
		var walErr bool
		if err == nil {
			w := &walWriter{rec: rec}
			_, err = io.Copy(w, rc)
			walErr = w.err != nil
		}
		rc.Close()
		if walErr {
			break // WAL the reader cannot follow: what came before still counts
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.Key, err)
		}
		off = p.End
	}
	return eventsOf(e.TLI, rec.Events()), nil
}

// walWriter feeds a walrec.Reader and remembers its error apart from the
// copy's.
type walWriter struct {
	rec *walrec.Reader
	err error
}

func (w *walWriter) Write(p []byte) (int, error) {
	n, err := w.rec.Write(p)
	w.err = err
	return n, err
}

// eventsOf keeps the records recovery targets can stop at: commits and
// aborts (time and xid targets) and restore points (name targets).
func eventsOf(tli wal.TimeLineID, evs []walrec.Event) []Event {
	var out []Event
	for _, ev := range evs {
		switch ev.Kind {
		case walrec.Commit, walrec.Abort, walrec.CommitPrepared, walrec.AbortPrepared:
			out = append(out, Event{TLI: tli, LSN: ev.LSN, End: ev.End, Time: ev.Time, XID: uint64(ev.XID)})
		case walrec.RestorePoint:
			out = append(out, Event{TLI: tli, LSN: ev.LSN, End: ev.End, Time: ev.Time, Name: ev.Name})
		}
	}
	return out
}
