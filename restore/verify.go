package restore

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/catalog"
	"github.com/walship/walship/storage/codec"
)

// Problem is one thing Verify found wrong.
type Problem struct {
	Key    string // the object, or "" for the repository as a whole
	What   string
	Breaks string // what it makes impossible; "" when nothing yet
}

func (p Problem) String() string {
	s := p.What
	if p.Key != "" {
		s = p.Key + ": " + s
	}
	if p.Breaks != "" {
		s += "; " + p.Breaks
	}
	return s
}

// VerifyReport is what Verify checked and found.
type VerifyReport struct {
	Objects     int   // objects whose checksums were verified
	StoredBytes int64 // bytes read to do so
	Backups     int
	Timelines   int
	Problems    []Problem
	// Sealed lists the backups whose backup.json is encrypted to an
	// identity Verify was not given: their objects' checksums are
	// verified, but not against backup.json, nor the WAL from their start.
	Sealed []string
}

// Verify checks the repository: every object's checksum (which needs no
// identity, so an encrypted repository is checked with its recipients
// alone), that each backup's objects are those its backup.json records,
// that every timeline after the first has its history file, and that the
// WAL runs without a hole from each backup's start to the end of every
// timeline it leads to. Each problem says what it breaks. concurrency
// objects are read at once.
func Verify(ctx context.Context, repo *catalog.Repo, concurrency int, log *slog.Logger) (VerifyReport, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var r VerifyReport
	inv, err := LoadInventory(ctx, repo, false)
	if err != nil {
		return r, err
	}
	r.Backups, r.Timelines = len(inv.Backups), len(inv.Extents)
	sums, err := r.checksums(ctx, repo, max(concurrency, 1), log)
	if err != nil {
		return r, err
	}
	r.checkBackups(inv, sums)
	r.checkWAL(inv)
	return r, nil
}

// checksums verifies every codec object and returns the sha256 of each
// object's stored bytes.
func (r *VerifyReport) checksums(ctx context.Context, repo *catalog.Repo, concurrency int, log *slog.Logger) (map[string][32]byte, error) {
	type result struct {
		key  string
		info codec.Info
		err  error
	}
	keys := make(chan string)
	results := make(chan result)
	var wg sync.WaitGroup
	for range concurrency {
		wg.Go(func() {
			for k := range keys {
				rc, err := repo.Store().Get(ctx, k, 0)
				var info codec.Info
				if err == nil {
					info, err = codec.Verify(rc, k)
					_ = rc.Close()
				}
				select {
				case results <- result{k, info, err}:
				case <-ctx.Done():
					return
				}
			}
		})
	}
	var listErr error
	go func() {
		defer close(keys)
		for oi, err := range repo.Store().List(ctx, "") {
			if err != nil {
				listErr = err
				return
			}
			if plainObject(oi.Key) {
				continue
			}
			select {
			case keys <- oi.Key:
			case <-ctx.Done():
				return
			}
		}
	}()
	go func() { wg.Wait(); close(results) }()
	sums := map[string][32]byte{}
	for res := range results {
		switch {
		case errors.Is(res.err, storage.ErrNotExist):
			// Deleted since the listing (a superseded piece).
		case errors.Is(res.err, codec.ErrUnsupported):
			r.Problems = append(r.Problems, Problem{Key: res.key, What: "written by a newer walship; this one cannot read it (its checksum is fine)"})
		case errors.Is(res.err, codec.ErrCorrupt):
			what := strings.TrimPrefix(res.err.Error(), "codec: object "+res.key+": ")
			r.Problems = append(r.Problems, Problem{Key: res.key, What: what, Breaks: breaks(res.key)})
		case res.err != nil:
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			r.Problems = append(r.Problems, Problem{Key: res.key, What: "cannot be read: " + res.err.Error(), Breaks: breaks(res.key)})
		default:
			r.Objects++
			r.StoredBytes += res.info.StoredSize
			sums[res.key] = res.info.Sum
			log.Debug("verified", slog.String("key", res.key))
		}
	}
	if listErr != nil {
		return nil, listErr
	}
	return sums, ctx.Err()
}

// plainObject tells the objects that are not written through the codec:
// walship.json and the lease generations.
func plainObject(key string) bool {
	return key == "walship.json" || strings.HasPrefix(key, "locks/")
}

// breaks says what a damaged object makes impossible.
func breaks(key string) string {
	if strings.HasPrefix(key, catalog.BackupsPrefix) {
		id, _, _ := strings.Cut(strings.TrimPrefix(key, catalog.BackupsPrefix), "/")
		return "backup " + id + " cannot be restored"
	}
	if strings.HasPrefix(key, "wal/") {
		return "recovery that reads it stops there"
	}
	return ""
}

// checkBackups compares each backup's objects with its backup.json.
func (r *VerifyReport) checkBackups(inv Inventory, sums map[string][32]byte) {
	for _, b := range inv.Backups {
		for _, o := range b.Objects {
			key := catalog.BackupObjectKey(b.ID, o.Name)
			sum, ok := sums[key]
			if !ok {
				if !slices.ContainsFunc(r.Problems, func(p Problem) bool { return p.Key == key }) {
					r.Problems = append(r.Problems, Problem{Key: key, What: "missing", Breaks: "backup " + b.ID + " cannot be restored"})
				}
				continue
			}
			if hex.EncodeToString(sum[:]) != o.SHA256 {
				r.Problems = append(r.Problems, Problem{Key: key, What: "not the object backup.json records (another sha256)", Breaks: "backup " + b.ID + " cannot be restored"})
			}
		}
	}
	for id, err := range inv.Listing.Invalid {
		if errors.Is(err, codec.ErrIdentity) {
			r.Sealed = append(r.Sealed, id)
			continue
		}
		r.Problems = append(r.Problems, Problem{Key: catalog.BackupMetaKey(id), What: err.Error(), Breaks: "backup " + id + " cannot be restored"})
	}
}

// checkWAL checks history files and the WAL from every backup along every
// timeline it leads to.
func (r *VerifyReport) checkWAL(inv Inventory) {
	for _, e := range inv.Extents {
		if e.TLI == 0 {
			for _, k := range e.Stray {
				r.Problems = append(r.Problems, Problem{Key: k, What: "not an object walship writes under wal/"})
			}
			continue
		}
		if e.TLI > 1 && !e.History {
			r.Problems = append(r.Problems, Problem{Key: catalog.HistoryKey(e.TLI), What: "missing", Breaks: fmt.Sprintf("timeline %d cannot be recovered along", e.TLI)})
		}
	}
	for _, e := range inv.Extents {
		if e.TLI == 0 || (e.TLI > 1 && !e.History) {
			continue
		}
		path, err := timelinePath(inv, e.TLI)
		if err != nil {
			continue
		}
		end := pathEnd(inv, path)
		for _, b := range onPath(inv.Backups, path) {
			seg, missing := missingSegment(inv, trimPath(path, b.StartLSN), b.StartLSN, end)
			if !missing {
				continue
			}
			p := Problem{Key: catalog.SegmentKey(seg, inv.SegmentSize), What: "missing",
				Breaks: fmt.Sprintf("backup %s recovers along timeline %d only up to %s, not to the end of its WAL at %s", b.ID, e.TLI, seg.Start(inv.SegmentSize), end)}
			if !slices.Contains(r.Problems, p) {
				r.Problems = append(r.Problems, p)
			}
		}
	}
}
