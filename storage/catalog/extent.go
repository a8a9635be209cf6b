package catalog

import (
	"context"
	"slices"
	"time"

	"github.com/walship/walship/internal/wal"
)

// Extent is what the repository holds of one timeline's WAL.
type Extent struct {
	TLI      wal.TimeLineID
	History  bool   // the timeline's history file is stored (always false for 1)
	First    uint64 // oldest complete segment; meaningless when Segments is 0
	Last     uint64 // newest complete segment
	Segments int    // complete segments
	Missing  []SegmentRange
	Accepted []uint64       // segments where WAL resumed after an accepted gap
	Lost     []SegmentRange // the segments before an accepted gap: absent for good
	TipEnd   wal.LSN        // end of the contiguous pieces after Last, 0 if none
	Partial  bool           // the timeline ended: its last segment is kept as a partial
	Stray    []string       // keys under wal/ that walship did not write
	// Indexes are the segments with a commit-time index (.idx);
	// Unindexed counts the complete and partial segments without one.
	Indexes   []uint64
	Unindexed int
	// Newest is when the timeline's newest WAL object was stored.
	Newest     time.Time
	segmentNos []uint64
	partialNos []uint64
}

// SegmentRange is a run of segment numbers, both ends included.
type SegmentRange struct{ From, To uint64 }

// End is where the timeline's stored WAL ends: after the newest complete
// segment or its pieces.
func (e Extent) End(segSize uint64) wal.LSN {
	if e.TipEnd > 0 {
		return e.TipEnd
	}
	if e.Segments == 0 {
		return 0
	}
	return wal.Segment{TLI: e.TLI, No: e.Last}.Start(segSize) + wal.LSN(segSize)
}

// WALExtents lists every timeline the repository holds WAL of, oldest
// first, with the holes in each.
func (r *Repo) WALExtents(ctx context.Context, segSize uint64) ([]Extent, error) {
	byTLI := map[wal.TimeLineID]*Extent{}
	get := func(tli wal.TimeLineID) *Extent {
		e, ok := byTLI[tli]
		if !ok {
			e = &Extent{TLI: tli}
			byTLI[tli] = e
		}
		return e
	}
	pieces := map[wal.TimeLineID][]WALObject{}
	for oi, err := range r.store.List(ctx, "wal/") {
		if err != nil {
			return nil, err
		}
		o, err := ParseWALKey(oi.Key, segSize)
		if err != nil {
			e := get(0)
			e.Stray = append(e.Stray, oi.Key)
			continue
		}
		e := get(o.TLI)
		if o.Kind != History && oi.ModTime.After(e.Newest) {
			e.Newest = oi.ModTime
		}
		switch o.Kind {
		case History:
			e.History = true
		case Segment:
			e.segmentNos = append(e.segmentNos, o.Segment.No)
		case Piece:
			pieces[o.TLI] = append(pieces[o.TLI], o)
		case Partial:
			e.Partial = true
			e.partialNos = append(e.partialNos, o.Segment.No)
		case Index:
			e.Indexes = append(e.Indexes, o.Segment.No)
		case Gap:
			e.Accepted = append(e.Accepted, o.Segment.No)
		}
	}
	var out []Extent
	for _, e := range byTLI {
		nos := e.segmentNos
		slices.Sort(nos)
		e.Segments = len(nos)
		if len(nos) > 0 {
			e.First, e.Last = nos[0], nos[len(nos)-1]
			for i := 1; i < len(nos); i++ {
				if nos[i] != nos[i-1]+1 {
					r := SegmentRange{nos[i-1] + 1, nos[i] - 1}
					if slices.Contains(e.Accepted, nos[i]) {
						e.Lost = append(e.Lost, r)
					} else {
						e.Missing = append(e.Missing, r)
					}
				}
			}
		}
		// The tip: pieces of the segment after the newest complete one,
		// contiguous from offset 0.
		tip := e.Last + 1
		if e.Segments == 0 && len(pieces[e.TLI]) > 0 {
			tip = pieces[e.TLI][0].Segment.No
		}
		var off uint32
		for _, p := range pieces[e.TLI] {
			if p.Segment.No == tip && p.Start <= off && p.End > off {
				off = p.End
			}
		}
		if off > 0 {
			e.TipEnd = wal.Segment{TLI: e.TLI, No: tip}.Start(segSize) + wal.LSN(off)
		}
		slices.Sort(e.Indexes)
		for _, no := range slices.Concat(nos, e.partialNos) {
			if _, ok := slices.BinarySearch(e.Indexes, no); !ok {
				e.Unindexed++
			}
		}
		e.segmentNos, e.partialNos = nil, nil
		out = append(out, *e)
	}
	slices.SortFunc(out, func(a, b Extent) int { return int(a.TLI) - int(b.TLI) })
	return out, nil
}
