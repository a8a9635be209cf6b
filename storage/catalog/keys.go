package catalog

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/walship/walship/internal/wal"
)

// MetaKey is the key of the repository description.
const MetaKey = "walship.json"

// TimelinePrefix is the common prefix of the keys of tli's segments.
func TimelinePrefix(tli wal.TimeLineID) string { return fmt.Sprintf("wal/%08X/", uint32(tli)) }

// SegmentKey is the key of a complete segment.
func SegmentKey(seg wal.Segment, segSize uint64) string {
	return TimelinePrefix(seg.TLI) + seg.Name(segSize)
}

// PiecePrefix is the common prefix of a segment's pieces.
func PiecePrefix(seg wal.Segment, segSize uint64) string {
	return SegmentKey(seg, segSize) + ".pieces/"
}

// PieceKey is the key of the piece holding bytes [start, end) of seg.
func PieceKey(seg wal.Segment, segSize uint64, start, end uint32) string {
	return fmt.Sprintf("%s%08X-%08X", PiecePrefix(seg, segSize), start, end)
}

// PartialKey is the key of a segment cut short by a timeline switch.
func PartialKey(seg wal.Segment, segSize uint64) string { return SegmentKey(seg, segSize) + ".partial" }

// GapKey is the key of the marker an archiver writes when it accepts that the
// WAL before seg, back to what the repository held, is lost: the primary
// removed it before it was archived.
func GapKey(seg wal.Segment, segSize uint64) string { return SegmentKey(seg, segSize) + ".gap" }

// HistoryKey is the key of tli's history file.
func HistoryKey(tli wal.TimeLineID) string { return "wal/" + wal.HistoryFileName(tli) }

// BackupKey is the key of the backup history file that PostgreSQL writes
// when a base backup that started at offset in seg ends
// (<segment>.OOOOOOOO.backup): wal/TTTTTTTT/<segment>.OOOOOOOO.backup.
func BackupKey(seg wal.Segment, segSize uint64, offset uint32) string {
	return fmt.Sprintf("%s.%08X.backup", SegmentKey(seg, segSize), offset)
}

// Kind says what a WAL key holds.
type Kind int

// The kinds of WAL object.
const (
	Segment Kind = iota + 1
	Piece
	Partial
	History
	BackupHistory // a backup history file, <segment>.OOOOOOOO.backup
	Gap           // WAL before this segment was lost, <segment>.gap
	Index         // the records of interest in a segment, <segment>.idx
)

// WALObject is a parsed WAL key.
type WALObject struct {
	Kind       Kind
	Segment    wal.Segment // all but History
	TLI        wal.TimeLineID
	Start, End uint32 // Piece: the byte range within the segment
	Offset     uint32 // BackupHistory: the backup's start offset within the segment
	Key        string
	Size       int64 // stored size, from the listing
}

// ParseWALKey parses a key under wal/.
func ParseWALKey(key string, segSize uint64) (WALObject, error) {
	bad := func() (WALObject, error) { return WALObject{}, fmt.Errorf("catalog: %q is not a WAL key", key) }
	rest, ok := strings.CutPrefix(key, "wal/")
	if !ok {
		return bad()
	}
	if f, err := wal.ParseFileName(rest, segSize); err == nil && f.Kind == wal.KindHistory {
		return WALObject{Kind: History, TLI: f.TLI, Key: key}, nil
	}
	dir, name, ok := strings.Cut(rest, "/")
	if !ok || len(dir) != 8 {
		return bad()
	}
	segName, suffix, _ := strings.Cut(name, ".")
	f, err := wal.ParseFileName(segName, segSize)
	if err != nil || f.Kind != wal.KindSegment || fmt.Sprintf("%08X", uint32(f.TLI)) != dir {
		return bad()
	}
	o := WALObject{Kind: Segment, Segment: f.Segment, TLI: f.TLI, Key: key}
	switch {
	case suffix == "" && !strings.Contains(name, "."):
	case suffix == "partial":
		o.Kind = Partial
	case suffix == "gap":
		o.Kind = Gap
	case suffix == "idx":
		o.Kind = Index
	case strings.HasPrefix(suffix, "pieces/") && len(suffix) == len("pieces/")+17 && suffix[len("pieces/")+8] == '-':
		r := suffix[len("pieces/"):]
		s, err1 := strconv.ParseUint(r[:8], 16, 32)
		e, err2 := strconv.ParseUint(r[9:], 16, 32)
		if err1 != nil || err2 != nil || s >= e || e > segSize || strings.ToUpper(r) != r {
			return bad()
		}
		o.Kind, o.Start, o.End = Piece, uint32(s), uint32(e)
	case len(suffix) == 15 && strings.HasSuffix(suffix, ".backup"):
		off, err := strconv.ParseUint(suffix[:8], 16, 32)
		if err != nil || off >= segSize || strings.ToUpper(suffix[:8]) != suffix[:8] {
			return bad()
		}
		o.Kind, o.Offset = BackupHistory, uint32(off)
	default:
		return bad()
	}
	return o, nil
}
