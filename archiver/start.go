package archiver

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"slices"

	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage/catalog"
)

// startPoint is where streaming resumes: the start of a segment, with the
// run of that segment's bytes that pieces in the repository already hold.
type startPoint struct {
	Segment   wal.Segment
	Stored    uint32   // bytes [0, Stored) of the segment are in pieces
	StoredSum [32]byte // sha256 of those bytes, to check the re-streamed ones
	Unchecked bool     // the pieces could not be read: the re-streamed bytes are not checked
	PieceKeys []string // every piece of the segment, to delete once it is complete
	FromRepo  bool     // false: the repository holds no WAL of this cluster yet
	// LaterPieces are pieces of segments after Segment that a run which
	// died uploaded ahead of a hole, by segment number: deleted once their
	// segment is stored whole.
	LaterPieces map[uint64][]string
}

// timelineState is what the repository holds of one timeline.
type timelineState struct {
	complete    []uint64 // complete segment numbers, ascending
	maxComplete int64    // highest complete segment number, -1 if none
	pieces      map[uint64][]catalog.WALObject
	partial     bool
	lastGap     int64 // newest segment with a gap marker, -1 if none
}

func scanTimeline(ctx context.Context, repo *catalog.Repo, tli wal.TimeLineID, segSize uint64) (timelineState, error) {
	st := timelineState{maxComplete: -1, lastGap: -1, pieces: map[uint64][]catalog.WALObject{}}
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
			st.complete = append(st.complete, o.Segment.No)
			st.maxComplete = max(st.maxComplete, int64(o.Segment.No))
		case catalog.Piece:
			st.pieces[o.Segment.No] = append(st.pieces[o.Segment.No], o)
		case catalog.Partial:
			st.partial = true
		case catalog.Gap:
			st.lastGap = max(st.lastGap, int64(o.Segment.No))
		}
	}
	return st, nil
}

// recentWindow is how many segments below the newest one may be missing
// because their uploads were in flight when an archiver died, when the slot
// cannot say what was acknowledged (PostgreSQL 14).
const recentWindow = 64

// resumePoint finds where the repository's WAL of tli stops being
// continuous. Uploads run in parallel, so an archiver that died may leave
// the newest segments with holes; all of them lie after what the primary was
// told is flushed, acked (the slot's restart position; -1 when unknown), and
// the first hole from there on is where streaming resumes. ok is false when
// the repository holds none of that timeline.
func resumePoint(ctx context.Context, repo *catalog.Repo, tli wal.TimeLineID, segSize uint64, acked wal.LSN) (startPoint, bool, error) {
	st, err := scanTimeline(ctx, repo, tli, segSize)
	if err != nil {
		return startPoint{}, false, err
	}
	if st.maxComplete < 0 && len(st.pieces) == 0 && st.lastGap < 0 {
		return startPoint{}, false, nil
	}
	// Holes before an accepted gap are that gap; what counts is after it.
	complete := st.complete
	if st.lastGap >= 0 {
		i, _ := slices.BinarySearch(complete, uint64(st.lastGap))
		complete = complete[i:]
	}
	var next uint64
	switch {
	case len(complete) > 0:
		next = firstHole(complete, acked, segSize)
	case st.lastGap >= 0:
		next = uint64(st.lastGap)
	default:
		// Only pieces: the lowest segment with pieces is the one that was
		// filling (a later one's pieces can exist only if its upload raced).
		next = ^uint64(0)
		for no := range st.pieces {
			next = min(next, no)
		}
	}
	// Pieces of segments stored whole are leftovers of a run that died
	// before deleting them.
	for no, ps := range st.pieces {
		if _, whole := slices.BinarySearch(st.complete, no); whole {
			for _, p := range ps {
				if err := repo.Store().Delete(ctx, p.Key); err != nil {
					return startPoint{}, false, fmt.Errorf("delete superseded piece %s: %w", p.Key, err)
				}
			}
		}
	}
	sp := startPoint{Segment: wal.Segment{TLI: tli, No: next}, FromRepo: true, LaterPieces: map[uint64][]string{}}
	for no, ps := range st.pieces {
		if _, whole := slices.BinarySearch(st.complete, no); !whole && no > next {
			for _, p := range ps {
				sp.LaterPieces[no] = append(sp.LaterPieces[no], p.Key)
			}
		}
	}
	pieces := st.pieces[next]
	for _, p := range pieces {
		sp.PieceKeys = append(sp.PieceKeys, p.Key)
	}
	// Hash the contiguous run from offset 0, streaming each piece; an
	// archiver holding only the recipient of an encrypted repository
	// cannot read them, and resumes after them unchecked.
	if repo.EncryptsBlind() {
		for _, p := range pieces {
			if p.Start > sp.Stored {
				break
			}
			sp.Stored = max(sp.Stored, p.End)
		}
		sp.Unchecked = true
		return sp, true, nil
	}
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

// firstHole returns the first segment missing from complete (ascending) at
// or after the one holding acked, at most one past the newest segment. When
// acked is unknown, it is the first segment missing right after a present
// one among the newest recentWindow segments: a wider hole down there is a
// gap from long ago, not an upload cut short.
func firstHole(complete []uint64, acked wal.LSN, segSize uint64) uint64 {
	newest := complete[len(complete)-1]
	if acked == unknownLSN {
		for i := 1; i < len(complete); i++ {
			if complete[i] != complete[i-1]+1 && complete[i-1]+recentWindow >= newest {
				return complete[i-1] + 1
			}
		}
		return newest + 1
	}
	// WAL older than the repository's oldest segment is not ours to fill.
	low := max(min(uint64(acked)/segSize, newest+1), complete[0])
	i, _ := slices.BinarySearch(complete, low)
	for no := low; ; no++ {
		if i >= len(complete) || complete[i] != no {
			return no
		}
		i++
	}
}

// unknownLSN marks an acknowledged position that cannot be read.
const unknownLSN = ^wal.LSN(0)
