package walrec

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/walship/walship/internal/wal"
)

// CarryMax bounds the bytes a Carry holds: a record of interest that a
// segment ends in the middle of is carried only if it started at most this
// many bytes before the segment's end.
const CarryMax = 64 << 10

type carryKind uint8

const (
	carryUnknown  carryKind = iota
	carryCold               // nothing known, and nothing lost: a Reader made at the end reads as well
	carryBoundary           // the segment ends between records
	carrySkip               // the segment ends inside a record of no interest, rest bytes short
	carryRecord             // the segment ends inside a record of interest, carried as bytes
)

// Carry is what a Reader that read a segment to its end knows that one made
// at the next segment's start would not: the record the segment ends in the
// middle of, as its bytes so far, or only its length when it is of no
// interest. NewReaderFrom reads on from it. The zero Carry is unknown: a
// Reader must then be fed the segment before instead.
type Carry struct {
	kind     carryKind
	end      wal.LSN // the segment end it was taken at
	magic    uint16
	pageSize uint32
	sysID    uint64
	prev     wal.LSN // start of the last record completed, 0 if not known
	start    wal.LSN // carrySkip (0 if not known), carryRecord: the record's start
	rest     uint32  // carrySkip: bytes of the record still to come
	data     []byte  // carryRecord: the WAL from start to end, page headers included
}

// Known reports whether c can start a Reader.
func (c Carry) Known() bool { return c.kind != carryUnknown }

// String describes c, as "34 bytes of the record at 0/1FFFFE8".
func (c Carry) String() string {
	switch c.kind {
	case carryCold:
		return "nothing (end of valid WAL)"
	case carryBoundary:
		return "a record boundary"
	case carrySkip:
		return fmt.Sprintf("%d bytes to skip of the record at %s", c.rest, c.start)
	case carryRecord:
		return fmt.Sprintf("%d bytes of the record at %s", len(c.data), c.start)
	}
	return "unknown"
}

// Carry returns what a Reader made at the segment end that r stands at needs
// to read on as r would. It is unknown unless r stands at a segment end
// without having failed, and unknown too when the record r stands in is of
// interest and started more than CarryMax bytes before.
func (r *Reader) Carry() Carry {
	if r.err != nil || !r.begun || uint64(r.pos)&(r.segSize-1) != 0 || r.skipTo > r.pos || r.pad != 0 {
		return Carry{}
	}
	c := Carry{kind: carryCold, end: r.pos}
	if r.cold {
		return c
	}
	c.magic, c.pageSize, c.sysID, c.prev = r.magic, uint32(r.pageSize), r.sysID, r.prev
	rec := &r.rec
	switch {
	case !rec.active:
		c.kind = carryBoundary
	case rec.cont || rec.got >= recordHeader && !rec.want:
		c.kind, c.start, c.rest = carrySkip, rec.start, rec.totLen-rec.got
	case r.pos-rec.start <= wal.LSN(len(r.tail)):
		c.kind, c.start = carryRecord, rec.start
		c.data = bytes.Clone(r.tail[len(r.tail)-int(r.pos-rec.start):])
	default:
		return Carry{}
	}
	return c
}

// keepTail copies what of p, which starts at r.pos, falls in the last
// CarryMax bytes of its segment.
func (r *Reader) keepTail(p []byte) {
	window := min(CarryMax, r.segSize)
	pos := uint64(r.pos)
	for len(p) > 0 {
		off, from := pos&(r.segSize-1), r.segSize-window
		if off < from {
			k := min(uint64(len(p)), from-off)
			pos += k
			p = p[k:]
			continue
		}
		if r.tail == nil {
			r.tail = make([]byte, window)
		}
		k := copy(r.tail[off-from:], p)
		pos += uint64(k)
		p = p[k:]
	}
}

// NewReaderFrom returns a Reader for WAL of segSize-byte segments that will
// be fed from start, a segment start, and reads on as the Reader c was taken
// from would have: a record that began in the segment before is read whole.
// It fails when c is unknown, was taken at another segment end, or does not
// read as the start of a record.
func NewReaderFrom(start wal.LSN, segSize uint64, c Carry) (*Reader, error) {
	r := NewReader(start, segSize)
	if r.err != nil {
		return nil, r.err
	}
	return r, r.resume(c)
}

