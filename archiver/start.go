package archiver

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"

	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage/catalog"
)

// startPoint is where streaming resumes: the start of a segment, with the
// run of that segment's bytes that pieces in the repository already hold.
type startPoint struct {
	Segment   wal.Segment
	Stored    uint32   // bytes [0, Stored) of the segment are in pieces
	StoredSum [32]byte // sha256 of those bytes, to check the re-streamed ones
	PieceKeys []string // every piece of the segment, to delete once it is complete
	FromRepo  bool     // false: the repository holds no WAL of this cluster yet
}

// timelineState is what the repository holds of one timeline.
type timelineState struct {
	maxComplete int64 // highest complete segment number, -1 if none
	pieces      map[uint64][]catalog.WALObject
	partial     bool
}

func scanTimeline(ctx context.Context, repo *catalog.Repo, tli wal.TimeLineID, segSize uint64) (timelineState, error) {
	st := timelineState{maxComplete: -1, pieces: map[uint64][]catalog.WALObject{}}
	for oi, err := range repo.Store().List(ctx, catalog.TimelinePrefix(tli)) {
		if err != nil {
			return st, err
		}
		o, err := catalog.ParseWALKey(oi.Key, segSize)
		if err != nil {
			continue // not ours to judge here; verify reports strays
		}
		switch o.Kind {
		case catalog.Segment:
			st.maxComplete = max(st.maxComplete, int64(o.Segment.No))
		case catalog.Piece:
			st.pieces[o.Segment.No] = append(st.pieces[o.Segment.No], o)
		case catalog.Partial:
			st.partial = true
		}
	}
	return st, nil
}

// resumePoint finds where the repository's WAL of tli ends. ok is false when
// it holds none of that timeline.
func resumePoint(ctx context.Context, repo *catalog.Repo, tli wal.TimeLineID, segSize uint64) (startPoint, bool, error) {
	st, err := scanTimeline(ctx, repo, tli, segSize)
	if err != nil {
		return startPoint{}, false, err
	}
	if st.maxComplete < 0 && len(st.pieces) == 0 {
		return startPoint{}, false, nil
	}
	var next uint64
	if st.maxComplete >= 0 {
		next = uint64(st.maxComplete) + 1
	} else {
		// Only pieces: the lowest segment with pieces is the one that was
		// filling (a later one's pieces can exist only if its upload raced).
		next = ^uint64(0)
		for no := range st.pieces {
			next = min(next, no)
		}
	}
	sp := startPoint{Segment: wal.Segment{TLI: tli, No: next}, FromRepo: true}
	pieces := st.pieces[next]
	for _, p := range pieces {
		sp.PieceKeys = append(sp.PieceKeys, p.Key)
	}
	// Hash the contiguous run from offset 0, streaming each piece.
	h := sha256.New()
	for _, p := range pieces { // listing order is start order
		if p.Start > sp.Stored {
			break // a hole: what follows is re-streamed and re-shipped
		}
		if p.End <= sp.Stored {
			continue
		}
		rc, err := repo.Open(ctx, p.Key)
		if err != nil {
			return startPoint{}, false, err
		}
		skip := int64(sp.Stored - p.Start)
		_, err = io.CopyN(io.Discard, rc, skip)
		if err == nil {
			var n int64
			n, err = io.Copy(h, rc)
			if err == nil && n != int64(p.End-sp.Stored) {
				err = fmt.Errorf("piece %s holds %d bytes, its name says %d", p.Key, skip+n, p.End-p.Start)
			}
		}
		rc.Close()
		if err != nil {
			return startPoint{}, false, err
		}
		sp.Stored = p.End
	}
	copy(sp.StoredSum[:], h.Sum(nil))
	return sp, true, nil
}
