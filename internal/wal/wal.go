package wal

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// LSN is a position in the WAL.
type LSN uint64

// ParseLSN parses PostgreSQL's "X/Y" form of an LSN.
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok || hi == "" || lo == "" || len(hi) > 8 || len(lo) > 8 {
		return 0, fmt.Errorf("wal: LSN %q: want the form 16/B374D848", s)
	}
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("wal: LSN %q: want hexadecimal halves, as in 16/B374D848", s)
	}
	return LSN(h<<32 | l), nil
}

func (l LSN) String() string { return fmt.Sprintf("%X/%X", uint64(l)>>32, uint32(l)) }

// TimeLineID identifies a timeline; the first is 1.
type TimeLineID uint32

// ValidSegmentSize reports whether n is a segment size PostgreSQL allows: a
// power of two from 1 MB to 1 GB.
func ValidSegmentSize(n uint64) bool {
	return n >= 1<<20 && n <= 1<<30 && n&(n-1) == 0
}

// Segment is one WAL segment of a timeline.
type Segment struct {
	TLI TimeLineID
	No  uint64 // segment number: start LSN / segment size
}

// SegmentOf returns the segment of tli that holds lsn.
func SegmentOf(tli TimeLineID, lsn LSN, segSize uint64) Segment {
	return Segment{TLI: tli, No: uint64(lsn) / segSize}
}

// Start is the LSN of the segment's first byte.
func (s Segment) Start(segSize uint64) LSN { return LSN(s.No * segSize) }

// Name is PostgreSQL's file name for the segment.
func (s Segment) Name(segSize uint64) string {
	perLog := (1 << 32) / segSize
	return fmt.Sprintf("%08X%08X%08X", uint32(s.TLI), s.No/perLog, s.No%perLog)
}

// Kind says what a WAL-archive file name names.
type Kind int

// The kinds of file PostgreSQL archives and restores.
const (
	KindSegment Kind = iota + 1 // 000000010000000000000001
	KindPartial                 // 000000010000000000000001.partial
	KindHistory                 // 00000002.history
	KindBackup                  // 000000010000000000000001.00000028.backup
)

// File is a parsed WAL-archive file name.
type File struct {
	Kind    Kind
	Segment Segment // for every kind but KindHistory
	TLI     TimeLineID
	Offset  uint32 // KindBackup: the backup's start offset in the segment
}

// ParseFileName parses a name that PostgreSQL passes to archive_command or
// restore_command (%f), for segments of segSize bytes.
func ParseFileName(name string, segSize uint64) (File, error) {
	bad := func(why string) (File, error) {
		return File{}, fmt.Errorf("wal: file name %q: %s", name, why)
	}
	if !ValidSegmentSize(segSize) {
		return bad(fmt.Sprintf("invalid segment size %d", segSize))
	}
	base, ext, _ := strings.Cut(name, ".")
	if len(base) == 8 && ext == "history" {
		tli, err := hex32(base)
		if err != nil || tli == 0 {
			return bad("want TTTTTTTT.history with a non-zero hexadecimal timeline")
		}
		return File{Kind: KindHistory, TLI: TimeLineID(tli)}, nil
	}
	if len(base) != 24 {
		return bad("want a 24-digit segment name, TTTTTTTT.history, or a segment with .partial or .OOOOOOOO.backup")
	}
	tli, err1 := hex32(base[:8])
	log, err2 := hex32(base[8:16])
	seg, err3 := hex32(base[16:])
	if err := errors.Join(err1, err2, err3); err != nil || tli == 0 {
		return bad("want upper-case hexadecimal digits and a non-zero timeline")
	}
	perLog := (1 << 32) / segSize
	if uint64(seg) >= perLog {
		return bad(fmt.Sprintf("segment part %08X is beyond the %d segments of a log with %d-byte segments", seg, perLog, segSize))
	}
	f := File{Kind: KindSegment, TLI: TimeLineID(tli), Segment: Segment{TLI: TimeLineID(tli), No: uint64(log)*perLog + uint64(seg)}}
	switch {
	case ext == "" && !strings.Contains(name, "."):
	case ext == "partial":
		f.Kind = KindPartial
	case len(ext) == 15 && strings.HasSuffix(ext, ".backup"):
		off, err := hex32(ext[:8])
		if err != nil || uint64(off) >= segSize {
			return bad("want TTTTTTTTLLLLLLLLSSSSSSSS.OOOOOOOO.backup with an offset inside the segment")
		}
		f.Kind, f.Offset = KindBackup, off
	default:
		return bad("unknown suffix; want none, .partial, or .OOOOOOOO.backup")
	}
	return f, nil
}

func hex32(s string) (uint32, error) {
	if len(s) != 8 || strings.ToUpper(s) != s {
		return 0, errors.New("not 8 upper-case hex digits")
	}
	v, err := strconv.ParseUint(s, 16, 32)
	return uint32(v), err
}

// HistoryFileName is the name of tli's history file.
func HistoryFileName(tli TimeLineID) string { return fmt.Sprintf("%08X.history", uint32(tli)) }

// HistoryEntry is one line of a history file: timeline TLI ran until Switch,
// where its child began.
type HistoryEntry struct {
	TLI    TimeLineID
	Switch LSN
	Reason string
}

// maxHistory bounds what ParseHistory reads: a history file has one short
// line per ancestor.
const maxHistory = 1 << 20

// ParseHistory parses a timeline history file. Timelines must increase and
// switch points must not go back, as PostgreSQL writes them.
func ParseHistory(b []byte) ([]HistoryEntry, error) {
	if len(b) > maxHistory {
		return nil, fmt.Errorf("wal: history file of %d bytes is larger than any PostgreSQL writes", len(b))
	}
	var out []HistoryEntry
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), maxHistory)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		fields := strings.FieldsFunc(line, func(r rune) bool { return r == '\t' || r == ' ' })
		if len(fields) < 2 {
			return nil, fmt.Errorf("wal: history line %d %q: want parentTLI<TAB>switchLSN<TAB>reason", n, line)
		}
		tli, err := strconv.ParseUint(fields[0], 10, 32)
		if err != nil || tli == 0 {
			return nil, fmt.Errorf("wal: history line %d: timeline %q is not a positive decimal number", n, fields[0])
		}
		lsn, err := ParseLSN(fields[1])
		if err != nil {
			return nil, fmt.Errorf("wal: history line %d: %w", n, err)
		}
		e := HistoryEntry{TLI: TimeLineID(tli), Switch: lsn}
		if len(fields) > 2 {
			_, e.Reason, _ = strings.Cut(line, fields[1])
			e.Reason = strings.TrimSpace(e.Reason)
		}
		if k := len(out); k > 0 && (e.TLI <= out[k-1].TLI || e.Switch < out[k-1].Switch) {
			return nil, fmt.Errorf("wal: history line %d: timeline %d at %s does not follow timeline %d at %s", n, e.TLI, e.Switch, out[k-1].TLI, out[k-1].Switch)
		}
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("wal: history: %w", err)
	}
	return out, nil
}

// VersionOfPageMagic returns the PostgreSQL major version whose WAL pages
// carry magic as xlp_magic (XLOG_PAGE_MAGIC), or 0 for one that walship does
// not know.
func VersionOfPageMagic(magic uint16) int {
	switch magic {
	case 0xD10D:
		return 14
	case 0xD110:
		return 15
	case 0xD113:
		return 16
	case 0xD116:
		return 17
	case 0xD118:
		return 18
	}
	return 0
}