// resume sets up r, which has read nothing, from c.
func (r *Reader) resume(c Carry) error {
	switch {
	case c.kind == carryUnknown:
		return errors.New("walrec: no carry from the segment before; feed that segment instead")
	case c.end != r.pos:
		return fmt.Errorf("walrec: the carry is of the segment ending at %s, not at %s", c.end, r.pos)
	}
	r.begun = true
	if c.kind == carryCold {
		return nil
	}
	v := wal.VersionOfPageMagic(c.magic)
	pageSize := uint64(c.pageSize)
	switch {
	case v == 0:
		return fmt.Errorf("walrec: the carry at %s has page magic %04X, not that of PostgreSQL 14-18", c.end, c.magic)
	case pageSize < 1<<10 || pageSize > 1<<16 || pageSize&(pageSize-1) != 0 || r.segSize%pageSize != 0:
		return fmt.Errorf("walrec: the carry at %s has %d-byte pages, which do not fit %d-byte segments", c.end, pageSize, r.segSize)
	case c.prev >= c.end || c.start >= c.end || c.prev != 0 && c.start != 0 && c.prev >= c.start:
		return fmt.Errorf("walrec: the carry at %s has records out of order", c.end)
	}
	r.magic, r.version, r.pageSize, r.sysID, r.prev, r.cold = c.magic, v, pageSize, c.sysID, c.prev, false
	switch c.kind {
	case carrySkip:
		r.rec = record{active: true, cont: true, start: c.start, totLen: c.rest}
	case carryRecord:
		head := uint64(shortPageHeader)
		if uint64(c.start)&(r.segSize-1) < pageSize {
			head = longPageHeader
		}
		if c.start%8 != 0 || uint64(c.start)&(pageSize-1) < head || c.start+wal.LSN(len(c.data)) != c.end {
			return fmt.Errorf("walrec: the carry at %s holds a record at %s, where none can start", c.end, c.start)
		}
		r.pos, r.pageNeed = c.start, 0
		if _, err := r.Write(c.data); err != nil {
			return fmt.Errorf("carried record: %w", err)
		}
		if !r.rec.active || r.rec.cont || r.rec.start != c.start || len(r.events) > 0 {
			return fmt.Errorf("walrec: the carry at %s does not end inside the record at %s", c.end, c.start)
		}
	}
	return nil
}

// Append appends c's binary form to b: nothing for an unknown Carry, else a
// kind byte (1 cold, 2 boundary, 3 skip, 4 record) and the end's LSN as a
// uvarint; then, for all kinds but cold, uvarints of the page magic, page
// size, system identifier and the distance back from the end to the last
// complete record's start (0: not known); then for skip the distance back
// to the record's start (0: not known) and the bytes still to come, and
// for record the distance back to its start followed by that many bytes.
func (c Carry) Append(b []byte) []byte {
	if c.kind == carryUnknown {
		return b
	}
	b = append(b, byte(c.kind))
	b = binary.AppendUvarint(b, uint64(c.end))
	if c.kind == carryCold {
		return b
	}
	back := func(lsn wal.LSN) uint64 {
		if lsn == 0 {
			return 0
		}
		return uint64(c.end - lsn)
	}
	b = binary.AppendUvarint(b, uint64(c.magic))
	b = binary.AppendUvarint(b, uint64(c.pageSize))
	b = binary.AppendUvarint(b, c.sysID)
	b = binary.AppendUvarint(b, back(c.prev))
	switch c.kind {
	case carrySkip:
		b = binary.AppendUvarint(b, back(c.start))
		b = binary.AppendUvarint(b, uint64(c.rest))
	case carryRecord:
		b = binary.AppendUvarint(b, back(c.start))
		b = append(b, c.data...)
	}
	return b
}

var errCarry = errors.New("walrec: not a carry")

// ParseCarry decodes what Append wrote, all of b; no bytes is the unknown
// Carry.
func ParseCarry(b []byte) (Carry, error) {
	var c Carry
	if len(b) == 0 {
		return c, nil
	}
	c.kind, b = carryKind(b[0]), b[1:]
	if c.kind < carryCold || c.kind > carryRecord {
		return Carry{}, fmt.Errorf("%w (kind %d)", errCarry, c.kind)
	}
	var bad bool
	uv := func(max uint64) uint64 {
		v, n := binary.Uvarint(b)
		if n <= 0 || v > max {
			bad = true
			return 0
		}
		b = b[n:]
		return v
	}
	c.end = wal.LSN(uv(math.MaxUint64))
	back := func() wal.LSN {
		d := uv(uint64(c.end))
		if d == 0 {
			return 0
		}
		return c.end - wal.LSN(d)
	}
	if c.kind != carryCold {
		c.magic = uint16(uv(math.MaxUint16))
		c.pageSize = uint32(uv(math.MaxUint32))
		c.sysID = uv(math.MaxUint64)
		c.prev = back()
	}
	switch c.kind {
	case carrySkip:
		c.start = back()
		c.rest = uint32(uv(math.MaxUint32))
		bad = bad || c.rest == 0
	case carryRecord:
		n := uv(min(CarryMax, uint64(c.end)))
		if bad || n == 0 || n != uint64(len(b)) {
			return Carry{}, fmt.Errorf("%w (bad record)", errCarry)
		}
		c.start, c.data, b = c.end-wal.LSN(n), bytes.Clone(b), nil
	}
	if bad || len(b) != 0 {
		return Carry{}, fmt.Errorf("%w (truncated or %d bytes too many)", errCarry, len(b))
	}
	return c, nil
}
